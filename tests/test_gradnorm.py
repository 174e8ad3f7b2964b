"""GradNorm (mmbalance.balancers.gradnorm) against values computed by hand: the
gradient norms at the shared layers, the rates and targets, L_grad, the update of
the task weights and their renormalisation, and an exact resume from state_dict."""

import copy
import math

import pytest
import torch
from torch import nn

from mmbalance.balancers import build_balancer
from mmbalance.balancers.gradnorm import gradient_norms, gradnorm_loss, last_weight, relative_rates, renormalise
from mmbalance.models.multimodal import MultimodalModel, build_model
from mmbalance.step import training_step

SETTINGS = {"alpha": 1.0, "weight_lr": 0.1}


def test_gradient_norms_hand_case_and_the_graph_survives():
    # u_a = W_a x_a = 6, u_v = W_v x_v = 3; L_a = u_a^2, L_v = u_v^2, L_fused = u_a u_v.
    W_a = nn.Parameter(torch.tensor([[2.0, 0.0]]))
    W_v = nn.Parameter(torch.tensor([[1.0, 1.0]]))
    x_a, x_v = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])
    u_a, u_v = (W_a @ x_a).sum(), (W_v @ x_v).sum()
    losses = [u_a ** 2, u_v ** 2, u_a * u_v]
    norms = gradient_norms(losses, [W_a, W_v])
    # grad L_a = 2 u_a x_a = [36, 48] (0 at W_v); grad L_v = 2 u_v x_v = [6, 12];
    # grad L_fused = u_v x_a at W_a = [9, 12] and u_a x_v at W_v = [6, 12].
    assert norms.tolist() == pytest.approx([60.0, math.sqrt(180.0), math.sqrt(405.0)])
    assert W_a.grad is None  # autograd.grad leaves .grad alone
    sum(losses).backward()  # the graph is kept for the loop's backward
    assert W_a.grad.tolist() == [[45.0, 60.0]] and W_v.grad.tolist() == [[12.0, 24.0]]


def test_relative_rates_hand_case():
    # L(t) / L(0) = [0.5, 1, 1], mean 5/6.
    rates = relative_rates(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([2.0, 2.0, 1.0]))
    assert rates.tolist() == pytest.approx([0.6, 1.2, 1.2])


@pytest.mark.parametrize(
    "alpha, targets, value",
    [
        (1.0, [1.2, 2.4, 2.4], 0.2 + 1.4 + 1.6),  # G_bar = 2, times r
        (2.0, [0.72, 2.88, 2.88], 0.28 + 1.88 + 1.12),  # 2 * r^2 = 2 * [0.36, 1.44, 1.44]
        (0.0, [2.0, 2.0, 2.0], 1.0 + 1.0 + 2.0),  # alpha 0: every target is G_bar
    ],
)
def test_targets_and_gradnorm_loss_hand_case(alpha, targets, value):
    w = nn.Parameter(torch.ones(3))
    norms, rates = torch.tensor([1.0, 1.0, 4.0]), torch.tensor([0.6, 1.2, 1.2])
    loss, G, target = gradnorm_loss(w, norms, rates, alpha)
    assert G.tolist() == [1.0, 1.0, 4.0]  # |w_i| ||grad_W L_i||
    assert target.tolist() == pytest.approx(targets) and not target.requires_grad
    assert loss.item() == pytest.approx(value)
    loss.backward()
    # d|G_i - target_i| / dw_i = sign(G_i - target_i) * ||grad_W L_i||; targets are constants.
    expected = [math.copysign(n, g - t) for n, g, t in zip([1.0, 1.0, 4.0], [1.0, 1.0, 4.0], targets)]
    assert w.grad.tolist() == pytest.approx(expected)


def test_norms_scale_with_the_weights():
    w = nn.Parameter(torch.tensor([0.5, 2.0, -1.0]))
    _, G, target = gradnorm_loss(w, torch.tensor([2.0, 1.0, 3.0]), torch.ones(3), 1.5)
    assert G.tolist() == [1.0, 2.0, 3.0]  # |w_i| n_i: a negative weight still gives a norm
    assert target.tolist() == pytest.approx([2.0, 2.0, 2.0])  # r = 1: every target is G_bar


@pytest.mark.parametrize(
    "optimizer, expected",
    [
        # SGD, lr 0.1, grad [-1, -1, 4]: [1.1, 1.1, 0.6], sum 2.8 -> times 3/2.8.
        (torch.optim.SGD, [1.1 * 3 / 2.8, 1.1 * 3 / 2.8, 0.6 * 3 / 2.8]),
        # Adam's first step is lr * g / (|g| + eps): [1.1, 1.1, 0.9], sum 3.1 -> times 3/3.1.
        (torch.optim.Adam, [1.1 * 3 / 3.1, 1.1 * 3 / 3.1, 0.9 * 3 / 3.1]),
    ],
)
def test_weight_update_and_renormalisation_hand_case(optimizer, expected):
    w = nn.Parameter(torch.ones(3))
    opt = optimizer([w], lr=0.1)
    gradnorm_loss(w, torch.tensor([1.0, 1.0, 4.0]), torch.tensor([0.6, 1.2, 1.2]), 1.0)[0].backward()
    opt.step()
    renormalise(w, 3)
    assert w.tolist() == pytest.approx(expected, abs=1e-6)
    assert w.sum().item() == pytest.approx(3.0)


class ToyEncoder(nn.Sequential):
    def __init__(self, size: int, feature_dim: int = 6):
        super().__init__(nn.Linear(size, 8), nn.ReLU(), nn.Linear(8, feature_dim), nn.ReLU())
        self.feature_dim = feature_dim


def toy_model(fusion: str = "late_linear", modalities=("audio", "video")) -> MultimodalModel:
    torch.manual_seed(0)
    encoders = {m: ToyEncoder(4 + i) for i, m in enumerate(modalities)}
    return MultimodalModel(encoders, fusion, 3, heads_are_probes=False)


def toy_batch(seed: int, modalities=("audio", "video")):
    generator = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(8, 4 + i, generator=generator) for i, m in enumerate(modalities)}
    return inputs, torch.arange(8) % 3


def test_shared_layers_are_the_encoders_last_weights():
    model = toy_model()
    balancer = build_balancer("gradnorm", SETTINGS)
    balancer.setup(model)
    assert [p is model.encoders[m][2].weight for m, p in zip(("audio", "video"), balancer.shared)] == [True, True]
    resnet = build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "late_linear", 3, False)
    assert last_weight(resnet.encoders["audio"]) is resnet.encoders["audio"].trunk.stages[-1].conv2.weight


def test_one_step_by_hand():
    """L(0) is the first step's losses, so r = 1 and every target is G_bar; w moves
    by Adam's first step, -lr sign(G - target), and is renormalised to sum 3."""
    model = toy_model()
    balancer = build_balancer("gradnorm", SETTINGS)
    balancer.setup(model)
    inputs, labels = toy_batch(0)
    out = model(inputs)
    losses = balancer.task_losses(out, labels)
    norms = gradient_norms(losses, balancer.shared)
    result = training_step(model, balancer, torch.optim.SGD(model.parameters(), lr=0.1), inputs, labels, 0)
    logs = result.logs
    names = ["audio", "video", "fused"]
    assert [logs[f"loss_{o}"] for o in names] == pytest.approx([loss.item() for loss in losses])
    assert balancer.initial.tolist() == pytest.approx([loss.item() for loss in losses])
    assert [logs[f"gradnorm_r_{o}"] for o in names] == pytest.approx([1.0, 1.0, 1.0])
    assert [logs[f"gradnorm_G_{o}"] for o in names] == pytest.approx(norms.tolist(), rel=1e-5)
    G_bar = norms.mean().item()
    assert [logs[f"gradnorm_target_{o}"] for o in names] == pytest.approx([G_bar] * 3, rel=1e-5)
    assert logs["gradnorm_loss"] == pytest.approx(sum(abs(g - G_bar) for g in norms.tolist()), rel=1e-5)
    moved = [1 - 0.1 * math.copysign(1.0, g - G_bar) for g in norms.tolist()]
    assert [logs[f"gradnorm_w_{o}"] for o in names] == pytest.approx([3 * v / sum(moved) for v in moved], abs=1e-6)
    assert balancer.w.grad is None  # w's gradient does not linger into the next step


def test_the_network_gets_the_gradient_of_the_weighted_sum_only():
    """Step 0 has w = 1: the network takes exactly Multi-Loss's step (weights 1),
    and L_grad changes no network gradient."""

    def one_step(method, settings):
        model = toy_model()
        balancer = build_balancer(method, settings)
        balancer.setup(model)
        training_step(model, balancer, torch.optim.SGD(model.parameters(), lr=0.1), *toy_batch(0), 0)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(one_step("gradnorm", SETTINGS), one_step("multi_loss", {"weights": {}})):
        assert torch.allclose(a, b, atol=1e-7)

    model = toy_model()
    balancer = build_balancer("gradnorm", SETTINGS)
    balancer.setup(model)
    inputs, labels = toy_batch(0)
    out = model(inputs)
    objective, _ = balancer.loss(out, labels, 0)
    objective.backward()
    before = [p.grad.clone() for p in model.parameters()]
    balancer.after_backward(model, out, labels, 0)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


def test_later_steps_weight_the_losses_with_the_learned_weights():
    model = toy_model()
    balancer = build_balancer("gradnorm", SETTINGS)
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    training_step(model, balancer, optimizer, *toy_batch(0), 0)
    w = balancer.w.detach().clone()
    inputs, labels = toy_batch(1)
    out = model(inputs)
    objective, logs = balancer.loss(out, labels, 0)
    assert objective.item() == pytest.approx(sum(w[i].item() * logs[f"loss_{o}"] for i, o in enumerate(["audio", "video", "fused"])), rel=1e-6)
    # r from L(0) of step 0: the relative inverse training rates of this step.
    logs |= balancer.after_backward(model, out, labels, 0)
    ratios = [logs[f"loss_{o}"] / balancer.initial[i].item() for i, o in enumerate(["audio", "video", "fused"])]
    assert [logs[f"gradnorm_r_{o}"] for o in ["audio", "video", "fused"]] == pytest.approx([r / (sum(ratios) / 3) for r in ratios], rel=1e-5)
    assert balancer.w.sum().item() == pytest.approx(3.0)


def test_state_dict_round_trip_continues_exactly():
    model = toy_model()
    balancer = build_balancer("gradnorm", SETTINGS)
    balancer.setup(model)
    empty = balancer.state_dict()
    assert empty["initial"] is None and empty["w"].tolist() == [1.0, 1.0, 1.0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in (0, 1):
        training_step(model, balancer, optimizer, *toy_batch(seed), 0)
    saved_model, saved_optimizer, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), balancer.state_dict()
    assert set(saved) == {"w", "optimizer", "initial"} and saved["optimizer"]["state"]  # Adam's moments are in it
    training_step(model, balancer, optimizer, *toy_batch(2), 0)

    resumed_model = toy_model()
    resumed_model.load_state_dict(saved_model)
    resumed = build_balancer("gradnorm", SETTINGS)
    resumed.setup(resumed_model)
    resumed.load_state_dict(saved)
    resumed_optimizer = torch.optim.SGD(resumed_model.parameters(), lr=0.1)
    resumed_optimizer.load_state_dict(saved_optimizer)
    training_step(resumed_model, resumed, resumed_optimizer, *toy_batch(2), 0)
    assert torch.equal(resumed.w, balancer.w) and torch.equal(resumed.initial, balancer.initial)
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.parameters(), model.parameters()))


def test_three_modalities_and_a_non_linear_fusion():
    modalities = ("a", "b", "c")
    model = toy_model("gated", modalities)
    balancer = build_balancer("gradnorm", SETTINGS)
    balancer.setup(model)
    result = training_step(model, balancer, torch.optim.SGD(model.parameters(), lr=0.1), *toy_batch(0, modalities), 0)
    assert {f"gradnorm_w_{o}" for o in ("a", "b", "c", "fused")} <= set(result.logs)
    assert balancer.w.sum().item() == pytest.approx(4.0)


def test_needs_two_modalities():
    torch.manual_seed(0)
    model = MultimodalModel({"audio": ToyEncoder(4)}, "late_linear", 3, heads_are_probes=False)
    with pytest.raises(ValueError, match="two modalities"):
        build_balancer("gradnorm", SETTINGS).setup(model)
