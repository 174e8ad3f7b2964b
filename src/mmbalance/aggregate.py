"""Tables over many runs: one row per run, fold means and stds, paired differences to joint training."""

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mmbalance.evaluate import CELL_KEYS
from mmbalance.io import write_text_atomic

GROUP_KEYS = ["dataset", "backbone", "fusion", "method"]
PANEL_KEYS = ["dataset", "backbone", "fusion"]
BASELINE_METHOD = "joint"
FUSED_COLUMNS = {"accuracy": "acc", "macro_f1": "macro_f1", "mAP": "mAP", "ece": "ece"}
NON_METRIC_COLUMNS = {*CELL_KEYS, "best_epoch"}
# Paired tests need at least this many folds with both the method and joint training.
MIN_PAIRS = 3


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


def paired_vs_joint(runs: pd.DataFrame, min_pairs: int = MIN_PAIRS) -> pd.DataFrame:
    """Fused accuracy minus joint training's on the same fold: mean and std over the folds both
    have, and two-sided p-values of a paired t-test and a Wilcoxon signed-rank test.

    Both runs of a pair are tested on the same fold's test set, so pairing removes the
    fold-to-fold difficulty spread that the summary's stds include. With fewer than
    ``min_pairs`` folds the p-values are NaN.
    """
    joint = runs.loc[runs["method"] == BASELINE_METHOD, [*PANEL_KEYS, "fold", "acc"]]
    others = runs.loc[runs["method"] != BASELINE_METHOD, [*GROUP_KEYS, "fold", "acc"]]
    paired = others.merge(joint, on=[*PANEL_KEYS, "fold"], suffixes=("", "_joint"))
    paired["acc_diff"] = paired["acc"] - paired["acc_joint"]
    table = (
        paired.groupby(GROUP_KEYS)["acc_diff"]
        .agg(acc_diff_mean="mean", acc_diff_std="std", n="count")
        .reset_index()
    )
    tests = [paired_tests(group["acc"], group["acc_joint"], min_pairs) for _, group in paired.groupby(GROUP_KEYS)]
    table["t_pvalue"] = [t for t, _ in tests]
    table["wilcoxon_pvalue"] = [w for _, w in tests]
    return table


def paired_tests(values: Sequence[float], baseline: Sequence[float], min_pairs: int = MIN_PAIRS) -> tuple[float, float]:
    """Two-sided p-values (paired t-test, Wilcoxon signed-rank) of ``values`` against ``baseline``.

    NaN where a test is not defined: fewer than ``min_pairs`` pairs, for the t-test also
    differences without spread (t would be 0/0 or infinite), for Wilcoxon all differences zero.
    With n pairs the exact two-sided Wilcoxon p-value is at least 2 / 2**n (0.25 for three
    folds, 0.0625 for five): it only becomes informative with more folds, but assumes no normality.
    """
    # Rounded so that equal differences are equal: .7 - .6 and .8 - .7 differ in the last bit,
    # and the t-test would read that noise as a spread of 1e-17 and return p = 1e-31.
    diffs = np.round(np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float), 12)
    if len(diffs) < min_pairs or np.isnan(diffs).any():
        return math.nan, math.nan
    # The paired t-test is the one-sample t-test of the differences (scipy's ttest_rel).
    t_pvalue = math.nan if np.ptp(diffs) == 0 else float(stats.ttest_1samp(diffs, 0.0).pvalue)
    wilcoxon_pvalue = math.nan if not diffs.any() else float(stats.wilcoxon(diffs).pvalue)
    return t_pvalue, wilcoxon_pvalue


def write_tables(
    metric_paths: Iterable[str | Path],
    out_dir: str | Path,
    method_order: Sequence[str] | None,
    protocol: str,
    summary_json: str | Path,
    *,
    published: str | Path | pd.DataFrame | None = None,
    dataset_map: Mapping[str, str] | None = None,
    prediction_paths: Iterable[str | Path] | None = None,
) -> None:
    """Write runs.csv, summary.csv, paired_vs_joint.csv and summary.md to ``out_dir``, and the
    flat metrics for ``dvc metrics show`` to ``summary_json`` (kept apart from the tables
    folder, because DVC refuses a metrics file inside another output).

    Optional extras: with ``published`` (config/published.csv or its frame),
    published_comparison.csv and .md (see ``compare_published``); with ``prediction_paths``
    (every run's predictions.npz, the unimodal baselines included), agreement.csv (per fold)
    and agreement_summary.csv (over folds), see ``mmbalance.agreement``."""
    out_dir = Path(out_dir)
    runs = collect(metric_paths)
    summary = summarize(runs, method_order)
    write_text_atomic(out_dir / "runs.csv", runs.to_csv(index=False))
    write_text_atomic(out_dir / "summary.csv", summary.to_csv(index=False))
    write_text_atomic(out_dir / "paired_vs_joint.csv", paired_vs_joint(runs).to_csv(index=False))
    write_text_atomic(out_dir / "summary.md", summary_markdown(summary, protocol))
    write_text_atomic(summary_json, json.dumps(summary_metrics(summary), indent=2, allow_nan=False) + "\n")
    if published is not None:
        if not isinstance(published, pd.DataFrame):
            published = load_published(published)
        comparison = compare_published(summary, published, protocol, dataset_map)
        write_text_atomic(out_dir / "published_comparison.csv", comparison.to_csv(index=False))
        write_text_atomic(out_dir / "published_comparison.md", published_markdown(comparison, protocol))
    if prediction_paths is not None:
        from mmbalance.agreement import agreement_table, summarize_agreement

        agreement = agreement_table(prediction_paths)
        write_text_atomic(out_dir / "agreement.csv", agreement.to_csv(index=False))
        write_text_atomic(out_dir / "agreement_summary.csv", summarize_agreement(agreement).to_csv(index=False))


# Published numbers (config/published.csv): values in percent, one row per number and source.
PUBLISHED_COLUMNS = ["dataset", "protocol", "backbone", "fusion", "method", "metric", "value", "source"]
# A backbone or fusion the source does not state; such a number is shown beside all of ours.
UNSPECIFIED = "unspecified"
# Our dataset id -> the dataset name in published.csv. Only real datasets: the generated
# synthetic_cremad only shares CREMA-D's format, so it must never meet CREMA-D's numbers.
# UCF101 is not mapped: the published UCF-101 numbers are RGB + optical flow, not audio-visual.
PUBLISHED_DATASETS = {"cremad": "CREMA-D", "cremad_ogm": "CREMA-D", "ave": "AVE", "kinetics_sounds": "Kinetics-Sounds", "vggsound": "VGGSound"}
COMPARED_METRICS = ("acc", "macro_f1")


def load_published(path: str | Path) -> pd.DataFrame:
    """Read config/published.csv, checking its columns and that every value is a number."""
    published = pd.read_csv(path, dtype={"value": float}, keep_default_na=False)
    missing = [column for column in PUBLISHED_COLUMNS if column not in published.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; expected {PUBLISHED_COLUMNS}")
    empty = published[PUBLISHED_COLUMNS].eq("").any(axis=1)
    if empty.any():
        raise ValueError(f"{path}: empty fields in rows {list(published.index[empty] + 2)} (write {UNSPECIFIED!r} when unknown)")
    return published[PUBLISHED_COLUMNS]


def compare_published(
    summary: pd.DataFrame,
    published: pd.DataFrame,
    protocol: str,
    dataset_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Our fold means beside published numbers, in percent, one row per (our cell, metric,
    published number).

    A published number matches our cell when the dataset maps to it (``dataset_map``, default
    ``PUBLISHED_DATASETS``; a dataset not in the map has no published numbers), the method and
    metric are the same and backbone and fusion are equal or ``unspecified`` in the source.
    Every cell keeps at least its accuracy row, with an explanatory ``note`` when nothing
    matches, so a missing comparison is visible rather than silent.
    """
    dataset_map = PUBLISHED_DATASETS if dataset_map is None else dataset_map
    rows = []
    for _, cell in summary.iterrows():
        published_dataset = dataset_map.get(cell["dataset"])
        for metric in COMPARED_METRICS:
            if f"{metric}_mean" not in summary.columns:
                continue
            ours = {
                **{key: cell[key] for key in GROUP_KEYS},
                "metric": metric,
                "ours_mean": 100 * cell[f"{metric}_mean"],
                "ours_std": 100 * cell[f"{metric}_std"],
                "n_folds": cell["n_folds"],
                "our_protocol": protocol,
            }
            matches = published[
                (published["dataset"] == published_dataset)
                & (published["method"] == cell["method"])
                & (published["metric"] == metric)
                & published["backbone"].isin([cell["backbone"], UNSPECIFIED])
                & published["fusion"].isin([cell["fusion"], UNSPECIFIED])
            ]
            for _, match in matches.iterrows():
                rows.append({**ours, "published_dataset": published_dataset, "published": match["value"],
                             "published_backbone": match["backbone"], "published_fusion": match["fusion"],
                             "published_protocol": match["protocol"], "source": match["source"], "note": ""})
            if matches.empty and metric == "acc":
                if published_dataset is None:
                    note = f"no published numbers: dataset {cell['dataset']!r} is not mapped to a published dataset"
                elif not (published["dataset"] == published_dataset).any():
                    note = f"no published numbers for {published_dataset}"
                else:
                    note = f"no published number for this method, backbone and fusion on {published_dataset}"
                rows.append({**ours, "published_dataset": published_dataset or "", "published": math.nan,
                             "published_backbone": "", "published_fusion": "", "published_protocol": "",
                             "source": "", "note": note})
    columns = [*GROUP_KEYS, "metric", "ours_mean", "ours_std", "n_folds", "our_protocol", "published_dataset",
               "published", "published_backbone", "published_fusion", "published_protocol", "source", "note"]
    return pd.DataFrame(rows, columns=columns)


def published_markdown(comparison: pd.DataFrame, protocol: str) -> str:
    """The comparison as Markdown: our protocol above the table, the published one per row."""
    lines = [
        f"Our protocol: {protocol}",
        "",
        (
            "Published numbers were obtained under the protocol named in each row (split, recipe, model "
            "selection); most reference papers select the epoch on the test set. Values in percent; "
            "ours are mean ± sample std over folds."
        ),
        "",
    ]
    has_published = comparison.groupby("dataset")["published"].apply(lambda values: values.notna().any())
    for dataset in has_published.index[~has_published]:
        note = comparison.loc[comparison["dataset"] == dataset, "note"].iloc[0]
        lines += [f"**{dataset}: {note}.** Its rows below are ours alone.", ""]
    header = ["dataset", "backbone", "fusion", "method", "metric", "ours (mean ± std)", "n",
              "published", "published dataset / backbone / fusion", "published protocol", "source"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in comparison.iterrows():
        if math.isnan(row["published"]):
            published, setting = "–", row["note"]
        else:
            published = f"{row['published']:.2f}"
            setting = f"{row['published_dataset']} / {row['published_backbone']} / {row['published_fusion']}"
        cells = [*(str(row[key]) for key in GROUP_KEYS), row["metric"], _percent(row["ours_mean"] / 100, row["ours_std"] / 100),
                 str(row["n_folds"]), published, setting, row["published_protocol"], row["source"]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if comparison.empty:
        lines.append("")
        lines.append("No runs to compare.")
    return "\n".join(lines) + "\n"


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
