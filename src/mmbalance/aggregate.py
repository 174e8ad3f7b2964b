"""Tables over many runs: one row per run, fold means and stds, paired differences to joint training."""

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mmbalance import papers
from mmbalance.data import registry
from mmbalance.evaluate import CELL_KEYS
from mmbalance.io import write_text_atomic

GROUP_KEYS = ["dataset", "backbone", "fusion", "method", "variant"]
PANEL_KEYS = ["dataset", "backbone", "fusion"]
BASELINE_METHOD = "joint"
FUSED_COLUMNS = {"accuracy": "acc", "macro_f1": "macro_f1", "mAP": "mAP", "ece": "ece"}
NON_METRIC_COLUMNS = {*CELL_KEYS, "best_epoch", "diverged"}
# Paired tests need at least this many folds with both the method and joint training.
MIN_PAIRS = 3


def collect(metric_paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run: its cell, best epoch, fused metrics and ``acc_<modality>`` per unimodal head.
    Each file holds one run's metrics or a list of them (the evaluate rule writes one list per panel)."""
    rows = []
    for path in metric_paths:
        content = json.loads(Path(path).read_text())
        rows += [_run_row(metrics) for metrics in (content if isinstance(content, list) else [content])]
    modality_columns = sorted({column for row in rows for column in row if column.startswith("acc_")})
    columns = [*CELL_KEYS, "best_epoch", "diverged", *FUSED_COLUMNS.values(), *modality_columns]
    runs = pd.DataFrame(rows, columns=columns)
    duplicated = runs.duplicated(subset=list(CELL_KEYS))
    if duplicated.any():
        raise ValueError(f"several metric files for the same run:\n{runs[duplicated][list(CELL_KEYS)]}")
    return runs.sort_values(list(CELL_KEYS), ignore_index=True)


def _run_row(metrics: dict) -> dict:
    row = {key: metrics["cell"][key] for key in CELL_KEYS}
    row["best_epoch"] = metrics["best_epoch"]
    # A run whose loss was not finite at some step (kept by train.on_nonfinite: continue).
    row["diverged"] = metrics.get("nonfinite_steps", 0) > 0
    row.update({column: metrics["fused"][name] for name, column in FUSED_COLUMNS.items()})
    for head, head_metrics in metrics.items():
        # Unimodal heads are the metric dicts besides "fused"; "cell" has no accuracy.
        if head != "fused" and isinstance(head_metrics, dict) and "accuracy" in head_metrics:
            row[f"acc_{head}"] = head_metrics["accuracy"]
    return row


def metric_columns(runs: pd.DataFrame) -> list[str]:
    return [column for column in runs.columns if column not in NON_METRIC_COLUMNS]


def ordered_methods(methods: Iterable[str], method_order: Sequence[str] | None = None) -> list[str]:
    """``methods`` in ``method_order``, then those not listed alphabetically. A label
    ``<method>/<variant>`` (see ``run_label``) sorts right after its method."""
    methods = set(methods)
    listed = [label for method in method_order or [] for label in sorted(methods) if label == method or label.startswith(f"{method}/")]
    listed = list(dict.fromkeys(listed))
    return listed + sorted(methods - set(listed))


DEFAULT_VARIANT = "default"


def run_label(method: str, variant: str) -> str:
    """How figures and tables name a (method, variant): the method alone for the default variant."""
    return method if variant == DEFAULT_VARIANT else f"{method}/{variant}"


def with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with its ``method`` column replaced by the (method, variant) label, for figures."""
    if "variant" not in runs.columns:
        return runs
    return runs.assign(method=[run_label(m, v) for m, v in zip(runs["method"], runs["variant"])])


def summarize(runs: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per cell (dataset, backbone, fusion, method, variant): mean and sample std over folds of every
    metric. Diverged runs are left out of the means and counted in ``n_diverged``."""
    columns = metric_columns(runs)
    if "diverged" not in runs.columns:
        runs = runs.assign(diverged=False)
    kept = runs[~runs["diverged"].astype(bool)]
    grouped = kept.groupby(GROUP_KEYS)
    summary = grouped[columns].agg(["mean", "std"])  # std has ddof=1: NaN for a single fold
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    summary["n_folds"] = grouped.size()
    diverged = runs[runs["diverged"].astype(bool)].groupby(GROUP_KEYS).size()
    summary = summary.reindex(summary.index.union(diverged.index))
    summary["n_folds"] = summary["n_folds"].fillna(0).astype(int)
    summary["n_diverged"] = diverged.reindex(summary.index).fillna(0).astype(int)
    summary = summary.reset_index()
    rank = {method: i for i, method in enumerate(ordered_methods(summary["method"], method_order))}
    # The default variant first, the others in alphabetical order.
    return summary.sort_values(
        GROUP_KEYS,
        key=lambda column: column.map(rank) if column.name == "method" else (column.ne(DEFAULT_VARIANT).astype(str) + column if column.name == "variant" else column),
        ignore_index=True,
    )


def paired_vs_joint(runs: pd.DataFrame, min_pairs: int = MIN_PAIRS) -> pd.DataFrame:
    """Fused accuracy minus joint training's on the same fold: mean and std over the folds both
    have, and two-sided p-values of a paired t-test and a Wilcoxon signed-rank test.

    Both runs of a pair are tested on the same fold's test set, so pairing removes the
    fold-to-fold difficulty spread that the summary's stds include. A run is paired with the
    Joint run of its own variant when the panel has one (OGM-GE's `adam` with Joint's `adam`),
    otherwise with Joint's default variant; column ``joint_variant`` says which. With fewer
    than ``min_pairs`` folds the p-values are NaN.
    """
    joint = runs.loc[runs["method"] == BASELINE_METHOD, [*PANEL_KEYS, "variant", "fold", "acc"]]
    others = runs.loc[runs["method"] != BASELINE_METHOD, [*GROUP_KEYS, "fold", "acc"]]
    same = others.merge(joint, on=[*PANEL_KEYS, "variant", "fold"], suffixes=("", "_joint"))
    same["joint_variant"] = same["variant"]
    # Runs whose variant Joint does not have in their panel: Joint's default variant.
    has_own = others.merge(joint[[*PANEL_KEYS, "variant"]].drop_duplicates(), on=[*PANEL_KEYS, "variant"], how="left", indicator=True)["_merge"].eq("both")
    fallback = others[~has_own.to_numpy()].merge(
        joint[joint["variant"] == DEFAULT_VARIANT].drop(columns="variant"), on=[*PANEL_KEYS, "fold"], suffixes=("", "_joint"))
    fallback["joint_variant"] = DEFAULT_VARIANT
    paired = pd.concat([same, fallback], ignore_index=True)
    paired["acc_diff"] = paired["acc"] - paired["acc_joint"]
    keys = [*GROUP_KEYS, "joint_variant"]
    table = paired.groupby(keys)["acc_diff"].agg(acc_diff_mean="mean", acc_diff_std="std", n="count").reset_index()
    tests = [paired_tests(group["acc"], group["acc_joint"], min_pairs) for _, group in paired.groupby(keys)]
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
    published: str | Path | None = None,
    paper_specs: str | Path | None = None,
    paper_tables: Sequence[str] = (),
    prediction_paths: Iterable[str | Path] | None = None,
    variants: Mapping[str, str] | None = None,
    tuning_best: Sequence[str | Path] = (),
) -> None:
    """Write runs.csv, summary.csv, paired_vs_joint.csv and summary.md to ``out_dir``, and the
    flat metrics for ``dvc metrics show`` to ``summary_json`` (kept apart from the tables
    folder, because DVC refuses a metrics file inside another output).

    Optional extras: with ``published`` (config/published.csv) and ``paper_specs``
    (config/paper_tables.yaml), published_comparison.csv and .md (see ``compare_published``)
    and, for each key of ``paper_tables``, papers/<key>.csv and .md (the paper's table laid
    out as printed, ours beside it; see mmbalance.papers); with ``prediction_paths``
    (every run's predictions.npz, the unimodal baselines included), agreement.csv (per fold)
    and agreement_summary.csv (over folds), see ``mmbalance.agreement``."""
    out_dir = Path(out_dir)
    runs = collect(metric_paths)
    summary = summarize(runs, method_order)
    write_text_atomic(out_dir / "runs.csv", runs.to_csv(index=False))
    write_text_atomic(out_dir / "summary.csv", summary.to_csv(index=False))
    write_text_atomic(out_dir / "paired_vs_joint.csv", paired_vs_joint(runs).to_csv(index=False))
    markdown = summary_markdown(summary, protocol, variants)
    if tuning_best:
        from mmbalance.tuning import budget_table

        budget = budget_table(list(tuning_best))
        write_text_atomic(out_dir / "tuning_budget.csv", budget.to_csv(index=False))
        same = "every study had the same budget" if budget["equal"].all() else "**the studies did NOT have the same budget**"
        markdown += "\nTuning budget (" + same + "):\n\n" + "\n".join(
            f"- {row.study}: {row.complete} of {row.trials} trials completed, {row.epochs_per_trial or 'recipe'} epochs each, "
            f"best validation accuracy {100 * row.best_val_acc:.1f}" for row in budget.itertuples()) + "\n"
    write_text_atomic(out_dir / "summary.md", markdown)
    write_text_atomic(summary_json, json.dumps(summary_metrics(summary), indent=2, allow_nan=False) + "\n")
    if published is not None:
        if paper_specs is None:
            raise ValueError("published numbers need the paper specs that place them (config/paper_tables.yaml)")
        specs = papers.load_specs(paper_specs)
        resolved = papers.resolve_published(papers.load_published(published), specs)
        comparison = compare_published(summary, resolved, protocol)
        write_text_atomic(out_dir / "published_comparison.csv", comparison.to_csv(index=False))
        write_text_atomic(out_dir / "published_comparison.md", published_markdown(comparison, protocol))
        for key in paper_tables:
            if key not in specs:
                raise ValueError(f"analysis.paper_tables: {key!r} is not a table of {paper_specs} ({sorted(specs)})")
            table = papers.paper_table(specs[key], resolved, summary)
            write_text_atomic(out_dir / "papers" / f"{key}.csv", table.to_csv(index=False))
            write_text_atomic(out_dir / "papers" / f"{key}.md", papers.paper_markdown(specs[key], table))
    if prediction_paths is not None:
        from mmbalance.agreement import agreement_table, summarize_agreement

        agreement = agreement_table(prediction_paths)
        write_text_atomic(out_dir / "agreement.csv", agreement.to_csv(index=False))
        write_text_atomic(out_dir / "agreement_summary.csv", summarize_agreement(agreement).to_csv(index=False))


# Our metrics compared with published numbers (percent); see mmbalance.papers for where they come from.
COMPARED_METRICS = ("acc", "mAP")
COMPARISON_COLUMNS = [*GROUP_KEYS, "metric", "ours_mean", "ours_std", "n_folds", "our_protocol", "published", "published_protocol",
                      "source", "note"]


def compare_published(summary: pd.DataFrame, resolved: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Our fold means beside the published numbers of the same cell and protocol, in percent:
    one row per (our cell, metric, published number).

    ``resolved`` is ``papers.resolve_published``'s table, where every number carries our cell
    key and was checked to belong to its dataset's protocol. Every cell keeps at least its
    accuracy row, with a ``note`` when nothing matches, so a missing comparison is visible.
    """
    rows = []
    for _, cell in summary.iterrows():
        entry = registry.entry(cell["dataset"]) if cell["dataset"] in registry.DATASETS else None
        for metric in COMPARED_METRICS:
            if f"{metric}_mean" not in summary.columns:
                continue
            ours = {**{key: cell[key] for key in GROUP_KEYS}, "metric": metric, "ours_mean": 100 * cell[f"{metric}_mean"],
                    "ours_std": 100 * cell[f"{metric}_std"], "n_folds": cell["n_folds"], "our_protocol": protocol}
            matches = resolved
            for key in GROUP_KEYS:
                matches = matches[matches[f"our_{key}"] == cell[key]]
            matches = matches[matches["our_metric"] == metric]
            for _, match in matches.iterrows():
                source = f"{match['paper']}, {match['table']}, row {match['row']!r}, column {match['column']!r}"
                rows.append({**ours, "published": match["value"], "published_protocol": match["protocol"], "source": source,
                             "note": match["note"]})
            if matches.empty and metric == "acc":
                if entry is None or entry.published_protocol is None:
                    note = f"no published numbers: dataset {cell['dataset']!r} is not mapped to a published protocol"
                elif not (resolved["protocol"] == entry.published_protocol).any():
                    note = f"no published numbers under protocol {entry.published_protocol!r}"
                else:
                    note = f"no published number for this backbone, fusion, method and variant under protocol {entry.published_protocol!r}"
                rows.append({**ours, "published": math.nan, "published_protocol": "", "source": "", "note": note})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def published_markdown(comparison: pd.DataFrame, protocol: str) -> str:
    """The comparison as Markdown: our protocol above the table, the published one per row."""
    lines = [
        f"Our protocol: {protocol}",
        "",
        (
            "A published number is shown only beside runs of its own protocol (split and dataset version). "
            "The papers selected their epoch on the test set; ours is selected on validation. "
            "Values in percent; ours are mean ± sample std over folds."
        ),
        "",
    ]
    header = [*GROUP_KEYS, "metric", "ours (mean ± std)", "n", "published", "published protocol", "source"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in comparison.iterrows():
        published = "–" if math.isnan(row["published"]) else f"{row['published']:.2f}"
        source = row["note"] if math.isnan(row["published"]) else row["source"] + (f" ({row['note']})" if row["note"] else "")
        cells = [*(str(row[key]) for key in GROUP_KEYS), row["metric"], _percent(row["ours_mean"] / 100, row["ours_std"] / 100),
                 str(row["n_folds"]), published, row["published_protocol"], source]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if comparison.empty:
        lines += ["", "No runs to compare."]
    return "\n".join(lines) + "\n"


def summary_markdown(summary: pd.DataFrame, protocol: str, variants: Mapping[str, str] | None = None) -> str:
    """A Markdown table of the summary, values in percent as ``mean ± std``; the variants'
    descriptions below it."""
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
        diverged = int(row.get("n_diverged", 0))
        cells.append(str(row["n_folds"]) + (f" (+{diverged} diverged, not averaged)" if diverged else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if variants:
        lines += ["", "Variants:", ""] + [f"- `{name}`: {description}" for name, description in variants.items()]
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
            if column in ("n_folds", "n_diverged"):
                metrics[f"{prefix}/{column}"] = int(value)
            elif not math.isnan(value):
                metrics[f"{prefix}/{column}"] = round(float(value), 4)
    return metrics
