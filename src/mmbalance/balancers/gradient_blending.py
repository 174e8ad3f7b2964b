"""Gradient-Blending, online G-Blend (Wang, Tran & Feiszli, "What Makes Training
Multi-Modal Classification Networks Hard?", CVPR 2020, Sec. 3).

The loss blends one cross-entropy per task, the fused output and every
modality's unimodal head, whose gradients reach the encoders:

    L = w_fused CE(f, y) + sum_m w_m CE(f_m, y),   sum of the w = 1.

The weights come from each task's overfitting and generalisation. With L^T_N
and L^V_N the mean cross-entropy of a task at epoch N on the training rows and
on a held-out set V (the paper's stand-in for the true loss L*), after n more
epochs of training on that task alone:

    O_N     = L^V_N - L^T_N                      (overfitting at epoch N)
    O       = O_{N+n} - O_N                      (overfitting gained in n epochs)
    G       = L^V_N - L^V_{N+n}                  (generalisation gained)
    w_k     = (G_k / O_k^2) / sum_j (G_j / O_j^2)

i.e. each task is weighted by its gain over the square of its overfitting, the
weights that minimise the blend's overfitting-to-generalisation ratio (the
paper's Proposition, with its finite-difference approximation).

Online G-Blend: every `super_epoch` epochs (epoch 0 included), from the
current model, one copy per task (each modality's encoder and head; the whole
network for the fused output) is trained for `super_epoch` epochs on that
task's cross-entropy alone; G and O come from the copy's losses before and
after; the copies are then discarded and the real model trains `super_epoch`
epochs with the new weights. Training the copies costs (M + 1) x super_epoch
epochs (on `train_fraction` of the rows) per re-estimation: the method's price,
with the held-out rows it never trains on. Offline G-Blend, one estimate
from the start, is `super_epoch` >= the run's epochs.

V is a held-out part of the TRAINING split: `holdout_fraction` of each class of
the fold's training rows, drawn once with the run's seed, excluded from the
training batches and seen only here (`Balancer.holdout_fraction`, carved by
mmbalance.train). Never the validation split (it selects the model) nor test.

Reference codes read (third-party re-implementations, not the authors'):
* GeWu-Lab/BalanceBenchmark, `balancemm/trainer/GBlending_trainer.py`, commit
  4c1482fca5aaa8d4278af8e26020daa039e3ccf3: online estimation every
  super_epoch (10 in `configs/trainer_config.yaml`) epochs with a temporary model
  per task, weights |G / O^2| normalised to 1.
* pliang279/MultiBench, `training_structures/gradient_blend.py`, commit
  49f9be224f342de005b7f001281f33df4301eb22: V is the first `v_rate` = 8 % of the
  training set, re-estimation every gb_epoch (20) epochs, copies of each encoder
  and head and of the whole multimodal network, weights |G / O^2| normalised to 1.

Departures (ours, each from at least one of them):
* G and O are the paper's changes between epochs N and N + n. MultiBench's
  default (`delta = False`) uses O = O_{N+n} (negatives set to 1e-4) and
  G = L^V_{N+n} instead; BalanceBenchmark takes its "before" losses after the
  copy's first epoch rather than at the current model, and sums batch losses
  (the training one accumulated while training) rather than averaging.
* V is drawn at random and stratified by class, not MultiBench's first 8 % in
  dataset order; BalanceBenchmark uses its validation loader, which is the test
  split unless the dataset's config sets `validation` (`balancemm/utils/data_utils.py`).
* L^T and L^V are measured in eval mode after the n epochs, both on the same
  parameters (BalanceBenchmark's L^T is the running loss during the epoch).
* a unimodal copy trains the modality's encoder and head on the head's
  cross-entropy (paper, MultiBench); BalanceBenchmark trains the fused output with
  the other modalities zero-padded instead.
* a task whose held-out loss rose (G <= 0) gets weight 0 (`negative_gain: zero`);
  both codes take |G / O^2|, which rewards it (`negative_gain: abs`). If no task
  gained, the previous weights are kept (uniform before the first estimate).
* |O| is floored at `min_overfitting` (1e-4, MultiBench's floor) so that a task
  that did not overfit cannot take all the weight through a division by ~0.
* the copies train with a fresh optimizer of the run's kind and current
  hyperparameters (MultiBench: a fresh optimizer, BalanceBenchmark: one reset to
  its initial state); a context without an optimizer (unit tests) gets SGD at
  lr 0.01. They see the epoch's shuffled training batches in the same order in
  each of their n epochs.
* no MultiBench-style fine-tuning of the fused head after each super-epoch (not
  in the paper).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from mmbalance.balancers.base import Balancer

FUSED = "fused"  # the task name of the fused output; the others are the modalities
FALLBACK_LR = 0.01  # copies' SGD rate when the context carries no optimizer (unit tests only)


def gain_and_overfitting(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    """(L^T, L^V) of a task at epochs N and N + n -> (G, O) = (L^V_N - L^V_{N+n}, O_{N+n} - O_N)."""
    (train_n, holdout_n), (train_nn, holdout_nn) = before, after
    return holdout_n - holdout_nn, (holdout_nn - train_nn) - (holdout_n - train_n)


def blend_weights(gains: dict[str, float], overfits: dict[str, float], min_overfitting: float = 1e-4,
                  negative_gain: str = "zero") -> dict[str, float] | None:
    """w_k proportional to G_k / max(|O_k|, floor)^2, summing to 1; None when no task has a positive score."""
    scores = {}
    for task, gain in gains.items():
        gain = abs(gain) if negative_gain == "abs" else max(gain, 0.0)
        scores[task] = gain / max(abs(overfits[task]), min_overfitting) ** 2
    total = sum(scores.values())
    if not (total > 0 and total < float("inf")):
        return None
    return {task: score / total for task, score in scores.items()}


def blended_loss(fused: torch.Tensor, unimodal: dict[str, torch.Tensor], labels: torch.Tensor,
                 weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """w_fused CE(fused) + sum_m w_m CE(unimodal_m), with the unweighted losses to log."""
    losses = {FUSED: F.cross_entropy(fused, labels)} | {m: F.cross_entropy(logits, labels) for m, logits in unimodal.items()}
    total = sum(weights[task] * loss for task, loss in losses.items())
    return total, {f"loss_{task}": loss.item() for task, loss in losses.items()}


def task_logits(model, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits a task trains: the fused output, or modality m's head on its encoder alone."""
    if task == FUSED:
        return model(inputs).fused
    return model.heads[task](model.encoders[task](inputs[task]))


@torch.no_grad()
def mean_losses(model, batches, tasks: list[str]) -> dict[str, float]:
    """Mean per-sample cross-entropy of each task over `batches`, in eval mode."""
    was_training = model.training
    model.eval()
    sums, count = dict.fromkeys(tasks, 0.0), 0
    for inputs, labels in batches:
        out = model(inputs)
        for task in tasks:
            logits = out.fused if task == FUSED else out.unimodal[task]
            sums[task] += F.cross_entropy(logits, labels, reduction="sum").item()
        count += len(labels)
    model.train(was_training)
    return {task: total / count for task, total in sums.items()}


def fresh_optimizer(template: torch.optim.Optimizer | None, params) -> torch.optim.Optimizer:
    """A new optimizer of the template's kind with its current hyperparameters (lr after scheduling), no state."""
    if template is None:
        return torch.optim.SGD(params, lr=FALLBACK_LR)
    group = template.param_groups[0]
    return type(template)(params, **{key: group[key] for key in template.defaults if key in group})


class GradientBlending(Balancer):
    DESCRIPTION = "Gradient-Blending, online G-Blend: CE of the fused output and of each trained unimodal head, weighted by gain / overfitting^2 on held-out training rows."
    SETTINGS = {
        "super_epoch": {"description": "Epochs between re-estimations, and epochs each task's copy trains per estimate "
                        "(BalanceBenchmark configs/trainer_config.yaml: 10; MultiBench gb_epoch: 20).",
                        "type": "integer", "minimum": 1, "default": 10},
        "holdout_fraction": {"description": "Share of each class of the fold's training rows held out as V, never trained on "
                             "(MultiBench v_rate: 0.08).", "type": "number", "exclusiveMinimum": 0, "maximum": 0.5, "default": 0.08},
        "train_fraction": {"description": "Share of the trained rows the copies train on and L^T is measured on, per estimate "
                           "(1.0: all, as both reference codes; lower it to cut the copies' cost).",
                           "type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1.0},
        "negative_gain": {"description": "A task whose held-out loss rose (G <= 0): zero (weight 0, ours) or abs (|G| / O^2, "
                          "BalanceBenchmark and MultiBench).", "type": "string", "enum": ["zero", "abs"], "default": "zero"},
        "min_overfitting": {"description": "Floor on |O| in G / O^2 (MultiBench floors a negative O at 1e-4).",
                            "type": "number", "exclusiveMinimum": 0, "default": 0.0001},
    }
    SEARCH_SPACE = {"super_epoch": {"low": 5, "high": 20, "type": "int",
                                    "source": "below BalanceBenchmark's 10 to MultiBench's 20"}}
    trains_unimodal_heads = True

    def __init__(self, settings):
        super().__init__(settings)
        self.weights: dict[str, float] = {}

    @classmethod
    def holdout_fraction(cls, settings):
        return settings["holdout_fraction"]

    def setup(self, model):
        if len(model.modalities) < 2:
            raise ValueError("Gradient-Blending needs at least two modalities")
        tasks = [*model.modalities, FUSED]
        self.weights = {task: 1.0 / len(tasks) for task in tasks}  # until the first estimate (epoch 0)

    def on_epoch_start(self, context):
        if context.epoch % self.settings["super_epoch"] != 0:
            return {}
        model, tasks = context.model, list(self.weights)

        def train_batches():
            return context.batches("train", self.settings["train_fraction"])

        def holdout_batches():
            return context.batches("holdout", 1.0)

        train_before, holdout_before = mean_losses(model, train_batches(), tasks), mean_losses(model, holdout_batches(), tasks)
        gains, overfits = {}, {}
        for task in tasks:
            trained = copy.deepcopy(model)
            trained.train()
            optimizer = fresh_optimizer(getattr(context, "optimizer", None), trained.parameters())
            for _ in range(self.settings["super_epoch"]):
                for inputs, labels in train_batches():
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(task_logits(trained, task, inputs), labels).backward()
                    optimizer.step()
            after = (mean_losses(trained, train_batches(), [task])[task], mean_losses(trained, holdout_batches(), [task])[task])
            gains[task], overfits[task] = gain_and_overfitting((train_before[task], holdout_before[task]), after)
            del trained, optimizer
        weights = blend_weights(gains, overfits, self.settings["min_overfitting"], self.settings["negative_gain"])
        if weights is not None:
            self.weights = weights
        logs = {"gb_kept_previous_weights": float(weights is None)}
        for task in tasks:
            logs |= {f"gb_gain_{task}": gains[task], f"gb_overfitting_{task}": overfits[task]}
        return logs

    def loss(self, out, labels, epoch):
        total, logs = blended_loss(out.fused, out.unimodal, labels, self.weights)
        return total, logs | {f"gb_weight_{task}": w for task, w in self.weights.items()}

    def state_dict(self):
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state):
        self.weights = {task: float(w) for task, w in state["weights"].items()}
