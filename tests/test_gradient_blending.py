"""Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020): the weights and the loss on hand numbers,
the estimation, the held-out training rows the loop carves for it, and an exact resume."""

import math

import pandas as pd
import pytest
import torch

from mmbalance import train as train_module
from mmbalance.balancers import build_balancer
from mmbalance.balancers.base import EpochContext
from mmbalance.balancers.gradient_blending import (
    FUSED,
    GradientBlending,
    blend_weights,
    blended_loss,
    fresh_optimizer,
    gain_and_overfitting,
)
from mmbalance.data.store.features import FeatureStore
from mmbalance.models.multimodal import build_model
from mmbalance.train import carve_holdout

SETTINGS = {"super_epoch": 2, "holdout_fraction": 0.08, "train_fraction": 1.0, "negative_gain": "zero", "min_overfitting": 1e-4}

# Hand numbers: (L^T, L^V) of each task at epoch N and after n more epochs.
BEFORE = {"audio": (1.0, 1.2), "video": (1.5, 1.6), FUSED: (1.0, 1.1)}
AFTER = {"audio": (0.5, 0.9), "video": (1.2, 1.4), FUSED: (0.4, 0.8)}
# G = L^V_N - L^V_{N+n}; O = (L^V - L^T)_{N+n} - (L^V - L^T)_N
#   audio: G = 0.3, O = 0.4 - 0.2 = 0.2 -> G/O^2 = 7.5
#   video: G = 0.2, O = 0.2 - 0.1 = 0.1 -> 20
#   fused: G = 0.3, O = 0.4 - 0.1 = 0.3 -> 3.3333
#   sum 30.8333 -> w = 0.243243, 0.648649, 0.108108


def test_gain_and_overfitting_on_hand_numbers():
    values = {task: gain_and_overfitting(BEFORE[task], AFTER[task]) for task in BEFORE}
    assert values["audio"] == pytest.approx((0.3, 0.2))
    assert values["video"] == pytest.approx((0.2, 0.1))
    assert values[FUSED] == pytest.approx((0.3, 0.3))


def test_weights_on_hand_numbers_sum_to_one():
    gains = {"audio": 0.3, "video": 0.2, FUSED: 0.3}
    overfits = {"audio": 0.2, "video": 0.1, FUSED: 0.3}
    weights = blend_weights(gains, overfits)
    assert weights == pytest.approx({"audio": 0.243243, "video": 0.648649, FUSED: 0.108108}, abs=1e-6)
    assert sum(weights.values()) == pytest.approx(1.0)
    # The sign of O does not matter (it is squared): overfitting that shrank counts as much as overfitting that grew.
    assert blend_weights(gains, {k: -v for k, v in overfits.items()}) == pytest.approx(weights)


def test_negative_gains_floor_and_no_gain_at_all():
    gains, overfits = {"audio": -0.1, "video": 0.2, FUSED: 0.1}, {"audio": 0.1, "video": 0.2, FUSED: 0.1}
    # zero: audio's held-out loss rose -> 0; video 0.2/0.04 = 5, fused 0.1/0.01 = 10.
    assert blend_weights(gains, overfits, negative_gain="zero") == pytest.approx({"audio": 0.0, "video": 1 / 3, FUSED: 2 / 3})
    # abs (both reference codes): audio |-0.1|/0.01 = 10 -> 10, 5, 10 over 25.
    assert blend_weights(gains, overfits, negative_gain="abs") == pytest.approx({"audio": 0.4, "video": 0.2, FUSED: 0.4})
    # |O| below the floor counts as the floor: 0.1/1e-4^2 = 1e7 against 0.1/0.01 = 10.
    weights = blend_weights({"audio": 0.1, "video": 0.1}, {"audio": 0.0, "video": 0.1}, min_overfitting=1e-4)
    assert weights["video"] == pytest.approx(10 / (1e7 + 10))
    assert blend_weights({"audio": -0.1, "video": 0.0}, {"audio": 0.1, "video": 0.1}) is None


def test_loss_on_hand_logits():
    # One sample of class 0: CE(fused [0, 0]) = ln 2, CE(audio [ln 3, 0]) = ln(4/3), CE(video [0, ln 3]) = ln 4.
    fused = torch.tensor([[0.0, 0.0]])
    unimodal = {"audio": torch.tensor([[math.log(3), 0.0]]), "video": torch.tensor([[0.0, math.log(3)]])}
    total, logs = blended_loss(fused, unimodal, torch.tensor([0]), {FUSED: 0.5, "audio": 0.3, "video": 0.2})
    assert total.item() == pytest.approx(0.5 * math.log(2) + 0.3 * math.log(4 / 3) + 0.2 * math.log(4), abs=1e-6)
    assert logs == pytest.approx({"loss_fused": math.log(2), "loss_audio": math.log(4 / 3), "loss_video": math.log(4)})


def test_fresh_optimizer_copies_the_runs_kind_and_current_hyperparameters():
    params = [torch.nn.Parameter(torch.ones(2))]
    run = torch.optim.Adam(params, lr=0.003, betas=(0.8, 0.9), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(run, 1, 0.5)
    params[0].grad = torch.ones(2)
    run.step(), scheduler.step()
    other = [torch.nn.Parameter(torch.zeros(2))]
    fresh = fresh_optimizer(run, other)
    assert type(fresh) is torch.optim.Adam and not fresh.state
    group = fresh.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.0015, (0.8, 0.9), 0.01)
    assert group["params"] == other


def tiny():
    torch.manual_seed(0)
    model = build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "late_linear", 3, heads_are_probes=False)
    generator = torch.Generator().manual_seed(1)
    data = {split: ({"audio": torch.randn(6, 33, 17, generator=generator), "video": torch.randn(6, 2, 3, 32, 32, generator=generator)},
                    torch.tensor([0, 1, 2, 0, 1, 2])) for split in ("train", "holdout")}
    calls = []

    def batches(split, fraction):
        calls.append(split)
        yield data[split]

    return model, data, batches, calls


def test_estimation_reads_train_and_holdout_only_and_leaves_the_model_alone():
    model, _, batches, calls = tiny()
    balancer = build_balancer("gradient_blending", SETTINGS)
    balancer.setup(model)
    assert balancer.weights == pytest.approx({"audio": 1 / 3, "video": 1 / 3, FUSED: 1 / 3})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    logs = balancer.on_epoch_start(EpochContext(0, model, batches, optimizer=optimizer))
    assert set(calls) == {"train", "holdout"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # copies trained, not the model (BN buffers too)
    assert sum(balancer.weights.values()) == pytest.approx(1.0) and set(balancer.weights) == {"audio", "video", FUSED}
    assert {f"gb_gain_{t}" for t in ("audio", "video", FUSED)} <= set(logs) and all(math.isfinite(v) for v in logs.values())
    if not logs["gb_kept_previous_weights"]:  # the weights are the formula applied to the logged G and O
        gains = {t: logs[f"gb_gain_{t}"] for t in balancer.weights}
        overfits = {t: logs[f"gb_overfitting_{t}"] for t in balancer.weights}
        assert balancer.weights == pytest.approx(blend_weights(gains, overfits))
    calls.clear()
    assert balancer.on_epoch_start(EpochContext(1, model, batches, optimizer=optimizer)) == {} and not calls  # not a super-epoch start


def test_the_loss_uses_the_weights_and_trains_the_heads_into_the_encoders():
    model, data, _, _ = tiny()
    balancer = GradientBlending(SETTINGS)
    balancer.setup(model)
    balancer.weights = {"audio": 0.2, "video": 0.5, FUSED: 0.3}
    inputs, labels = data["train"]
    out = balancer.forward(model.train(), inputs, labels, 0)
    total, logs = balancer.loss(out, labels, 0)
    assert total.item() == pytest.approx(0.3 * logs["loss_fused"] + 0.2 * logs["loss_audio"] + 0.5 * logs["loss_video"], rel=1e-6)
    assert logs["gb_weight_video"] == 0.5
    total.backward()
    assert model.encoders["audio"].trunk.stem[0].weight.grad.abs().sum() > 0


def test_state_dict_round_trip_restores_the_weights():
    model, _, batches, _ = tiny()
    balancer = GradientBlending(SETTINGS)
    balancer.setup(model)
    balancer.on_epoch_start(EpochContext(0, model, batches))
    restored = GradientBlending(SETTINGS)
    restored.setup(model)  # the loop builds, sets up, then loads the checkpoint
    restored.load_state_dict(balancer.state_dict())
    assert restored.weights == balancer.weights


def test_holdout_is_stratified_disjoint_and_seeded():
    rows = torch.arange(100, 140)
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 10)
    trained, held = carve_holdout(rows, labels, 0.1, seed=1)
    assert set(trained.tolist()).isdisjoint(held.tolist()) and sorted(trained.tolist() + held.tolist()) == rows.tolist()
    assert torch.bincount(labels[held - 100], minlength=3).tolist() == [2, 1, 1]  # round(0.1 n_c) of each class
    assert trained.tolist() == sorted(trained.tolist())  # the order of `rows` is kept
    again, _ = carve_holdout(rows, labels, 0.1, seed=1)
    assert torch.equal(again, trained)
    assert not torch.equal(carve_holdout(rows, labels, 0.1, seed=2)[1], held)


def test_the_loop_never_trains_on_held_out_rows(tiny_store, train_settings, tmp_path, monkeypatch):
    settings = train_settings("gradient_blending", epochs=1)
    settings["method_settings"] = settings["method_settings"] | {"super_epoch": 1, "holdout_fraction": 0.2, "train_fraction": 0.25}
    trained, sampled = [], {}
    real_epoch, real_sample = train_module.train_one_epoch, train_module.sample_batches

    def spy_epoch(model, balancer, optimizer, store, rows, *args, **kwargs):
        trained.append(rows.clone())
        return real_epoch(model, balancer, optimizer, store, rows, *args, **kwargs)

    def spy_sample(store, rows, modalities, batch_size, seed, epoch, split, fraction=1.0, **kwargs):
        sampled.setdefault(split, set()).update(rows[split].tolist())
        return real_sample(store, rows, modalities, batch_size, seed, epoch, split, fraction, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", spy_epoch)
    monkeypatch.setattr(train_module, "sample_batches", spy_sample)
    train_module.train(tiny_store, settings, tmp_path / "out", tmp_path / "ckpt" / "last.pt")

    store = FeatureStore.load(tiny_store)
    split = {s: set(store.split_rows(1, s).tolist()) for s in ("train", "val", "test")}
    trained_rows, held = set(trained[0].tolist()), sampled["holdout"]
    assert held and trained_rows and held.isdisjoint(trained_rows)
    assert held | trained_rows == split["train"]  # carved from the fold's training rows, nothing else
    assert held.isdisjoint(split["val"]) and held.isdisjoint(split["test"])
    assert sampled["train"] <= trained_rows
    history = pd.read_csv(tmp_path / "out" / "history.csv")
    assert history[["balance/gb_weight_audio", "balance/gb_weight_video", "balance/gb_weight_fused"]].sum(axis=1).iloc[0] == pytest.approx(1.0)


def test_an_interrupted_run_resumes_to_the_same_history(tiny_store, train_settings, tmp_path, monkeypatch):
    """Fail right after epoch 0's checkpoint, run again: epoch 1 (mid super-epoch) must use the
    weights restored from the checkpoint, and the history must equal an uninterrupted run's."""
    settings = train_settings("gradient_blending", epochs=3)
    settings["method_settings"] = settings["method_settings"] | {"super_epoch": 2, "holdout_fraction": 0.2, "train_fraction": 0.25}
    reference = tmp_path / "reference"
    train_module.train(tiny_store, settings, reference, tmp_path / "reference-ckpt" / "last.pt")

    real_log_epoch = train_module.Tracker.log_epoch

    def fail_after_first_checkpoint(self, metrics, epoch):
        if epoch == 0:
            raise KeyboardInterrupt("killed")
        return real_log_epoch(self, metrics, epoch)

    monkeypatch.setattr(train_module.Tracker, "log_epoch", fail_after_first_checkpoint)
    resumed, checkpoint = tmp_path / "resumed", tmp_path / "resumed-ckpt" / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        train_module.train(tiny_store, settings, resumed, checkpoint)
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1
    monkeypatch.setattr(train_module.Tracker, "log_epoch", real_log_epoch)
    train_module.train(tiny_store, settings, resumed, checkpoint)

    a = pd.read_csv(reference / "history.csv").drop(columns=["seconds"])
    b = pd.read_csv(resumed / "history.csv").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(a, b)
    assert a["balance/gb_weight_audio"].iloc[1] == a["balance/gb_weight_audio"].iloc[0]  # epoch 1 reuses epoch 0's estimate
