"""PMR (Fan et al., CVPR 2023) against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmbalance.balancers.base import EpochContext
from mmbalance.balancers.pmr import (
    PMR, class_prototypes, momentum_update, pmr_coefficients, pmr_ratio, prototype_ce, prototype_logits, true_class_score,
)
from mmbalance.models.multimodal import ModelOutput, build_model

SETTINGS = {"alpha": 2.0, "momentum": 0.0, "momentum_from": "reference", "subset_fraction": 0.1, "start_epoch": 0, "end_epoch": 70, "feature_norm": "none"}

# A hand-worked example: 3 classes, labels [0, 1], the same prototypes for both modalities.
PROTOS = torch.tensor([[1.0, 0], [0, 1], [1, 1]], dtype=torch.float64)
LABELS = torch.tensor([0, 1])
Z_AUDIO = torch.tensor([[1.0, 0], [0, 2]], dtype=torch.float64)
Z_VIDEO = torch.tensor([[0.5, 0.5], [0, 0]], dtype=torch.float64)


def scores_and_rho(q_audio, q_video, labels):
    scores = torch.stack([true_class_score(q_audio, labels), true_class_score(q_video, labels)])
    return scores, pmr_ratio(scores)


def test_worked_example():
    q_a, q_v = prototype_logits(Z_AUDIO, PROTOS), prototype_logits(Z_VIDEO, PROTOS)
    assert (-q_a).flatten().tolist() == pytest.approx([0, 1.414214, 1, 2.236068, 1, 1.414214], abs=1e-6)
    assert q_a.softmax(1).gather(1, LABELS[:, None]).flatten().tolist() == pytest.approx([0.620734, 0.512457], abs=1e-6)
    assert q_v.softmax(1).gather(1, LABELS[:, None]).flatten().tolist() == pytest.approx([0.333333, 0.375818], abs=1e-6)
    _, rho = scores_and_rho(q_a, q_v, LABELS)
    assert rho[0].item() == pytest.approx(1.597952, abs=1e-6)
    beta, lam = pmr_coefficients(rho, 2.0).tolist()
    assert (beta, lam) == (0.0, 2.0)  # audio ahead: the constant alpha goes to video
    assert prototype_ce(q_a, LABELS).item() == pytest.approx(0.572696, abs=1e-6)
    assert prototype_ce(q_v, LABELS).item() == pytest.approx(1.038631, abs=1e-6)
    assert momentum_update(torch.tensor([3.0, -1]), torch.tensor([1.0, 1]), 0.2).tolist() == pytest.approx([2.6, -0.6])


def test_other_numbers_video_ahead():
    # Prototypes [[0,0],[3,4]], label 0. Audio z = [3,0]: d = [3, 4], p = 1/(1+e^-1) = 0.731059,
    # PCE = ln(1+e^-1) = 0.313262. Video z = [0,0]: d = [0, 5], p = 1/(1+e^-5) = 0.993307,
    # PCE = ln(1+e^-5) = 0.006715. rho_a = (1+e^-5)/(1+e^-1) = 0.735984 < 1 -> beta = alpha.
    protos, labels = torch.tensor([[0.0, 0], [3, 4]], dtype=torch.float64), torch.tensor([0])
    q_a = prototype_logits(torch.tensor([[3.0, 0]], dtype=torch.float64), protos)
    q_v = prototype_logits(torch.tensor([[0.0, 0]], dtype=torch.float64), protos)
    assert (-q_a).flatten().tolist() == pytest.approx([3, 4])
    scores, rho = scores_and_rho(q_a, q_v, labels)
    assert scores.tolist() == pytest.approx([0.731059, 0.993307], abs=1e-6)
    assert rho[0].item() == pytest.approx(0.735984, abs=1e-6)
    assert pmr_coefficients(rho, 1.5).tolist() == [1.5, 0.0]
    assert prototype_ce(q_a, labels).item() == pytest.approx(0.313262, abs=1e-6)
    assert prototype_ce(q_v, labels).item() == pytest.approx(0.006715, abs=1e-6)


def test_coefficient_switch_and_tie():
    assert pmr_coefficients(pmr_ratio(torch.tensor([3.0, 2.0])), 2.0).tolist() == [0.0, 2.0]
    assert pmr_coefficients(pmr_ratio(torch.tensor([2.0, 3.0])), 2.0).tolist() == [2.0, 0.0]
    assert pmr_coefficients(pmr_ratio(torch.tensor([2.5, 2.5])), 2.0).tolist() == [0.0, 0.0]
    # M = 3: rho_m = S_m / max of the others; every modality below the best gets alpha.
    rho = pmr_ratio(torch.tensor([4.0, 2.0, 1.0]))
    assert rho.tolist() == pytest.approx([2.0, 0.5, 0.25])
    assert pmr_coefficients(rho, 1.0).tolist() == [0.0, 1.0, 1.0]


def test_balancer_loss_worked_example_and_window():
    balancer = PMR(SETTINGS | {"end_epoch": 3})
    balancer.prototypes = {m: (PROTOS, torch.ones(3, dtype=torch.bool)) for m in ("audio", "video")}
    fused = torch.tensor([[1.0, 0, 0], [0, 0, 2]], dtype=torch.float64)
    out = ModelOutput(fused, {}, {"audio": Z_AUDIO, "video": Z_VIDEO}, None, True)
    total, logs = balancer.loss(out, LABELS, epoch=3)
    ce = F.cross_entropy(fused, LABELS).item()
    assert total.item() == pytest.approx(ce + 2.0 * 1.038631, abs=1e-6)
    assert (logs["pmr_beta"], logs["pmr_lambda"]) == (0.0, 2.0)
    assert logs["pmr_rho_audio"] == pytest.approx(1.597952, abs=1e-6)
    # Video: sample 1 is a three-way tie (argmax takes the first, its label 0); sample 2 -> class 0, wrong.
    assert (logs["proto_acc_audio"], logs["proto_acc_video"]) == (1.0, 0.5)
    total, _ = balancer.loss(out, LABELS, epoch=4)
    assert total.item() == ce  # outside the window: plain CE(fused)


def test_absent_class_keeps_previous_prototype_and_never_nan():
    features = torch.tensor([[1.0, 2], [3, 4], [5, 6]])
    protos, valid = class_prototypes(features, torch.tensor([0, 0, 2]), 3)
    assert protos.tolist() == [[2, 3], [0, 0], [5, 6]] and valid.tolist() == [True, False, True]
    # The next subset has no class 2: its previous prototype is kept; class 1 is now seen.
    protos, valid = class_prototypes(torch.tensor([[0.0, 0], [4, 4]]), torch.tensor([0, 1]), 3, (protos, valid))
    assert protos.tolist() == [[0, 0], [4, 4], [5, 6]] and valid.all()
    # Class 1 still unknown: its logit is -inf, a sample of class 1 is left out, all finite.
    z = torch.tensor([[1.0, 1], [2, 2]], requires_grad=True)
    valid = torch.tensor([True, False, True])
    logits = prototype_logits(z, torch.tensor([[2.0, 3], [0, 0], [5, 6]]), valid)
    assert torch.isinf(logits[:, 1]).all() and not logits.isnan().any()
    labels = torch.tensor([0, 1])
    loss = prototype_ce(logits, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits[:1, [0, 2]], labels[:1]).item())
    loss.backward()
    assert torch.isfinite(z.grad).all() and true_class_score(logits, labels).isfinite()
    assert prototype_ce(logits[1:], labels[1:]).item() == 0.0  # nobody known: no term


def tiny_setup(momentum=0.0, feature_norm="none"):
    torch.manual_seed(0)
    model = build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "late_linear", 3, heads_are_probes=True)
    inputs = {"audio": torch.randn(6, 33, 17), "video": torch.randn(6, 2, 3, 32, 32)}
    balancer = PMR(SETTINGS | {"momentum": momentum, "feature_norm": feature_norm})
    balancer.setup(model)
    return model, balancer, inputs


def context(model, inputs, labels, calls, epoch=0):
    def batches(split, fraction):
        calls.append((split, fraction))
        yield {m: x[:3] for m, x in inputs.items()}, labels[:3]
        yield {m: x[3:] for m, x in inputs.items()}, labels[3:]
    return EpochContext(epoch, model, batches)


def test_on_epoch_start_on_a_tiny_model():
    model, balancer, inputs = tiny_setup(feature_norm="l2")
    model.train()
    calls, labels = [], torch.tensor([0, 1, 0, 1, 0, 1])  # class 2 absent
    logs = balancer.on_epoch_start(context(model, inputs, labels, calls))
    assert calls == [("train", 0.1)] and model.training and logs == {"pmr_absent_classes": 1.0}
    for m in ("audio", "video"):
        protos, valid = balancer.prototypes[m]
        assert protos.shape == (3, model.encoders[m].feature_dim) and valid.tolist() == [True, True, False]
        assert torch.isfinite(protos).all()
        assert protos[0].norm().item() < 1 + 1e-6  # mean of unit vectors
    out = model(inputs)
    total, logs = balancer.loss(out, torch.tensor([0, 1, 2, 0, 1, 2]), epoch=0)
    assert torch.isfinite(total) and all(math.isfinite(v) for v in logs.values())
    total.backward()
    restored = PMR(SETTINGS)
    restored.load_state_dict(balancer.state_dict())
    for m in ("audio", "video"):
        assert all(torch.equal(a, b) for a, b in zip(restored.prototypes[m], balancer.prototypes[m]))


def test_on_epoch_start_momentum_blends_with_the_previous_prototypes():
    model, balancer, inputs = tiny_setup(momentum=0.2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    old = {m: (torch.ones(3, model.encoders[m].feature_dim), torch.tensor([True, True, False])) for m in ("audio", "video")}
    balancer.load_state_dict({"prototypes": {m: {"prototypes": p, "valid": v} for m, (p, v) in old.items()}})
    balancer.on_epoch_start(context(model, inputs, labels, [], epoch=2))
    model.eval()
    with torch.no_grad():
        z = model(inputs).features
    for m in ("audio", "video"):
        means = torch.stack([z[m][labels == k].mean(0) for k in range(3)])
        protos, valid = balancer.prototypes[m]
        assert torch.allclose(protos[:2], 0.8 * means[:2] + 0.2, atol=1e-6)
        assert torch.allclose(protos[2], means[2], atol=1e-6)  # no old prototype: the new mean
        assert valid.all()


@pytest.mark.parametrize("momentum_from, blended_epochs", [("reference", [2, 3]), ("epoch_1", [1, 2, 3])])
def test_momentum_starts_blending_when_the_reference_does(momentum_from, blended_epochs):
    """Official main_Prototype_grad.py: prototypes recomputed after epoch e blend only if e > 0,
    so the ones used in epoch 1 are fresh means; BalanceBenchmark and MLB blend from epoch 1."""
    model, balancer, inputs = tiny_setup(momentum=0.5)
    balancer.settings = balancer.settings | {"momentum_from": momentum_from}
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    model.eval()
    with torch.no_grad():
        means = torch.stack([model(inputs).features["audio"][labels == k].mean(0) for k in range(3)])
    blended = []
    for epoch in range(4):
        old = torch.full_like(means, 7.0)
        state = {m: {"prototypes": old.clone(), "valid": torch.ones(3, dtype=torch.bool)} for m in ("audio", "video")}
        balancer.load_state_dict({"prototypes": state} if epoch else {"prototypes": {}})
        balancer.on_epoch_start(context(model, inputs, labels, [], epoch=epoch))
        protos = balancer.prototypes["audio"][0]
        if torch.allclose(protos, 0.5 * means + 3.5, atol=1e-5):
            blended.append(epoch)
        else:
            assert torch.allclose(protos, means, atol=1e-5), epoch
    assert blended == blended_epochs
