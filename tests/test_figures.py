import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer

from mmbalance.agreement import GROUPS
from mmbalance.figures import (
    plot_accuracy_per_fusion,
    plot_accuracy_per_method,
    plot_agreement,
    plot_balance_over_training,
    plot_discrepancy_ratio,
    plot_ece_per_method,
    plot_logit_norms,
    plot_unimodal_curves,
    read_histories,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000  # more than an empty canvas


def _runs():
    rows = []
    for fusion in ["concat", "film"]:
        for method, base in [("joint", 0.60), ("ogm_ge", 0.64)]:
            for fold in [1, 2, 3]:
                acc = base + 0.01 * fold
                rows.append({"dataset": "cremad", "backbone": "resnet18", "fusion": fusion, "method": method,
                             "fold": fold, "acc": acc, "acc_audio": acc - 0.1, "acc_video": acc - 0.2})
    rows.append({"dataset": "cremad", "backbone": "resnet18", "fusion": "concat", "method": "audio_only",
                 "fold": 1, "acc": 0.55, "acc_audio": 0.55, "acc_video": np.nan})
    return pd.DataFrame(rows)


def test_accuracy_per_method_writes_png(tmp_path):
    out_path = tmp_path / "figures" / "accuracy.png"
    plot_accuracy_per_method(_runs(), out_path, method_order=["joint", "ogm_ge"])
    _assert_png(out_path)


def _history(epochs, balance_columns):
    epoch = np.arange(epochs)
    history = {"epoch": epoch, "train_loss": 1 / (epoch + 1), "val_acc": 0.3 + 0.02 * epoch,
               "val_acc_audio": 0.3 + 0.03 * epoch, "val_acc_video": 0.2 + 0.01 * epoch}
    history.update({column: 1 + 0.1 * epoch for column in balance_columns})
    return pd.DataFrame(history)


def test_balance_over_training_writes_png(tmp_path):
    histories = {
        "joint": _history(5, []),
        "ogm_ge": _history(5, ["balance/ratio_audio", "balance/coeff_audio", "balance/coeff_video"]),
    }
    out_path = tmp_path / "figures" / "balance.png"
    plot_balance_over_training(histories, out_path)
    _assert_png(out_path)


def test_balance_over_training_without_balance_columns_shows_no_data(tmp_path):
    out_path = tmp_path / "balance.png"
    plot_balance_over_training({"joint": _history(3, [])}, out_path)
    _assert_png(out_path)
    plot_balance_over_training({}, out_path)
    _assert_png(out_path)


def _bars(ax):
    """The bar groups of an axes, one BarContainer per ``bar()`` call (error bars excluded)."""
    return [container for container in ax.containers if isinstance(container, BarContainer)]


def _has_no_data_note(fig):
    return any(text.get_text() == "no data" for ax in fig.axes for text in ax.texts)


def _agreement():
    rows = []
    for method, base in [("joint", 0.5), ("mlb", 0.7)]:
        for fold in [1, 2, 3]:
            for i, group in enumerate(GROUPS):
                rows.append({"dataset": "cremad", "backbone": "resnet18", "fusion": "late_linear", "method": method,
                             "fold": fold, "group": group, "n": 10 + i, "acc": base + 0.05 * i + 0.01 * fold})
    return pd.DataFrame(rows)


def test_agreement_figure_has_a_bar_per_method_and_group(tmp_path):
    out_path = tmp_path / "figures" / "agreement.png"
    fig = plot_agreement(_agreement(), out_path, method_order=["mlb", "joint"])

    _assert_png(out_path)
    (ax,) = fig.axes
    bars = _bars(ax)
    assert [container.get_label() for container in bars] == ["mlb", "joint"]
    assert all(len(container) == len(GROUPS) for container in bars)
    # mlb, "only audio" (i = 1): folds .76, .77, .78 -> 77 %.
    assert bars[0][1].get_height() == pytest.approx(77.0)
    # Fold dots: 3 folds x 4 groups per method.
    dots = [collection for collection in ax.collections if isinstance(collection, PathCollection)]
    assert sum(len(collection.get_offsets()) for collection in dots) == 2 * 3 * len(GROUPS)
    assert [label.get_text() for label in ax.get_xticklabels()] == [f"{group}\n(n = {10 + i})" for i, group in enumerate(GROUPS)]
    assert not _has_no_data_note(fig)


def test_figures_without_data_say_so(tmp_path):
    empty_runs = pd.DataFrame(columns=["dataset", "backbone", "fusion", "method", "fold", "acc", "ece"])
    figures = [
        plot_agreement(pd.DataFrame(columns=["dataset", "backbone", "fusion", "method", "fold", "group", "n", "acc"]),
                       tmp_path / "a.png"),
        plot_ece_per_method(empty_runs, tmp_path / "b.png"),
        plot_ece_per_method(_runs().drop(columns="ece", errors="ignore"), tmp_path / "b2.png"),
        plot_accuracy_per_fusion(empty_runs, tmp_path / "c.png"),
        plot_unimodal_curves({}, tmp_path / "d.png"),
        plot_unimodal_curves({"joint": pd.DataFrame({"epoch": [0, 1]})}, tmp_path / "d2.png"),
        plot_discrepancy_ratio({"joint": _history(3, [])}, tmp_path / "e.png"),
        plot_discrepancy_ratio({}, tmp_path / "e2.png"),
    ]
    for fig in figures:
        assert _has_no_data_note(fig)
    for name in ["a", "b", "b2", "c", "d", "d2", "e", "e2"]:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE


def test_ece_figure_has_one_bar_per_method_per_panel(tmp_path):
    runs = _runs().assign(ece=lambda frame: 0.01 * frame["fold"])
    out_path = tmp_path / "ece.png"
    fig = plot_ece_per_method(runs, out_path, method_order=["joint", "ogm_ge"])

    _assert_png(out_path)
    assert [ax.get_title() for ax in fig.axes] == ["cremad / resnet18 / concat", "cremad / resnet18 / film"]
    concat_bars = _bars(fig.axes[0])[0]
    assert len(concat_bars) == 3  # joint, ogm_ge, audio_only
    # joint folds 1, 2, 3 -> ECE 1, 2, 3 % -> mean 2 %; audio_only has one fold (1 %).
    assert [bar.get_height() for bar in concat_bars] == pytest.approx([2.0, 2.0, 1.0])
    assert len(_bars(fig.axes[1])[0]) == 2
    assert [label.get_text() for label in fig.axes[0].get_xticklabels()] == ["joint", "ogm_ge", "audio_only"]


def test_accuracy_per_fusion_groups_bars_by_fusion(tmp_path):
    out_path = tmp_path / "fusion.png"
    runs = _runs().replace({"fusion": {"concat": "late_linear"}})
    fig = plot_accuracy_per_fusion(runs, out_path, method_order=["joint", "ogm_ge"])

    _assert_png(out_path)
    (ax,) = fig.axes
    assert ax.get_title() == "cremad / resnet18"
    # Fusions in the schema's order (linear first), not alphabetically.
    assert [label.get_text() for label in ax.get_xticklabels()] == ["late_linear", "film"]
    bars = _bars(ax)
    assert [container.get_label() for container in bars] == ["joint", "ogm_ge", "audio_only"]
    assert all(len(container) == 2 for container in bars)
    # joint: folds .61, .62, .63 on both fusions -> 62 %; audio_only only has late_linear.
    assert [bar.get_height() for bar in bars[0]] == pytest.approx([62.0, 62.0])
    assert bars[2][0].get_height() == pytest.approx(55.0)
    assert np.isnan(bars[2][1].get_height())
    # Error bars: sample std of .61, .62, .63 = 1 point, so the first bar's runs from 61 to 63.
    (segments,) = bars[0].errorbar.lines[2]
    assert segments.get_segments()[0][:, 1] == pytest.approx([61.0, 63.0])


def test_unimodal_curves_have_a_line_per_method_and_modality(tmp_path):
    audio_only = _history(5, []).assign(val_acc_video=np.nan)
    histories = {"audio_only": audio_only, "joint": [_history(5, []), _history(5, [])], "mlb": _history(4, [])}
    out_path = tmp_path / "curves.png"
    fig = plot_unimodal_curves(histories, out_path)

    _assert_png(out_path)
    audio_ax, video_ax = fig.axes
    assert audio_ax.get_title() == "audio head" and video_ax.get_title() == "video head"
    assert [line.get_label() for line in audio_ax.get_lines()] == ["audio_only", "joint", "mlb"]
    # audio_only never filled its video column: no line there.
    assert [line.get_label() for line in video_ax.get_lines()] == ["joint", "mlb"]
    # Percent, per epoch; joint's two folds are equal, so their mean is the fold's curve.
    assert audio_ax.get_lines()[1].get_ydata() == pytest.approx(100 * (0.3 + 0.03 * np.arange(5)))
    assert len(audio_ax.get_lines()[2].get_xdata()) == 4


def test_discrepancy_ratio_compares_with_and_without_modulation(tmp_path):
    histories = {
        "joint": _history(5, ["balance/ratio_audio"]),
        "ogm_ge": [_history(5, ["balance/ratio_audio"]), _history(5, ["balance/ratio_audio"])],
        "mlb": _history(5, ["balance/ratio_audio"]),  # not one of the compared methods
    }
    out_path = tmp_path / "ratio.png"
    fig = plot_discrepancy_ratio(histories, out_path)

    _assert_png(out_path)
    (ax,) = fig.axes
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["joint (no modulation)", "ogm_ge"]
    assert handles[0].get_linestyle() == "--"
    assert handles[1].get_ydata() == pytest.approx(1 + 0.1 * np.arange(5))
    assert not _has_no_data_note(fig)


def test_discrepancy_ratio_draws_each_variant(tmp_path):
    histories = {label: _history(5, ["balance/ratio_audio"]) for label in ["joint/adam", "joint", "ogm_ge/adam", "ogm_ge"]}
    (ax,) = plot_discrepancy_ratio(histories, tmp_path / "ratio.png").axes
    assert ax.get_legend_handles_labels()[1] == ["joint/adam (no modulation)", "joint (no modulation)", "ogm_ge/adam", "ogm_ge"]


def test_logit_norms_have_a_panel_per_method_and_modality_and_a_line_per_class(tmp_path):
    def history(scale):
        epochs = np.arange(4)
        return pd.DataFrame({"epoch": epochs, "logit_norm/audio/NEU": scale * (1 + epochs), "logit_norm/audio/HAP": scale * 2 + 0 * epochs,
                             "logit_norm/video/NEU": 0.5 + 0 * epochs, "logit_norm/video/HAP": 0.25 + 0 * epochs})

    histories = {"joint": [history(1.0), history(3.0)], "olm": history(1.0), "mlb": history(9.0)}
    fig = plot_logit_norms(histories, tmp_path / "norms.png")
    _assert_png(tmp_path / "norms.png")
    assert [ax.get_title() for ax in fig.axes] == ["joint: audio head", "joint: video head", "olm: audio head", "olm: video head"]
    joint_audio = fig.axes[0]
    assert [line.get_label() for line in joint_audio.get_lines()] == ["HAP", "NEU"]
    # The mean over joint's two folds (scales 1 and 3) of 2*scale is 4.
    assert joint_audio.get_lines()[0].get_ydata() == pytest.approx([4, 4, 4, 4])
    assert not _has_no_data_note(fig)
    assert _has_no_data_note(plot_logit_norms({"mlb": history(1.0)}, tmp_path / "none.png"))


def test_read_histories_groups_folds_by_method(tmp_path):
    for method, variant, fold in [("joint", "default", 1), ("joint", "default", 2), ("olm", "default", 1), ("olm", "sgd", 1)]:
        path = tmp_path / method / variant / f"fold{fold}" / "history.csv"
        path.parent.mkdir(parents=True)
        pd.DataFrame({"epoch": [0], "val_acc": [fold / 10]}).to_csv(path, index=False)
    histories = read_histories(sorted(tmp_path.glob("*/*/*/history.csv")))
    # The default variant is labelled by the method alone, another as <method>/<variant>.
    assert sorted(histories) == ["joint", "olm", "olm/sgd"]
    assert [h["val_acc"][0] for h in histories["joint"]] == [0.1, 0.2]
