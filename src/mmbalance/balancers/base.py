"""The balancer interface: the points where the training loop calls a method.

The loop in `mmbalance.train` runs, for every epoch,

    balancer.on_epoch_start(context)
    for inputs, labels in training batches:
        out = balancer.forward(model, inputs, labels, epoch)
        objective, logs = balancer.loss(out, labels, epoch)
        (objective + out.probe_loss(labels)).backward()
        logs |= balancer.after_backward(model, out, labels, epoch)
        optimizer.step()
    (validation and test predictions)
    balancer.on_epoch_end(context)

A method overrides only the points it needs; this class is Joint training.
Anything a method remembers between steps goes in `state_dict()`, which the
checkpoint saves, so a resumed run continues exactly. Hooks return the values
to log (floats by name): they land in the history and MLflow as `balance/<name>`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mmbalance.models.multimodal import ModelOutput, MultimodalModel

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


@dataclass
class EpochContext:
    """What the epoch hooks see. `batches(split, fraction)` yields (inputs,
    labels) over a shuffled `fraction` of a split ("train", "val"); the shuffle
    depends only on the run's seed and the epoch, so a resumed run sees the same
    batches."""

    epoch: int
    model: MultimodalModel
    batches: Callable[[str, float], Iterator[Batch]]
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch's results so far


class Balancer:
    #: Restrict the model to these modalities (unimodal baselines); None = all.
    modalities: tuple[str, ...] | None = None
    #: True when the method's loss trains the unimodal heads into the encoders;
    #: otherwise the heads are probes on detached features.
    trains_unimodal_heads = False

    def __init__(self, settings: dict):
        self.settings = settings

    def setup(self, model: MultimodalModel) -> None:
        """Called once with the built model, before any step."""

    def on_epoch_start(self, context: EpochContext) -> dict[str, float]:
        """Before the epoch's first step (PMR recomputes its prototypes)."""
        return {}

    def forward(self, model: MultimodalModel, inputs: dict[str, torch.Tensor], labels: torch.Tensor, epoch: int) -> ModelOutput:
        """The training forward pass (AGM adds zero-masked passes)."""
        return model(inputs)

    def loss(self, out: ModelOutput, labels: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        return F.cross_entropy(out.fused, labels), {}

    def after_backward(self, model: MultimodalModel, out: ModelOutput, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        """Between backward() and optimizer.step(): gradient modulation."""
        return {}

    def on_epoch_end(self, context: EpochContext) -> dict[str, float]:
        """After validation and test predictions; `context.metrics` holds the
        epoch's accuracies (`val_acc_<m>` ...). MSLR and OLM update here."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def in_window(self, epoch: int) -> bool:
        """Modulation window [start_epoch, end_epoch], both ends inclusive as in
        every reference code."""
        return self.settings["start_epoch"] <= epoch <= self.settings["end_epoch"]


def true_class_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample softmax probability of the true class, detached."""
    return logits.detach().softmax(dim=1).gather(1, labels[:, None])[:, 0]


def scale_gradients(params: list[torch.nn.Parameter], coefficient: float) -> None:
    for param in params:
        if param.grad is not None:
            param.grad.mul_(coefficient)
