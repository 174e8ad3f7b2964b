"""Figures in the style of the papers: MLB Fig. 3 (accuracy per method), Fig. 4 (agreement with the
unimodal baselines), Fig. 5 (calibration), Fig. 6 (accuracy per fusion); OGM-GE Fig. 3 (discrepancy
ratio with and without modulation); balance and unimodal accuracies over training.

Figures are bare ``matplotlib.figure.Figure`` objects: they render with Agg and are freed like any
object, so nothing depends on pyplot's global state or display backend.
"""

from collections.abc import Mapping, Sequence
from itertools import cycle
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmbalance.aggregate import PANEL_KEYS, ordered_methods, run_label
from mmbalance.agreement import GROUPS
from mmbalance.models.fusion import FUSIONS

DPI = 150
# 20 distinct colours: the default cycle repeats after 10, and a grid has 12 methods.
METHOD_COLOURS = colormaps["tab20"]
MODALITY_MARKERS = ("v", "^", "s", "D")
LINESTYLES = ("-", "--", ":", "-.")
# The schema's fusion order: linear first, then increasingly non-linear (MLB Fig. 6).
FUSION_ORDER = tuple(FUSIONS)  # the registry's order: simple fusions first, then token fusions
# One run's history.csv, or one per fold (then drawn as the mean with a min-max band).
Histories = Mapping[str, pd.DataFrame | Sequence[pd.DataFrame]]
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


def plot_agreement(agreement: pd.DataFrame, out_path: str | Path, method_order: Sequence[str] | None = None) -> Figure:
    """MLB Fig. 4: fused test accuracy of each method on the samples neither, one or both unimodal
    baselines get right. One panel per (dataset, backbone, fusion); x = the four groups, a bar per
    method (mean over folds, std error bar, fold dots). ``agreement`` is ``agreement_table``'s
    per-fold frame; the tick labels give each group's mean size."""
    panels = list(agreement.groupby(PANEL_KEYS)) if not agreement.empty else []
    panel_width = max(6.0, 1.2 + 0.35 * len(GROUPS) * (agreement["method"].nunique() if panels else 1))
    fig = Figure(figsize=(panel_width * max(1, len(panels)), 4.5), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        _write_no_data(axes[0])
    for ax, (panel, rows) in zip(axes, panels):
        _grouped_bars(ax, rows, "group", list(GROUPS), ordered_methods(rows["method"], method_order))
        sizes = rows.groupby("group")["n"].mean()
        ax.set_xticks(np.arange(len(GROUPS)), [f"{g}\n(n = {sizes[g]:.0f})" if g in sizes else g for g in GROUPS])
        ax.set_ylabel("fused test accuracy (%)")
        ax.set_xlabel("which unimodal baseline is right")
        ax.set_title(" / ".join(map(str, panel)))
        if rows["acc"].isna().all():
            _write_no_data(ax)
    _save(fig, out_path)
    return fig


def plot_ece_per_method(runs: pd.DataFrame, out_path: str | Path, method_order: Sequence[str] | None = None) -> Figure:
    """MLB Fig. 5: expected calibration error of the fused output per method, one panel per
    (dataset, backbone, fusion), bars = fold means with std error bars, dots = folds."""
    has_ece = "ece" in runs.columns and runs["ece"].notna().any()
    panels = list(runs.dropna(subset=["ece"]).groupby(PANEL_KEYS)) if has_ece else []
    width = 1.5 + 0.6 * (runs["method"].nunique() if not runs.empty else 1)
    fig = Figure(figsize=(width * max(1, len(panels)), 4.0), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        _write_no_data(axes[0])
    for ax, (panel, panel_runs) in zip(axes, panels):
        methods = ordered_methods(panel_runs["method"], method_order)
        x = np.arange(len(methods))
        folds = [100 * panel_runs.loc[panel_runs["method"] == method, "ece"].to_numpy() for method in methods]
        stds = [values.std(ddof=1) if len(values) > 1 else 0.0 for values in folds]
        ax.bar(x, [values.mean() for values in folds], width=0.6, yerr=stds, capsize=3,
               color=[METHOD_COLOURS(i % 20) for i in range(len(methods))], edgecolor="black")
        dot_x = np.concatenate([xi + _spread(len(values)) for xi, values in zip(x, folds)])
        ax.scatter(dot_x, np.concatenate(folds), s=12, color="black", zorder=3, label="folds")
        ax.set_xticks(x, methods, rotation=30, ha="right")
        ax.set_ylabel("ECE (%, 15 bins), lower is better")
        ax.set_title(" / ".join(map(str, panel)))
        ax.legend(fontsize="x-small")
    _save(fig, out_path)
    return fig


def plot_accuracy_per_fusion(
    runs: pd.DataFrame,
    out_path: str | Path,
    method_order: Sequence[str] | None = None,
    fusion_order: Sequence[str] | None = FUSION_ORDER,
) -> Figure:
    """MLB Fig. 6: fused test accuracy per fusion, one panel per (dataset, backbone); x = fusion,
    a bar per method (fold mean, std error bar). A method missing on a fusion leaves a gap."""
    panel_keys = [key for key in PANEL_KEYS if key != "fusion"]
    panels = list(runs.groupby(panel_keys)) if not runs.empty else []
    bar_count = runs["method"].nunique() * runs["fusion"].nunique() if panels else 0
    fig = Figure(figsize=(max(6.0, 1.5 + 0.25 * bar_count), 4.5 * max(1, len(panels))), layout="constrained")
    axes = fig.subplots(max(1, len(panels)), 1, squeeze=False)[:, 0]
    if not panels:
        _write_no_data(axes[0])
    for ax, (panel, panel_runs) in zip(axes, panels):
        fusions = ordered_methods(panel_runs["fusion"], fusion_order)
        _grouped_bars(ax, panel_runs, "fusion", fusions, ordered_methods(panel_runs["method"], method_order), fold_dots=False)
        ax.set_xticks(np.arange(len(fusions)), fusions)
        ax.set_ylabel("fused test accuracy (%)")
        ax.set_xlabel("fusion")
        ax.set_title(" / ".join(map(str, panel)))
    _save(fig, out_path)
    return fig


def _grouped_bars(ax: Axes, rows: pd.DataFrame, by: str, categories: list[str], methods: list[str],
                  fold_dots: bool = True) -> None:
    """A cluster per value of column ``by``, a bar per method in it: the mean of the rows' ``acc``
    (fractions, drawn in percent) with a sample-std error bar, and optionally the folds as dots.
    A method without values in a category gets no bar there (height NaN)."""
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(categories))
    accs = rows.dropna(subset=["acc"]).groupby([by, "method"])["acc"]
    for i, method in enumerate(methods):
        fold_values = [100 * accs.get_group((category, method)).to_numpy() if (category, method) in accs.groups else np.array([])
                       for category in categories]
        means = [v.mean() if len(v) else np.nan for v in fold_values]
        stds = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in fold_values]
        offset = (i - (len(methods) - 1) / 2) * width
        ax.bar(x + offset, means, width=width, yerr=stds, capsize=2, color=METHOD_COLOURS(i % 20),
               edgecolor="black", linewidth=0.5, label=method)
        if fold_dots:
            dots = [(xi + offset + _spread(len(v), width / 4), v) for xi, v in zip(x, fold_values) if len(v)]
            if dots:
                ax.scatter(np.concatenate([d[0] for d in dots]), np.concatenate([d[1] for d in dots]), s=6,
                           color="black", zorder=3)
    if methods:
        ax.legend(fontsize="x-small", ncol=min(4, len(methods)))


def plot_unimodal_curves(histories: Histories, out_path: str | Path) -> Figure:
    """Validation accuracy of each unimodal head over epochs, a panel per modality and a line per
    method: shows which modality a method lets lag behind, and when it catches up. With several
    folds per method, the line is their mean and the band their min-max."""
    prefix = "val_acc_"
    modalities = sorted({c.removeprefix(prefix) for frames in map(_folds, histories.values()) for h in frames
                         for c in h.columns if c.startswith(prefix)})
    fig = Figure(figsize=(5.5 * max(1, len(modalities)), 4.5), layout="constrained")
    axes = fig.subplots(1, max(1, len(modalities)), squeeze=False)[0]
    if not modalities:
        _write_no_data(axes[0])
    for ax, modality in zip(axes, modalities):
        column = prefix + modality
        plotted = False
        for index, (method, frames) in enumerate(histories.items()):
            plotted |= _plot_fold_curve(ax, _folds(frames), column, label=method, color=METHOD_COLOURS(index % 20), scale=100)
        ax.set_title(f"{modality} head")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation accuracy (%)")
        if plotted:
            ax.legend(fontsize="x-small")
        else:
            _write_no_data(ax)
    _save(fig, out_path)
    return fig


def plot_discrepancy_ratio(
    histories: Histories,
    out_path: str | Path,
    modality: str = "audio",
    without: str = "joint",
    modulated: Sequence[str] = ("ogm", "ogm_ge"),
) -> Figure:
    """OGM-GE Fig. 3: the discrepancy ratio of ``modality`` (its heads' mean true-class confidence
    over the other modalities', history column ``balance/ratio_<modality>``) per epoch, for
    training without modulation (``without``, dashed) and with it (``modulated``), each variant of
    them as its own line. Above 1 the modality dominates; modulation should pull the ratio towards 1."""
    column = f"balance/ratio_{modality}"
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    plotted = False
    # Every variant of the methods drawn (labels `<method>` or `<method>/<variant>`).
    labels = [label for method in [without, *modulated] for label in histories if label.split("/")[0] == method]
    for index, label in enumerate(labels):
        unmodulated = label.split("/")[0] == without
        plotted |= _plot_fold_curve(ax, _folds(histories[label]), column, label=f"{label} (no modulation)" if unmodulated else label,
                                    color=METHOD_COLOURS(index % 20), linestyle="--" if unmodulated else "-")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"discrepancy ratio {modality} / others")
    ax.set_title(f"{modality} dominance with and without modulation")
    if plotted:
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.legend(fontsize="x-small")
    else:
        _write_no_data(ax)
    _save(fig, out_path)
    return fig


def _folds(frames: pd.DataFrame | Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    return [frames] if isinstance(frames, pd.DataFrame) else list(frames)


def _plot_fold_curve(ax: Axes, frames: list[pd.DataFrame], column: str, label: str, color, linestyle: str = "-",
                     scale: float = 1.0) -> bool:
    """Mean over folds of ``column`` per epoch, with the folds' min-max as a band; False (and
    nothing drawn) when no fold has a value in that column."""
    values = [frame[["epoch", column]] for frame in frames if column in frame.columns and frame[column].notna().any()]
    if not values:
        return False
    per_epoch = pd.concat(values).dropna().groupby("epoch")[column].agg(["mean", "min", "max"]) * scale
    ax.plot(per_epoch.index, per_epoch["mean"], color=color, linestyle=linestyle, label=label)
    if len(values) > 1:
        ax.fill_between(per_epoch.index, per_epoch["min"], per_epoch["max"], color=color, alpha=0.2, linewidth=0)
    return True


def plot_logit_norms(histories: Histories, out_path: str | Path, methods: Sequence[str] = ("joint", "olm")) -> Figure:
    """OLM Fig. 5: the mean logit norm of each modality's head per class over epochs (history
    columns ``logit_norm/<modality>/<class>``, measured on validation). A row per method among
    ``methods`` that the panel has, a column per modality, a line per class: under Joint the
    dominant modality's logits grow larger for every class; OLM should bring them together."""
    prefix = "logit_norm/"
    rows = [label for method in methods for label in histories if label.split("/")[0] == method]
    columns = sorted({c for m in rows for h in _folds(histories[m]) for c in h.columns if c.startswith(prefix)})
    modalities = sorted({c.split("/")[1] for c in columns})
    fig = Figure(figsize=(5 * max(1, len(modalities)), 3.8 * max(1, len(rows))), layout="constrained")
    axes = fig.subplots(max(1, len(rows)), max(1, len(modalities)), squeeze=False, sharey=True)
    if not rows or not modalities:
        _write_no_data(axes[0][0])
    for row_axes, method in zip(axes, rows):
        for ax, modality in zip(row_axes, modalities):
            classes = [c for c in columns if c.split("/")[1] == modality]
            plotted = False
            for index, column in enumerate(classes):
                plotted |= _plot_fold_curve(ax, _folds(histories[method]), column, label=column.split("/")[2],
                                            color=METHOD_COLOURS(index % 20))
            ax.set_title(f"{method}: {modality} head")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("mean logit L2 norm (validation)")
            if plotted:
                ax.legend(fontsize="x-small", ncol=2)
            else:
                _write_no_data(ax)
    _save(fig, out_path)
    return fig


def read_histories(paths: Sequence[str | Path]) -> dict[str, list[pd.DataFrame]]:
    """history.csv files at .../{method}/{variant}/fold{k}/history.csv -> label -> one frame per
    fold; the label is the method, with ``/<variant>`` unless the variant is the default."""
    histories: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(map(Path, paths)):
        label = run_label(path.parent.parent.parent.name, path.parent.parent.name)
        histories.setdefault(label, []).append(pd.read_csv(path))
    return histories
