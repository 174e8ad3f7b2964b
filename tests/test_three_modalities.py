"""Every method on a 3-modality toy model (the methods are written for M >= 2
where their equations allow it): one full step, with coefficients for each modality."""

import math

import pytest
import torch
from torch import nn

from mmbalance.balancers import build_balancer
from mmbalance.balancers.base import EpochContext
from mmbalance.models.multimodal import MultimodalModel
from mmbalance.step import training_step

from conftest import default_config

MODALITIES = ("a", "b", "c")
CLASSES = 4


class ToyEncoder(nn.Sequential):
    def __init__(self, size: int, feature_dim: int = 8):
        super().__init__(nn.Linear(size, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU())
        self.feature_dim = feature_dim


def toy_batch(seed: int, n: int = 12):
    generator = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, 5 + i, generator=generator) for i, m in enumerate(MODALITIES)}
    return inputs, torch.arange(n) % CLASSES


# Toy encoders have no conv layers: modulate whole encoders.
SETTINGS = {
    "ogm": {"parameter_policy": "encoder"},
    "ogm_ge": {"parameter_policy": "encoder"},
    "mlb": {"weights": {}},
    "mslr": {"initial_rates": {"a": 0.8, "b": 1.0, "c": 1.2}, "memory": 1},
    "olm": {},
    "agm": {},
    "umt": {},  # teacher_models: written per test by toy_teachers
    "modality_drop": {"modality": "a"},
    "gradient_blending": {"super_epoch": 1},
    "gradnorm": {},
    "pmr": {"subset_fraction": 1.0},
    "mmcosine": {},
    "multi_loss": {"weights": {}},
    "joint": {},
}
COEFFICIENT_METHODS = {"ogm", "ogm_ge", "mlb", "mslr", "agm"}


def toy_teachers(folder) -> dict[str, str]:
    """UMT's teachers: a unimodal toy model per modality, saved as train.write_outputs saves model.pt."""
    paths = {}
    for i, m in enumerate(MODALITIES):
        paths[m] = str(folder / f"{m}_only.pt")
        torch.save(MultimodalModel({m: ToyEncoder(5 + i)}, "late_linear", CLASSES, heads_are_probes=True).state_dict(), paths[m])
    return paths


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_one_step_with_three_modalities(method, tmp_path):
    torch.manual_seed(0)
    settings = default_config()["methods"][method] | SETTINGS[method]
    balancer = build_balancer(method, settings)
    encoders = {m: ToyEncoder(5 + i) for i, m in enumerate(MODALITIES)}
    model = MultimodalModel(encoders, "late_linear", CLASSES, heads_are_probes=not balancer.trains_unimodal_heads)
    if method == "umt":
        balancer.settings = balancer.settings | {"teacher_models": toy_teachers(tmp_path)}
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = lambda split, fraction: iter([toy_batch(1), toy_batch(2)])
    context = EpochContext(0, model, batches)
    balancer.on_epoch_start(context)

    inputs, labels = toy_batch(0)
    result = training_step(model, balancer, optimizer, inputs, labels, 0)
    logs = result.logs
    context.metrics = {f"val_acc_{m}": 0.5 for m in MODALITIES}
    logs |= balancer.on_epoch_end(context)

    assert math.isfinite(result.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(value == value for value in logs.values()), logs  # no NaN
    if method in COEFFICIENT_METHODS:
        assert {f"coeff_{m}" for m in MODALITIES} <= set(logs)
