"""A tiny grid through profiles/slurm on a real SLURM cluster, and the tracking server.

`test_tiny_grid_through_profiles_slurm` submits real jobs with Snakemake's SLURM
executor plugin: it cancels one training job mid-way with scancel, checks that
Snakemake resubmits it and that training resumes from its checkpoint, that MLflow
(through the workflow's tracking server) has one finished run per cell with every
epoch, and that the results equal those of the same grid run locally.

The cluster: one already answering (sinfo) is used and left running; otherwise,
as root, ci/slurm-one-node.sh starts a one-node cluster (Debian's slurm-wlm and
munge, fake GPUs as GRES, no accounting database) and the module stops it again.
Without slurm, root or the plugin the test skips, unless MMBALANCE_REQUIRE_SLURM=1
(.ci/run sets it): then a missing cluster is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow

REQUIRED = os.environ.get("MMBALANCE_REQUIRE_SLURM") == "1"
SETUP = ROOT / "ci" / "slurm-one-node.sh"
BIN = Path(sys.executable).parent
EPOCHS = 12
MEM_MB, RUNTIME = 1500, 10
# Two cells: they train side by side on the node's two CPUs (and its two fake GPUs).
CONFIG = {
    "grid": {"methods": ["joint", "mlb"], "folds": [1], "fusions": ["late_linear"]},
    "datasets": {"synthetic_cremad": {
        "generator": {"actors": 12, "sentences": 2, "video_width": 64, "video_height": 48},
        "preprocessing": {"frames": 2, "fps": 1.0, "frame_size": 32, "sample_rate": 8000, "seconds": 1.0, "n_fft": 128, "hop_length": 125},
        "max_skipped_fraction": 1.0}},
    "backbones": {"resnet18": {"width": 4}},
    # device auto: SLURM hands each job a fake GPU (no driver), which training must survive on the CPU.
    "train": {"epochs": EPOCHS, "batch_size": 8, "device": "auto", "threads": 1, "mem_mb": MEM_MB, "runtime": RUNTIME},
}
CANCELLED_METHOD = "mlb"
CELL = f"synthetic_cremad/resnet18/late_linear/{CANCELLED_METHOD}/default/fold1"


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason}; MMBALANCE_REQUIRE_SLURM=1 (set by .ci/run) makes this a failure, not a skip")
    pytest.skip(reason)


def cluster_answers() -> bool:
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return states.returncode == 0 and any(s.strip().rstrip("*") in ("idle", "mix", "alloc") for s in states.stdout.split())


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        unavailable("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    if cluster_answers():
        yield "existing"  # someone else's cluster: use it, leave it running
        return
    if shutil.which("slurmctld") is None and not REQUIRED:
        pytest.skip("no SLURM cluster answers and slurm-wlm is not installed (ci/slurm-one-node.sh installs and starts one; .ci/run does)")
    if os.geteuid() != 0:
        unavailable("no SLURM cluster answers, and starting one (ci/slurm-one-node.sh) needs root")
    started = subprocess.run([str(SETUP), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        subprocess.run([str(SETUP), "stop"], capture_output=True, timeout=300)
        pytest.fail(f"ci/slurm-one-node.sh start failed:\n{started.stderr[-3000:]}")
    try:
        yield "started"
    finally:
        stopped = subprocess.run([str(SETUP), "stop"], capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 0, stopped.stderr
        assert not cluster_answers(), "the cluster this test started still answers after ci/slurm-one-node.sh stop"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def env() -> dict:
    return os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}


def snakemake_process(log: Path, *args) -> subprocess.Popen:
    """Snakemake in its own session, so that a hang can be ended with SIGKILL (SIGTERM waits for the jobs)."""
    with open(log, "w") as out:
        return subprocess.Popen([str(BIN / "snakemake"), *map(str, args)], cwd=ROOT, env=env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, log: Path, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"snakemake did not finish within {timeout:g} s; end of {log}:\n{log.read_text()[-4000:]}")


def our_train_job(workdir: Path) -> tuple[str, str] | None:
    """(job id, state) of the running training job of CELL submitted from `workdir`."""
    rows = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k|%Z"], capture_output=True, text=True).stdout
    for row in rows.splitlines():
        job, state, comment, directory = row.split("|", 3)
        if comment.startswith("rule_train") and CANCELLED_METHOD in comment and Path(directory) == workdir and state == "RUNNING":
            return job, state
    return None


def running(pid: int, wait: float = 10.0) -> bool:
    """Whether `pid` still runs after up to `wait` s (a zombie waiting for its parent's reaping does not)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except OSError:
            return False
        time.sleep(0.2)
    return True


def cells(results: Path) -> list[Path]:
    return sorted(p.parent for p in results.glob("runs/**/history.csv"))


def test_tiny_grid_through_profiles_slurm(cluster, tmp_path):
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    port = free_port()
    for folder, server in ((slurm_dir, True), (local_dir, False)):
        (folder / "config").mkdir(parents=True)
        shutil.copy(ROOT / "config" / "config.yaml", folder / "config" / "config.yaml")
        config = CONFIG | {"tracking": {"server": {"enabled": server, "host": "127.0.0.1", "port": port}}}
        (folder / "tiny.yaml").write_text(yaml.safe_dump(config))

    # The check users run first: this grid fits the node; 64 threads per job does not.
    check = subprocess.run([str(BIN / "python"), "-m", "mmbalance", "slurm-check", "--configfile", "config/config.yaml", "tiny.yaml",
                            "--profile", str(ROOT / "profiles/slurm/profile.yaml")], cwd=slurm_dir, env=env(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "job states: squeue" in check.stdout and "--gpus=1" in check.stdout
    (slurm_dir / "big.yaml").write_text(yaml.safe_dump({"train": {"threads": 64}}))
    too_big = subprocess.run([str(BIN / "python"), "-m", "mmbalance", "slurm-check", "--configfile", "config/config.yaml", "big.yaml",
                              "--profile", str(ROOT / "profiles/slurm/profile.yaml")], cwd=slurm_dir, env=env(), capture_output=True, text=True)
    assert too_big.returncode != 0 and "PartitionConfig" in too_big.stdout and "lower train.threads" in too_big.stdout, too_big.stdout

    began = time.monotonic()
    slurm_log, local_log = tmp_path / "slurm.log", tmp_path / "local.log"
    metrics = "results/metrics/synthetic_cremad/resnet18/late_linear.json"
    # The data once, locally; both runs train on the same feature store. (Each SLURM job costs
    # tens of seconds of scheduling and polling: the test submits only training and evaluation.)
    data = subprocess.run([str(BIN / "snakemake"), "results/features/synthetic_cremad/meta.json", "--cores", "2", "--directory", str(local_dir),
                           "--configfile", str(local_dir / "tiny.yaml")], cwd=ROOT, env=env(), capture_output=True, text=True)
    assert data.returncode == 0, data.stdout[-3000:] + data.stderr[-3000:]
    for folder in ("resources/raw", "results/catalog", "results/features"):
        shutil.copytree(local_dir / folder, slurm_dir / folder)  # copy2: the files keep their times
    # The same grid locally (profiles/default), side by side with the cluster run.
    local = snakemake_process(local_log, metrics, "--cores", "1", "--directory", local_dir, "--configfile", local_dir / "tiny.yaml")
    slurm = snakemake_process(slurm_log, metrics, "--workflow-profile", ROOT / "profiles" / "slurm", "--directory", slurm_dir,
                              "--configfile", slurm_dir / "tiny.yaml", "--verbose", "--jobs", "4",
                              # a test does not wait 20 s per status check; MinJobAge 300 s allows this
                              "--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5")
    try:
        # Cancel the training job of CELL once it has written its first checkpoint.
        checkpoint = slurm_dir / "results" / "checkpoints" / CELL / "last.pt"
        deadline = time.monotonic() + 300
        while not checkpoint.exists() or (found := our_train_job(slurm_dir)) is None:
            assert slurm.poll() is None, f"snakemake ended before the job could be cancelled:\n{slurm_log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no checkpoint of {CELL} after 300 s:\n{slurm_log.read_text()[-4000:]}"
            time.sleep(0.2)
        job, _ = found  # the running job the loop saw: a second squeue could miss it
        subprocess.run(["scancel", job], check=True)
        cancelled_at = time.monotonic() - began
        assert not (slurm_dir / "results" / "runs" / CELL / "history.csv").exists(), "the job finished before it was cancelled"

        assert finish(slurm, slurm_log, 600) == 0, slurm_log.read_text()[-5000:]
        assert finish(local, local_log, 600) == 0, local_log.read_text()[-5000:]
    finally:
        for process in (slurm, local):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    elapsed = time.monotonic() - began
    output = slurm_log.read_text()

    # The cancelled job was seen as failed and submitted again, and training resumed from its checkpoint.
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in output, output[-4000:]
    train_log = (slurm_dir / "logs" / "train" / f"{CELL}.log").read_text()
    resumed = re.search(r"resuming from \S+ at epoch (\d+)", train_log)
    assert resumed and 1 <= int(resumed.group(1)) < EPOCHS, train_log[-3000:]

    # What a training job asked SLURM for: the config's threads, memory and runtime, and one GPU.
    sbatch = [line for line in output.splitlines() if line.startswith("sbatch call:") and "rule_train" in line]
    assert sbatch and all(f"--mem {MEM_MB}" in line and f"-t {RUNTIME}" in line and "--cpus-per-task=1" in line
                          and "--gpus=1" in line for line in sbatch), sbatch
    print(f"\nSLURM run (training, evaluation) finished {elapsed:.0f} s after the test began; job {job} of {CELL} cancelled at {cancelled_at:.0f} s, "
          f"resumed at epoch {resumed.group(1)}\n{sbatch[0].split(' --wrap')[0]}")

    # MLflow, through the workflow's server: one finished run per cell, every epoch logged once;
    # each job got a GPU from SLURM (a fake one) and fell back to the CPU, saying so.
    from mlflow.tracking import MlflowClient

    record = json.loads((slurm_dir / "results" / "mlflow" / "server.json").read_text())
    client = MlflowClient(record["uri"])
    experiment = client.get_experiment_by_name("mmbalance")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["method"] for r in runs) == ["joint", "mlb"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == sorted(set(steps)) and len(steps) == EPOCHS, (run.data.tags["method"], steps)
        assert "fell back to the CPU" in run.data.tags["device"], run.data.tags["device"]

    # Nothing left to do (the server's temporary sentinel does not make anything rerun).
    dry = subprocess.run([str(BIN / "snakemake"), metrics, "-n", "--workflow-profile", str(ROOT / "profiles" / "slurm"), "--directory",
                          str(slurm_dir), "--configfile", str(slurm_dir / "tiny.yaml")], cwd=ROOT, env=env(), capture_output=True, text=True)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:] + dry.stderr[-3000:]

    stop = subprocess.run([str(BIN / "python"), "-m", "mmbalance", "tracking-server", "stop"], cwd=slurm_dir, env=env(),
                          capture_output=True, text=True)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert not running(record["pid"]), "the MLflow server still runs"

    # The same numbers as the local run: every epoch of every cell, the test predictions, the metrics.
    slurm_cells, local_cells = cells(slurm_dir / "results"), cells(local_dir / "results")
    assert [p.relative_to(slurm_dir) for p in slurm_cells] == [p.relative_to(local_dir) for p in local_cells] and len(slurm_cells) == 2
    for remote, here in zip(slurm_cells, local_cells):
        pd.testing.assert_frame_equal(pd.read_csv(remote / "history.csv").drop(columns="seconds"),
                                      pd.read_csv(here / "history.csv").drop(columns="seconds"), check_exact=True)
        with np.load(remote / "predictions.npz") as a, np.load(here / "predictions.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for name in a.files:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{remote.relative_to(slurm_dir)}: {name}")
    assert json.loads((slurm_dir / metrics).read_text()) == json.loads((local_dir / metrics).read_text())
    print(f"local and SLURM identical: {len(slurm_cells)} cells, history.csv (but seconds), predictions.npz and {metrics}")


WRITERS, STEPS, METRICS = 8, 50, 5


def test_tracking_server_keeps_every_point_of_concurrent_writers(tmp_path, monkeypatch):
    """The cluster path of tracking: many jobs at once, each logging through the server; no run or point lost."""
    from mlflow.tracking import MlflowClient

    from mmbalance.tracking import init_store, start_server, stop_server

    monkeypatch.chdir(tmp_path)  # the server record and store are relative paths, as in a results folder
    record = Path("results/mlflow/server.json")
    info = start_server(record, "sqlite:///results/mlflow/mlflow.db", Path("results/mlflow/artifacts"), "127.0.0.1", free_port(),
                        Path("logs/mlflow-server.log"))
    try:
        uri = f"mlflow-server:{record}"
        init_store(uri, "concurrency", Path("results/mlflow/artifacts"), Path("results/mlflow/initialized.json"))
        writer = (
            "import sys\n"
            "from mmbalance.tracking import Tracker\n"
            "k = int(sys.argv[1])\n"
            f"t = Tracker({uri!r}, 'concurrency', None, f'writer{{k}}', {{'method': f'w{{k}}'}}, {{'k': k}})\n"
            f"for step in range({STEPS}):\n"
            f"    t.log_epoch({{f'm{{i}}': step + i / 10 for i in range({METRICS})}}, step)\n"
            "t.finish()\n"
        )
        began = time.monotonic()
        writers = [subprocess.Popen([sys.executable, "-c", writer, str(k)], env=env()) for k in range(WRITERS)]
        assert [w.wait(timeout=300) for w in writers] == [0] * WRITERS
        elapsed = time.monotonic() - began
        client = MlflowClient(info["uri"])
        runs = client.search_runs([client.get_experiment_by_name("concurrency").experiment_id])
        assert len(runs) == WRITERS and all(r.info.status == "FINISHED" for r in runs)
        points = sum(len(client.get_metric_history(r.info.run_id, f"m{i}")) for r in runs for i in range(METRICS))
        assert points == WRITERS * STEPS * METRICS
        print(f"\n{WRITERS} concurrent writers through the tracking server: {len(runs)} runs, {points} of "
              f"{WRITERS * STEPS * METRICS} metric points stored, in {elapsed:.1f} s")
    finally:
        assert stop_server(record)
    assert not running(info["pid"])
