"""GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML
2018), as OLM uses it for a baseline (Zong et al., IJCAI 2024, Table 1 row
"GradNorm", late fusion by concatenation).

Tasks. OLM's network has three outputs trained together, the two unimodal
heads and the fused classifier (OLM Sec. 3.2, Eq. 5), and its released code
keeps for each of them an initial loss and a weight total of 3
(anonymous-gitlab/OLM at c4a4244, `models/attention_grad.py`: buffers
`initial_loss` of three entries and `weight_sum` = 3, the T of GradNorm's
renormalisation). So the tasks are the M unimodal heads' cross-entropies
(trained into the encoders) plus the fused cross-entropy, T = M + 1, in the
order [*modalities, "fused"]. BalanceBenchmark (GeWu-Lab/BalanceBenchmark at
4c1482f) has no GradNorm to compare with.

Equations (GradNorm Sec. 3.1-3.2 and Algorithm 1), for task i at step t:

    network   L       = sum_i w_i L_i        (w_i held constant for the network)
    norms     G_i     = || grad_W (w_i L_i) ||_2 = |w_i| * || grad_W L_i ||_2
              G_bar   = mean_i G_i
    rates     Ltil_i  = L_i(t) / L_i(0),    r_i = Ltil_i / mean_k Ltil_k
    weights   L_grad  = sum_i | G_i - const(G_bar * r_i^alpha) |
              w      <- one step of w's own optimizer on grad_w L_grad
              w      <- T * w / sum_i w_i     (renormalised after every update)

with w initialised to 1 and L_i(0) the task losses of the first training step.
The targets G_bar r_i^alpha are constants (the paper's Sec. 3.2: otherwise the
weights could lower L_grad by all shrinking together). Since w_i is a scalar,
grad_w L_grad needs only the norms ||grad_W L_i||, no second-order graph.

The shared layer W. GradNorm takes the last layer of weights that every task
reaches. Here no layer reaches all tasks: modality m's head sees only encoder m,
and the fused output sees every encoder. The last parameters a task shares with
another are each encoder's last layer (its last weight of two or more
dimensions: the ResNet18 trunk's final 3x3 convolution, the Conformer's last
feed-forward projection), shared by modality m's head and the fusion. W is the
set of these layers, one per modality, and G_i is the norm of task i's gradient
over all of W: a unimodal task's gradient is zero outside its own encoder, so
its G_i is its norm at its encoder's last layer, and the fused task's G_i joins
its gradients at every encoder's last layer.

Implementation on the balancer hooks (as `mmbalance.balancers.olm` does for its
logit scales): `loss` returns sum_i w_i L_i with w detached and, before the
loop's backward, takes each task's gradient at W (`torch.autograd.grad`,
keeping the graph for the backward); `after_backward` forms L_grad, steps w's
optimizer and renormalises. The network's optimizer never sees w.

Settings: alpha, the restoring force, 1.5 (the paper's value for NYUv2, Sec. 5;
it uses 0.12 on its synthetic tasks, Sec. 4; OLM does not give its own). w's
optimizer: Adam with lr `weight_lr` = 1e-3 and no weight decay. Neither the
paper (Algorithm 1: a gradient step on L_grad) nor OLM gives it for this
baseline; 1e-3 is the OLM authors' Adam rate for their own learnable per-output
weights (anonymous-gitlab/OLM at c4a4244, `main_logits.py`).

Departures:
* W is the set of the encoders' last layers (above), not one layer shared by
  every task, which this network does not have.
* G_i uses |w_i| (the norm of w_i times a gradient), so a weight pushed below
  zero still gets a meaningful norm; the paper assumes w_i > 0 and neither
  clips nor reports clipping, and we do not clip either.
* Read, not copied: dav-ell/gradnorm at 4488938 (`gradnorm.py`) takes the mean
  of |G_i - target| (1/T times the paper's sum), updates w by plain SGD and
  clamps negative weights; we follow the paper's sum and do not clamp.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mmbalance.balancers.base import Balancer

FUSED = "fused"


def last_weight(encoder: nn.Module) -> nn.Parameter:
    """The encoder's last trainable parameter with two or more dimensions (its last
    weight matrix or kernel); our encoders register their layers in the order they
    run them, so it is the last layer of weights before the pooled features."""
    weights = [p for p in encoder.parameters() if p.requires_grad and p.dim() >= 2]
    if not weights:
        raise ValueError(f"GradNorm: encoder {type(encoder).__name__} has no trainable weight matrix")
    return weights[-1]


def gradient_norms(losses: list[torch.Tensor], shared: list[torch.Tensor]) -> torch.Tensor:
    """(T,) ||grad_W L_i||_2 over all of `shared`; keeps the graph for a later backward.
    A task that does not reach a parameter contributes zero there."""
    norms = []
    for loss in losses:
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        squares = [g.detach().pow(2).sum() for g in grads if g is not None]
        norms.append(torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(()))
    return torch.stack(norms)


def relative_rates(losses: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """r_i = (L_i(t) / L_i(0)) / mean_k (L_k(t) / L_k(0))."""
    ratios = losses / initial
    return ratios / ratios.mean()


def gradnorm_loss(w: torch.Tensor, norms: torch.Tensor, rates: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (L_grad, G, targets). G_i = |w_i| ||grad_W L_i|| carries w's gradient;
    the targets G_bar r_i^alpha are constants."""
    G = w.abs() * norms.detach()
    targets = (G.mean() * rates ** alpha).detach()
    return (G - targets).abs().sum(), G.detach(), targets


@torch.no_grad()
def renormalise(w: torch.Tensor, total: float) -> None:
    """w <- total * w / sum(w), in place."""
    w.mul_(total / w.sum())


class GradNorm(Balancer):
    DESCRIPTION = ("GradNorm (Chen et al., ICML 2018) over the unimodal heads' and the fused cross-entropies, as OLM's baseline: "
                   "loss weights learned so that gradient norms at the encoders' last layers follow each task's training rate.")
    SETTINGS = {
        "alpha": {"description": "Restoring force alpha of the targets G_bar r_i^alpha (GradNorm paper: 1.5 on NYUv2, Sec. 5; 0.12 on its "
                  "synthetic tasks, Sec. 4; OLM gives none).",
                  "type": "number", "minimum": 0, "default": 1.5},
        "weight_lr": {"description": "Adam learning rate of the task weights w, no weight decay (neither GradNorm nor OLM gives one for this "
                      "baseline; 1e-3 is the OLM authors' Adam rate for their learnable per-output weights, main_logits.py).",
                      "type": "number", "exclusiveMinimum": 0, "default": 0.001},
    }
    SEARCH_SPACE = {
        "alpha": {"low": 0.1, "high": 3.0, "log": True, "source": "around the GradNorm paper's values, 0.12 (Sec. 4) and 1.5 (Sec. 5), up to twice the latter"},
        "weight_lr": {"low": 1e-4, "high": 1e-2, "log": True, "source": "a decade either side of 1e-3 (the OLM authors' rate for learnable output weights)"},
    }
    trains_unimodal_heads = True

    def setup(self, model):
        if len(model.modalities) < 2:
            raise ValueError("GradNorm balances unimodal heads and the fused output and needs at least two modalities")
        self.names = [*model.modalities, FUSED]
        self.shared = [last_weight(model.encoders[m]) for m in model.modalities]
        device = self.shared[0].device
        self.w = nn.Parameter(torch.ones(len(self.names), device=device))
        self.optimizer = torch.optim.Adam([self.w], lr=self.settings["weight_lr"], weight_decay=0.0)
        self.initial: torch.Tensor | None = None  # L_i(0), the first step's task losses
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's (losses, norms)

    def task_losses(self, out, labels) -> list[torch.Tensor]:
        return [*(F.cross_entropy(out.unimodal[m], labels) for m in self.names[:-1]), F.cross_entropy(out.fused, labels)]

    def loss(self, out, labels, epoch):
        losses = self.task_losses(out, labels)
        total = sum(w * loss for w, loss in zip(self.w.detach(), losses))
        self._pending = None
        if total.requires_grad:
            self._pending = (torch.stack([loss.detach() for loss in losses]), gradient_norms(losses, self.shared))
        return total, {f"loss_{o}": loss.item() for o, loss in zip(self.names, losses)}

    def after_backward(self, model, out, labels, epoch):
        if self._pending is None:
            return {}
        losses, norms = self._pending
        self._pending = None
        if self.initial is None:
            self.initial = losses.clone()
        rates = relative_rates(losses, self.initial)
        grad_loss, G, targets = gradnorm_loss(self.w, norms, rates, self.settings["alpha"])
        self.optimizer.zero_grad(set_to_none=True)
        grad_loss.backward()
        self.optimizer.step()
        renormalise(self.w, len(self.names))
        self.optimizer.zero_grad(set_to_none=True)  # the loop only zeroes the network's gradients
        logs = {"gradnorm_loss": grad_loss.item()}
        for key, values in (("w", self.w.detach()), ("G", G), ("target", targets), ("r", rates)):
            logs |= {f"gradnorm_{key}_{o}": v for o, v in zip(self.names, values.tolist())}
        return logs

    def state_dict(self):
        return copy.deepcopy({"w": self.w.detach(), "optimizer": self.optimizer.state_dict(), "initial": self.initial})

    def load_state_dict(self, state):
        device = self.w.device
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.initial = None if state["initial"] is None else state["initial"].to(device)
