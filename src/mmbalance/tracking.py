"""MLflow tracking: one SQLite store under results/, created once before any job.

Concurrent first writes to a fresh SQLite store fail in MLflow's schema
migrations, so `init_store` (the `init_tracking` rule) creates the schema and the
experiment before any training job starts; after that, parallel jobs log safely.
Runs are driven through `MlflowClient` (no global fluent state), and a resumed
job reopens its run by the id stored in its checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from mmbalance.io import write_text_atomic


def _client(uri: str):
    from mlflow.tracking import MlflowClient  # slow import: only where tracking is used

    return MlflowClient(tracking_uri=uri)


def init_store(uri: str, experiment: str, artifact_root: Path, sentinel: Path) -> str:
    """Create the store's schema and the experiment; write a sentinel file."""
    client = _client(uri)
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


class Tracker:
    """One MLflow run: created on first start, reopened on resume."""

    def __init__(self, uri: str, experiment: str, run_id: str | None, run_name: str, tags: dict, params: dict):
        from mlflow.entities import RunStatus

        self.client = _client(uri)
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            raise RuntimeError(f"MLflow experiment {experiment!r} does not exist in {uri}: run the init_tracking rule first")
        run = self.client.create_run(found.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])

    def log_epoch(self, metrics: dict[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if v == v]  # drop NaN
        self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
