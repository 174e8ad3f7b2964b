"""MLB, Multi-Loss Balanced (Kontras et al., BMVC 2024; official code kkontras/MLB).

The Multi-Loss objective, plus after backward: with s_i the batch-mean
true-class confidence of modality i's head,

    r_i = mean_{m != i} s_m / s_i
    k_i = 1 + (beta_i - 1) * tanh(alpha * (r_i - 1)),  beta_i = beta_max if r_i > 1 else 2

and every gradient of modality i's parameters (encoder, head and fusion block,
the official code's grouping) is multiplied by k_i. A modality ahead (r < 1) is
slowed down, one behind is sped up, and k -> 1 as the scores converge.
"""

from __future__ import annotations

import torch

from mmbalance.balancers.base import UNIMODAL_WEIGHTS, Balancer, epoch_window, parameter_policy, scale_gradients, true_class_confidence
from mmbalance.balancers.multi_loss import multi_loss


def mlb_coefficients(scores: torch.Tensor, alpha: float, beta_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (M,) -> (r, k), both (M,)."""
    count = scores.numel()
    others_mean = (scores.sum() - scores) / (count - 1)
    ratios = others_mean / scores
    beta = torch.where(ratios > 1, torch.as_tensor(beta_max, dtype=scores.dtype), torch.as_tensor(2.0, dtype=scores.dtype))
    return ratios, 1 + (beta - 1) * torch.tanh(alpha * (ratios - 1))


class MLB(Balancer):
    DESCRIPTION = "Multi-Loss Balanced (official kkontras/MLB)."
    SETTINGS = {
        "alpha": {"description": "Steepness of k = 1 + (beta-1) tanh(alpha (r-1)); 0.5 for CREMA-D ResNet (MLB run.sh).",
                  "type": "number", "exclusiveMinimum": 0, "default": 0.5},
        "beta_max": {"description": "Ceiling of k for a modality behind (r > 1); 10 for CREMA-D ResNet Late-Linear (run.sh, tanh_mode 2).",
                     "type": "number", "minimum": 1, "default": 10},
        **epoch_window(0, 1500, "modulation", "MLB: 1500, i.e. always"),
        "parameter_policy": parameter_policy("encoder_head_fusion_block"),
        "weights": UNIMODAL_WEIGHTS,
    }
    SEARCH_SPACE = {
        "alpha": {"low": 0.1, "high": 5.0, "log": True, "source": "MLB run.sh (kkontras/MLB): 0.5 to 5 across datasets and backbones"},
        "beta_max": {"low": 1.5, "high": 20.0, "log": True, "source": "MLB run.sh: beta_max 2 to 20 in the fusion ablation"},
    }
    trains_unimodal_heads = True

    def setup(self, model):
        self.groups = model.parameter_groups(self.settings["parameter_policy"])

    def loss(self, out, labels, epoch):
        return multi_loss(out, labels, self.settings["weights"])

    def after_backward(self, model, out, labels, epoch):
        if not self.in_window(epoch):
            return {}
        modalities = list(out.unimodal)
        scores = torch.stack([true_class_confidence(out.unimodal[m], labels).mean() for m in modalities])
        ratios, coefficients = mlb_coefficients(scores, self.settings["alpha"], self.settings["beta_max"])
        for m, k in zip(modalities, coefficients.tolist()):
            scale_gradients(self.groups[m], k)
        return {f"coeff_{m}": k for m, k in zip(modalities, coefficients.tolist())} | {
            f"mlb_r_{m}": r for m, r in zip(modalities, ratios.tolist())
        }
