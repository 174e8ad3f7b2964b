import math

import numpy as np
import pandas as pd
import pytest

from mmbalance.agreement import (
    GROUPS,
    agreement_from_files,
    agreement_table,
    cell_from_path,
    summarize_agreement,
)

# 8 test samples, 3 classes. Which output gets which sample right (1) or wrong (0):
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
AUDIO_ONLY = [1, 1, 0, 0, 1, 0, 1, 0]
VIDEO_ONLY = [1, 0, 1, 0, 1, 1, 0, 1]
# -> groups: 0 both right, 1 only audio, 2 only video, 3 both wrong, 4 both right,
#    5 only video, 6 only audio, 7 only video.
FUSED = [1, 1, 0, 0, 1, 1, 0, 1]
AUDIO_HEAD = [1, 1, 0, 1, 0, 0, 1, 0]
VIDEO_HEAD = [0, 0, 1, 0, 1, 1, 0, 1]


def _probs(correct, labels=LABELS):
    """Probabilities whose argmax is the label where ``correct`` is 1, the next class otherwise."""
    predicted = np.where(np.asarray(correct) == 1, labels, (labels + 1) % 3)
    probs = np.full((len(labels), 3), 0.1, dtype=np.float32)
    probs[np.arange(len(labels)), predicted] = 0.8
    return probs


def _write(path, fused, labels=LABELS, clips=None, **heads):
    path.parent.mkdir(parents=True, exist_ok=True)
    clips = np.array([f"clip{i}" for i in range(len(labels))]) if clips is None else clips
    arrays = {f"probs_{head}": _probs(correct, labels) for head, correct in heads.items()}
    np.savez(path, clips=clips, labels=labels, class_names=np.array(["a", "b", "c"]), best_epoch=np.array(2),
             probs_fused=_probs(fused, labels), **arrays)
    return path


@pytest.fixture
def three_runs(tmp_path):
    audio = _write(tmp_path / "audio.npz", AUDIO_ONLY, audio=AUDIO_ONLY)
    video = _write(tmp_path / "video.npz", VIDEO_ONLY, video=VIDEO_ONLY)
    multimodal = _write(tmp_path / "mlb.npz", FUSED, audio=AUDIO_HEAD, video=VIDEO_HEAD)
    return audio, video, multimodal


def test_group_counts_and_accuracies_by_hand(three_runs):
    table = agreement_from_files(*three_runs).set_index("group")

    assert list(table.index) == list(GROUPS)
    assert list(table.columns) == ["n", "acc", "acc_audio", "acc_video"]
    # both wrong {3}; only audio {1, 6}; only video {2, 5, 7}; both right {0, 4}.
    assert table["n"].tolist() == [1, 2, 3, 2]
    # fused right on 0, 1, 4, 5, 7: {3} 0/1; {1, 6} 1/2; {2, 5, 7} 2/3; {0, 4} 2/2.
    assert table["acc"].tolist() == pytest.approx([0.0, 0.5, 2 / 3, 1.0])
    # audio head right on 0, 1, 3, 6: {3} 1; {1, 6} 1; {2, 5, 7} 0; {0, 4} 1/2.
    assert table["acc_audio"].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.5])
    # video head right on 2, 4, 5, 7: {3} 0; {1, 6} 0; {2, 5, 7} 1; {0, 4} 1/2.
    assert table["acc_video"].tolist() == pytest.approx([0.0, 0.0, 1.0, 0.5])


def test_empty_group_has_nan_accuracy(tmp_path):
    # Both baselines always right: only "both right" has samples.
    right = [1] * len(LABELS)
    table = agreement_from_files(
        _write(tmp_path / "a.npz", right), _write(tmp_path / "v.npz", right), _write(tmp_path / "m.npz", FUSED)
    ).set_index("group")

    assert table["n"].tolist() == [0, 0, 0, 8]
    assert math.isnan(table.loc["both wrong", "acc"])
    assert table.loc["both right", "acc"] == pytest.approx(5 / 8)
    assert "acc_audio" not in table.columns  # the multimodal run had no unimodal heads


def test_mismatched_labels_name_both_files(three_runs, tmp_path):
    audio, video, _ = three_runs
    shuffled = _write(tmp_path / "other_fold.npz", FUSED, labels=LABELS[::-1].copy())
    with pytest.raises(ValueError, match=r"labels of .*audio\.npz and .*other_fold\.npz do not match \(6 of 8 differ\)"):
        agreement_from_files(audio, video, shuffled)

    shorter = _write(tmp_path / "short.npz", FUSED[:4], labels=LABELS[:4])
    with pytest.raises(ValueError, match=r"short\.npz do not match \(8 vs 4 samples\)"):
        agreement_from_files(audio, video, shorter)


def test_same_labels_in_another_clip_order_are_rejected(three_runs, tmp_path):
    audio, video, _ = three_runs
    # Samples 0 and 3 have the same label, so swapping them keeps the labels.
    clips = np.array([f"clip{i}" for i in [3, 1, 2, 0, 4, 5, 6, 7]])
    swapped = _write(tmp_path / "swapped.npz", FUSED, clips=clips)
    with pytest.raises(ValueError, match=r"clips of .*audio\.npz and .*swapped\.npz"):
        agreement_from_files(audio, video, swapped)


def test_cell_from_path():
    path = "results/runs/cremad/resnet18/late_linear/mlb/beta_max5/fold2/predictions.npz"
    assert cell_from_path(path) == {"dataset": "cremad", "backbone": "resnet18", "fusion": "late_linear",
                                    "method": "mlb", "variant": "beta_max5", "fold": 2}
    with pytest.raises(ValueError, match="not laid out"):
        cell_from_path("results/mlb/predictions.npz")


def _run(root, fusion, method, fold, dataset="cremad", variant="default"):
    return root / dataset / "resnet18" / fusion / method / variant / f"fold{fold}" / "predictions.npz"


def test_agreement_table_pairs_runs_with_their_baselines(tmp_path):
    paths = [
        _write(_run(tmp_path, "late_linear", "audio_only", 1), AUDIO_ONLY, audio=AUDIO_ONLY),
        _write(_run(tmp_path, "late_linear", "video_only", 1), VIDEO_ONLY, video=VIDEO_ONLY),
        _write(_run(tmp_path, "late_linear", "mlb", 1), FUSED, audio=AUDIO_HEAD, video=VIDEO_HEAD),
        # No baselines trained with film: those of late_linear stand in.
        _write(_run(tmp_path, "film", "joint", 1), AUDIO_ONLY, audio=AUDIO_HEAD, video=VIDEO_HEAD),
        # No baselines for this dataset at all: left out.
        _write(_run(tmp_path, "late_linear", "joint", 1, dataset="other"), FUSED),
        # A variant without baselines of its own: those of the default variant stand in.
        _write(_run(tmp_path, "late_linear", "mlb", 1, variant="beta_max5"), FUSED, audio=AUDIO_HEAD, video=VIDEO_HEAD),
    ]
    table = agreement_table(paths)

    assert list(table.columns) == ["dataset", "backbone", "fusion", "method", "variant", "fold", "group", "n", "acc",
                                   "acc_audio", "acc_video"]
    assert len(table) == 3 * len(GROUPS)
    variant = table[table["variant"] == "beta_max5"].set_index("group")
    assert variant["acc"].tolist() == pytest.approx([0.0, 0.5, 2 / 3, 1.0])
    mlb = table[(table["method"] == "mlb") & (table["variant"] == "default")].set_index("group")
    assert mlb["acc"].tolist() == pytest.approx([0.0, 0.5, 2 / 3, 1.0])
    assert (mlb["fold"] == 1).all() and (mlb["fusion"] == "late_linear").all()
    # The film joint run predicts like audio-only: right on its own groups only.
    joint = table[(table["method"] == "joint") & (table["fusion"] == "film")].set_index("group")
    assert joint["acc"].tolist() == pytest.approx([0.0, 1.0, 0.0, 1.0])
    assert joint["n"].tolist() == [1, 2, 3, 2]


def test_agreement_table_without_runs_is_empty_with_columns():
    table = agreement_table([])
    assert table.empty
    assert {"method", "group", "n", "acc"} <= set(table.columns)
    assert summarize_agreement(table).empty


def test_summarize_agreement_over_three_folds():
    cell = {"dataset": "cremad", "backbone": "resnet18", "fusion": "late_linear", "method": "mlb", "variant": "default"}
    rows = []
    for fold, (n, acc, acc_audio) in enumerate([(2, 0.5, 0.0), (3, 0.6, 1 / 3), (4, 1.0, 0.5)], start=1):
        rows.append({**cell, "fold": fold, "group": "only video", "n": n, "acc": acc, "acc_audio": acc_audio})
        rows.append({**cell, "fold": fold, "group": "both wrong", "n": 0 if fold == 1 else 1,
                     "acc": np.nan if fold == 1 else 1.0, "acc_audio": np.nan if fold == 1 else 0.0})
    summary = summarize_agreement(pd.DataFrame(rows))

    # Groups in GROUPS order, not alphabetically.
    assert summary["group"].tolist() == ["both wrong", "only video"]
    only_video = summary.set_index("group").loc["only video"]
    assert only_video["n_mean"] == pytest.approx(3.0)
    # acc .5, .6, 1.0: mean .7; deviations -.2, -.1, .3 -> sample var (.04 + .01 + .09) / 2 = .07.
    assert only_video["acc_mean"] == pytest.approx(0.7)
    assert only_video["acc_std"] == pytest.approx(math.sqrt(0.07))
    # acc_audio 0, 1/3, 1/2: mean 5/18; sample var ((5/18)^2 + (1/18)^2 + (4/18)^2) / 2 = 21/324.
    assert only_video["acc_audio_mean"] == pytest.approx(5 / 18)
    assert only_video["acc_audio_std"] == pytest.approx(math.sqrt(21 / 324))
    assert only_video["n_folds"] == 3
    # An empty group in one fold: the mean is over the folds where it has samples.
    both_wrong = summary.set_index("group").loc["both wrong"]
    assert both_wrong["acc_mean"] == pytest.approx(1.0)
    assert both_wrong["acc_std"] == pytest.approx(0.0)
    assert both_wrong["n_mean"] == pytest.approx(2 / 3)
