import json
import math

import pandas as pd
import pytest

from mmbalance.aggregate import collect, paired_vs_joint, summarize, write_tables

PANEL = {"dataset": "cremad", "backbone": "resnet18", "fusion": "concat"}
# Fused accuracy per fold (1, 2, 3).
JOINT_ACC = [0.60, 0.62, 0.64]
OGM_ACC = [0.63, 0.66, 0.66]


def _metrics(method, fold, acc, heads):
    head_metrics = {"accuracy": acc, "macro_f1": acc - 0.1, "mAP": acc + 0.1, "ece": 0.05}
    return {
        "cell": {**PANEL, "method": method, "fold": fold},
        "best_epoch": 10 + fold,
        "epochs_trained": 30,
        "num_test": 100,
        "fused": head_metrics,
        **{head: {**head_metrics, "accuracy": acc - 0.1} for head in heads},
    }


@pytest.fixture
def metric_paths(tmp_path):
    runs = [_metrics("joint", fold, acc, ["audio", "video"]) for fold, acc in zip([1, 2, 3], JOINT_ACC)]
    runs += [_metrics("ogm_ge", fold, acc, ["audio", "video"]) for fold, acc in zip([1, 2, 3], OGM_ACC)]
    runs.append(_metrics("audio_only", 1, 0.55, ["audio"]))  # one fold, no video head
    paths = []
    for i, run in enumerate(runs):
        path = tmp_path / "metrics" / f"run{i}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(run))
        paths.append(path)
    return paths


def test_collect_has_one_row_per_run_with_nan_for_missing_heads(metric_paths):
    runs = collect(metric_paths)

    assert len(runs) == 7
    assert {"acc", "macro_f1", "mAP", "ece", "acc_audio", "acc_video", "best_epoch"} <= set(runs.columns)
    audio_only = runs[runs["method"] == "audio_only"].iloc[0]
    assert audio_only["acc_audio"] == pytest.approx(0.45)
    assert math.isnan(audio_only["acc_video"])


def test_collect_rejects_two_files_for_one_run(metric_paths):
    with pytest.raises(ValueError, match="same run"):
        collect([metric_paths[0], metric_paths[0]])


def test_summarize_means_and_sample_stds(metric_paths):
    summary = summarize(collect(metric_paths), method_order=["joint", "ogm_ge"]).set_index("method")

    # joint: mean .62; deviations -.02, 0, .02 -> sample var (.0004 + .0004) / 2 = .0004 -> std .02.
    assert summary.loc["joint", "acc_mean"] == pytest.approx(0.62)
    assert summary.loc["joint", "acc_std"] == pytest.approx(0.02)
    # ogm_ge: mean .65; deviations -.02, .01, .01 -> sample var .0006 / 2 = .0003 -> std sqrt(.0003).
    assert summary.loc["ogm_ge", "acc_mean"] == pytest.approx(0.65)
    assert summary.loc["ogm_ge", "acc_std"] == pytest.approx(math.sqrt(0.0003))
    assert summary.loc["ogm_ge", "acc_video_mean"] == pytest.approx(0.55)
    assert summary.loc["joint", "n_folds"] == 3
    # A single fold has no sample std.
    assert summary.loc["audio_only", "n_folds"] == 1
    assert math.isnan(summary.loc["audio_only", "acc_std"])


def test_summarize_orders_listed_methods_first_then_the_rest_alphabetically(metric_paths):
    runs = collect(metric_paths)
    assert list(summarize(runs, method_order=["ogm_ge", "joint"])["method"]) == ["ogm_ge", "joint", "audio_only"]
    assert list(summarize(runs)["method"]) == ["audio_only", "joint", "ogm_ge"]


def test_paired_vs_joint_uses_per_fold_differences(metric_paths):
    paired = paired_vs_joint(collect(metric_paths)).set_index("method")

    # ogm_ge - joint per fold: .03, .04, .02 -> mean .03, sample std .01.
    assert paired.loc["ogm_ge", "acc_diff_mean"] == pytest.approx(0.03)
    assert paired.loc["ogm_ge", "acc_diff_std"] == pytest.approx(0.01)
    assert paired.loc["ogm_ge", "n"] == 3
    # audio_only only has fold 1: .55 - .60.
    assert paired.loc["audio_only", "acc_diff_mean"] == pytest.approx(-0.05)
    assert paired.loc["audio_only", "n"] == 1
    assert "joint" not in paired.index


def test_paired_vs_joint_is_empty_without_joint_runs(metric_paths):
    runs = collect(metric_paths)
    assert paired_vs_joint(runs[runs["method"] != "joint"]).empty


def test_write_tables(metric_paths, tmp_path):
    out_dir = tmp_path / "tables"
    write_tables(metric_paths, out_dir, method_order=["joint", "ogm_ge"], protocol="5-fold CV, best val epoch", summary_json=out_dir / "summary.json")

    assert len(pd.read_csv(out_dir / "runs.csv")) == 7
    assert len(pd.read_csv(out_dir / "summary.csv")) == 3
    assert len(pd.read_csv(out_dir / "paired_vs_joint.csv")) == 2

    markdown = (out_dir / "summary.md").read_text()
    assert markdown.startswith("Protocol: 5-fold CV, best val epoch\n")
    header = "| dataset | backbone | fusion | method | acc (mean ± std) | audio acc | video acc | macro-F1 | mAP | ECE | n |"
    assert header in markdown
    assert "| 62.0 ± 2.0 |" in markdown  # joint fused accuracy
    assert "| 55.0 |" in markdown  # audio_only: one fold, no std
    assert markdown.index("| joint |") < markdown.index("| ogm_ge |") < markdown.index("| audio_only |")

    text = (out_dir / "summary.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    assert metrics["cremad/resnet18/concat/joint/acc_mean"] == 0.62
    assert metrics["cremad/resnet18/concat/ogm_ge/acc_std"] == 0.0173
    assert metrics["cremad/resnet18/concat/joint/n_folds"] == 3
    assert "cremad/resnet18/concat/audio_only/acc_std" not in metrics
    assert "cremad/resnet18/concat/audio_only/acc_video_mean" not in metrics
