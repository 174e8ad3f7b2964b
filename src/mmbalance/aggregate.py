"""Tables over many runs: one row per run, fold means and stds, paired differences to joint training."""

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from mmbalance.evaluate import CELL_KEYS
from mmbalance.io import write_text_atomic

GROUP_KEYS = ["dataset", "backbone", "fusion", "method"]
PANEL_KEYS = ["dataset", "backbone", "fusion"]
BASELINE_METHOD = "joint"
FUSED_COLUMNS = {"accuracy": "acc", "macro_f1": "macro_f1", "mAP": "mAP", "ece": "ece"}
NON_METRIC_COLUMNS = {*CELL_KEYS, "best_epoch"}


def collect(metric_paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run: its cell, best epoch, fused metrics and ``acc_<modality>`` per unimodal head."""
    rows = [_run_row(json.loads(Path(path).read_text())) for path in metric_paths]
    modality_columns = sorted({column for row in rows for column in row if column.startswith("acc_")})
    columns = [*CELL_KEYS, "best_epoch", *FUSED_COLUMNS.values(), *modality_columns]
    runs = pd.DataFrame(rows, columns=columns)
    duplicated = runs.duplicated(subset=list(CELL_KEYS))
    if duplicated.any():
        raise ValueError(f"several metric files for the same run:\n{runs[duplicated][list(CELL_KEYS)]}")
    return runs.sort_values(list(CELL_KEYS), ignore_index=True)


def _run_row(metrics: dict) -> dict:
    row = {key: metrics["cell"][key] for key in CELL_KEYS}
    row["best_epoch"] = metrics["best_epoch"]
    row.update({column: metrics["fused"][name] for name, column in FUSED_COLUMNS.items()})
    for head, head_metrics in metrics.items():
        # Unimodal heads are the metric dicts besides "fused"; "cell" has no accuracy.
        if head != "fused" and isinstance(head_metrics, dict) and "accuracy" in head_metrics:
            row[f"acc_{head}"] = head_metrics["accuracy"]
    return row


def metric_columns(runs: pd.DataFrame) -> list[str]:
    return [column for column in runs.columns if column not in NON_METRIC_COLUMNS]


def ordered_methods(methods: Iterable[str], method_order: Sequence[str] | None = None) -> list[str]:
    """``methods`` in ``method_order``, then those not listed alphabetically."""
    methods = set(methods)
    listed = [method for method in method_order or [] if method in methods]
    return listed + sorted(methods - set(listed))


def summarize(runs: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per cell (dataset, backbone, fusion, method): mean and sample std over folds of every metric."""
    columns = metric_columns(runs)
    grouped = runs.groupby(GROUP_KEYS)
    summary = grouped[columns].agg(["mean", "std"])  # std has ddof=1: NaN for a single fold
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    summary["n_folds"] = grouped.size()
    summary = summary.reset_index()
    rank = {method: i for i, method in enumerate(ordered_methods(summary["method"], method_order))}
    return summary.sort_values(
        GROUP_KEYS,
        key=lambda column: column.map(rank) if column.name == "method" else column,
        ignore_index=True,
    )


def paired_vs_joint(runs: pd.DataFrame) -> pd.DataFrame:
    """Fused accuracy minus joint training's on the same fold, mean and std over the folds both have."""
    joint = runs.loc[runs["method"] == BASELINE_METHOD, [*PANEL_KEYS, "fold", "acc"]]
    others = runs.loc[runs["method"] != BASELINE_METHOD, [*GROUP_KEYS, "fold", "acc"]]
    paired = others.merge(joint, on=[*PANEL_KEYS, "fold"], suffixes=("", "_joint"))
    paired["acc_diff"] = paired["acc"] - paired["acc_joint"]
    return (
        paired.groupby(GROUP_KEYS)["acc_diff"]
        .agg(acc_diff_mean="mean", acc_diff_std="std", n="count")
        .reset_index()
    )


def write_tables(
    metric_paths: Iterable[str | Path],
    out_dir: str | Path,
    method_order: Sequence[str] | None,
    protocol: str,
    summary_json: str | Path,
) -> None:
    """Write runs.csv, summary.csv, paired_vs_joint.csv and summary.md to ``out_dir``, and the
    flat metrics for ``dvc metrics show`` to ``summary_json`` (kept apart from the tables
    folder, because DVC refuses a metrics file inside another output)."""
    out_dir = Path(out_dir)
    runs = collect(metric_paths)
    summary = summarize(runs, method_order)
    write_text_atomic(out_dir / "runs.csv", runs.to_csv(index=False))
    write_text_atomic(out_dir / "summary.csv", summary.to_csv(index=False))
    write_text_atomic(out_dir / "paired_vs_joint.csv", paired_vs_joint(runs).to_csv(index=False))
    write_text_atomic(out_dir / "summary.md", summary_markdown(summary, protocol))
    write_text_atomic(summary_json, json.dumps(summary_metrics(summary), indent=2, allow_nan=False) + "\n")


def summary_markdown(summary: pd.DataFrame, protocol: str) -> str:
    """A Markdown table of the summary, values in percent as ``mean ± std``."""
    value_columns = {"acc (mean ± std)": "acc"}
    for column in summary.columns:
        if modality := re.fullmatch(r"acc_(.+)_mean", column):
            value_columns[f"{modality[1]} acc"] = f"acc_{modality[1]}"
    value_columns.update({"macro-F1": "macro_f1", "mAP": "mAP", "ECE": "ece"})

    header = [*GROUP_KEYS, *value_columns, "n"]
    lines = [
        f"Protocol: {protocol}",
        "",
        "Values in percent: mean ± sample std over folds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for _, row in summary.iterrows():
        cells = [str(row[key]) for key in GROUP_KEYS]
        cells += [_percent(row[f"{column}_mean"], row[f"{column}_std"]) for column in value_columns.values()]
        cells.append(str(row["n_folds"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def summary_metrics(summary: pd.DataFrame) -> dict:
    """Flat ``<dataset>/<backbone>/<fusion>/<method>/<statistic>`` dict for ``dvc metrics``; NaNs left out."""
    metrics = {}
    for _, row in summary.iterrows():
        prefix = "/".join(str(row[key]) for key in GROUP_KEYS)
        for column in summary.columns.drop(GROUP_KEYS):
            value = row[column]
            if column == "n_folds":
                metrics[f"{prefix}/{column}"] = int(value)
            elif not math.isnan(value):
                metrics[f"{prefix}/{column}"] = round(float(value), 4)
    return metrics
