"""Equal-budget tuning (mmbalance.tuning): trials on train/val only, one finished trial per
trial job whatever is killed, concurrent jobs on one study, the best settings feeding the
`tuned` cells, and the whole stage through Snakemake."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml

from mmbalance.balancers import METHODS, method_class
from mmbalance.config import Experiment, schema
from mmbalance.data.store.features import FeatureStore
from mmbalance.tuning import StudySpec, apply_overrides, as_overrides, budget_table, open_study, run_trial, write_best

from conftest import ROOT, TINY_PREPROCESSING


def spec(name="synthetic_cremad/resnet18/late_linear/mlb", trials=2, method="mlb", sampler="random"):
    space = Experiment({"grid": {"methods": [method]}}).search_space(method)
    return StudySpec(name=name, trials=trials, sampler=sampler, seed=0, pruner="none", space=space)


@pytest.fixture
def trial_settings(train_settings):
    return lambda method="mlb": train_settings(method, epochs=1)


def test_every_method_declares_valid_ranges_of_its_own_settings():
    ranges = schema()["$defs"]["search_range"]
    for name in METHODS:
        cls = method_class(name)
        for key, spec_ in cls.SEARCH_SPACE.items():
            jsonschema.validate(spec_, ranges)
            assert key.split(".")[0] in cls.SETTINGS, (name, key)
            assert spec_["low"] < spec_["high"], (name, key)


def test_values_become_nested_overrides():
    overrides = as_overrides({"method.alpha": 2.0, "method.initial_rates.audio": 0.7, "train.optimizer.lr": 0.01})
    assert overrides == {"method": {"alpha": 2.0, "initial_rates": {"audio": 0.7}}, "train": {"optimizer": {"lr": 0.01}}}
    settings = {"method_settings": {"alpha": 1.0, "initial_rates": {"audio": 0.9, "video": 1.1}}, "train": {"optimizer": {"lr": 1e-3, "name": "adam"}}}
    merged = apply_overrides(settings, overrides)
    assert merged["method_settings"] == {"alpha": 2.0, "initial_rates": {"audio": 0.7, "video": 1.1}}
    assert merged["train"]["optimizer"] == {"lr": 0.01, "name": "adam"}


def test_a_trial_never_reads_the_test_split(tiny_store, trial_settings, tmp_path, monkeypatch):
    real = FeatureStore.split_rows

    def no_test(self, fold, split):
        if split == "test":
            raise AssertionError("a tuning trial looked up the test rows")
        return real(self, fold, split)

    monkeypatch.setattr(FeatureStore, "split_rows", no_test)
    record = run_trial(tiny_store, trial_settings(), spec(), tmp_path / "study", 0, tmp_path / "trial0.json")
    assert record["state"] == "COMPLETE" and 0 <= record["value"] <= 1
    history = pd.read_csv(tmp_path / "study" / "trial0" / "history.csv")
    assert not [c for c in history.columns if c.startswith("test_")]
    assert not (tmp_path / "study" / "trial0" / "predictions.npz").exists()


def test_a_killed_trial_job_is_asked_again_never_counted_twice(tiny_store, trial_settings, tmp_path):
    study_dir = tmp_path / "study"
    study = open_study(spec(), study_dir)
    stale = study.ask()  # what a job killed during training leaves: a RUNNING trial marked with its job
    stale.set_user_attr("job", 0)
    record = run_trial(tiny_store, trial_settings(), spec(), study_dir, 0, tmp_path / "trial0.json")
    trials = open_study(spec(), study_dir).get_trials()
    assert [(t.number, t.state.name, t.user_attrs.get("job")) for t in trials] == [(0, "FAIL", 0), (1, "COMPLETE", 0)]
    assert record["trial"] == 1
    # The job run once more (its output was deleted): the finished trial's record, no new trial.
    again = run_trial(tiny_store, trial_settings(), spec(), study_dir, 0, tmp_path / "trial0.json")
    assert again == record and len(open_study(spec(), study_dir).get_trials()) == 2


def test_two_concurrent_trial_jobs_record_both_trials(tiny_store, trial_settings, tmp_path):
    study_dir = tmp_path / "study"
    settings = trial_settings()
    jobs = [
        subprocess.Popen([sys.executable, "-m", "mmbalance", "tune-trial", "--features", str(tiny_store), "--settings", json.dumps(settings),
                          "--study", json.dumps(spec().__dict__), "--study-dir", str(study_dir), "--job", str(job),
                          "--out", str(tmp_path / f"trial{job}.json")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for job in (0, 1)
    ]
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    trials = open_study(spec(), study_dir).get_trials()
    assert sorted((t.state.name, t.user_attrs["job"]) for t in trials) == [("COMPLETE", 0), ("COMPLETE", 1)]
    assert trials[0].params != trials[1].params  # each job's sampler has its own seed
    assert {json.loads((tmp_path / f"trial{j}.json").read_text())["job"] for j in (0, 1)} == {0, 1}


def test_best_json_and_the_budget_check(tmp_path):
    study = spec()
    records = [{"job": j, "trial": j, "state": "COMPLETE", "value": v, "values": {k: (r["low"] + r["high"]) / 2 + j for k, r in study.space.items()}}
               for j, v in enumerate([0.4, 0.7, 0.5])]
    best = write_best(records, study, {"epochs": 2, "fold": 1}, tmp_path / "a")
    assert best["best_trial"] == 1 and best["best_val_acc"] == 0.7
    assert best["overrides"]["method"]["alpha"] == records[1]["values"]["method.alpha"]
    assert best["budget"] == {"trials": 3, "complete": 3, "epochs_per_trial": 2, "sampler": "random", "seed": 0, "pruner": "none", "fold": 1}
    assert (tmp_path / "a" / "history.png").read_bytes()[:4] == b"\x89PNG"
    write_best(records[:2], study, {"epochs": 2, "fold": 1}, tmp_path / "b")
    table = budget_table([tmp_path / "a" / "best.json", tmp_path / "b" / "best.json"])
    assert table["trials"].tolist() == [3, 2] and not table["equal"].any()


TUNING_GRID = {
    "results": "results/tuned",
    "grid": {"methods": ["joint", "mlb"], "variants": ["tuned"], "folds": [2]},
    "tuning": {"trials": 2, "epochs": 1, "sampler": "random"},
    "datasets": {"synthetic_cremad": {"generator": {"actors": 6, "sentences": 1, "video_width": 64, "video_height": 48},
                                      "preprocessing": TINY_PREPROCESSING, "max_skipped_fraction": 1.0}},
    "backbones": {"resnet18": {"width": 4}},
    "train": {"epochs": 2, "batch_size": 8, "device": "cpu"},
}


@pytest.mark.slow
def test_the_tuning_stage_survives_a_kill_and_feeds_the_tuned_cells(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    (tmp_path / "tuning.yaml").write_text(yaml.safe_dump(TUNING_GRID))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = ["snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(tmp_path / "tuning.yaml")]
    studies = tmp_path / "results" / "tuned" / "tuning" / "synthetic_cremad" / "resnet18" / "late_linear"
    # Kill Snakemake (and its jobs) as soon as the first trial record exists, then run again.
    process = subprocess.Popen([*command, "--cores", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and not list(studies.glob("*/trial*.json")):
        time.sleep(0.2)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    subprocess.run([*command, "--unlock"], env=env, capture_output=True)
    result = subprocess.run([*command, "--cores", "2"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for method in ("joint", "mlb"):
        trials = open_study(StudySpec(f"synthetic_cremad/resnet18/late_linear/{method}", 2, "random", 0, "none", {}), studies / method).get_trials()
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        assert sorted(t.user_attrs["job"] for t in complete) == [0, 1], [(t.number, t.state.name, t.user_attrs) for t in trials]
        assert complete[0].params != complete[1].params
        best = json.loads((studies / method / "best.json").read_text())
        assert best["budget"]["trials"] == 2 and best["budget"]["epochs_per_trial"] == 1
    log = (tmp_path / "logs" / "tuned" / "train" / "synthetic_cremad" / "resnet18" / "late_linear" / "mlb" / "tuned" / "fold2.log").read_text()
    assert "tuned settings from" in log
    summary = (tmp_path / "results" / "tuned" / "tables" / "summary.md").read_text()
    assert "tuned: 2 trials per (dataset, backbone, fusion, method), RANDOM sampler (seed 0), 1 epochs each" in summary.splitlines()[0]
    assert "every study had the same budget" in summary
    assert "| mlb | tuned |" in summary


def test_a_study_started_afresh_gets_its_own_mlflow_run(tiny_store, trial_settings, tracking, tmp_path):
    """The study's run id lives in the study's journal: deleting the study (to search again)
    must not reuse the old run, whose best values were already recorded."""
    from mlflow.tracking import MlflowClient

    study_dir = tmp_path / "study"
    study = spec(name="afresh/study", trials=1)  # a name no other test's study (same tracking store) has
    for attempt in range(2):
        shutil.rmtree(study_dir, ignore_errors=True)
        record = run_trial(tiny_store, trial_settings(), study, study_dir, 0, tmp_path / "trial0.json")
        write_best([record], study, {"epochs": 1, "fold": 1}, study_dir, tracking)
        write_best([record], study, {"epochs": 1, "fold": 1}, study_dir, tracking)  # again: no "changing param" error
    client = MlflowClient(tracking["uri"])
    experiment = client.get_experiment_by_name(tracking["experiment"]).experiment_id
    studies = client.search_runs([experiment], filter_string="tags.kind = 'study' and tags.study = 'afresh/study'")
    assert len(studies) == 2 and {r.info.status for r in studies} == {"FINISHED"}
