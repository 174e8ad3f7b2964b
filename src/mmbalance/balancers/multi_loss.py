"""Multi-Loss (Kontras et al., BMVC 2024, Sec. 3.2, the unbalanced baseline of MLB): L = CE(f) + sum_m w_m CE(f_m), with f_m from
unimodal heads whose gradients reach the encoders. MLB's weights are all 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmbalance.balancers.base import UNIMODAL_WEIGHTS, Balancer
from mmbalance.models.output import ModelOutput


def multi_loss(out: ModelOutput, labels: torch.Tensor, weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    fused = F.cross_entropy(out.fused, labels)
    unimodal = {m: F.cross_entropy(logits, labels) for m, logits in out.unimodal.items()}
    total = fused + sum(weights.get(m, 1.0) * loss for m, loss in unimodal.items())
    logs = {"loss_fused": fused.item()} | {f"loss_{m}": loss.item() for m, loss in unimodal.items()}
    return total, logs


class MultiLoss(Balancer):
    DESCRIPTION = "CE(fused) + sum_m w_m CE(head_m)."
    SETTINGS = {"weights": UNIMODAL_WEIGHTS}
    trains_unimodal_heads = True

    def loss(self, out, labels, epoch):
        return multi_loss(out, labels, self.settings["weights"])
