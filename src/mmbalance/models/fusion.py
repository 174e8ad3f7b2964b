"""Fusions: pooled per-modality features -> fused logits.

Each fusion says what it offers the balancers (see `mmbalance.compatibility`): fused logits
always; `decompose()` per-modality logits only where the fusion is linear; and
`modality_parameters(m)`, the fusion parameters that belong to modality m alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LateLinear(nn.Module):
    """Late-Linear (concat) fusion: f = W [z_1; ...; z_M] + b.

    Written as one bias-free block W_m per modality plus a shared bias, which is
    the same function as one Linear over the concatenation (MLB splits it the
    same way) and lets a balancer scale modality m's block alone.
    """

    decomposable = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        self.blocks = nn.ModuleDict({m: nn.Linear(d, num_classes, bias=False) for m, d in feature_dims.items()})
        self.bias = nn.Parameter(torch.zeros(num_classes))
        # Xavier-normal of the whole concat layer (the reference init), block by block.
        std = math.sqrt(2.0 / (sum(feature_dims.values()) + num_classes))
        for block in self.blocks.values():
            nn.init.normal_(block.weight, 0.0, std)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.blocks[m](z) for m, z in features.items()) + self.bias

    def decompose(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W_m z_m + b/M: the unimodal logits OGM-GE reads off a concat layer."""
        share = self.bias / len(features)
        return {m: self.blocks[m](z) + share for m, z in features.items()}

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.blocks[modality].parameters())


class Sum(nn.Module):
    """Sum fusion: f = sum_m (W_m z_m + b_m), one classifier per modality."""

    decomposable = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        self.blocks = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def decompose(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W_m z_m + b_m (the training-time form of the official code)."""
        return {m: self.blocks[m](z) for m, z in features.items()}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.decompose(features).values())

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.blocks[modality].parameters())


class MidMLP(nn.Module):
    """Mid-MLP (MLB `cls_type: nonlinear`): h = sum_m W_m z_m + b in R^hidden, then
    Lin(hidden->hidden), ReLU, dropout and Lin(hidden->C) on ReLU(h). The W_m
    blocks are modality m's; the rest is shared. Not decomposable."""

    decomposable = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleDict({m: nn.Linear(d, hidden, bias=False) for m, d in feature_dims.items()})
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(sum(self.blocks[m](z) for m, z in features.items()) + self.bias)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.blocks[modality].parameters())


class FiLM(nn.Module):
    """FiLM (MLB `x_film`): the first modality conditions the others,
    (gamma_m, beta_m) = split(Lin(z_0)), f = Lin(sum_{m>0} gamma_m * z_m + beta_m).
    For audio-video this is the reference: audio conditions video. The FiLM
    layers are shared fusion parameters (MLB does not scale them)."""

    decomposable = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        first, *others = feature_dims
        self.conditioning, self.targets = first, others
        dim = feature_dims[first]
        if any(feature_dims[m] != dim for m in others):
            raise ValueError(f"FiLM needs equal feature sizes, got {feature_dims}")
        self.film = nn.ModuleDict({m: nn.Linear(dim, 2 * dim) for m in others})
        self.out = nn.Linear(dim, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        condition = features[self.conditioning]
        mixed = 0
        for m in self.targets:
            gamma, beta = self.film[m](condition).chunk(2, dim=1)
            mixed = mixed + gamma * features[m] + beta
        return self.out(mixed)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return []


class Gated(nn.Module):
    """Gated (MLB `x_gate`): g = sigmoid(Lin_0(z_0)) gates each other modality's
    projection, f = Lin(sum_{m>0} g * Lin_m(z_m)). Lin_0 and Lin_m are modality
    specific (MLB scales them with their modality); the output layer is shared."""

    decomposable = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        first, *others = feature_dims
        self.gate, self.targets = first, others
        dim = feature_dims[first]
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in feature_dims.items()})
        self.out = nn.Linear(dim, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        gate = torch.sigmoid(self.projections[self.gate](features[self.gate]))
        return self.out(sum(gate * self.projections[m](features[m]) for m in self.targets))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.projections[modality].parameters())


class TransformerFusion(nn.Module):
    """Transformer fusion (MLB `tf`): each modality's token sequence (ResNet:
    the positions of its last feature map) plus a learned modality-type
    embedding, concatenated after a learned CLS token, through a 2-layer
    Conformer (torchaudio); the CLS output -> Lin(d->C). All of it is shared
    fusion (MLB does not scale it). Heads are d/64 (8 at the papers' d = 512);
    the Conformer's convolution kernel (31) is torchaudio's usual choice, the
    reference's is not in the code we read."""

    decomposable = False
    needs_tokens = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int, layers: int = 2, kernel: int = 31):
        super().__init__()
        dim = next(iter(feature_dims.values()))
        if any(d != dim for d in feature_dims.values()):
            raise ValueError(f"Transformer fusion needs equal feature sizes, got {feature_dims}")
        self.type_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in feature_dims})
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        for parameter in [self.cls, *self.type_embedding.values()]:
            nn.init.normal_(parameter, std=0.02)
        import torchaudio  # here, not at the top: only this fusion needs it

        self.conformer = torchaudio.models.Conformer(
            input_dim=dim, num_heads=max(1, dim // 64), ffn_dim=4 * dim, num_layers=layers, depthwise_conv_kernel_size=kernel
        )
        self.out = nn.Linear(dim, num_classes)

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        sequences = [t + self.type_embedding[m] for m, t in tokens.items()]
        batch = sequences[0].shape[0]
        sequence = torch.cat([self.cls.expand(batch, -1, -1), *sequences], dim=1)
        lengths = torch.full((batch,), sequence.shape[1], device=sequence.device)
        return self.out(self.conformer(sequence, lengths)[0][:, 0])

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return []


# The fusion registry: config name -> class. A fusion offers "decomposition"
# when its class is `decomposable` (mmbalance.compatibility reads it).
FUSIONS = {"late_linear": LateLinear, "sum": Sum, "mid_mlp": MidMLP, "film": FiLM, "gated": Gated, "transformer": TransformerFusion}


def offers(name: str) -> set[str]:
    """What fusion `name` offers the balancers."""
    return {"decomposition"} if FUSIONS[name].decomposable else set()


def build_fusion(name: str, feature_dims: dict[str, int], num_classes: int) -> nn.Module:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; known: {sorted(FUSIONS)}")
    return FUSIONS[name](feature_dims, num_classes)
