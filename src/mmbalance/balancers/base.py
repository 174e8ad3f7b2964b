"""The balancer interface: the points where the training loop calls a method.

The loop in `mmbalance.train` runs, for every batch,

    out = model(inputs)
    objective, logs = balancer.loss(out, labels, epoch)
    (objective + out.probe_loss(labels)).backward()
    logs |= balancer.after_backward(model, out, labels, epoch)
    optimizer.step()

and after every epoch `balancer.on_epoch_end(epoch, validation)`. A method
overrides only the points it needs; this class is Joint training. Anything a
method remembers between steps goes in `state_dict()`, which the checkpoint
saves, so a resumed run continues exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmbalance.models.multimodal import ModelOutput, MultimodalModel


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

    def loss(self, out: ModelOutput, labels: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        return F.cross_entropy(out.fused, labels), {}

    def after_backward(self, model: MultimodalModel, out: ModelOutput, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        """Between backward() and optimizer.step(): gradient modulation."""
        return {}

    def on_epoch_end(self, epoch: int, validation: dict[str, float]) -> dict[str, float]:
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
