"""The workflow under kills, in a project whose path has spaces and non-ASCII letters.

* The whole default grid (every stage, every method, one fold and one epoch to
  keep it short) runs in a copy of the project at such a path: every path in
  every shell command is quoted.
* SIGKILL at random moments, to a training job or to Snakemake itself (whose
  jobs then go on as orphans), then the same command again (after
  `snakemake --unlock` when Snakemake died): the results equal an undisturbed
  run's, every cell has one FINISHED MLflow run with one point per epoch, and a
  cell an orphan finished is not trained again.

`MMBALANCE_KILLS` sets the number of kills (default 3), `MMBALANCE_KILL_GRID=large` a grid that lasts for 10.
"""

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, TINY_PREPROCESSING

pytestmark = pytest.mark.slow

# MMBALANCE_KILL_GRID=large: 12 cells of 20 epochs and the papers' ResNet width (checkpoints of about
# 130 MB that take long enough to write to be caught mid-write), for many kills.
LARGE = os.environ.get("MMBALANCE_KILL_GRID") == "large"
EPOCHS = 20 if LARGE else 6
GRID = {
    "grid": {"methods": ["audio_only", "joint", "mlb", "ogm_ge"], "folds": [1, 2, 3] if LARGE else [2]},
    "datasets": {"synthetic_cremad": {"generator": {"actors": 6, "sentences": 1, "video_width": 64, "video_height": 48},
                                      "preprocessing": TINY_PREPROCESSING, "max_skipped_fraction": 1.0}},
    "backbones": {"resnet18": {"width": 64 if LARGE else 4}},
    "train": {"epochs": EPOCHS, "batch_size": 4, "device": "cpu"},
}


def copy_project(destination: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def environment(project: Path) -> dict:
    return os.environ | {"PYTHONPATH": str(project / "src"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def snakemake(project: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=project, env=environment(project), capture_output=True, text=True)


def test_the_default_grid_runs_in_a_path_with_spaces_and_non_ascii_letters(tmp_path):
    project = copy_project(tmp_path / "my projects" / "équilibre multimodal")
    config = project / "short.yaml"
    config.write_text(yaml.safe_dump({"grid": {"folds": [1]}, "train": {"epochs": 1, "device": "cpu"},
                                      "datasets": {"synthetic_cremad": {"generator": {"actors": 12, "sentences": 1}, "max_skipped_fraction": 0.2}}}))
    result = snakemake(project, "--cores", "2", "--configfile", str(config))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = snakemake(project, "--configfile", str(config), "--report", "results/report.html")
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    summary = (project / "results" / "tables" / "summary.md").read_text()
    assert summary.count("| synthetic_cremad | resnet18 | late_linear |") == 12  # every method of the default grid
    assert (project / "results" / "report.html").stat().st_size > 0


def train_processes(project: Path) -> list[int]:
    """Pids of training jobs started in `project` (read from /proc: no extra dependency)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"mmbalance" in command and b"train" in command and cwd == str(project):
            pids.append(int(entry.name))
    return pids


def wait_for_orphans(project: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while train_processes(project) and time.monotonic() < deadline:
        time.sleep(0.5)


def writing_checkpoint(pids: list[int]) -> list[int]:
    """The jobs that have a checkpoint's temporary file open (they are in the middle of writing it)."""
    writing = []
    for pid in pids:
        try:
            targets = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        if any(".pt." in target and target.endswith(".tmp") for target in targets):
            writing.append(pid)
    return writing


def wait_for_victim(project: Path, process, kind: str, chance: random.Random) -> tuple[list[int], str]:
    """Wait for the moment of a `kind` kill; returns the pids to kill (none: kill Snakemake) and what they are."""
    deadline = time.monotonic() + 120  # the first attempt generates and decodes the data before any training
    while not train_processes(project) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    if kind == "job_at_start":
        return train_processes(project), "the training jobs as they started (before their first checkpoint)"
    if kind == "job_writing_checkpoint":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            writing = writing_checkpoint(train_processes(project))
            if writing:
                return train_processes(project), "the training jobs while one wrote a checkpoint"
        return train_processes(project), "the training jobs (no checkpoint write caught within 30 s)"
    deadline = time.monotonic() + chance.uniform(1, 8)
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    if kind == "job":
        return train_processes(project), "every training job at a random moment"
    return [], "Snakemake at a random moment (its jobs orphaned)"


def results(project: Path) -> dict[str, dict]:
    runs = {}
    for path in sorted((project / "results" / "runs").rglob("predictions.npz")):
        with np.load(path) as predictions:
            runs[str(path.parent.relative_to(project / "results" / "runs"))] = {k: predictions[k] for k in predictions.files}
        history = pd.read_csv(path.parent / "history.csv").drop(columns=["seconds"])
        runs[str(path.parent.relative_to(project / "results" / "runs"))]["history"] = history
    return runs


def mlflow_runs(project: Path) -> list[tuple]:
    with sqlite3.connect(project / "results" / "mlflow" / "mlflow.db") as db:
        return db.execute(
            "select r.run_uuid, r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid and t.key = 'method'"
        ).fetchall()


def metric_steps(project: Path, run_id: str, key: str = "val_acc") -> list[int]:
    with sqlite3.connect(project / "results" / "mlflow" / "mlflow.db") as db:
        return [s for (s,) in db.execute("select step from metrics where run_uuid = ? and key = ? order by step", (run_id, key))]


def test_random_kills_of_jobs_and_of_snakemake_change_nothing(tmp_path):
    kills = int(os.environ.get("MMBALANCE_KILLS", "3"))
    chance = random.Random(20261128)
    reference = copy_project(tmp_path / "reference run")
    project = copy_project(tmp_path / "killed rün")
    for folder in (reference, project):
        (folder / "grid.yaml").write_text(yaml.safe_dump(GRID))
    done = snakemake(reference, "--cores", "2", "--configfile", "grid.yaml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    log = []
    # The kinds of kill, in turn: a job at a random moment, Snakemake at a random moment, a job
    # before its first checkpoint (as soon as it starts), a job while it writes a checkpoint.
    kinds = ["job", "snakemake", "job_at_start", "job_writing_checkpoint"]
    for attempt in range(kills):
        kind = kinds[attempt % len(kinds)]
        process = subprocess.Popen(["snakemake", "--cores", "2", "--configfile", "grid.yaml"], cwd=project, env=environment(project),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        victims, what = wait_for_victim(project, process, kind, chance)
        if process.poll() is not None:
            log.append(f"{attempt}: the run finished before the {kind} kill")
            break
        if victims:
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            process.wait(timeout=600)
        else:
            os.kill(process.pid, signal.SIGKILL)  # its jobs go on, orphaned
            process.wait()
            wait_for_orphans(project)
            unlock = snakemake(project, "--unlock", "--configfile", "grid.yaml")
            assert unlock.returncode == 0, unlock.stderr[-2000:]
        log.append(f"{attempt}: killed {what}")
    print("\n".join(log))
    final = snakemake(project, "--cores", "2", "--configfile", "grid.yaml")
    assert final.returncode == 0, "\n".join(log) + final.stdout[-3000:] + final.stderr[-3000:]

    expected, got = results(reference), results(project)
    assert sorted(got) == sorted(expected) and len(got) == len(GRID["grid"]["methods"]) * len(GRID["grid"]["folds"])
    for cell in expected:
        pd.testing.assert_frame_equal(got[cell].pop("history"), expected[cell].pop("history"), obj=cell)
        for key in expected[cell]:
            np.testing.assert_array_equal(got[cell][key], expected[cell][key], err_msg=f"{cell} {key}")
    runs = mlflow_runs(project)
    assert sorted(method for _, _, method in runs) == sorted(GRID["grid"]["methods"] * len(GRID["grid"]["folds"])), (log, runs)
    assert {status for _, status, _ in runs} == {"FINISHED"}
    for run_id, _, _ in runs:
        assert metric_steps(project, run_id) == list(range(EPOCHS))
