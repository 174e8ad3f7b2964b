"""OLM, Online Logit Modulation (Zong et al., IJCAI 2024, Sec. 3).

An explicit reading of the released code (`engines/engine_logits_com.py`),
which we read as a sketch of the algorithm (it evaluates on the training
fold and truncates the epoch by zipping with the validation loader). Outputs o = the M unimodal heads
(trained into the encoders) then "fused"; learnable scalars w (M+1, init 1)
with their own Adam (lr `coefficient_lr`, no weight decay: the ResNet scripts).

    loss    L = sum_o CE(w_o f_o, y)       (`reduction`: "sum" over the batch as
                                            in the official code, or "mean")
    rates   "generalization" (official "com" rule):
              G_o = Lval_o(0) - Lval_o(t),  C_o = (Ltrain_o(0) - Ltrain_o(t)) - G_o
              r = softmax_o(max(G, 1e-6) / max(C, 1e-6))
            "loss_ratio" (the README's variant, training losses only):
              r_o = (L_o(t) / L_o(0)) / mean_k(L_k(t) / L_k(0))
    norms   n_{o,n} = w_o ||f_o(x_n)||_2 (logits detached: only w learns),
            tau_{o,n} = mean_o(n_{.,n}) r_o (detached),
            L_norm = sum_n sum_o |n - tau|  (divided by the batch size for "mean")

w gets the gradient of both L (put there by the loop's backward) and L_norm;
`after_backward` adds the L_norm gradient and steps w once per training step.

Deviations, chosen for cost (`validation: "per_epoch"`, the only option; the
official per-step validation batch is not implemented):
* Lval(t) is computed once per epoch in `on_epoch_end` on the whole validation
  split, model in eval mode under no_grad (official: one validation batch per
  training step in train mode, so BatchNorm also absorbs validation batches).
* Ltrain(t) is the epoch's per-sample mean training loss, accumulated in `loss`.
  Both are per-sample means whatever `reduction` is, so train and validation
  losses are comparable (G/C is scale-free anyway, up to the 1e-6 clamps).
* L(0) are the losses of epoch 0 (official: its last batch). r is uniform
  (1/(M+1)) until they exist, and r used in epoch t comes from epoch t-1's
  losses, so it is uniform in epochs 0 and 1 and then lags one epoch.
Evaluation uses the model's own fused logits: w_fused > 0 only rescales them,
so the fused argmax (and thus accuracy) is unchanged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from mmbalance.balancers.base import Balancer

FUSED = "fused"


def generalization_rates(train_ref, val_ref, train_now, val_now) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official "com" rule -> (G, C, r), each (O,)."""
    G = val_ref - val_now
    C = (train_ref - train_now) - G
    return G, C, torch.softmax(G.clamp(min=1e-6) / C.clamp(min=1e-6), dim=0)


def loss_ratio_rates(train_ref, train_now) -> torch.Tensor:
    """The variant: relative loss ratios normalised to mean 1 (no softmax)."""
    ratios = train_now / train_ref
    return ratios / ratios.mean()


def norm_targets(norms: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """norms (O, B) -> targets (O, B): the per-sample mean norm times r_o."""
    return (norms.mean(dim=0, keepdim=True) * rates[:, None]).detach()


def norm_matching_loss(w: torch.Tensor, logits: list[torch.Tensor], rates: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (L_norm, n of shape (O, B)); only w carries gradient."""
    norms = w[:, None] * torch.stack([f.detach().norm(dim=1) for f in logits])
    loss = (norms - norm_targets(norms, rates)).abs().sum()
    return (loss / norms.shape[1] if reduction == "mean" else loss), norms.detach()


class OLM(Balancer):
    DESCRIPTION = ("Online Logit Modulation (the released engines/engine_logits_com.py read as a sketch): learnable logit scales "
                   "norm-matched to targets from generalisation/convergence rates of per-epoch validation losses.")
    SETTINGS = {
        "coefficient_lr": {"description": "Adam learning rate of the logit scales w, no weight decay (released ResNet scripts: 1e-3).",
                           "type": "number", "exclusiveMinimum": 0, "default": 0.001},
        "rule": {"description": "generalization: r = softmax(G/C) (engine_logits_com.py, the paper); loss_ratio: r from training-loss "
                 "ratios only (engine_logits.py, the README's variant).",
                 "type": "string", "enum": ["generalization", "loss_ratio"], "default": "generalization"},
        "reduction": {"description": "Cross-entropy over the batch: sum (released code) or mean.",
                      "type": "string", "enum": ["sum", "mean"], "default": "sum"},
        "validation": {"description": "Where validation losses come from: per_epoch (the whole validation split after each epoch; the "
                       "released code pairs every training step with one validation batch, not implemented).",
                       "type": "string", "enum": ["per_epoch"], "default": "per_epoch"},
    }
    SEARCH_SPACE = {"coefficient_lr": {"low": 1e-4, "high": 1e-2, "log": True, "source": "a decade either side of the released scripts' 1e-3"}}
    trains_unimodal_heads = True

    def setup(self, model):
        if len(model.modalities) < 2:
            raise ValueError("OLM balances unimodal heads and needs at least two modalities")
        if self.settings.get("validation", "per_epoch") != "per_epoch":
            raise ValueError("OLM: only validation 'per_epoch' is implemented")
        self.names = [*model.modalities, FUSED]
        device = next(model.parameters()).device
        self.w = torch.nn.Parameter(torch.ones(len(self.names), device=device))
        self.optimizer = torch.optim.Adam([self.w], lr=self.settings["coefficient_lr"], weight_decay=0.0)
        self.rates = torch.full((len(self.names),), 1 / len(self.names), device=device)
        self.reference: dict[str, torch.Tensor] | None = None  # {"train", "val"} losses of epoch 0
        self.current: dict[str, torch.Tensor] = {}  # last epoch's losses, G and C
        self._reset_accumulators()

    def _reset_accumulators(self):
        self.loss_sums, self.loss_count = torch.zeros_like(self.rates), 0

    def outputs(self, out) -> list[torch.Tensor]:
        return [*(out.unimodal[m] for m in self.names[:-1]), out.fused]

    def summed_losses(self, out, labels) -> torch.Tensor:
        """(O,) batch sums of CE(w_o f_o, y)."""
        return torch.stack([F.cross_entropy(w * f, labels, reduction="sum") for w, f in zip(self.w, self.outputs(out))])

    def loss(self, out, labels, epoch):
        sums = self.summed_losses(out, labels)
        self.loss_sums += sums.detach()
        self.loss_count += len(labels)
        total = sums.sum() / (len(labels) if self.settings["reduction"] == "mean" else 1)
        return total, {f"loss_{o}": v / len(labels) for o, v in zip(self.names, sums.tolist())}

    def after_backward(self, model, out, labels, epoch):
        # w.grad already holds the CE gradient (the loop's backward); add L_norm's.
        norm_loss, norms = norm_matching_loss(self.w, self.outputs(out), self.rates, self.settings["reduction"])
        norm_loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # the loop only zeroes the network's gradients
        logs = {"olm_norm_loss": norm_loss.item()}
        logs |= {f"olm_norm_{o}": v for o, v in zip(self.names, norms.mean(dim=1).tolist())}
        return logs | {f"olm_w_{o}": v for o, v in zip(self.names, self.w.tolist())}

    @torch.no_grad()
    def validation_losses(self, context) -> torch.Tensor:
        model, was_training = context.model, context.model.training
        model.eval()
        sums, count = torch.zeros_like(self.rates), 0
        for inputs, labels in context.batches("val", 1.0):
            sums += self.summed_losses(model(inputs), labels)
            count += len(labels)
        model.train(was_training)
        return sums / count

    def on_epoch_end(self, context):
        if self.loss_count == 0:
            return {}
        losses = {"train": self.loss_sums / self.loss_count}
        self._reset_accumulators()
        generalization = self.settings["rule"] == "generalization"
        if generalization:
            losses["val"] = self.validation_losses(context)
        elif self.settings["rule"] != "loss_ratio":
            raise ValueError(f"OLM: unknown rule {self.settings['rule']!r}")
        if self.reference is None:
            self.reference = losses
        if generalization:
            G, C, self.rates = generalization_rates(self.reference["train"], self.reference["val"], losses["train"], losses["val"])
            losses |= {"G": G, "C": C}
        else:
            self.rates = loss_ratio_rates(self.reference["train"], losses["train"])
        self.current = losses
        keys = {"train": "Ltrain", "val": "Lval", "G": "G", "C": "C"}
        logs = {f"olm_r_{o}": v for o, v in zip(self.names, self.rates.tolist())}
        for key, values in losses.items():
            logs |= {f"olm_{keys[key]}_{o}": v for o, v in zip(self.names, values.tolist())}
        return logs

    def state_dict(self):
        return copy.deepcopy({
            "w": self.w.detach(), "optimizer": self.optimizer.state_dict(), "rates": self.rates,
            "reference": self.reference, "current": self.current,
            "loss_sums": self.loss_sums, "loss_count": self.loss_count,
        })

    def load_state_dict(self, state):
        device = self.w.device
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rates, self.loss_sums, self.loss_count = state["rates"].to(device), state["loss_sums"].to(device), state["loss_count"]
        self.reference = None if state["reference"] is None else {k: v.to(device) for k, v in state["reference"].items()}
        self.current = {k: v.to(device) for k, v in state["current"].items()}
