"""The balancer interface: the points where the training loop calls a method.

The loop in `mmbalance.train` runs, for every epoch,

    balancer.on_epoch_start(context)
    for inputs, labels in training batches:      # mmbalance.step.training_step:
        out = balancer.forward(model, inputs, labels, epoch)
        objective, logs = balancer.loss(out, labels, epoch)
        (objective + out.probe_loss(labels)).backward()
        logs |= balancer.after_backward(model, out, labels, epoch)
        optimizer.step()
    (validation and test predictions)
    balancer.on_epoch_end(context)

A method overrides only the points it needs; this class is Joint training.
It also declares, as class attributes, what the configuration and the grid
need to know: `DESCRIPTION`, `SETTINGS` (the JSON-schema properties of its
settings, each with a default and a description naming the default's source)
and `needs(settings)` (what it requires of a fusion). The config schema's
`methods.<name>` block is built from them (mmbalance.config).
Anything a method remembers between steps goes in `state_dict()`, which the
checkpoint saves, so a resumed run continues exactly. Hooks return the values
to log (floats by name): they land in the history and MLflow as `balance/<name>`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from mmbalance.models.output import ModelOutput

if TYPE_CHECKING:  # the model's encoders import torchvision: not needed to read a method's settings
    from mmbalance.models.multimodal import MultimodalModel

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


@dataclass
class EpochContext:
    """What the epoch hooks see. `batches(split, fraction)` yields (inputs,
    labels) over a shuffled `fraction` of a split ("train", "val", and "holdout"
    when the method holds rows out, see `Balancer.holdout_fraction`); the shuffle
    depends only on the run's seed and the epoch, so a resumed run sees the same
    batches."""

    epoch: int
    model: MultimodalModel
    batches: Callable[[str, float], Iterator[Batch]]
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch's results so far
    optimizer: torch.optim.Optimizer | None = None  # the run's, to copy its kind and settings (never to step it)


class Balancer:
    #: One line for the schema and the docs.
    DESCRIPTION: ClassVar[str] = "Cross-entropy on the fused logits; unimodal accuracy from probes."
    #: JSON-schema `properties` of the method's settings (see the helpers below).
    SETTINGS: ClassVar[dict] = {}
    #: The ranges the equal-budget search (`tune` stage) draws settings from: name (a key of
    #: SETTINGS, dotted for nested keys) -> {low, high, log, type, source}.
    SEARCH_SPACE: ClassVar[dict] = {}
    #: Printed with an incompatibility, to say how to make the cell possible.
    NEEDS_HINT: ClassVar[str] = ""
    #: Restrict the model to these modalities (unimodal baselines); None = all.
    modalities: tuple[str, ...] | None = None
    #: True when the method's loss trains the unimodal heads into the encoders;
    #: otherwise the heads are probes on detached features.
    trains_unimodal_heads = False

    def __init__(self, settings: dict):
        self.settings = settings

    @classmethod
    def needs(cls, settings: dict) -> set[str]:
        """What the method needs from a fusion, with these settings (e.g. {"decomposition"})."""
        return set()

    @classmethod
    def holdout_fraction(cls, settings: dict) -> float:
        """Share of the fold's training rows (of each class) the loop holds out for this
        method: never trained on, seen only through `context.batches("holdout", ...)`.
        0 for every method but those that estimate something on unseen training data."""
        return 0.0

    @classmethod
    def settings_schema(cls) -> dict:
        """The JSON schema of `methods.<name>`: every key typed and defaulted, no other key."""
        return {"description": cls.DESCRIPTION, "type": "object", "additionalProperties": False, "default": {}, "properties": cls.SETTINGS}

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
    """Per-sample softmax probability of the true class, detached, in fp32 (bf16 autocast
    leaves logits in bf16, whose 3 significant digits would blur ratios near 1)."""
    return logits.detach().float().softmax(dim=1).gather(1, labels[:, None])[:, 0]


def scale_gradients(params: list[torch.nn.Parameter], coefficient: float) -> None:
    for param in params:
        if param.grad is not None:
            param.grad.mul_(coefficient)


# Schema fragments shared by several methods' SETTINGS.
PARAMETER_POLICIES = ["encoder_conv_weights", "encoder", "encoder_fusion_block", "encoder_head_fusion_block"]


def parameter_policy(default: str) -> dict:
    return {
        "description": "Which parameters are modality m's: encoder_conv_weights (official OGM), encoder (whole encoder incl. "
        "BatchNorm), encoder_fusion_block (the encoder and its block of the fusion layer: MSLR in the AGM repository), "
        "encoder_head_fusion_block (official MLB).",
        "type": "string",
        "enum": PARAMETER_POLICIES,
        "default": default,
    }


UNIMODAL_WEIGHTS = {
    "description": "Weight w_m of each unimodal cross-entropy (MLB uses 1 for all).",
    "type": "object",
    "additionalProperties": False,
    "default": {},
    "properties": {m: {"type": "number", "minimum": 0, "default": 1.0} for m in ("audio", "video")},
}


def epoch_window(start: int, end: int, what: str, source: str) -> dict:
    """`start_epoch` and `end_epoch` (both inclusive) of a method's modulation window."""
    return {
        "start_epoch": {"description": f"First epoch of {what} (inclusive).", "type": "integer", "minimum": 0, "default": start},
        "end_epoch": {"description": f"Last epoch of {what} (inclusive; {source}).", "type": "integer", "minimum": 0, "default": end},
    }
