"""CUR (mmbalance.balancers.cur) and its MMTM-coupled encoders (mmbalance.models.mmtm):
the MMTM's squeeze and excitation and its running means on hand numbers, the coupling
of both backbones, the learning-speed ratios and the switch rule by hand, the
conditional utilisation rates, the re-balancing steps, an exact resume, one step and
one training run end to end, and CUR on every other fusion refused by name."""

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mmbalance.balancers import build_balancer
from mmbalance.balancers.cur import gradient_ratio, learning_speed, switch, utilisation_rate
from mmbalance.compatibility import incompatibility
from mmbalance.models.fusion import FUSIONS, offers
from mmbalance.models.mmtm import MMTM, _Stream
from mmbalance.models.multimodal import build_model
from mmbalance.models.resnet import VideoResNet18
from mmbalance.step import training_step
from mmbalance.train import train

from conftest import TINY_CONFORMER

SETTINGS = {"epsilon": 0.01, "window": 5, "start_epoch": 1, "objective": "branches", "rebalance_update": "all",
            "utilisation_fraction": 1.0}
RESNET = {"name": "resnet18", "width": 4}
LN3 = math.log(3.0)  # sigmoid(+-ln 3) = 0.75, 0.25


def hand_mmtm() -> MMTM:
    """channels audio 2, video 1, ratio 4 -> hidden int(2 * 3 / 4) = 1."""
    mmtm = MMTM({"audio": 2, "video": 1})
    with torch.no_grad():
        mmtm.squeeze.weight.copy_(torch.tensor([[1.0, 0.0, 2.0]]))
        mmtm.squeeze.bias.fill_(-1.0)
        mmtm.excite["audio"].weight.copy_(torch.tensor([[LN3 / 4], [-LN3 / 4]]))
        mmtm.excite["audio"].bias.zero_()
        mmtm.excite["video"].weight.zero_()
        mmtm.excite["video"].bias.zero_()
    return mmtm


def test_mmtm_gates_hand_case():
    mmtm = hand_mmtm()
    # Sample 1: Z = ReLU(1*1 + 0*3 + 2*2 - 1) = 4 -> audio gates sigmoid(+-ln 3), video sigmoid(0).
    # Sample 2: Z = ReLU(-5 + 0 + 0 - 1) = 0 -> every gate sigmoid(bias) = 0.5.
    gates = mmtm.gates({"audio": torch.tensor([[1.0, 3.0], [-5.0, 0.0]]), "video": torch.tensor([[2.0], [0.0]])})
    assert torch.allclose(gates["audio"], torch.tensor([[0.75, 0.25], [0.5, 0.5]]))
    assert torch.allclose(gates["video"], torch.tensor([[0.5], [0.5]]))
    assert mmtm.squeeze.out_features == 1 and mmtm.bypass_parameters("audio")[-2] is mmtm.squeeze.weight


def test_running_means_are_the_mean_over_updates():
    mmtm = hand_mmtm()
    first = {"audio": torch.tensor([[0.75, 0.25], [0.5, 0.5]]), "video": torch.tensor([[0.2], [0.4]])}
    mmtm.update_running(first)
    assert mmtm.running("audio").tolist() == pytest.approx([0.625, 0.375]) and mmtm.running("video").tolist() == pytest.approx([0.3])
    mmtm.update_running({"audio": torch.tensor([[0.125, 0.625]]), "video": torch.tensor([[0.9]])})
    # (g + 1 * running) / 2 after the second update
    assert mmtm.running("audio").tolist() == pytest.approx([0.375, 0.5]) and mmtm.running("video").tolist() == pytest.approx([0.6])
    assert int(mmtm.updates) == 2


def test_video_squeeze_averages_frames_and_one_gate_scales_every_frame():
    stream = _Stream(VideoResNet18(width=4))
    stream.batch, stream.time = 2, 2
    x = torch.arange(2 * 2 * 3 * 2 * 1, dtype=torch.float32).reshape(4, 3, 2, 1)  # (B*T, C, h, w)
    stream.x = x
    expected = x.reshape(2, 2, 3, 2).mean(dim=(1, 3))  # clip b: its two frames and both positions
    assert torch.equal(stream.squeeze(), expected)
    stream.scale(torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]]))
    assert torch.equal(stream.x[0], x[0] * torch.tensor([1.0, 0.0, 2.0])[:, None, None])
    assert torch.equal(stream.x[1], x[1] * torch.tensor([1.0, 0.0, 2.0])[:, None, None])  # same clip, same gate
    assert torch.equal(stream.x[3], x[3] * torch.tensor([0.5, 1.0, 0.0])[:, None, None])


BACKBONES = {
    "resnet18": (RESNET, {"audio": (33, 17), "video": (2, 3, 32, 32)}),
    "conformer": ({"name": "conformer"} | TINY_CONFORMER, {"audio": (9, 16), "video": (2, 1408)}),
}


def coupled(backbone="resnet18", seed=0):
    torch.manual_seed(seed)
    settings, shapes = BACKBONES[backbone]
    model = build_model(["audio", "video"], settings, "mmtm", 3, heads_are_probes=True)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = {m: torch.randn(4, *shape, generator=generator) for m, shape in shapes.items()}
    return model, inputs, torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_gates_of_one_leave_the_encoders_unchanged(backbone):
    """With every gate exactly 1 the coupled run is each encoder's own forward pass: the
    stages, the layouts and the pooling are the encoder's."""
    model, inputs, _ = coupled(backbone)
    model.eval()
    expected = {m: model.encoders[m](inputs[m]) for m in ("audio", "video")}
    with torch.no_grad():
        for mmtm in model.fusion.mmtm:
            for layer in mmtm.excite.values():
                layer.weight.zero_()
                layer.bias.fill_(40.0)  # sigmoid(40) rounds to 1 in float32
    out = model(inputs)
    for m in ("audio", "video"):
        assert torch.allclose(out.features[m], expected[m], atol=1e-6)
    assert torch.allclose(out.fused, (model.fusion.blocks["audio"](expected["audio"]) + model.fusion.blocks["video"](expected["video"])) / 2, atol=1e-6)


def test_mmtm_positions_follow_the_release():
    model, _, _ = coupled()
    assert model.fusion.coupled == [1, 2, 3]  # after stages 2, 3, 4 (MMTM_MVCNN's mmtm2-4)
    assert [mmtm.excite["audio"].out_features for mmtm in model.fusion.mmtm] == [8, 16, 32]  # width 4: 8, 16, 32 channels
    assert [mmtm.squeeze.out_features for mmtm in model.fusion.mmtm] == [8, 16, 32]  # 2 * (C + C) / 4
    conformer, _, _ = coupled("conformer")
    assert conformer.fusion.coupled == list(range(len(conformer.encoders["audio"].sequence.conformer.conformer_layers)))


def test_isolated_branch_sees_its_own_modality_only_and_its_bypass_gets_no_gradient():
    model, inputs, labels = coupled()
    model.train()
    model(inputs)  # one training pass: running means exist
    model.fusion.isolated = "audio"
    # In evaluation the running means stay put (in training each pass first adds its own
    # batch's mean gate, detached, as the release does), so audio's branch is video-free.
    model.eval()
    out = model(inputs)
    other = model(inputs | {"video": torch.randn_like(inputs["video"])})
    assert torch.allclose(out.features["audio"], other.features["audio"], atol=1e-6)
    assert not torch.allclose(out.features["video"], other.features["video"])
    model.train()
    out = model(inputs)
    model.zero_grad(set_to_none=True)
    sum(F.cross_entropy(y, labels) for y in model.fusion.branch_logits(out.features).values()).backward()
    assert all(mmtm.excite["audio"].weight.grad is None for mmtm in model.fusion.mmtm)
    assert all(mmtm.excite["video"].weight.grad is not None for mmtm in model.fusion.mmtm)


def test_derived_model_branch_depends_on_its_modality_alone():
    model, inputs, _ = coupled()
    model.eval()
    model(inputs)
    means = [{m: s.mean(0) for m, s in position.items()} for position in model.fusion.last_squeezes]
    model.fusion.fixed_squeezes = means
    a = model.fusion.branch_logits(model(inputs).features)
    b = model.fusion.branch_logits(model(inputs | {"video": torch.randn_like(inputs["video"])}).features)
    c = model.fusion.branch_logits(model(inputs | {"audio": torch.randn_like(inputs["audio"])}).features)
    assert torch.allclose(a["audio"], b["audio"], atol=1e-6) and torch.allclose(a["video"], c["video"], atol=1e-6)
    model.fusion.fixed_squeezes = None
    full = model.fusion.branch_logits(model(inputs | {"video": torch.randn_like(inputs["video"])}).features)
    assert not torch.allclose(full["audio"], a["audio"])  # coupled, audio's branch reads video


def test_gradient_ratio_hand_case():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    q = torch.nn.Parameter(torch.tensor([[2.0]]))
    r = torch.nn.Parameter(torch.tensor([1.0]))  # no gradient: counts 0 above, its weight below
    p.grad, q.grad = torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])
    assert gradient_ratio([p, q, r]).item() == pytest.approx((1 + 4) / (25 + 4 + 1))


def test_learning_speed_hand_case():
    assert learning_speed(100.0, 1.0) == pytest.approx(2.0)
    assert learning_speed(0.1, 10.0) == pytest.approx(-2.0)
    assert math.isnan(learning_speed(0.0, 1.0)) and math.isnan(learning_speed(1.0, 0.0))


@pytest.mark.parametrize("both, alone, expected", [(0.8, 0.6, 0.25), (0.8, 0.8, 0.0), (0.5, 0.6, -0.2)])
def test_utilisation_rate_hand_case(both, alone, expected):
    assert utilisation_rate(both, alone) == pytest.approx(expected)


def test_utilisation_rate_of_a_model_that_is_never_right_is_nan():
    assert math.isnan(utilisation_rate(0.0, 0.0))


MODALITIES = ["audio", "video"]


@pytest.mark.parametrize(
    "curating, step, caring, unlocked, d, expected",
    [
        (False, 0, None, False, 5.0, (False, 0, None)),  # before start_epoch nothing re-balances
        (False, 0, None, True, 0.02, (True, 0, "audio")),  # d > eps: s_audio ahead, care for audio
        (False, 3, None, True, -0.02, (True, 0, "video")),
        (False, 0, None, True, 0.01, (False, 0, None)),  # |d| = eps does not open a window
        (False, 0, None, True, math.nan, (False, 0, None)),
        (True, 0, "audio", True, 9.0, (True, 1, "audio")),  # inside a window d is not read
        (True, 3, "video", True, 0.0, (True, 4, "video")),
        (True, 4, "video", True, 0.0, (False, 5, "video")),  # the window's 5th step ends it
    ],
)
def test_switch_rule_hand_cases(curating, step, caring, unlocked, d, expected):
    assert switch(curating, step, caring, unlocked, d, 0.01, 5, MODALITIES) == expected


def named_groups(model):
    """The release's grouping by parameter names (callbacks.py compute_BDR), on our names."""
    main = {m: [p for n, p in model.named_parameters() if n.startswith((f"encoders.{m}.", f"fusion.blocks.{m}."))] for m in MODALITIES}
    bypass = {m: [p for n, p in model.named_parameters() if n.startswith("fusion.mmtm.") and (f".excite.{m}." in n or ".squeeze." in n)]
              for m in MODALITIES}
    return main, bypass


def by_hand(params):
    return sum(p.grad.pow(2).sum().item() for p in params if p.grad is not None) / sum(p.pow(2).sum().item() for p in params)


def test_one_step_end_to_end_by_hand():
    """Step at epoch 0: the objective is the two branch cross-entropies, d_speed is
    measured from the gradients the backward left, and nothing re-balances yet."""
    model, inputs, labels = coupled()
    balancer = build_balancer("cur", SETTINGS | {"epsilon": 0.0})
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = copy.deepcopy(model)
    out = reference(inputs)
    expected_loss = sum(F.cross_entropy(y, labels) for y in reference.fusion.branch_logits(out.features).values())
    (expected_loss + out.probe_loss(labels)).backward()
    main, bypass = named_groups(reference)
    speeds = {m: math.log10(by_hand(bypass[m]) / by_hand(main[m])) for m in MODALITIES}

    result = training_step(model, balancer, optimizer, inputs, labels, 0)
    assert result.loss == pytest.approx(expected_loss.item(), rel=1e-6)
    assert [result.logs[f"speed_{m}"] for m in MODALITIES] == pytest.approx([speeds["audio"], speeds["video"]], rel=1e-5)
    assert result.logs["d_speed"] == pytest.approx(speeds["audio"] - speeds["video"], rel=1e-4, abs=1e-6)
    assert result.logs["rebalancing"] == 0.0 and not balancer.curating  # epoch 0 < start_epoch 1, even with epsilon 0
    assert balancer.sums["audio"]["main"] == pytest.approx(by_hand(main["audio"]), rel=1e-5)
    for name, p in model.named_parameters():
        before = dict(reference.named_parameters())[name]
        if before.grad is not None and before.grad.abs().sum() > 0:
            assert torch.allclose(p, before - 0.1 * before.grad, atol=1e-6), name


def test_a_window_rebalances_for_window_steps_and_measures_nothing_meanwhile():
    model, inputs, labels = coupled()
    balancer = build_balancer("cur", SETTINGS | {"epsilon": 0.0, "window": 3})
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    for step in range(6):
        before = copy.deepcopy(balancer.sums)
        logs = training_step(model, balancer, optimizer, inputs, labels, 1).logs
        seen.append((logs["rebalancing"], balancer.sums != before))
    # step 0 measures and opens a window (epsilon 0), steps 1-3 re-balance without measuring,
    # step 4 is regular again (measures, opens the next window), step 5 re-balances.
    assert seen == [(0.0, True), (1.0, False), (1.0, False), (1.0, False), (0.0, True), (1.0, False)]
    cared = balancer.isolated
    assert cared in MODALITIES and logs[f"caring_{cared}"] == 1.0


def test_rebalancing_keeps_the_cared_branchs_gates_at_their_running_means():
    model, inputs, labels = coupled()
    balancer = build_balancer("cur", SETTINGS)
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    training_step(model, balancer, optimizer, inputs, labels, 0)
    balancer.curating, balancer.window_step, balancer.caring = True, 0, "video"
    seen = []
    hook = model.fusion.mmtm[0].excite["video"].register_forward_hook(lambda module, args, output: seen.append(output))
    out = balancer.forward(model, inputs, labels, 1)
    hook.remove()
    assert model.fusion.isolated is None  # the mode lasts one forward pass
    model.zero_grad(set_to_none=True)
    out.fused.sum().backward()
    assert model.fusion.mmtm[0].excite["video"].weight.grad is None  # computed, then replaced by a constant
    assert seen and model.fusion.mmtm[0].excite["audio"].weight.grad is not None
    model.eval()
    assert balancer.forward(model, inputs, labels, 1) is not None and balancer.isolated is None  # evaluation: never isolated


@pytest.mark.parametrize("update", ["all", "caring_branch"])
def test_what_a_rebalancing_step_updates(update):
    model, inputs, labels = coupled()
    balancer = build_balancer("cur", SETTINGS | {"rebalance_update": update})
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    training_step(model, balancer, optimizer, inputs, labels, 0)
    balancer.curating, balancer.window_step, balancer.caring = True, 0, "audio"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    training_step(model, balancer, optimizer, inputs, labels, 1)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    main, _ = named_groups(model)
    audio_branch = {n for n, p in model.named_parameters() if any(p is q for q in main["audio"])}
    assert moved & audio_branch and {n for n in moved if n.startswith("heads.")}  # probes always train
    others = moved - audio_branch - {n for n in moved if n.startswith("heads.")}
    if update == "all":
        assert any(n.startswith("encoders.video.") for n in others) and any(".squeeze." in n for n in others)
    else:
        assert others == set()


def test_fused_objective_is_the_cross_entropy_of_the_mean_of_branches():
    model, inputs, labels = coupled()
    balancer = build_balancer("cur", SETTINGS | {"objective": "fused"})
    balancer.setup(model)
    out = balancer.forward(model, inputs, labels, 0)
    branches = model.fusion.branch_logits(out.features)
    objective, logs = balancer.loss(out, labels, 0)
    assert objective.item() == pytest.approx(F.cross_entropy((branches["audio"] + branches["video"]) / 2, labels).item(), rel=1e-6)
    assert logs["loss_video"] == pytest.approx(F.cross_entropy(branches["video"], labels).item(), rel=1e-6)


class Context:
    def __init__(self, model, splits):
        self.epoch, self.model, self.metrics, self.splits = 1, model, {}, splits

    def batches(self, split, fraction):
        return iter(self.splits[split])


def test_utilisation_rates_after_an_epoch():
    """Mean squeezes over the training batches, then on validation: A(a, v) from the fused
    logits, A(m) from branch m of the derived model, u(v | a) = (A(a, v) - A(a)) / A(a, v)."""
    model, inputs, labels = coupled()
    balancer = build_balancer("cur", SETTINGS)
    balancer.setup(model)
    train_batches = [(inputs, labels), coupled(seed=5)[1:]]
    val = [coupled(seed=7)[1:]]
    logs = balancer.on_epoch_end(Context(model.train(), {"train": train_batches, "val": val}))
    assert model.training  # left as it was found

    model.eval()
    with torch.no_grad():
        squeezes = []
        for batch, _ in train_batches:
            model(batch)
            squeezes.append(model.fusion.last_squeezes)
        means = [{m: torch.cat([s[i][m] for s in squeezes]).mean(0) for m in MODALITIES} for i in range(len(squeezes[0]))]
        (val_inputs, val_labels), = val
        both = (model(val_inputs).fused.argmax(1) == val_labels).float().mean().item()
        model.fusion.fixed_squeezes = means
        derived = model.fusion.branch_logits(model(val_inputs).features)
        model.fusion.fixed_squeezes = None
    alone = {m: (derived[m].argmax(1) == val_labels).float().mean().item() for m in MODALITIES}
    assert logs["derived_acc_audio"] == pytest.approx(alone["audio"]) and logs["derived_acc_video"] == pytest.approx(alone["video"])
    u_video = (both - alone["audio"]) / both if both else math.nan
    u_audio = (both - alone["video"]) / both if both else math.nan
    assert logs["u_video_given_audio"] == pytest.approx(u_video, nan_ok=True)
    assert logs["u_audio_given_video"] == pytest.approx(u_audio, nan_ok=True)
    assert logs["d_util"] == pytest.approx(u_video - u_audio, nan_ok=True)
    assert all(int(mmtm.updates) == 0 for mmtm in model.fusion.mmtm)  # evaluation passes leave the running means
    assert build_balancer("cur", SETTINGS | {"utilisation_fraction": 0}).on_epoch_end(None) == {}


def test_state_dict_round_trip_continues_exactly():
    model, inputs, labels = coupled()
    balancer = build_balancer("cur", SETTINGS | {"epsilon": 0.0, "window": 2})
    balancer.setup(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # the second step is inside a window
        training_step(model, balancer, optimizer, inputs, labels, 1)
    saved_model, saved_optimizer, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), balancer.state_dict()
    assert saved["curating"] and saved["caring"] in MODALITIES and "fusion.mmtm.0.running_audio" in saved_model
    for _ in range(3):
        training_step(model, balancer, optimizer, inputs, labels, 1)

    resumed_model, _, _ = coupled(seed=9)
    resumed_model.load_state_dict(saved_model)
    resumed = build_balancer("cur", SETTINGS | {"epsilon": 0.0, "window": 2})
    resumed.setup(resumed_model)
    resumed.load_state_dict(saved)
    resumed_optimizer = torch.optim.Adam(resumed_model.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(saved_optimizer)
    for _ in range(3):
        training_step(resumed_model, resumed, resumed_optimizer, inputs, labels, 1)
    assert resumed.state_dict() == balancer.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_cur_on_every_fusion_trains_a_step_or_is_refused_by_name(fusion):
    torch.manual_seed(0)
    model = build_model(["audio", "video"], RESNET, fusion, 3, heads_are_probes=True)
    balancer = build_balancer("cur", SETTINGS)
    reason = incompatibility("cur", SETTINGS, fusion)
    if fusion != "mmtm":
        assert reason is not None and "'cur'" in reason and repr(fusion) in reason and "fusion mmtm" in reason
        with pytest.raises(ValueError, match=type(model.fusion).__name__):
            balancer.setup(model)
        return
    assert reason is None and offers("mmtm") == {"mmtm_bypass"}
    balancer.setup(model)
    _, inputs, labels = coupled()
    result = training_step(model, balancer, torch.optim.SGD(model.parameters(), lr=0.01), inputs, labels, 0)
    assert math.isfinite(result.loss)


def test_methods_reading_a_linear_decomposition_are_refused_on_mmtm():
    """MMCosine would swap the classifier blocks and drop the coupling with them."""
    for method in ("mmcosine", "ogm", "ogm_ge"):
        settings = {"score_source": "decomposition"} if method.startswith("ogm") else {}
        assert "decomposition" in incompatibility(method, settings, "mmtm")
    assert incompatibility("joint", {}, "mmtm") is None


def test_needs_two_modalities():
    torch.manual_seed(0)
    model = build_model(["audio", "video"], RESNET, "mmtm", 3, True)
    model.modalities = ["audio", "video", "text"]
    with pytest.raises(ValueError, match="two modalities"):
        build_balancer("cur", SETTINGS).setup(model)


def test_training_run_end_to_end(tiny_store, train_settings, tmp_path):
    settings = train_settings("cur", epochs=2, fusion="mmtm")
    summary = train(tiny_store, settings, tmp_path / "cur", tmp_path / "ckpt" / "last.pt")
    history = pd.read_csv(tmp_path / "cur" / "history.csv")
    assert summary["epochs"] == 2 and len(history) == 2
    assert history.loc[0, "balance/rebalancing"] == 0.0  # epoch 0 < start_epoch
    for column in ("balance/d_speed", "balance/speed_audio", "balance/derived_acc_video", "balance/u_video_given_audio", "balance/d_util"):
        assert column in history
    assert history["balance/derived_acc_audio"].between(0, 1).all() and history["val_acc"].between(0, 1).all()
