"""Fusions: pooled per-modality features -> fused logits.

Each fusion says what it offers the balancers (METHODS.md 2): fused logits
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


FUSIONS = {"late_linear": LateLinear}


def build_fusion(name: str, feature_dims: dict[str, int], num_classes: int) -> nn.Module:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; known: {sorted(FUSIONS)}")
    return FUSIONS[name](feature_dims, num_classes)
