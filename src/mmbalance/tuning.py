"""Equal-budget hyperparameter search on validation (the MLB paper's protocol, section 5).

One Optuna study per (dataset, backbone, fusion, method) of the grid's `tuned`
cells, all with the same number of trials (`tuning.trials`). Each trial is one
Snakemake job (`tune_trial`), so `--resources gpu=N` and SLURM run trials in
parallel: the job asks the study for its next point, trains the cell on the
tuning fold's training split, scores it on that fold's validation split and
tells the study the best validation accuracy. The test split is never read
(`train(..., tuning=...)` does not even look its rows up).

The study lives in an Optuna journal file, `<study dir>/journal.log`: appended
to under a lock file, safe for concurrent jobs on one machine and over a shared
filesystem (Optuna's `JournalFileOpenLock` creates its lock with O_EXCL, which
NFS honours; SQLite over NFS is not safe). A killed study resumes: trial job k
marks its trial with `job = k`; a rerun of job k that finds its finished trial
rewrites its output from it, and one that finds it RUNNING (the job was
killed) marks it FAIL and asks for a new point, so every job ends with exactly
one finished trial: none lost, none counted twice.

`best.json` (rule `tune_best`) holds the best trial's values as overrides of
the method's settings and of the training recipe; a `tuned` cell's training
job merges them over its settings (`train --tuned`).
"""

from __future__ import annotations

import fcntl
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmbalance.config import deep_merge, set_dotted
from mmbalance.io import read_json, write_text_atomic

log = logging.getLogger(__name__)
JOURNAL = "journal.log"


@dataclass
class StudySpec:
    name: str  # <dataset>/<backbone>/<fusion>/<method>
    trials: int
    sampler: str
    seed: int
    pruner: str
    space: dict  # "method.<key>" / "train.<key>" -> {low, high, log, type, source}

    @classmethod
    def from_dict(cls, spec: dict) -> StudySpec:
        return cls(**spec)


def open_study(spec: StudySpec, study_dir: Path, job: int = 0):
    """The study in its journal file. Every trial job is its own process with its own sampler:
    seeded by (tuning.seed, job), or each job would draw the same first point."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    study_dir.mkdir(parents=True, exist_ok=True)
    path = str(study_dir / JOURNAL)
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    seed = spec.seed * 100_003 + job
    sampler = optuna.samplers.TPESampler(seed=seed) if spec.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if spec.pruner == "median" else optuna.pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True)


def draw(trial, space: dict) -> dict:
    """The trial's value for every range of the space."""
    values = {}
    for name, spec in space.items():
        if spec.get("type") == "int":
            values[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
        else:
            values[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    return values


def as_overrides(values: dict) -> dict:
    """{"method.alpha": 1, "train.optimizer.lr": 1e-3} -> {"method": {"alpha": 1}, "train": {"optimizer": {"lr": 1e-3}}}."""
    overrides: dict = {"method": {}, "train": {}}
    for name, value in values.items():
        part, _, key = name.partition(".")
        overrides[part] = set_dotted(overrides[part], key, value)
    return overrides


def apply_overrides(settings: dict, overrides: dict) -> dict:
    """Cell settings with a trial's (or a study's best) values merged in."""
    return settings | {"method_settings": deep_merge(settings["method_settings"], overrides.get("method", {})),
                       "train": deep_merge(settings["train"], overrides.get("train", {}))}


class Pruning:
    """Reports each epoch's validation accuracy to the trial; raises optuna.TrialPruned when told to stop."""

    def __init__(self, trial):
        self.trial = trial

    def __call__(self, epoch: int, val_acc: float) -> None:
        import optuna

        self.trial.report(val_acc, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (validation accuracy {val_acc:.4f})")


def run_trial(features: Path, settings: dict, spec: StudySpec, study_dir: Path, job: int, out: Path) -> dict:
    """Trial job `job` of the study: ask, train on train/val, tell; the record is written to `out`."""
    import optuna
    from optuna.trial import TrialState

    from mmbalance.train import train

    with _study_lock(study_dir):  # one job at a time looks for, fails and asks trials (the training runs outside)
        study = open_study(spec, study_dir, job)
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("job") == job]
        finished = [t for t in mine if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if finished:
            log.info("trial job %d of %s finished before (trial %d): rewriting its record", job, spec.name, finished[0].number)
            return _write_record(out, spec, finished[0], job)
        for stale in [t for t in mine if t.state == TrialState.RUNNING]:
            log.warning("trial %d of %s (job %d) was left running by a killed job: marked FAIL, asking again", stale.number, spec.name, job)
            study.tell(stale.number, state=TrialState.FAIL)
        trial = study.ask()
        trial.set_user_attr("job", job)
        values = draw(trial, spec.space)
        parent_run = study_run(study, settings["tracking"], spec.name)
    log.info("trial %d of %s: %s", trial.number, spec.name, values)
    trial_settings = apply_overrides(settings, as_overrides(values))
    trial_settings["cell"] = trial_settings["cell"] | {"variant": f"trial{job}"}
    run_dir = study_dir / f"trial{job}"
    try:
        summary = train(features, trial_settings, run_dir, run_dir / "checkpoint" / "last.pt",
                        tuning={"study": spec.name, "trial": trial.number, "report": Pruning(trial) if spec.pruner != "none" else None,
                                "parent_run": parent_run})
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, summary["best_val_acc"])
    return _write_record(out, spec, study.get_trials(deepcopy=False)[trial.number], job)


def _write_record(out: Path, spec: StudySpec, trial, job: int) -> dict:
    record = {"study": spec.name, "job": job, "trial": trial.number, "state": trial.state.name,
              "value": trial.value if trial.value is not None else (max(trial.intermediate_values.values()) if trial.intermediate_values else None),
              "values": trial.params, "epochs_run": len(trial.intermediate_values) or None}
    write_text_atomic(out, json.dumps(record, indent=2))
    return record


class _study_lock:
    def __init__(self, study_dir: Path):
        study_dir.mkdir(parents=True, exist_ok=True)
        self.path = study_dir / "study.lock"

    def __enter__(self):
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.handle.close()


def study_run(study, tracking: dict, name: str) -> str:
    """The study's MLflow run, every trial's run nested under it. Its id is kept in the study
    itself (a user attribute in the journal), so a study started afresh gets a run of its own.
    Call with the study lock held."""
    from mlflow.exceptions import MlflowException

    from mmbalance.tracking import _client, experiment_id

    client = _client(tracking["uri"])
    run_id = study.user_attrs.get("mlflow_run")
    if run_id is not None:
        try:
            client.get_run(run_id)
            return run_id
        except MlflowException:
            log.warning("the MLflow run %s of study %s is gone (a new store?): creating another", run_id, name)
    experiment = experiment_id(client, tracking["uri"], tracking["experiment"])
    run_id = client.create_run(experiment, run_name=f"study {name}", tags={"study": name, "kind": "study"}).info.run_id
    study.set_user_attr("mlflow_run", run_id)
    return run_id


def write_best(records: list[dict], spec: StudySpec, tuning: dict, out_dir: Path, tracking: dict | None = None) -> dict:
    """best.json (the best trial's values as overrides, with the budget), trials.csv and the
    optimisation history figure of one study."""
    table = pd.DataFrame([{"job": r["job"], "trial": r["trial"], "state": r["state"], "value": r["value"], **r["values"]} for r in records])
    table = table.sort_values("trial", ignore_index=True)
    scored = table[table["value"].notna() & (table["state"] == "COMPLETE")]
    if scored.empty:
        raise ValueError(f"study {spec.name}: no trial completed ({len(table)} trials: {table['state'].value_counts().to_dict()})")
    best = scored.loc[scored["value"].idxmax()]
    values = {k: _plain(best[k]) for k in spec.space}
    result = {
        "study": spec.name, "best_trial": int(best["trial"]), "best_val_acc": float(best["value"]),
        "overrides": as_overrides(values), "values": values,
        "budget": {"trials": len(table), "complete": len(scored), "epochs_per_trial": tuning["epochs"], "sampler": spec.sampler,
                   "seed": spec.seed, "pruner": spec.pruner, "fold": tuning["fold"]},
        "space": spec.space,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "trials.csv", table.to_csv(index=False))
    write_text_atomic(out_dir / "best.json", json.dumps(result, indent=2))
    _plot_history(table, spec.name, out_dir / "history.png")
    if tracking is not None:
        from mlflow.entities import Metric, RunTag

        from mmbalance.tracking import _client

        client = _client(tracking["uri"])
        with _study_lock(out_dir):
            run_id = study_run(open_study(spec, out_dir), tracking, spec.name)
        # Tags, not params: a study given more trials later may change its best.
        client.log_batch(run_id, tags=[RunTag(f"best.{k}", str(v)) for k, v in values.items()] + [RunTag("best_trial", str(result["best_trial"]))],
                         metrics=[Metric("best_val_acc", result["best_val_acc"], 0, len(table))])
        client.set_terminated(run_id, "FINISHED")
    return result


def _plain(value):
    """A numpy scalar from the table as a Python number (for JSON)."""
    return value.item() if hasattr(value, "item") else value


def _plot_history(table: pd.DataFrame, name: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.5), layout="constrained")
    ax = fig.subplots()
    values = 100 * table["value"].astype(float)
    ax.plot(table["trial"], values, "o", label="trial")
    ax.plot(table["trial"], values.cummax(), "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"study {name}", fontsize="small")
    ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=100)


def read_best(path: Path) -> dict:
    best = read_json(path)
    if "overrides" not in best:
        raise ValueError(f"{path}: not a best.json of a tuning study (no 'overrides')")
    return best


def budget_table(best_files: list[Path]) -> pd.DataFrame:
    """One row per study: trials, completed trials, epochs per trial; `equal` says whether every
    study of the comparison got the same budget."""
    rows = [{"study": b["study"], "trials": b["budget"]["trials"], "complete": b["budget"]["complete"],
             "epochs_per_trial": b["budget"]["epochs_per_trial"], "best_val_acc": b["best_val_acc"]} for b in map(read_best, best_files)]
    table = pd.DataFrame(rows, columns=["study", "trials", "complete", "epochs_per_trial", "best_val_acc"])
    table["equal"] = bool(len(table)) and table["trials"].nunique() == 1 and table["epochs_per_trial"].astype(str).nunique() == 1
    return table

