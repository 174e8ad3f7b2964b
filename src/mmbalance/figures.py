"""Figures in the style of the MLB paper's Fig. 3 (accuracy per method) and OGM-GE's Fig. 3 (balance over training).

Figures are bare ``matplotlib.figure.Figure`` objects: they render with Agg and are freed like any
object, so nothing depends on pyplot's global state or display backend.
"""

from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmbalance.aggregate import PANEL_KEYS, ordered_methods

DPI = 150
# 20 distinct colours: the default cycle repeats after 10, and a grid has 12 methods.
METHOD_COLOURS = colormaps["tab20"]
MODALITY_MARKERS = ("v", "^", "s", "D")
LINESTYLES = ("-", "--", ":", "-.")
BALANCE_PANELS = (
    ("balance/ratio_", "discrepancy ratio"),
    ("balance/coeff_", "modulation coefficient"),
    ("val_acc_", "unimodal validation accuracy"),
)


def plot_accuracy_per_method(
    runs: pd.DataFrame, out_path: str | Path, method_order: Sequence[str] | None = None
) -> None:
    """One panel per (dataset, backbone, fusion): a bar per method with fold dots and std error bars."""
    panels = list(runs.groupby(PANEL_KEYS))
    panel_count = max(1, len(panels))
    panel_width = 1.5 + 0.7 * runs["method"].nunique()
    fig = Figure(figsize=(panel_width * panel_count, 4.5), layout="constrained")
    axes = fig.subplots(1, panel_count, squeeze=False)[0]
    if not panels:
        _write_no_data(axes[0])
    for ax, (panel, panel_runs) in zip(axes, panels):
        _plot_accuracy_panel(ax, panel_runs, ordered_methods(panel_runs["method"], method_order))
        ax.set_title(" / ".join(map(str, panel)))
    _save(fig, out_path)


def _plot_accuracy_panel(ax: Axes, runs: pd.DataFrame, methods: list[str]) -> None:
    x = np.arange(len(methods))
    fold_accs = [100 * runs.loc[runs["method"] == method, "acc"].to_numpy() for method in methods]
    means = [accs.mean() for accs in fold_accs]
    # A single fold has no spread: draw no error bar rather than a NaN one.
    stds = [accs.std(ddof=1) if len(accs) > 1 else 0.0 for accs in fold_accs]
    ax.bar(x, means, width=0.6, yerr=stds, capsize=3, color="lightsteelblue", edgecolor="black",
           label="fused (mean ± std)")

    # Folds side by side within the bar, so that equal accuracies stay visible.
    dot_x = np.concatenate([xi + _spread(len(accs)) for xi, accs in zip(x, fold_accs)])
    ax.scatter(dot_x, np.concatenate(fold_accs), s=12, color="black", zorder=3, label="folds")

    modality_columns = sorted(column for column in runs.columns if column.startswith("acc_"))
    for column, marker in zip(modality_columns, cycle(MODALITY_MARKERS)):
        head_means = 100 * runs.groupby("method")[column].mean().reindex(methods).to_numpy()
        present = ~np.isnan(head_means)
        if present.any():
            ax.plot(x[present] + 0.38, head_means[present], linestyle="none", marker=marker, markersize=5,
                    label=f"{column.removeprefix('acc_')} head (mean)")

    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize="x-small", loc="lower left")


def _spread(count: int, half_width: float = 0.15) -> np.ndarray:
    return np.linspace(-half_width, half_width, count) if count > 1 else np.zeros(count)


def plot_balance_over_training(histories: dict[str, pd.DataFrame], out_path: str | Path) -> None:
    """Discrepancy ratios, modulation coefficients and unimodal validation accuracies over epochs.

    ``histories`` maps a method name to one run's history.csv (the caller picks the fold).
    """
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, len(BALANCE_PANELS))
    for ax, (prefix, ylabel) in zip(axes, BALANCE_PANELS):
        _plot_history_columns(ax, histories, prefix)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel)
    _save(fig, out_path)


def _plot_history_columns(ax: Axes, histories: dict[str, pd.DataFrame], prefix: str) -> None:
    """One line per column starting with ``prefix``: colour by method, line style by modality.
    Columns a run never filled (a unimodal baseline's other modality) are left out."""
    suffixes = sorted({c.removeprefix(prefix) for h in histories.values() for c in h.columns if c.startswith(prefix)})
    linestyle = dict(zip(suffixes, cycle(LINESTYLES)))
    plotted = False
    for method_index, (method, history) in enumerate(histories.items()):
        for column in sorted(c for c in history.columns if c.startswith(prefix)):
            if history[column].isna().all():
                continue
            suffix = column.removeprefix(prefix)
            ax.plot(history["epoch"], history[column], color=METHOD_COLOURS(method_index % 20), linestyle=linestyle[suffix],
                    label=f"{method} {suffix}")
            plotted = True
    if plotted:
        ax.legend(fontsize="x-small")
    else:
        _write_no_data(ax)


def _write_no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _save(fig: Figure, out_path: str | Path) -> None:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
