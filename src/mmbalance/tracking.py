"""MLflow tracking: one SQLite store under results/, created once before any job.

On one machine jobs write the store directly. On a cluster (config
tracking.server.enabled) the local rule init_tracking starts an MLflow server on
the submit host in front of that store, and jobs log through it: SQLite on a
shared network filesystem is not safe for writers on several nodes, while one
server process is the store's only writer. Jobs find the server's address in
results/mlflow/server.json (the ``mlflow-server:`` URI, see `resolve_uri`), so a
cell's settings do not change with the submit host.

Concurrent first writes to a fresh SQLite store fail in MLflow's schema
migrations, so `init_store` (the `init_tracking` rule) creates the schema and the
experiment before any training job starts; after that, parallel jobs log safely.
Runs are driven through `MlflowClient` (no global fluent state), and a resumed
job reopens its run by the id stored in its checkpoint (see `Tracker`). A store
deleted after the `init_tracking` rule ran is created again, under a file lock,
by the first job that needs it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mmbalance.io import write_text_atomic

log = logging.getLogger(__name__)
# Tags that name a training cell, and the metric whose steps say which epochs a run has.
CELL_TAGS = ("dataset", "backbone", "fusion", "method", "variant", "fold")
STEP_KEY = "val_acc"


SERVER_SCHEME = "mlflow-server:"
# What a tracking server writes: the same file the jobs write directly on one machine.
SERVER_STORE = "sqlite:///results/mlflow/mlflow.db"
ARTIFACTS = Path("results/mlflow/artifacts")  # beside the local store, for both ways of logging
SERVER_LOG = Path("logs/mlflow-server.log")
SERVER_RECORD = "results/mlflow/server.json"  # the running server's address, for the jobs


def resolve_uri(uri: str) -> str:
    """The URI MLflow is given. ``mlflow-server:<record>`` (config tracking.server.enabled) is the
    workflow's tracking server, whose address the local rule init_tracking wrote to <record>;
    every other URI is returned as it is."""
    if not uri.startswith(SERVER_SCHEME):
        return uri
    record = Path(uri.removeprefix(SERVER_SCHEME))
    try:
        return json.loads(record.read_text())["uri"]
    except (OSError, ValueError, KeyError) as error:
        raise RuntimeError(
            f"tracking.server is enabled but the server record {record} cannot be read ({error}); the local rule "
            f"init_tracking writes it when it starts the server on the submit host. Run snakemake from the project "
            f"folder on the submit host (or `python -m mmbalance tracking-server start`), or set tracking.server.enabled: false"
        ) from None


def _client(uri: str):
    from mlflow.tracking import MlflowClient  # slow import: only where tracking is used

    return MlflowClient(tracking_uri=resolve_uri(uri))


# --- the workflow's tracking server (config tracking.server) --------------------------------

def server_answers(uri: str, timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers /health at `uri`."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(record: Path, store: str, artifacts: Path, host: str, port: int, log_path: Path, wait: float = 120.0) -> dict:
    """Start an MLflow server in front of `store` on host:port, detached from the caller (it
    outlives the Snakemake run, so a rerun or resumed job logs to the same server), and write
    its address and pid to `record`. A server already answering at the recorded address is
    reused. One process (`--workers 1`) writes the SQLite store, on the submit host only."""
    import socket

    host = host or socket.getfqdn()
    uri = f"http://{host}:{port}"
    if record.exists():
        previous = json.loads(record.read_text())
        if previous.get("uri") == uri and server_answers(uri):
            log.info("MLflow server %s (pid %s) already answers: reusing it", uri, previous.get("pid"))
            return previous
    if server_answers(uri):
        raise RuntimeError(f"another MLflow server (not started for this results folder: no {record} names it) already "
                           f"answers at {uri}; choose a free port with tracking.server.port")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise RuntimeError(f"cannot listen on {host}:{port} ({error.strerror}): set tracking.server.port to a free "
                               "port, or tracking.server.host to an address of this machine") from None
    if store.startswith("sqlite:///"):  # the store's folder; the server creates the schema in it
        Path(store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    artifacts = Path(artifacts).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--default-artifact-root",
               artifacts.as_uri(), "--host", host, "--port", str(port), "--workers", "1",
               # MLflow's default accepts only localhost and private IPs as Host headers.
               "--allowed-hosts", f"{host},{host}:{port},localhost,localhost:{port}"]
    with open(log_path, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + wait
    while not server_answers(uri):
        if process.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with code {process.returncode} before answering at {uri}; see {log_path}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the server's workers too
            raise RuntimeError(f"the MLflow server did not answer at {uri} within {wait:g} s; see {log_path}")
        time.sleep(0.5)
    info = {"uri": uri, "pid": process.pid, "host": host, "port": port, "store": store, "log": str(log_path),
            "cmdline": _cmdline(process.pid)}
    write_text_atomic(record, json.dumps(info, indent=2))
    log.info("MLflow server started at %s (pid %d), store %s", uri, process.pid, store)
    return info


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def stop_server(record: Path, wait: float = 30.0) -> bool:
    """Stop the server `record` names (only if that pid still runs the same command line);
    True if one was stopped."""
    if not record.exists():
        return False
    info = json.loads(record.read_text())
    pid = info.get("pid")
    if not pid or not info.get("cmdline") or _cmdline(pid) != info["cmdline"]:
        log.info("the MLflow server of %s is not running", record)
        record.unlink()
        return False
    os.killpg(pid, signal.SIGTERM)  # its own session: the uvicorn worker goes with it
    deadline = time.monotonic() + wait
    while _cmdline(pid) == info["cmdline"] and time.monotonic() < deadline:
        time.sleep(0.2)
    if _cmdline(pid) == info["cmdline"]:
        os.killpg(pid, signal.SIGKILL)
    try:  # reap it when this process started it (in the workflow its parent has long exited)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    record.unlink()
    log.info("stopped the MLflow server %s (pid %d)", info["uri"], pid)
    return True


def init_store(uri: str, experiment: str, artifact_root: Path, sentinel: Path) -> str:
    """Create the store's schema and the experiment; write a sentinel file."""
    client = _client(uri)
    with _store_lock(uri):
        found = client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(experiment, artifact_location=Path(artifact_root).resolve().as_uri())
        )
    write_text_atomic(sentinel, json.dumps({"uri": uri, "experiment": experiment, "experiment_id": experiment_id}, indent=2))
    return experiment_id


def git_commit(cwd: Path | None = None) -> str:
    """HEAD of the workflow's repository, with '-dirty' when files differ.

    MLflow only detects the commit from the script path, which `python -m`
    hides, so the tag is set here."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def flatten(settings: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


@contextmanager
def _store_lock(uri: str):
    """Serialise the creation of a local SQLite store (concurrent first writes fail); a no-op otherwise."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".init.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def experiment_id(client, uri: str, experiment: str) -> str:
    """The experiment's id; the store and the experiment are created when missing (a deleted
    store heals on the next run instead of failing every job)."""
    with _store_lock(uri):
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        log.warning("MLflow experiment %r is missing in %s: creating it", experiment, uri)
        # Artifacts beside a local store (as init_store puts them), not in ./mlruns of the working directory.
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts" if uri.startswith("sqlite:///") else None
        return client.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri() if artifacts else None)


class Tracker:
    """The one MLflow run of a training cell.

    It is reopened by the id the checkpoint holds; without one (a job killed before its first
    checkpoint), by the cell's tags: an unfinished run of the same cell and settings is reused,
    so a cell never gets a second run because it was killed. Each epoch is logged once: an
    epoch whose points the run already has is skipped (a deterministic rerun of an epoch gives
    the same values), and `log_history` fills in epochs a kill kept from being logged.
    """

    def __init__(self, uri: str, experiment: str, run_id: str | None, run_name: str, tags: dict, params: dict):
        from mlflow.entities import Param, RunStatus
        from mlflow.exceptions import MlflowException

        self.client = _client(uri)
        experiment_id_ = experiment_id(self.client, uri, experiment)
        tags = {k: str(v) for k, v in tags.items()}
        if run_id is not None:
            try:
                self.client.get_run(run_id)
            except MlflowException:
                log.warning("MLflow run %s of the checkpoint is not in %s (the store was replaced?): starting a new run", run_id, uri)
                run_id = None
        if run_id is None:
            run_id = self._unfinished_run(experiment_id_, tags)
        if run_id is None:
            run = self.client.create_run(experiment_id_, run_name=run_name, tags=tags)
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])
        else:
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self.run_id = run_id
        self._logged = {metric.step for metric in self.client.get_metric_history(run_id, STEP_KEY)}

    def _unfinished_run(self, experiment_id_: str, tags: dict) -> str | None:
        """The newest run with exactly these cell tags that did not finish, if any."""
        keys = [*CELL_TAGS, "settings_fingerprint"]
        query = " and ".join(f"tags.{key} = '{tags[key]}'" for key in keys if key in tags)
        runs = self.client.search_runs([experiment_id_], filter_string=query, order_by=["attributes.start_time DESC"])
        unfinished = [run for run in runs if run.info.status != "FINISHED"]
        if unfinished:
            log.info("reusing MLflow run %s (%s) of this cell", unfinished[0].info.run_id, unfinished[0].info.status)
            return unfinished[0].info.run_id
        return None

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        if epoch in self._logged:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if v == v]  # drop NaN
        self.client.log_batch(self.run_id, metrics=batch)
        self._logged.add(epoch)

    def log_history(self, history: list[dict]) -> None:
        """Every epoch of `history` the run does not have yet."""
        for row in history:
            self.log_epoch({k: v for k, v in row.items() if k != "epoch"}, row["epoch"])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
