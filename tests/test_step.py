"""The one training step (mmbalance.step) shared by the loop, the benchmark and the tests."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmbalance.balancers import build_balancer
from mmbalance.config import validate
from mmbalance.models.multimodal import build_model
from mmbalance.step import NonFiniteLoss, training_step


def tiny():
    torch.manual_seed(0)
    model = build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "late_linear", 3, heads_are_probes=True)
    inputs = {"audio": torch.randn(4, 33, 17), "video": torch.randn(4, 2, 3, 16, 16)}
    return model, inputs, torch.tensor([0, 1, 2, 0])


def test_joint_step_is_sgd_on_fused_cross_entropy_plus_probe_loss():
    model, inputs, labels = tiny()
    balancer = build_balancer("joint", {})
    balancer.setup(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # The same gradient by hand: the objective plus the probes' loss (probes see detached features).
    out = model(inputs)
    expected_loss = F.cross_entropy(out.fused, labels)
    (expected_loss + out.probe_loss(labels)).backward()
    expected = {name: before[name] - 0.1 * p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    result = training_step(model, balancer, torch.optim.SGD(model.parameters(), lr=0.1), inputs, labels, epoch=0)
    assert result.loss == pytest.approx(expected_loss.item())  # the logged loss leaves the probe loss out
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], msg=name)


def test_a_nonfinite_loss_stops_before_any_change_or_is_kept_when_asked():
    model, inputs, labels = tiny()
    inputs["audio"][0, 0, 0] = float("nan")
    balancer = build_balancer("joint", {})
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLoss):
        training_step(model, balancer, optimizer, inputs, labels, epoch=0, stop_on_nonfinite=True)
    assert all(torch.equal(a, p) and p.grad is None for a, p in zip(before, model.parameters()))
    result = training_step(model, balancer, optimizer, inputs, labels, epoch=0)
    assert math.isnan(result.loss)


def test_bf16_runs_the_forward_pass_in_bf16_and_keeps_fp32_weights_and_scores():
    """train.precision bf16: the forward pass and objective under bfloat16 autocast, the
    weights, gradients and OGM-GE's confidence scores in fp32, close to the fp32 step."""
    model, inputs, labels = tiny()
    fp32_model, _, _ = tiny()
    settings = validate({})["methods"]["ogm_ge"]  # the method's defaults
    results = {}
    for precision, m in (("bf16", model), ("fp32", fp32_model)):
        balancer = build_balancer("ogm_ge", settings)
        balancer.setup(m)
        torch.manual_seed(1)  # the same gradient noise
        results[precision] = training_step(m, balancer, torch.optim.SGD(m.parameters(), lr=0.1), inputs, labels, 0, precision=precision)
    bf16, fp32 = results["bf16"], results["fp32"]
    assert all(x.dtype == torch.bfloat16 for x in bf16.out.unimodal.values())  # the heads ran under autocast
    assert all(x.dtype == torch.float32 for x in fp32.out.unimodal.values())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert bf16.loss == pytest.approx(fp32.loss, rel=0.02) and bf16.loss != fp32.loss
    for key, value in fp32.logs.items():
        assert bf16.logs[key] == pytest.approx(value, rel=0.05), key
