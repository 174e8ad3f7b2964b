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
    specific (MLB scales them with their modality); the output layer is shared.

    This is also OGM-GE's "Baseline" fusion (Peng et al., CVPR 2022, Table 1: "a
    vanilla fusion method that uses activation function to mark out the related
    feature component of one modality compared with another"). The official code
    (GeWu-Lab/OGM-GE_CVPR2022 at 343dc1d, `models/fusion_modules.py`) offers four
    fusions, sum, concat, film and gated, and Table 1 has four fused rows, Summation,
    Concatenation, FiLM and Baseline; the one left, `GatedFusion` with
    `x_gate=True` (the only setting `models/basic_model.py` builds; the class cites
    Kiela et al., "Efficient Large-Scale Multi-Modal Classification", AAAI 2018),
    is the Baseline: out_x = fc_x(x), out_y = fc_y(y), f = fc_out(sigmoid(out_x) * out_y),
    x = audio, y = video, all layers 512 -> 512 except fc_out (512 -> C), PyTorch's
    default init. For audio-video (audio first) this class computes the same
    function with the same parameters and init. The official training loop
    (`main.py`) reads OGM-GE's unimodal logits off fc_out by splitting its input
    columns into halves, as for concat; with GatedFusion (fc_out: 512 -> C, the
    returned out_x and out_y 512-d) the halves do not fit, so OGM-GE on this
    fusion needs unimodal scores from elsewhere (here `score_source: heads`)."""

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


class Attention(nn.Module):
    """Attention (OLM, Zong et al., IJCAI 2024, Table 1 row "Attention"; the paper
    names no source for it, its released code does: anonymous-gitlab/OLM at
    c4a4244, `models/fusion_modules.py` class `Attention`, built by
    `--fusion_method attention` in `models/basic_model.py`). Per sample, one
    score per modality from all the modalities' features, then the features
    weighted by their scores and one linear classifier:

        h = sum_m A_m z_m + a      in R^d   (one Linear over [z_1; ...; z_M])
        s = B h + b                in R^M   (the modalities' scores)
        z = sum_m s_m z_m          in R^d
        f = W z + c

    As in the reference the scores are raw: no softmax and no nonlinearity
    between the two score layers, so they need not sum to 1 and may be negative.
    `normalize=True` takes s = softmax_m(B h + b) instead (weights that sum to 1,
    the usual attention pooling); the registry's "attention" is the reference.
    The reference is written for two modalities; with M it scores the
    concatenation of all M features into M scores, as the same repository's
    three-modality attention does (`models/concat_attention.py`, on pre-extracted
    features, with MLPs in front). The hidden size d is the common feature size
    (the reference: 512 -> 512).

    A is written as one bias-free block A_m per modality plus the shared bias a,
    the same function as one Linear over the concatenation and initialised as
    PyTorch initialises that Linear (uniform in +-1/sqrt(M d), bias too), so that
    A_m is modality m's own (`modality_parameters`). Everything after it mixes
    the modalities and is shared. Not decomposable: f multiplies the scores,
    functions of every feature, with the features.
    """

    decomposable = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int, normalize: bool = False):
        super().__init__()
        dim = next(iter(feature_dims.values()))
        if any(d != dim for d in feature_dims.values()):
            raise ValueError(f"Attention fusion needs equal feature sizes, got {feature_dims}")
        self.modalities, self.normalize = list(feature_dims), normalize
        self.score_blocks = nn.ModuleDict({m: nn.Linear(dim, dim, bias=False) for m in feature_dims})
        self.score_bias = nn.Parameter(torch.empty(dim))
        bound = 1 / math.sqrt(dim * len(feature_dims))  # nn.Linear's init over the concatenation
        for parameter in [self.score_bias, *(block.weight for block in self.score_blocks.values())]:
            nn.init.uniform_(parameter, -bound, bound)
        self.score = nn.Linear(dim, len(feature_dims))
        self.out = nn.Linear(dim, num_classes)

    def scores(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, M) per-sample scores s, in `self.modalities` order."""
        s = self.score(sum(self.score_blocks[m](features[m]) for m in self.modalities) + self.score_bias)
        return s.softmax(dim=1) if self.normalize else s

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.scores(features)
        return self.out(sum(s[:, i, None] * features[m] for i, m in enumerate(self.modalities)))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.score_blocks[modality].parameters())


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
FUSIONS = {"late_linear": LateLinear, "sum": Sum, "mid_mlp": MidMLP, "film": FiLM, "gated": Gated, "attention": Attention,
           "transformer": TransformerFusion}


def offers(name: str) -> set[str]:
    """What fusion `name` offers the balancers."""
    return {"decomposition"} if FUSIONS[name].decomposable else set()


def build_fusion(name: str, feature_dims: dict[str, int], num_classes: int) -> nn.Module:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; known: {sorted(FUSIONS)}")
    return FUSIONS[name](feature_dims, num_classes)
