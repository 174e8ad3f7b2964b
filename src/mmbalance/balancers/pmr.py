"""PMR, Prototypical Modal Rebalance (Fan et al., CVPR 2023; reference code
fanyunfeng-bit/Modal-Imbalance-PMR, `main_Prototype_grad.py`).

This is "PMR (released code, no PER)": the released `main_Prototype_grad.py`
has no prototype entropy regularisation, so neither do we. Before every epoch
the class prototypes c_k^m (mean feature of class k, modality m) are recomputed
in eval mode, without gradients, on a shuffled subset of the training set, with
momentum c <- (1 - mu) c_new + mu c_old. With prototype logits
q_m = -||z_m - c^m||_2 (Euclidean, not squared) and S_m the batch sum of
softmax(q_m)[y], the loss inside the window is

    L = CE(fused, y) + beta * CE(q_audio, y) + lambda * CE(q_video, y),
    rho_a = S_a / S_v:  rho_a > 1 -> beta = 0, lambda = alpha;  rho_a < 1 ->
    beta = alpha, lambda = 0;  rho_a = 1 -> both 0,

i.e. the constant alpha is applied to the weaker modality only.

M modalities (not in the official code): rho_m = S_m / max_{k != m} S_k and
modality m gets alpha * PCE_m when rho_m < 1, i.e. every modality below the
best one is pulled to its prototypes; for M = 2 this is exactly the rule above.

Guards the official code lacks: a class absent from the subset keeps its
previous prototype, or is marked invalid (logit -inf, and samples of that class
are left out of the PCE) until it is seen; no division by zero, no NaN.

Settings (defaults from the official run scripts, the others' values for comparison):
* alpha: 2.0, official CREMA-D concat/sum scripts (MLB 1.75, BalanceBenchmark 0.6);
* momentum: 0.0, most official scripts (argparse default 0.2, BalanceBenchmark 0.5);
* momentum_from: when blending starts, which matters only for momentum > 0. "reference"
  (default): the official code recomputes the prototypes after each training epoch e
  and blends only when e > 0, so the prototypes of epoch 1 are still fresh means and
  the first blended ones are used in epoch 2 (`calculate_prototype(..., epoch)` in
  `main_Prototype_grad.py`); "epoch_1": blend whenever previous prototypes exist,
  i.e. from epoch 1, as BalanceBenchmark and the MLB repository do;
* subset_fraction: 0.1, the official first 10 % of the shuffled train loader;
* start_epoch, end_epoch: 0, 70, official `modulation_starts/ends` in the scripts;
* feature_norm: "none" (official) or "l2": our robustness option, features
  L2-normalised before prototypes and distances, so that large unnormalised
  distances cannot saturate the softmax (MLB uses a non-affine BatchNorm instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmbalance.balancers.base import Balancer, epoch_window


def class_prototypes(features, labels, num_classes, previous=None):
    """Class means (C, d) and validity (C,). A class with no sample keeps
    `previous` = (prototypes, valid) if given, else zeros marked invalid."""
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    present = counts > 0
    means = sums / counts.clamp_min(1)[:, None]  # absent rows are 0 / 1, never 0 / 0
    if previous is None:
        return means, present
    old, old_valid = previous[0].to(means), previous[1].to(present.device)
    return torch.where(present[:, None], means, old), present | old_valid


def momentum_update(new, old, mu):
    return (1 - mu) * new + mu * old


def prototype_logits(z, prototypes, valid=None):
    """-Euclidean distances (B, C); invalid prototypes get -inf."""
    # The exact (non-matmul) mode: tiny C, and no cancellation error near zero.
    logits = -torch.cdist(z, prototypes.to(z), compute_mode="donot_use_mm_for_euclid_dist")
    if valid is not None:
        logits = logits.masked_fill(~valid.to(z.device), float("-inf"))
    return logits


def prototype_ce(logits, labels):
    """CE over the samples whose class has a prototype (0 if none has)."""
    known = torch.isfinite(logits.gather(1, labels[:, None])[:, 0])
    if not known.any():
        return logits.new_zeros(())
    return F.cross_entropy(logits[known], labels[known])


def true_class_score(logits, labels):
    """S_m: batch sum of softmax(q_m)[y], detached (0 for unknown classes)."""
    return logits.detach().softmax(dim=1).gather(1, labels[:, None]).sum()


def pmr_ratio(scores):
    """scores (M,) -> rho (M,), rho_m = S_m / max_{k != m} S_k (rho_a = S_a / S_v for M = 2)."""
    others = torch.stack([torch.cat([scores[:m], scores[m + 1 :]]).max() for m in range(len(scores))])
    return scores / others.clamp_min(torch.finfo(scores.dtype).tiny)


def pmr_coefficients(rho, alpha):
    """rho (M,) -> PCE weights (M,): alpha for every modality behind (rho < 1),
    else 0. For [audio, video] this unpacks as (beta, lambda)."""
    return torch.where(rho < 1, torch.full_like(rho, alpha), torch.zeros_like(rho))


class PMR(Balancer):
    DESCRIPTION = "Prototypical Modal Rebalance as released (main_Prototype_grad.py, no PER term): alpha * prototypical CE on the weaker modality."
    SETTINGS = {
        "alpha": {"description": "Weight of the weaker modality's prototypical CE (official CREMA-D concat/sum: 2.0; MLB 1.75).",
                  "type": "number", "minimum": 0, "default": 2.0},
        "momentum": {"description": "Prototype momentum mu, c = (1-mu) c_new + mu c_old (most official scripts: 0.0).",
                     "type": "number", "minimum": 0, "maximum": 1, "default": 0.0},
        "momentum_from": {"description": "reference: the first blended prototypes are used in epoch 2, as the official code does "
                          "(main_Prototype_grad.py blends after epoch e > 0); epoch_1: blend from epoch 1 (BalanceBenchmark, MLB).",
                          "type": "string", "enum": ["reference", "epoch_1"], "default": "reference"},
        "subset_fraction": {"description": "Share of the shuffled training set the prototypes are computed on before every epoch (official: 0.1).",
                            "type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.1},
        **epoch_window(0, 70, "the prototype loss", "official scripts: 70"),
        "feature_norm": {"description": "none (official) or l2: normalise features before prototypes and distances (our robustness option).",
                         "type": "string", "enum": ["none", "l2"], "default": "none"},
    }
    SEARCH_SPACE = {"alpha": {"low": 0.1, "high": 3.0, "log": True, "source": "0.6 (BalanceBenchmark) to 3.0 (official FiLM scripts, MLB's UCF101 config)"}}

    def __init__(self, settings):
        super().__init__(settings)
        self.prototypes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # modality -> (C x d, valid C)

    def setup(self, model):
        if len(model.modalities) < 2:
            raise ValueError("PMR needs at least two modalities")

    def features(self, z):
        return F.normalize(z, dim=1) if self.settings["feature_norm"] == "l2" else z

    @torch.no_grad()
    def on_epoch_start(self, context):
        model, was_training = context.model, context.model.training
        model.eval()  # official: prototypes from eval-mode features (BN running stats)
        feats, labels = {m: [] for m in model.modalities}, []
        for inputs, y in context.batches("train", self.settings["subset_fraction"]):
            out = model(inputs)
            for m in model.modalities:
                feats[m].append(self.features(out.features[m]))
            labels.append(y.to(out.fused.device))
        model.train(was_training)
        labels, num_classes = torch.cat(labels), out.fused.shape[1]
        for m in model.modalities:
            previous = self.prototypes.get(m)
            protos, valid = class_prototypes(torch.cat(feats[m]), labels, num_classes, previous)
            if previous is not None and self.blends(context.epoch):  # absent classes hold old == new, so momentum keeps them
                blended = momentum_update(protos, previous[0].to(protos), self.settings["momentum"])
                protos = torch.where(previous[1].to(valid.device)[:, None], blended, protos)
            self.prototypes[m] = (protos, valid)
        absent = num_classes - int(torch.bincount(labels, minlength=num_classes).gt(0).sum())
        return {"pmr_absent_classes": float(absent)}

    def blends(self, epoch: int) -> bool:
        """Whether the prototypes computed before `epoch` are blended with the previous ones."""
        return epoch >= (2 if self.settings["momentum_from"] == "reference" else 1)

    def loss(self, out, labels, epoch):
        fused = F.cross_entropy(out.fused, labels)
        if not self.prototypes:
            if self.in_window(epoch):
                raise RuntimeError("PMR.loss in its window before on_epoch_start computed prototypes")
            return fused, {"loss_fused": fused.item()}
        modalities = list(out.features)
        logits = {m: prototype_logits(self.features(out.features[m]), *self.prototypes[m]) for m in modalities}
        rho = pmr_ratio(torch.stack([true_class_score(logits[m], labels) for m in modalities]))
        weights = pmr_coefficients(rho, self.settings["alpha"]) if self.in_window(epoch) else torch.zeros_like(rho)
        total = fused
        for m, w in zip(modalities, weights.tolist()):
            if w:  # a zero weight adds nothing, so outside the window the loss is plain CE
                total = total + w * prototype_ce(logits[m], labels)
        names = {"audio": "pmr_beta", "video": "pmr_lambda"}
        logs = {"loss_fused": fused.item()}
        for m, r, w in zip(modalities, rho.tolist(), weights.tolist()):
            logs |= {f"pmr_rho_{m}": r, names.get(m, f"pmr_weight_{m}"): w}
            logs[f"proto_acc_{m}"] = (logits[m].argmax(1) == labels).float().mean().item()
        return total, logs

    def state_dict(self):
        return {"prototypes": {m: {"prototypes": p.clone(), "valid": v.clone()} for m, (p, v) in self.prototypes.items()}}

    def load_state_dict(self, state):
        self.prototypes = {m: (s["prototypes"].clone(), s["valid"].clone()) for m, s in state["prototypes"].items()}
