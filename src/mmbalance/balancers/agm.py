"""AGM, Adaptive Gradient Modulation (Li et al., ICCV 2023; official code lihongcs/AGM).

F(S) are the fused logits with the modalities outside S replaced by zero
tensors (the encoders still run on the zeros), F(empty) := 0. Modality m's
"concept" is its Shapley value

    phi_m = sum_{S without m} |S|! (M - |S| - 1)! / M! * (F(S + m) - F(S)),

so that sum_m phi_m = F(all). With s_m the mean CE of phi_m (probabilities
clamped at 1e-8), t the global iteration (1-based) and

    S_bar_m(t) = S_bar_m(t-1) (t-1)/t + s_m / t         (running mean, from 0)
    r_m        = exp(mean_{k != m} s_k - s_m)           (current dominance)
    r_bar_m    = exp(mean_{k != m} S_bar_k - S_bar_m)   (S_bar before this batch)
    k_m        = exp(alpha * min(r_bar_m - r_m, cap))

a modality more dominant than its own history (r > r_bar) is damped, one less
dominant is boosted. The trained output is sum_m phi_m, each phi_m behind a
backward hook that multiplies its gradient by k_m.

As in the official code (`Lingy12/AGM_ICCV2023: run/CREMAD_main.py`,
`model/CREMAD_net.py`):
* the zero-masked passes run with the network in eval mode but with gradients;
  for M = 2 they receive (k_a - k_v)/2 g and (k_v - k_a)/2 g, zero when k = 1;
* scores and the running mean advance on every step, inside the window or not;
* after backward, if any element of the fusion weight gradient lies outside
  [-clip_threshold, clip_threshold], the global grad norm is clipped to
  clip_max_norm;
* the official sign exp(alpha (r_bar - r)); BalanceBenchmark inverts it.

Settings:
* alpha: 1.5 for CREMA-D (authors in lihongcs/AGM issues 3, 5, 10; AV-MNIST
  2.5, UR-Funny 4.0; the code's argparse default 1.0 is not the paper's).
* start_epoch, end_epoch: modulation window, inclusive (authors: all epochs).
* exponent_cap: 10, the official min(., 10); null = no cap (BalanceBenchmark 7).
* clip_threshold: 1.0, official; null disables the clipping (BalanceBenchmark 5).
* clip_max_norm: 1.0, official (BalanceBenchmark 5).

Deviations:
* the official all-zero pass is computed and never used; we skip it.
* outside the window we train the plain full-pass output (k = 1) and run the
  padded passes without gradients, only to keep the running mean; the official
  loop just stops updating the hooks' scale there.
* the probe heads (ours, absent from the official network) stay out of the
  clipped global norm, so they cannot change how much the network is clipped.
* s_m uses log_softmax clamped at log(1e-8) rather than log(softmax).
"""

from __future__ import annotations

import math
from itertools import combinations

import torch

from mmbalance.balancers.base import Balancer, epoch_window
from mmbalance.models.output import ModelOutput


def shapley_logits(outputs_by_subset: dict[frozenset, torch.Tensor], modalities) -> dict[str, torch.Tensor]:
    """Shapley value of each modality; outputs_by_subset holds every non-empty subset."""
    count = len(modalities)
    phi = {}
    for m in modalities:
        others = [k for k in modalities if k != m]
        total = 0
        for size in range(count):
            weight = math.factorial(size) * math.factorial(count - size - 1) / math.factorial(count)
            for subset in map(frozenset, combinations(others, size)):
                without = outputs_by_subset[subset] if subset else 0  # F(empty) := 0
                total = total + weight * (outputs_by_subset[subset | {m}] - without)
        phi[m] = total
    return phi


def agm_scores(phi: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """(M,) mean CE of each modality's Shapley logits, detached, float64."""
    floor = math.log(1e-8)
    return torch.stack([
        -logits.detach().double().log_softmax(1).gather(1, labels[:, None]).clamp(min=floor).mean()
        for logits in phi.values()
    ])


def agm_ratios(scores: torch.Tensor) -> torch.Tensor:
    """r_m = exp(mean of the others' scores - s_m)."""
    others_mean = (scores.sum() - scores) / (scores.numel() - 1)
    return torch.exp(others_mean - scores)


def running_mean(mean: torch.Tensor, scores: torch.Tensor, iteration: int) -> torch.Tensor:
    """Mean of the scores over iterations 1..t, given the mean over 1..t-1."""
    return mean * (iteration - 1) / iteration + scores / iteration


def agm_coefficients(ratios: torch.Tensor, mean_ratios: torch.Tensor, alpha: float, cap: float | None = 10.0) -> torch.Tensor:
    """k_m = exp(alpha * min(r_bar_m - r_m, cap)), the official sign."""
    gap = mean_ratios - ratios
    return torch.exp(alpha * (gap if cap is None else gap.clamp(max=cap)))


def clip_if_large(watched: list[torch.Tensor], params: list[torch.Tensor], threshold: float, max_norm: float) -> bool:
    """Clip the global grad norm of `params` when any watched gradient element
    leaves [-threshold, threshold] (the official AGM rule). True if clipped."""
    if not any(p.grad is not None and p.grad.abs().max() > threshold for p in watched):
        return False
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    return True


class AGM(Balancer):
    DESCRIPTION = "Adaptive Gradient Modulation (official code; the BalanceBenchmark sign flip is not copied)."
    SETTINGS = {
        "alpha": {"description": "k = exp(alpha min(r_bar - r, cap)); CREMA-D 1.5 (authors, lihongcs/AGM issues 3, 5, 10).",
                  "type": "number", "minimum": 0, "default": 1.5},
        **epoch_window(0, 1500, "modulation", "the authors modulate the whole run"),
        "exponent_cap": {"description": "Cap on alpha's argument r_bar - r (official: 10; BalanceBenchmark 7); null for none.",
                         "type": ["number", "null"], "default": 10},
        "clip_threshold": {"description": "Clip the global gradient norm when a fusion weight gradient leaves [-t, t] (official: 1.0); "
                           "null turns clipping off.", "type": ["number", "null"], "default": 1.0},
        "clip_max_norm": {"description": "Global norm the clipping scales to (official: 1.0).", "type": "number", "exclusiveMinimum": 0, "default": 1.0},
    }
    SEARCH_SPACE = {"alpha": {"low": 0.1, "high": 3.0, "log": True, "source": "0.1 (BalanceBenchmark) to 3.0 (MLB run.sh); the authors use 1.5 on CREMA-D"}}

    def setup(self, model):
        if len(model.modalities) < 2:
            raise ValueError("AGM needs at least two modalities")
        self.names = list(model.modalities)
        self.fusion_weights = [p for p in model.fusion.parameters() if p.dim() >= 2]
        self.iteration = 0
        self.mean_scores = torch.zeros(len(self.names), dtype=torch.float64)
        self.logs: dict[str, float] = {}

    def forward(self, model, inputs, labels, epoch):
        full = model(inputs)
        modulate = self.in_window(epoch)
        outputs = {frozenset(self.names): full.fused}
        was_training = model.training
        model.eval()  # official: padded passes use BatchNorm running statistics
        try:
            with torch.set_grad_enabled(modulate and torch.is_grad_enabled()):
                for size in range(1, len(self.names)):
                    for subset in map(frozenset, combinations(self.names, size)):
                        masked = {m: x if m in subset else torch.zeros_like(x) for m, x in inputs.items()}
                        outputs[subset] = model(masked).fused
        finally:
            model.train(was_training)
        phi = shapley_logits(outputs, self.names)

        scores = agm_scores(phi, labels).cpu()  # the running mean lives on the CPU
        ratios, mean_ratios = agm_ratios(scores), agm_ratios(self.mean_scores)
        if modulate:
            coefficients = agm_coefficients(ratios, mean_ratios, self.settings["alpha"], self.settings["exponent_cap"])
        else:
            coefficients = torch.ones_like(scores)
        self.iteration += 1  # the coefficient above used S_bar from before this batch
        self.mean_scores = running_mean(self.mean_scores, scores, self.iteration)

        self.logs = {}
        for i, m in enumerate(self.names):
            self.logs |= {
                f"coeff_{m}": coefficients[i].item(), f"agm_score_{m}": scores[i].item(),
                f"agm_mean_score_{m}": self.mean_scores[i].item(), f"agm_ratio_{m}": ratios[i].item(),
                f"agm_mean_ratio_{m}": mean_ratios[i].item(),
            }
        if not modulate:
            return full
        for m, k in zip(self.names, coefficients.tolist()):
            if phi[m].requires_grad:
                phi[m].register_hook(lambda grad, k=k: grad * k)
        fused = sum(phi[m] for m in self.names)
        return ModelOutput(fused, full.unimodal, full.features, full.decomposed, full.heads_are_probes)

    def after_backward(self, model, out, labels, epoch):
        clipped = False
        if self.settings["clip_threshold"] is not None:
            probes = {id(p) for p in model.heads.parameters()} if out.heads_are_probes else set()
            params = [p for p in model.parameters() if id(p) not in probes]
            clipped = clip_if_large(self.fusion_weights, params, self.settings["clip_threshold"], self.settings["clip_max_norm"])
        return self.logs | {"agm_clipped": float(clipped)}

    def state_dict(self):
        return {"iteration": self.iteration, "mean_scores": self.mean_scores.clone()}

    def load_state_dict(self, state):
        self.iteration = int(state["iteration"])
        self.mean_scores = state["mean_scores"].detach().to("cpu", torch.float64).clone()
