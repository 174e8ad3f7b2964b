"""OGM and OGM-GE, On-the-fly Gradient Modulation (Peng et al., CVPR 2022,
Sec. 3.2-3.3; reference code GeWu-Lab/OGM-GE_CVPR2022, `main.py`).

Unimodal logits come from decomposing the linear fusion layer. With S_m the
batch sum of modality m's true-class softmax confidence, the official code
damps the dominant modality u of a pair, rho_u = S_u / S_other > 1, by

    k_u = 1 - tanh(alpha * rho_u)        (alpha * rho, not alpha * (rho - 1):
                                          k jumps to 1 - tanh(alpha) at balance)

and leaves the other at k = 1. For M modalities the coefficient uses
rho_m = S_m / min_k S_k (BalanceBenchmark's generalisation), which for M = 2 is
the official ratio of the dominant modality. A tie damps nobody; the official
code damps audio on a tie, an asymmetry we do not copy.

Logged (`ogm_rho_<m>`): what the official code computes for both modalities,
S_m / S_other (for M modalities S_m over the mean of the others), so the weaker
modality's ratio reads below 1 rather than the 1 of the coefficient's rho.

Named options (the official behaviour is the default):
* `coefficient`: "official" (above) or "continuous", k_u = 1 - tanh(alpha *
  (rho_u - 1)), which is 1 at balance instead of jumping (our option; every public copy
  of OGM has the jump);
* `score_source`: "decomposition" (official: W_m z_m + b/M of a linear fusion)
  or "heads" (the unimodal heads, as the MLB repository does for fusions that
  cannot be decomposed; here they are probes unless the method trains them).

OGM multiplies the gradients of modality m's encoder conv kernels (the
official grouping) by k_m. OGM-GE then adds Gaussian noise to *every*
modality's tensors: g <- k g + N(0, sigma^2), sigma = unbiased std of the
unscaled g, plus 1e-8, drawn fresh per tensor and step.
"""

from __future__ import annotations

import torch

from mmbalance.balancers.base import Balancer, epoch_window, parameter_policy, true_class_confidence


def ogm_coefficients(scores: torch.Tensor, alpha: float, continuous: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (M,) -> (rho, k), both (M,)."""
    ratios = scores / scores.min()
    damped = 1 - torch.tanh(alpha * (ratios - 1 if continuous else ratios))
    return ratios, torch.where(ratios > 1, damped, torch.ones_like(ratios))


def discrepancy_ratios(scores: torch.Tensor) -> torch.Tensor:
    """scores (M,) -> S_m / mean_{k != m} S_k (M,): the official ratio_a = S_a / S_v and
    ratio_v = S_v / S_a for two modalities."""
    others = (scores.sum() - scores) / (len(scores) - 1)
    return scores / others


def generalization_enhancement(grad: torch.Tensor, coefficient: float) -> torch.Tensor:
    """k g + noise with the unbiased std of the unscaled gradient (OGM-GE)."""
    noise = torch.randn_like(grad) * (grad.std().item() + 1e-8)
    return grad * coefficient + noise


class OGM(Balancer):
    DESCRIPTION = "OGM without noise (official GeWu-Lab/OGM-GE_CVPR2022)."
    SETTINGS = {
        "alpha": {"description": "k = 1 - tanh(alpha * rho) for the dominant modality; 0.8 for CREMA-D (OGM-GE README), 0.1 VGGSound. "
                  "0 turns the modulation off (k = 1): with OGM-GE that is the paper's GE-only row (OGM-GE Table 7).",
                  "type": "number", "minimum": 0, "default": 0.8},
        **epoch_window(0, 50, "modulation", "README: 50"),
        "parameter_policy": parameter_policy("encoder_conv_weights"),
        "coefficient": {"description": "official: k = 1 - tanh(alpha rho), jumps at balance (OGM-GE code); continuous: 1 - tanh(alpha (rho - 1)).",
                        "type": "string", "enum": ["official", "continuous"], "default": "official"},
        "score_source": {"description": "decomposition: unimodal logits W_m z_m + b/M of a linear fusion (official); heads: each "
                         "modality's head (MLB repository, for non-linear fusions).",
                         "type": "string", "enum": ["decomposition", "heads"], "default": "decomposition"},
    }
    SEARCH_SPACE = {"alpha": {"low": 0.0, "high": 1.0, "source": "OGM-GE paper, section 4.2: alpha is chosen from [0, 1] on validation"}}
    NEEDS_HINT = "set score_source: heads to score each modality by its head instead"
    add_noise = False

    @classmethod
    def needs(cls, settings):
        return {"decomposition"} if settings.get("score_source", "decomposition") == "decomposition" else set()

    def setup(self, model):
        if self.settings["score_source"] == "decomposition" and not model.fusion.decomposable:
            raise ValueError(
                f"{type(self).__name__} reads unimodal logits off a linear fusion, and fusion "
                f"{type(model.fusion).__name__} cannot be decomposed: set score_source: heads "
                f"to score each modality by its head instead"
            )
        self.groups = model.parameter_groups(self.settings["parameter_policy"])

    def after_backward(self, model, out, labels, epoch):
        if not self.in_window(epoch):
            return {}
        logits = out.decomposed if self.settings["score_source"] == "decomposition" else out.unimodal
        modalities = list(logits)
        scores = torch.stack([true_class_confidence(logits[m], labels).sum() for m in modalities])
        _, coefficients = ogm_coefficients(scores, self.settings["alpha"], self.settings["coefficient"] == "continuous")
        for m, k in zip(modalities, coefficients.tolist()):
            for param in self.groups[m]:
                if param.grad is None:
                    continue
                if self.add_noise:
                    param.grad = generalization_enhancement(param.grad, k)
                else:
                    param.grad.mul_(k)
        return {f"coeff_{m}": k for m, k in zip(modalities, coefficients.tolist())} | {
            f"ogm_rho_{m}": r for m, r in zip(modalities, discrepancy_ratios(scores).tolist())
        }


class OGMGE(OGM):
    DESCRIPTION = "OGM with generalisation enhancement noise (official GeWu-Lab/OGM-GE_CVPR2022)."
    add_noise = True
