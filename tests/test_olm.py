"""OLM (Zong et al., IJCAI 2024) against values computed by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F

from mmbalance.balancers.base import EpochContext
from mmbalance.balancers.olm import OLM, generalization_rates, loss_ratio_rates, norm_matching_loss, norm_targets
from mmbalance.models.multimodal import ModelOutput, build_model

SETTINGS = {"coefficient_lr": 1e-3, "rule": "generalization", "reduction": "sum"}
# A hand-worked example, order (v, a, fused).
REF = torch.full((3,), 1.8, dtype=torch.float64)
TRAIN_NOW = torch.tensor([1.2, 0.4, 0.3], dtype=torch.float64)
VAL_NOW = torch.tensor([1.4, 1.0, 0.9], dtype=torch.float64)
R_EXAMPLE = [0.471710, 0.242184, 0.286106]
# One sample whose logits have norms [2, 6, 4] (3-4-5 style vectors).
LOGITS = [torch.tensor([[1.2, 1.6, 0.0]]), torch.tensor([[0.0, 6.0, 0.0]]), torch.tensor([[0.0, 2.4, 3.2]])]


def test_generalization_rates_worked_example():
    G, C, r = generalization_rates(REF, REF, TRAIN_NOW, VAL_NOW)
    assert G.tolist() == pytest.approx([0.4, 0.8, 0.9])
    assert C.tolist() == pytest.approx([0.2, 0.6, 0.6])
    assert r.tolist() == pytest.approx(R_EXAMPLE, abs=1e-6)


def test_generalization_rates_own_case_with_clamp():
    # L(0) = 2 everywhere; Ltrain(t) = [1.0, 1.5, 0.5], Lval(t) = [1.5, 2.2, 1.0]:
    # G = [0.5, -0.2, 1.0] -> clamped [0.5, 1e-6, 1.0]; C = [0.5, 0.7, 0.5];
    # G/C = [1, ~0, 2]; softmax = [e, 1, e^2] / 11.107339 = [0.244728, 0.090031, 0.665241].
    ref = torch.full((3,), 2.0, dtype=torch.float64)
    G, C, r = generalization_rates(ref, ref, torch.tensor([1.0, 1.5, 0.5], dtype=torch.float64), torch.tensor([1.5, 2.2, 1.0], dtype=torch.float64))
    assert G.tolist() == pytest.approx([0.5, -0.2, 1.0])
    assert C.tolist() == pytest.approx([0.5, 0.7, 0.5])
    assert r.tolist() == pytest.approx([0.244728, 0.090031, 0.665241], abs=1e-6)


def test_loss_ratio_variant():
    assert loss_ratio_rates(REF, TRAIN_NOW).tolist() == pytest.approx([1.894737, 0.631579, 0.473684], abs=1e-6)
    # Own case: ratios [1/2, 0.5/1, 1/4] = [0.5, 0.5, 0.25], mean 5/12 -> [1.2, 1.2, 0.6].
    assert loss_ratio_rates(torch.tensor([2.0, 1.0, 4.0]), torch.tensor([1.0, 0.5, 1.0])).tolist() == pytest.approx([1.2, 1.2, 0.6])


@pytest.mark.parametrize(
    "rates, targets, grad",
    [
        (R_EXAMPLE, [1.886839, 0.968735, 1.144426], [2.0, 6.0, 4.0]),  # all n > tau: +||f||
        ([1.894737, 0.631579, 0.473684], [7.578947, 2.526316, 1.894737], [-2.0, 6.0, 4.0]),  # variant: v below target
    ],
)
def test_norm_targets_and_gradient_is_sign_times_norm(rates, targets, grad):
    w = torch.ones(3, requires_grad=True)
    rates = torch.tensor(rates)
    loss, norms = norm_matching_loss(w, LOGITS, rates, "sum")
    assert norms[:, 0].tolist() == pytest.approx([2.0, 6.0, 4.0])
    assert norm_targets(norms, rates)[:, 0].tolist() == pytest.approx(targets, abs=1e-5)
    loss.backward()
    assert w.grad.tolist() == pytest.approx(grad)
    w.grad = None
    norm_matching_loss(w, [f.repeat(4, 1) for f in LOGITS], rates, "mean")[0].backward()
    assert w.grad.tolist() == pytest.approx(grad)  # "mean" divides the 4-sample sum by 4


def tiny_model():
    torch.manual_seed(0)
    return build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "late_linear", 3, heads_are_probes=False)


def tiny_batch(seed=1):
    torch.manual_seed(seed)
    return {"audio": torch.randn(4, 33, 17), "video": torch.randn(4, 2, 3, 32, 32)}, torch.tensor([0, 1, 2, 0])


def test_loss_is_the_sum_of_ces_of_scaled_logits():
    balancer = OLM(SETTINGS)
    balancer.setup(tiny_model())
    torch.manual_seed(2)
    out = ModelOutput(torch.randn(4, 3), {"audio": torch.randn(4, 3), "video": torch.randn(4, 3)}, {}, None, False)
    labels = torch.tensor([0, 1, 2, 0])
    plain = [F.cross_entropy(f, labels, reduction="sum") for f in (out.unimodal["audio"], out.unimodal["video"], out.fused)]
    assert balancer.loss(out, labels, 0)[0].item() == pytest.approx(sum(plain).item(), rel=1e-6)
    with torch.no_grad():
        balancer.w.fill_(2.0)
    doubled = sum(F.cross_entropy(2 * f, labels, reduction="sum") for f in (out.unimodal["audio"], out.unimodal["video"], out.fused))
    assert balancer.loss(out, labels, 0)[0].item() == pytest.approx(doubled.item(), rel=1e-6)
    balancer.settings = SETTINGS | {"reduction": "mean"}
    assert balancer.loss(out, labels, 0)[0].item() == pytest.approx(doubled.item() / 4, rel=1e-6)


def step(balancer, model, epoch, seed=1):
    inputs, labels = tiny_batch(seed)
    out = balancer.forward(model, inputs, labels, epoch)
    objective, _ = balancer.loss(out, labels, epoch)
    model.zero_grad()
    objective.backward()
    return out, labels, balancer.after_backward(model, out, labels, epoch)


def context(model, epoch):
    return EpochContext(epoch, model, lambda split, fraction: iter([tiny_batch(seed=7)]))


def test_full_step_epoch_rates_and_checkpoint_round_trip():
    model = tiny_model()
    model.train()
    balancer = OLM(SETTINGS)
    balancer.setup(model)
    assert balancer.names == ["audio", "video", "fused"]
    out, labels, logs = step(balancer, model, epoch=0)
    # The w gradient Adam saw (exp_avg = 0.1 g on step 1) is CE's plus L_norm's.
    w = torch.ones(3, requires_grad=True)
    logits = [f.detach() for f in balancer.outputs(out)]
    ce = sum(F.cross_entropy(wo * f, labels, reduction="sum") for wo, f in zip(w, logits))
    (ce + norm_matching_loss(w, logits, torch.full((3,), 1 / 3), "sum")[0]).backward()
    assert (balancer.optimizer.state[balancer.w]["exp_avg"] / 0.1).tolist() == pytest.approx(w.grad.tolist(), rel=1e-4)
    assert not torch.equal(balancer.w.detach(), torch.ones(3)) and balancer.w.grad is None
    assert logs["olm_w_fused"] == balancer.w[2].item()

    logs = balancer.on_epoch_end(context(model, 0))
    assert balancer.reference is not None and model.training
    assert [logs[f"olm_r_{o}"] for o in balancer.names] == pytest.approx([1 / 3] * 3)  # reference vs itself
    assert balancer.loss_count == 0
    reference = copy.deepcopy(balancer.reference)
    assert reference["train"].tolist() == pytest.approx([logs[f"olm_Ltrain_{o}"] for o in balancer.names])

    step(balancer, model, epoch=1, seed=3)
    logs = balancer.on_epoch_end(context(model, 1))
    G, C = (torch.tensor([logs[f"olm_{k}_{o}"] for o in balancer.names]) for k in ("G", "C"))
    expected = torch.softmax(G.clamp(min=1e-6) / C.clamp(min=1e-6), dim=0)
    assert balancer.rates.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert balancer.rates.sum().item() == pytest.approx(1.0)
    assert all(torch.equal(balancer.reference[k], reference[k]) for k in ("train", "val"))  # kept from epoch 0
    assert (balancer.rates - 1 / 3).abs().max().item() > 1e-4

    # Round trip: a fresh balancer loaded from the state makes the same next w update.
    restored = OLM(SETTINGS)
    twin = copy.deepcopy(model)
    restored.setup(twin)
    restored.load_state_dict(copy.deepcopy(balancer.state_dict()))
    fresh, fresh_model = OLM(SETTINGS), copy.deepcopy(model)  # no state: must differ
    fresh.setup(fresh_model)
    fresh.w.data.copy_(balancer.w.detach())  # same w, but no Adam moments and uniform r
    for b, m in ((balancer, model), (restored, twin), (fresh, fresh_model)):
        step(b, m, epoch=2, seed=5)
    assert torch.equal(restored.w.detach(), balancer.w.detach())
    assert not torch.equal(fresh.w.detach(), balancer.w.detach())


def test_loss_ratio_rule_needs_no_validation_batches():
    model = tiny_model()
    balancer = OLM(SETTINGS | {"rule": "loss_ratio"})
    balancer.setup(model)
    step(balancer, model, epoch=0)
    never = EpochContext(0, model, lambda split, fraction: pytest.fail("read validation data"))
    assert balancer.on_epoch_end(never)["olm_r_audio"] == pytest.approx(1.0)  # L(0)/L(0) = 1 for all
