"""The training loop: outputs, tracking, determinism, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from mmbalance.train import train

NOT_DETERMINISTIC = ["seconds"]  # wall time per epoch


def run(store, settings, tmp_path, name):
    out, checkpoint = tmp_path / name, tmp_path / f"{name}-ckpt" / "last.pt"
    summary = train(store, settings, out, checkpoint)
    return out, summary


def same_results(a, b):
    history_a = pd.read_csv(a / "history.csv").drop(columns=NOT_DETERMINISTIC)
    history_b = pd.read_csv(b / "history.csv").drop(columns=NOT_DETERMINISTIC)
    pd.testing.assert_frame_equal(history_a, history_b)
    with np.load(a / "predictions.npz") as pa, np.load(b / "predictions.npz") as pb:
        assert sorted(pa.files) == sorted(pb.files)
        for key in pa.files:
            np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)


def test_outputs_and_tracking(tiny_store, train_settings, tracking, tmp_path):
    settings = train_settings("mlb", epochs=2)
    out, summary = run(tiny_store, settings, tmp_path, "mlb")
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    for column in ["train_loss", "val_acc", "test_acc_audio", "test_acc_video", "balance/coeff_audio", "balance/ratio_video"]:
        assert history[column].notna().all(), column
    with np.load(out / "predictions.npz") as predictions:
        assert {"probs_fused", "probs_audio", "probs_video", "labels", "clips", "best_epoch"} <= set(predictions.files)
        assert np.allclose(predictions["probs_fused"].sum(1), 1, atol=1e-5)
    assert not (tmp_path / "mlb-ckpt" / "last.pt").exists()  # removed once the outputs hold everything

    run_info = MlflowClient(tracking["uri"]).get_run(summary["run_id"])
    assert run_info.info.status == "FINISHED"
    tags = run_info.data.tags
    assert {k: tags[k] for k in ("dataset", "method", "fold", "seed")} == {"dataset": "synthetic_cremad", "method": "mlb", "fold": "1", "seed": "1"}
    assert tags["data_hash"] and tags["mlflow.source.git.commit"] and tags["recipe.n_fft"] == "128"
    steps = MlflowClient(tracking["uri"]).get_metric_history(summary["run_id"], "balance/coeff_video")
    assert [m.step for m in steps] == [0, 1]


def test_same_seed_same_results(tiny_store, train_settings, tmp_path):
    settings = train_settings("ogm_ge", epochs=2)
    a, _ = run(tiny_store, settings, tmp_path, "a")
    b, _ = run(tiny_store, settings, tmp_path, "b")
    same_results(a, b)


def test_unimodal_baseline_has_one_modality(tiny_store, train_settings, tmp_path):
    out, _ = run(tiny_store, train_settings("video_only", epochs=1), tmp_path, "video")
    history = pd.read_csv(out / "history.csv")
    assert history["test_acc"].equals(history["test_acc_video"]) and history["test_acc_audio"].isna().all()


def test_stale_checkpoint_from_other_settings_is_ignored(tiny_store, train_settings, tmp_path):
    settings = train_settings("joint", epochs=2)
    checkpoint = tmp_path / "ckpt" / "last.pt"
    checkpoint.parent.mkdir()
    torch.save({"settings_fingerprint": "something else"}, checkpoint)
    train(tiny_store, settings, tmp_path / "joint", checkpoint)
    assert len(pd.read_csv(tmp_path / "joint" / "history.csv")) == 2


# Methods whose state (beyond model and optimizer) must survive the checkpoint.
STATEFUL_METHODS = ["mlb", "mslr", "pmr", "olm", "agm"]


@pytest.mark.parametrize("method", STATEFUL_METHODS)
def test_killed_job_resumes_to_the_same_metrics(tiny_store, train_settings, tmp_path, method):
    """SIGKILL a training process in the middle of an epoch, start it again:
    it resumes from its checkpoint and ends exactly where an uninterrupted run does."""
    settings = train_settings(method, epochs=6)

    def command(name):  # the workflow's command; one thread, as in the default profile
        return [sys.executable, "-m", "mmbalance", "train", "--features", str(tiny_store), "--settings", json.dumps(settings),
                "--out", str(tmp_path / name), "--checkpoint", str(tmp_path / f"{name}-ckpt" / "last.pt"), "--threads", "1"]

    subprocess.run(command("reference"), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out, checkpoint = tmp_path / "killed", tmp_path / "killed-ckpt" / "last.pt"
    process = subprocess.Popen(command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint.exists():  # the first epoch is done: now we are inside the second
        assert process.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.01)
    time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "predictions.npz").exists(), "the job finished before the kill: the test proves nothing"
    assert 1 <= torch.load(checkpoint, weights_only=False)["epoch"] < 6

    subprocess.run(command("killed"), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    same_results(tmp_path / "reference", out)
    assert json.loads((out / "run.json").read_text())["epochs"] == 6
