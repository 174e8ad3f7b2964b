"""MMCosine (Xu et al., ICASSP 2023; official code GeWu-Lab/MMCosine_ICASSP23).

The linear fusion's logits are replaced by scaled cosine similarities: with
W_m the fusion block of modality m (one row w_{m,k} per class),

    f_m[k] = s * cos(z_m, w_{m,k}),    f = sum_m f_m    (no bias)

and the loss is CE(f). Normalising features and class weights removes the
dominant modality's advantage in feature and weight norm. This is a change to
the model, so `setup` swaps the fusion for `CosineFusion`, which shares the
fusion's blocks: training, validation and test all see the cosine logits.
It needs a fusion with one linear classifier block per modality (Late-Linear,
Sum; Sum's per-block biases are dropped with the rest of the linear form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbalance.balancers.base import Balancer


def cosine_logits(features: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * cos(z, w_k) for every class row w_k of `weight` (C x d)."""
    return scale * F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T


class CosineFusion(nn.Module):
    decomposable = True

    def __init__(self, blocks: nn.ModuleDict, scale: float):
        super().__init__()
        self.blocks, self.scale = blocks, scale

    def decompose(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: cosine_logits(z, self.blocks[m].weight, self.scale) for m, z in features.items()}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.decompose(features).values())

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.blocks[modality].parameters())


class MMCosine(Balancer):
    DESCRIPTION = "Cosine logits with scaling s replace the linear fusion (official GeWu-Lab/MMCosine_ICASSP23)."
    SETTINGS = {"scale": {"description": "Scaling s of the cosine logits (official README: 10; BalanceBenchmark 15).",
                          "type": "number", "exclusiveMinimum": 0, "default": 10}}
    SEARCH_SPACE = {"scale": {"low": 1.0, "high": 20.0, "log": True, "source": "1 and 8 (MLB scripts), 10 (official README), 15 (BalanceBenchmark)"}}
    NEEDS_HINT = "it replaces one linear classifier block per modality, which only a linear fusion has"

    @classmethod
    def needs(cls, settings):
        return {"decomposition"}

    def setup(self, model):
        if not model.fusion.decomposable:
            raise ValueError(f"MMCosine needs one linear classifier block per modality, and fusion {type(model.fusion).__name__} has none")
        model.fusion = CosineFusion(model.fusion.blocks, self.settings["scale"])

    def loss(self, out, labels, epoch):
        # The target-class cosine of each modality: how well it alone fits the batch.
        logs = {f"cos_{m}": (f.detach().gather(1, labels[:, None]).mean() / self.settings["scale"]).item() for m, f in out.decomposed.items()}
        return F.cross_entropy(out.fused, labels), logs
