"""AGM (Li et al., ICCV 2023; reference code Lingy12/AGM_ICCV2023) against values computed by hand."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mmbalance.balancers import agm
from mmbalance.balancers.agm import (
    AGM, agm_coefficients, agm_ratios, agm_scores, clip_if_large, running_mean, shapley_logits,
)
from mmbalance.models.multimodal import build_model

A, V = frozenset({"audio"}), frozenset({"video"})
AV = A | V


def settings(**overrides):
    return {"alpha": 1.5, "start_epoch": 0, "end_epoch": 9, "exponent_cap": 10.0, "clip_threshold": 1.0, "clip_max_norm": 1.0} | overrides


def test_worked_example():
    # A hand-worked example: 2 samples, 3 classes, labels [0, 2].
    labels = torch.tensor([0, 2])
    outputs = {
        AV: torch.tensor([[2.0, 0, 0], [0, 0.5, 1.5]]),
        A: torch.tensor([[1.5, 0, 0], [0, 0, 1]]),  # video zeroed
        V: torch.tensor([[0.5, 0, 0], [0, 0.5, 0.5]]),  # audio zeroed
    }
    phi = shapley_logits(outputs, ["audio", "video"])
    assert torch.equal(phi["audio"] + phi["video"], outputs[AV])
    assert torch.equal(phi["audio"], outputs[A]) and torch.equal(phi["video"], outputs[V])
    scores = agm_scores(phi, labels)
    assert scores.tolist() == pytest.approx([0.460213, 0.876198], abs=1e-6)
    ratios = agm_ratios(scores)
    assert ratios.tolist() == pytest.approx([1.515864, 0.659690], abs=1e-6)
    mean_ratios = agm_ratios(torch.tensor([0.9, 1.0], dtype=torch.float64))
    assert mean_ratios.tolist() == pytest.approx([1.105171, 0.904837], abs=1e-6)
    assert agm_coefficients(ratios, mean_ratios, 1.5).tolist() == pytest.approx([0.540079, 1.444440], abs=1e-6)
    # 11th iteration: 0.9 * 10/11 + 0.460213/11.
    mean = running_mean(torch.tensor([0.9, 1.0], dtype=torch.float64), scores, 11)
    assert mean[0].item() == pytest.approx(0.860019, abs=1e-6)


def test_own_example_and_sign():
    # One sample, 2 classes, label 0. F(a) = [0, 0], F(v) = F(av) = [ln 3, 0]:
    # phi_a = (F(a) + F(av) - F(v)) / 2 = [0, 0] -> s_a = ln 2 = 0.693147;
    # phi_v = (F(v) + F(av) - F(a)) / 2 = [ln 3, 0] -> p = 3/4, s_v = ln(4/3) = 0.287682.
    # r_a = exp(s_v - s_a) = (4/3) / 2 = 2/3, r_v = 3/2. S_bar = (0.5, 0.5) -> r_bar = (1, 1).
    # alpha 2: k_a = exp(2 (1 - 2/3)) = exp(2/3) = 1.947734, k_v = exp(2 (1 - 3/2)) = exp(-1) = 0.367879.
    # Video is more dominant than its history (r_v > r_bar_v) and is damped.
    # Running mean at t = 2: 0.5 / 2 + ln 2 / 2 = 0.596574.
    ln3 = math.log(3)
    outputs = {A: torch.tensor([[0.0, 0.0]]), V: torch.tensor([[ln3, 0.0]]), AV: torch.tensor([[ln3, 0.0]])}
    scores = agm_scores(shapley_logits(outputs, ["audio", "video"]), torch.tensor([0]))
    assert scores.tolist() == pytest.approx([0.693147, 0.287682], abs=1e-6)
    ratios = agm_ratios(scores)
    assert ratios.tolist() == pytest.approx([2 / 3, 3 / 2], abs=1e-6)
    mean_ratios = agm_ratios(torch.tensor([0.5, 0.5], dtype=torch.float64))
    k = agm_coefficients(ratios, mean_ratios, 2.0)
    assert k.tolist() == pytest.approx([1.947734, 0.367879], abs=1e-6)
    assert k[1] < 1 < k[0]
    assert running_mean(torch.tensor([0.5, 0.5], dtype=torch.float64), scores, 2)[0].item() == pytest.approx(0.596574, abs=1e-6)


def test_three_modality_ratios():
    ratios = agm_ratios(torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    assert ratios.tolist() == pytest.approx([2.117000, 1.0, 0.472367], abs=1e-6)


def test_shapley_three_modalities():
    # Weights 1/3 (|S| = 0), 1/6 (|S| = 1), 1/3 (|S| = 2). With F(a, v, t) = 1, 2, 4;
    # F(av, at, vt) = 5, 7, 10; F(avt) = 16:
    # phi_a = 1/3 * 1 + 1/6 * ((5 - 2) + (7 - 4)) + 1/3 * (16 - 10) = 10/3
    # phi_v = 1/3 * 2 + 1/6 * ((5 - 1) + (10 - 4)) + 1/3 * (16 - 7) = 16/3
    # phi_t = 1/3 * 4 + 1/6 * ((7 - 1) + (10 - 2)) + 1/3 * (16 - 5) = 22/3, sum 16 = F(avt).
    values = {"a": 1, "v": 2, "t": 4, "av": 5, "at": 7, "vt": 10, "avt": 16}
    outputs = {frozenset(key): torch.tensor([[float(v)]], dtype=torch.float64) for key, v in values.items()}
    phi = shapley_logits(outputs, ["a", "v", "t"])
    assert [phi[m].item() for m in "avt"] == pytest.approx([10 / 3, 16 / 3, 22 / 3])
    assert sum(phi.values()).item() == pytest.approx(16.0)
    # An additive game gives each modality its own contribution.
    additive = {s: torch.tensor([[sum({"a": 1.0, "v": 10.0, "t": 100.0}[m] for m in s)]]) for s in outputs}
    assert [shapley_logits(additive, ["a", "v", "t"])[m].item() for m in "avt"] == pytest.approx([1.0, 10.0, 100.0])


def test_exponent_cap():
    ratios, mean_ratios = torch.tensor([0.0, 20.0]), torch.tensor([20.0, 0.0])
    assert agm_coefficients(ratios, mean_ratios, 1.0).tolist() == pytest.approx([math.exp(10), math.exp(-20)])
    assert agm_coefficients(ratios, mean_ratios, 1.0, cap=None)[0].item() == pytest.approx(math.exp(20), rel=1e-6)


def test_clipping_only_when_the_watched_gradient_leaves_the_threshold():
    watched, other = torch.zeros(2, 2, requires_grad=True), torch.zeros(3, requires_grad=True)
    watched.grad, other.grad = torch.full((2, 2), 0.5), torch.full((3,), 5.0)
    assert not clip_if_large([watched], [watched, other], 1.0, 1.0)  # large global norm, small watched grads
    assert torch.equal(other.grad, torch.full((3,), 5.0))
    watched.grad[0, 1] = -1.5
    assert clip_if_large([watched], [watched, other], 1.0, 1.0)
    norm = torch.cat([watched.grad.flatten(), other.grad]).norm().item()
    assert norm == pytest.approx(1.0, abs=1e-5)


def tiny_model():
    torch.manual_seed(0)
    return build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "late_linear", 3, heads_are_probes=True)


def tiny_batch(seed=1, dtype=torch.float32):
    torch.manual_seed(seed)
    inputs = {"audio": torch.randn(4, 33, 17, dtype=dtype), "video": torch.randn(4, 2, 3, 16, 16, dtype=dtype)}
    return inputs, torch.tensor([0, 1, 2, 0])


def gradients(model, out, labels):
    model.zero_grad(set_to_none=True)
    (F.cross_entropy(out.fused, labels) + out.probe_loss(labels)).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_scores_come_from_zero_masked_eval_passes():
    model, twin = tiny_model(), tiny_model()
    inputs, labels = tiny_batch()
    balancer = AGM(settings())
    balancer.setup(model)
    balancer.forward(model, inputs, labels, epoch=0)
    assert model.training  # train mode restored after the padded passes
    # By hand: full pass in train mode, padded passes in eval mode, phi for M = 2.
    full = twin(inputs).fused
    twin.eval()
    f_a = twin({"audio": inputs["audio"], "video": torch.zeros_like(inputs["video"])}).fused
    f_v = twin({"audio": torch.zeros_like(inputs["audio"]), "video": inputs["video"]}).fused
    phi_a, phi_v = (full - f_v + f_a) / 2, (full - f_a + f_v) / 2
    assert balancer.logs["agm_score_audio"] == pytest.approx(F.cross_entropy(phi_a, labels).item(), rel=1e-5)
    assert balancer.logs["agm_score_video"] == pytest.approx(F.cross_entropy(phi_v, labels).item(), rel=1e-5)
    # t = 1: k used S_bar from before the batch (zeros, r_bar = 1); S_bar is now s.
    assert balancer.iteration == 1 and balancer.logs["agm_mean_ratio_audio"] == 1.0
    assert balancer.logs["agm_mean_score_audio"] == balancer.logs["agm_score_audio"]


def test_unit_coefficients_give_joint_gradients():
    # alpha = 0 makes k_a = k_v = 1 exactly. The hooks then send g/2 + g/2 = g into
    # F(av) and g/2 - g/2 = 0 into each padded pass, so those passes add exact zeros
    # to every parameter gradient whatever their BatchNorm mode, and the rest is the
    # joint backward through the same train-mode full pass. All parameters, probes
    # included, agree up to the rounding of phi_a + phi_v vs F(av) (float64 here).
    inputs, labels = tiny_batch(dtype=torch.float64)
    joint_model, agm_model = tiny_model().double(), tiny_model().double()
    expected = gradients(joint_model, joint_model(inputs), labels)
    balancer = AGM(settings(alpha=0.0))
    balancer.setup(agm_model)
    got = gradients(agm_model, balancer.forward(agm_model, inputs, labels, epoch=0), labels)
    assert balancer.logs["coeff_audio"] == balancer.logs["coeff_video"] == 1.0
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-9, atol=1e-12), name


def test_hooks_scale_the_shapley_gradients(monkeypatch):
    # Forced k = (0.5, 2): F(av) gets (k_a + k_v)/2 g, F(a) and F(v) get +-(k_a - k_v)/2 g.
    # The fusion bias enters every pass, so its gradient is (k_a + k_v)/2 = 1.25 times
    # the joint one; the probe heads see the full pass only and are unchanged.
    monkeypatch.setattr(agm, "agm_coefficients", lambda *args: torch.tensor([0.5, 2.0], dtype=torch.float64))
    inputs, labels = tiny_batch()
    joint_model, agm_model = tiny_model(), tiny_model()
    expected = gradients(joint_model, joint_model(inputs), labels)
    balancer = AGM(settings())
    balancer.setup(agm_model)
    got = gradients(agm_model, balancer.forward(agm_model, inputs, labels, epoch=0), labels)
    assert torch.allclose(got["fusion.bias"], 1.25 * expected["fusion.bias"], rtol=1e-4, atol=1e-7)
    assert torch.allclose(got["heads.audio.weight"], expected["heads.audio.weight"], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(got["fusion.blocks.audio.weight"], expected["fusion.blocks.audio.weight"], rtol=1e-3)
    # Outside the window: joint gradients (k = 1), but the running mean still advances.
    # (Train-mode BatchNorm ignores the running statistics the first step updated.)
    got = gradients(agm_model, balancer.forward(agm_model, inputs, labels, epoch=10), labels)
    assert balancer.logs["coeff_audio"] == 1.0 and balancer.iteration == 2
    assert torch.allclose(got["fusion.bias"], expected["fusion.bias"], rtol=1e-4, atol=1e-7)


def test_after_backward_clips_and_logs():
    model = tiny_model()
    inputs, labels = tiny_batch()
    balancer = AGM(settings())
    balancer.setup(model)
    out = balancer.forward(model, inputs, labels, epoch=0)
    gradients(model, out, labels)
    model.fusion.blocks["audio"].weight.grad[0, 0] = 3.0  # outside [-1, 1]
    model.heads["audio"].weight.grad.fill_(7.0)  # a probe: neither counted nor clipped
    logs = balancer.after_backward(model, out, labels, epoch=0)
    assert logs["agm_clipped"] == 1.0
    assert {"coeff_video", "agm_score_audio", "agm_mean_score_video", "agm_ratio_audio", "agm_mean_ratio_video"} <= set(logs)
    trained = [p.grad.flatten() for name, p in model.named_parameters() if not name.startswith("heads.")]
    assert torch.cat(trained).norm().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(model.heads["audio"].weight.grad == 7.0)


def test_state_dict_round_trip_continues_the_running_mean():
    model = tiny_model()
    first = AGM(settings())
    first.setup(model)
    with torch.no_grad():
        first.forward(model, *tiny_batch(seed=0), epoch=0)
        state = first.state_dict()
        twin, fresh_model = copy.deepcopy(model), copy.deepcopy(model)
        resumed, fresh = AGM(settings()), AGM(settings())
        resumed.setup(twin), fresh.setup(fresh_model)
        resumed.load_state_dict(state)
        for balancer, net in [(first, model), (resumed, twin), (fresh, fresh_model)]:
            balancer.forward(net, *tiny_batch(seed=2), epoch=0)
    assert resumed.iteration == first.iteration == 2
    assert torch.equal(resumed.mean_scores, first.mean_scores)
    assert resumed.logs == first.logs
    assert state["iteration"] == 1  # the saved state is a copy, untouched by later steps
    assert fresh.logs["coeff_audio"] != first.logs["coeff_audio"]  # the state matters
