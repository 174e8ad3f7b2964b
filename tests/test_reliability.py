"""A training cell under attack and after accidents: a pickle with a payload or a truncated
file in its checkpoint folder, a second process, a kill before the first checkpoint or
between a checkpoint and its log, a deleted tracking store, a finished cell run again,
a diverging loss. Each ends with one MLflow run per cell, one point per epoch and the
results an undisturbed run gives."""

import json
import logging
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from mmbalance import checkpoint
from mmbalance.aggregate import collect, summarize, summary_markdown
from mmbalance.evaluate import write_metrics
from mmbalance.tracking import Tracker, init_store
from mmbalance.train import NonFiniteLossError, train

from test_train import same_results


class Payload:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def cell_paths(tmp_path, name):
    return tmp_path / name, tmp_path / f"{name}-ckpt" / "last.pt"


def runs_of(tracking, method):
    client = MlflowClient(tracking["uri"])
    experiment = client.get_experiment_by_name(tracking["experiment"])
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("method") == method]


def steps(tracking, run_id, key="val_acc"):
    return [m.step for m in MlflowClient(tracking["uri"]).get_metric_history(run_id, key)]


@pytest.fixture
def reference(tiny_store, train_settings, tmp_path_factory):
    """An undisturbed run of Joint, 3 epochs (its own tracking store)."""
    root = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    init_store(uri, "tests", root / "artifacts", root / "initialized.json")
    settings = train_settings("joint", epochs=3) | {"tracking": {"uri": uri, "experiment": "tests"}}
    out, ckpt = cell_paths(root, "joint")
    train(tiny_store, settings, out, ckpt)
    return out


def test_a_pickle_with_a_payload_is_refused_and_runs_nothing(tiny_store, train_settings, tmp_path, caplog, reference):
    out, ckpt = cell_paths(tmp_path, "joint")
    marker = tmp_path / "payload-ran"
    ckpt.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "evil": Payload(marker)}, ckpt)
    with pytest.raises(Exception):  # the file really is a payload: plain unpickling runs it
        torch.load(ckpt, weights_only=True)
    assert not marker.exists()

    with caplog.at_level(logging.WARNING, logger="mmbalance.checkpoint"):
        train(tiny_store, train_settings("joint", epochs=3), out, ckpt)
    assert not marker.exists()
    assert (ckpt.parent / "last.pt.corrupt").exists()
    assert f"{ckpt} does not load safely" in caplog.text and "set aside as" in caplog.text
    same_results(out, reference)  # the cell started again and trained normally


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_a_dict", "garbage"])
def test_a_damaged_checkpoint_is_set_aside_and_the_cell_restarts(tiny_store, train_settings, tmp_path, reference, damage):
    out, ckpt = cell_paths(tmp_path, "joint")
    ckpt.parent.mkdir(parents=True)
    if damage == "not_a_dict":
        torch.save([1, 2, 3], ckpt)
    else:
        whole = (reference.parent / "joint-ckpt" / "final.pt").read_bytes()
        ckpt.write_bytes({"truncated": whole[: len(whole) // 2], "empty": b"", "garbage": b"\x00\x01 not a zip"}[damage])
    train(tiny_store, train_settings("joint", epochs=3), out, ckpt)
    assert (ckpt.parent / "last.pt.corrupt").exists()
    same_results(out, reference)


def test_a_second_process_cannot_train_the_same_cell(tiny_store, train_settings, tmp_path):
    out, ckpt = cell_paths(tmp_path, "joint")
    held = checkpoint.CellLock(ckpt.parent, "joint")
    try:
        with pytest.raises(checkpoint.CellBusyError, match=r"is being trained by another process \(pid \d+, lock .*lock\)"):
            train(tiny_store, train_settings("joint", epochs=1), out, ckpt)
    finally:
        held.release()
    train(tiny_store, train_settings("joint", epochs=1), out, ckpt)  # free again once released


def test_a_finished_cell_run_again_rewrites_its_outputs_without_training(tiny_store, train_settings, tracking, tmp_path, caplog):
    out, ckpt = cell_paths(tmp_path, "pmr")
    first = train(tiny_store, train_settings("pmr", epochs=2), out, ckpt)
    kept = tmp_path / "kept"
    shutil.copytree(out, kept)
    shutil.rmtree(out)  # what Snakemake does to an "incomplete" job's outputs after the scheduler died
    with caplog.at_level(logging.INFO, logger="mmbalance.train"):
        second = train(tiny_store, train_settings("pmr", epochs=2), out, ckpt)
    assert "finished before" in caplog.text and "epoch 0:" not in caplog.text
    assert second["run_id"] == first["run_id"]
    same_results(out, kept)
    (run,) = runs_of(tracking, "pmr")
    assert run.info.status == "FINISHED" and steps(tracking, run.info.run_id) == [0, 1]
    # Other settings: the final state does not apply, the cell trains (in a run of its own).
    train(tiny_store, train_settings("pmr", epochs=3), out, ckpt)
    assert len(pd.read_csv(out / "history.csv")) == 3


def test_a_kill_before_the_first_checkpoint_reuses_the_cells_run(tiny_store, train_settings, tracking, tmp_path, monkeypatch):
    out, ckpt = cell_paths(tmp_path, "multi_loss")
    settings = train_settings("multi_loss", epochs=2)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this point runs

    monkeypatch.setattr(checkpoint, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_store, settings, out, ckpt)
    monkeypatch.undo()
    (stranded,) = runs_of(tracking, "multi_loss")
    assert stranded.info.status != "FINISHED"
    train(tiny_store, settings, out, ckpt)
    (run,) = runs_of(tracking, "multi_loss")  # still one run for the cell, now finished
    assert run.info.run_id == stranded.info.run_id and run.info.status == "FINISHED"
    assert steps(tracking, run.info.run_id) == [0, 1]


def test_a_kill_between_checkpoint_and_log_logs_each_epoch_once(tiny_store, train_settings, tracking, tmp_path, monkeypatch):
    out, ckpt = cell_paths(tmp_path, "mslr")
    settings = train_settings("mslr", epochs=3)
    real = Tracker.log_epoch

    def log_then_die(self, metrics, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # epoch 1 is in the checkpoint, not in MLflow
        real(self, metrics, epoch)

    monkeypatch.setattr(Tracker, "log_epoch", log_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_store, settings, out, ckpt)
    monkeypatch.undo()
    (run,) = runs_of(tracking, "mslr")
    assert steps(tracking, run.info.run_id) == [0]
    train(tiny_store, settings, out, ckpt)
    (run,) = runs_of(tracking, "mslr")
    assert steps(tracking, run.info.run_id) == [0, 1, 2]
    assert steps(tracking, run.info.run_id, "train_loss") == [0, 1, 2]


def test_a_deleted_tracking_store_is_created_again(tiny_store, train_settings, tmp_path):
    store = tmp_path / "mlflow"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    settings = train_settings("joint", epochs=1) | {"tracking": {"uri": uri, "experiment": "tests"}}
    init_store(uri, "tests", store / "artifacts", store / "initialized.json")
    out, ckpt = cell_paths(tmp_path, "joint")
    train(tiny_store, settings, out, ckpt)
    (store / "mlflow.db").unlink()
    (ckpt.parent / "final.pt").unlink()  # train again into the new store
    # A new process, as every job is (this one's MLflow keeps the deleted database open).
    result = subprocess.run([sys.executable, "-m", "mmbalance", "train", "--features", str(tiny_store), "--settings", json.dumps(settings),
                             "--out", str(out), "--checkpoint", str(ckpt)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "MLflow experiment 'tests' is missing" in result.stdout + result.stderr
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    with sqlite3.connect(store / "mlflow.db") as db:  # not MlflowClient: this process caches the deleted file
        assert db.execute("select status from runs where run_uuid = ?", (run_id,)).fetchall() == [("FINISHED",)]


def test_stale_temporaries_of_a_killed_write_are_removed(tiny_store, train_settings, tmp_path):
    out, ckpt = cell_paths(tmp_path, "joint")
    for folder in (out, ckpt.parent):
        folder.mkdir(parents=True)
        (folder / ".last.pt.abc123.tmp").write_bytes(b"half a file")
    train(tiny_store, train_settings("joint", epochs=1), out, ckpt)
    assert not list(out.glob(".*.tmp")) and not list(ckpt.parent.glob(".*.tmp"))


def test_a_diverging_loss_stops_the_job_naming_the_cell_epoch_and_step(tiny_store, train_settings, tracking, tmp_path):
    out, ckpt = cell_paths(tmp_path, "ogm")
    settings = train_settings("ogm", epochs=3, optimizer={"name": "sgd", "lr": 1e12, "momentum": 0.9, "weight_decay": 0.0})
    with pytest.raises(NonFiniteLossError, match=r"cell synthetic_cremad/resnet18/late_linear/ogm/default/fold1: the training loss is (nan|inf) at epoch \d+, step \d+"):
        train(tiny_store, settings, out, ckpt)
    (run,) = runs_of(tracking, "ogm")
    assert run.info.status == "FAILED"


def test_a_diverged_run_kept_on_purpose_is_marked_not_averaged(tiny_store, train_settings, tmp_path):
    settings = train_settings("ogm", epochs=2, on_nonfinite="continue",
                              optimizer={"name": "sgd", "lr": 1e12, "momentum": 0.9, "weight_decay": 0.0})
    out, ckpt = cell_paths(tmp_path, "ogm")
    train(tiny_store, settings, out, ckpt)
    assert pd.read_csv(out / "history.csv")["nonfinite_steps"].sum() > 0
    (results,) = write_metrics([out / "predictions.npz"], tmp_path / "metrics.json")
    assert results["nonfinite_steps"] > 0
    runs = collect([tmp_path / "metrics.json"])
    assert runs["diverged"].tolist() == [True]
    summary = summarize(runs)
    assert summary["n_diverged"].tolist() == [1] and summary["n_folds"].tolist() == [0]
    assert np.isnan(summary["acc_mean"].iloc[0])
    assert "0 (+1 diverged, not averaged)" in summary_markdown(summary, "ours")
