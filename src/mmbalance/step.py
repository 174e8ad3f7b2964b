"""The one training step every caller shares: the training loop (mmbalance.train),
the benchmark (mmbalance.bench) and the tests that check a method over a step.

    forward -> loss -> backward -> after_backward -> optimizer step

A balancer may change each stage: `forward` (e.g. masking a modality), `loss`
(its objective), `after_backward` (rescaling or noising gradients before the
step). The probe heads' loss (ModelOutput.probe_loss, zero when the heads are
trained by the objective itself) is added to the backward pass only, so it never
appears in the logged training loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmbalance.models.output import ModelOutput


@dataclass
class StepResult:
    out: ModelOutput  # the forward pass, with its graph freed by backward
    loss: float  # the balancer's objective (no probe loss); may be non-finite
    logs: dict[str, float]  # what the balancer reported from loss and after_backward


def autocast(device: torch.device, precision: str):
    """The forward passes' precision (`train.precision`): bf16 autocast, or plain fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class NonFiniteLoss(ArithmeticError):
    """The objective is NaN or infinite; raised before any gradient or parameter changes."""


def training_step(model, balancer, optimizer, inputs: dict[str, torch.Tensor], labels: torch.Tensor, epoch: int,
                  stop_on_nonfinite: bool = False, precision: str = "fp32") -> StepResult:
    # bf16 autocast covers the forward pass and the objective; backward runs outside it, as
    # torch recommends, and the weights, gradients and optimizer state stay fp32.
    with autocast(labels.device, precision):
        out = balancer.forward(model, inputs, labels, epoch)
        objective, logs = balancer.loss(out, labels, epoch)
    loss = objective.item()
    if stop_on_nonfinite and not math.isfinite(loss):
        raise NonFiniteLoss(loss)
    optimizer.zero_grad(set_to_none=True)
    (objective + out.probe_loss(labels)).backward()
    logs |= balancer.after_backward(model, out, labels, epoch)
    optimizer.step()
    return StepResult(out, loss, logs)
