import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mmbalance.aggregate import collect, paired_tests, paired_vs_joint, summarize, write_tables

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_CSV = ROOT / "config" / "published.csv"
PAPER_SPECS = ROOT / "config" / "paper_tables.yaml"
PANEL = {"dataset": "cremad", "backbone": "resnet18", "fusion": "concat"}
# Fused accuracy per fold (1, 2, 3).
JOINT_ACC = [0.60, 0.62, 0.64]
OGM_ACC = [0.63, 0.66, 0.66]


def _metrics(method, fold, acc, heads, variant="default"):
    head_metrics = {"accuracy": acc, "macro_f1": acc - 0.1, "mAP": acc + 0.1, "ece": 0.05}
    return {
        "cell": {**PANEL, "method": method, "variant": variant, "fold": fold},
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
    header = "| dataset | backbone | fusion | method | variant | acc (mean ± std) | audio acc | video acc | macro-F1 | mAP | ECE | n |"
    assert header in markdown
    assert "| 62.0 ± 2.0 |" in markdown  # joint fused accuracy
    assert "| 55.0 |" in markdown  # audio_only: one fold, no std
    assert markdown.index("| joint |") < markdown.index("| ogm_ge |") < markdown.index("| audio_only |")

    text = (out_dir / "summary.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    assert metrics["cremad/resnet18/concat/joint/default/acc_mean"] == 0.62
    assert metrics["cremad/resnet18/concat/ogm_ge/default/acc_std"] == 0.0173
    assert metrics["cremad/resnet18/concat/joint/default/n_folds"] == 3
    assert "cremad/resnet18/concat/audio_only/default/acc_std" not in metrics
    assert "cremad/resnet18/concat/audio_only/default/acc_video_mean" not in metrics


def test_paired_vs_joint_tests_three_folds(metric_paths):
    paired = paired_vs_joint(collect(metric_paths)).set_index("method")

    # Differences .03, .04, .02: t = .03 / (.01 / sqrt 3) = sqrt 27 with 2 degrees of freedom,
    # whose two-sided p-value is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(27 / 29).
    assert paired.loc["ogm_ge", "t_pvalue"] == pytest.approx(1 - math.sqrt(27 / 29))
    assert paired.loc["ogm_ge", "t_pvalue"] == pytest.approx(stats.ttest_rel(OGM_ACC, JOINT_ACC).pvalue)
    # Wilcoxon, exact: all three differences positive, probability 2 * (1/2)^3 = 0.25.
    assert paired.loc["ogm_ge", "wilcoxon_pvalue"] == pytest.approx(0.25)
    # One fold is too few for either test.
    assert math.isnan(paired.loc["audio_only", "t_pvalue"])
    assert math.isnan(paired.loc["audio_only", "wilcoxon_pvalue"])


def test_paired_tests_where_undefined():
    # Fewer than three pairs.
    assert all(math.isnan(p) for p in paired_tests([0.6, 0.7], [0.5, 0.6]))
    # Differences without spread: no t statistic; Wilcoxon still ranks them (all positive).
    t_pvalue, wilcoxon_pvalue = paired_tests([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert math.isnan(t_pvalue)
    assert wilcoxon_pvalue == pytest.approx(0.25)
    # All differences zero: neither test is defined.
    assert all(math.isnan(p) for p in paired_tests([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]))
    # Four pairs, larger sample: matches scipy.
    a, b = [0.61, 0.64, 0.60, 0.70], [0.60, 0.60, 0.62, 0.65]
    assert paired_tests(a, b) == pytest.approx((stats.ttest_rel(a, b).pvalue, stats.wilcoxon(np.subtract(a, b)).pvalue))


def _variant_runs():
    """Joint and OGM-GE under the default and an `adam` variant; OGM-GE also under `ge_only`,
    which Joint does not have."""
    rows = []
    for variant, offset in [("default", 0.0), ("adam", -0.1)]:
        rows += [_metrics("joint", fold, acc + offset, [], variant) for fold, acc in zip([1, 2, 3], JOINT_ACC)]
        rows += [_metrics("ogm_ge", fold, acc + offset, [], variant) for fold, acc in zip([1, 2, 3], OGM_ACC)]
    rows += [_metrics("ogm_ge", fold, acc + 0.01, [], "ge_only") for fold, acc in zip([1, 2, 3], OGM_ACC)]
    return collect_rows(rows)


def collect_rows(rows):
    from mmbalance.aggregate import _run_row

    return pd.DataFrame([_run_row(r) for r in rows])


def test_variants_are_summarised_apart_default_first():
    summary = summarize(_variant_runs(), ["joint", "ogm_ge"])
    assert list(zip(summary["method"], summary["variant"])) == [
        ("joint", "default"), ("joint", "adam"), ("ogm_ge", "default"), ("ogm_ge", "adam"), ("ogm_ge", "ge_only")]
    adam = summary[(summary["method"] == "ogm_ge") & (summary["variant"] == "adam")].iloc[0]
    assert adam["acc_mean"] == pytest.approx(0.55) and adam["n_folds"] == 3


def test_a_variant_is_paired_with_joint_of_the_same_variant_else_the_default():
    paired = paired_vs_joint(_variant_runs()).set_index(["method", "variant"])
    # ogm_ge/adam - joint/adam: the same .03 mean as the default pair (both shifted by -.1).
    assert paired.loc[("ogm_ge", "adam"), "joint_variant"] == "adam"
    assert paired.loc[("ogm_ge", "adam"), "acc_diff_mean"] == pytest.approx(0.03)
    # No joint/ge_only run: paired with joint/default, .04 on average.
    assert paired.loc[("ogm_ge", "ge_only"), "joint_variant"] == "default"
    assert paired.loc[("ogm_ge", "ge_only"), "acc_diff_mean"] == pytest.approx(0.04)
    assert len(paired) == 3


def _write_predictions(root, method, labels, correct):
    path = root / "cremad" / "resnet18" / "concat" / method / "default" / "fold1" / "predictions.npz"
    path.parent.mkdir(parents=True)
    probs = np.eye(3, dtype=np.float32)[np.where(correct, labels, (labels + 1) % 3)]
    np.savez(path, labels=labels, class_names=np.array(["a", "b", "c"]), best_epoch=np.array(1), probs_fused=probs)
    return path


def test_write_tables_with_published_and_agreement(metric_paths, tmp_path):
    labels = np.array([0, 1, 2, 0])
    predictions = [
        _write_predictions(tmp_path / "runs", "audio_only", labels, [True, True, False, False]),
        _write_predictions(tmp_path / "runs", "video_only", labels, [True, False, True, False]),
        _write_predictions(tmp_path / "runs", "joint", labels, [True, True, True, False]),
    ]
    out_dir = tmp_path / "tables"
    write_tables(metric_paths, out_dir, ["joint"], "ours", out_dir / "summary.json",
                 published=PUBLISHED_CSV, paper_specs=PAPER_SPECS, prediction_paths=predictions)

    assert {"runs.csv", "summary.csv", "paired_vs_joint.csv", "summary.md", "published_comparison.csv",
            "published_comparison.md", "agreement.csv", "agreement_summary.csv"} <= {p.name for p in out_dir.iterdir()}
    paired = pd.read_csv(out_dir / "paired_vs_joint.csv")
    assert {"t_pvalue", "wilcoxon_pvalue"} <= set(paired.columns)
    comparison = pd.read_csv(out_dir / "published_comparison.csv")
    # The fixture's runs are on MLB's CREMA-D folds: no number of the three papers is of that protocol.
    assert comparison["published"].isna().all()
    assert comparison["note"].str.contains("no published numbers under protocol 'cremad_mlb_folds'").all()
    agreement = pd.read_csv(out_dir / "agreement.csv")
    assert agreement["group"].tolist() == ["both wrong", "only audio", "only video", "both right"]
    assert agreement["n"].tolist() == [1, 1, 1, 1]
    assert agreement["acc"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert len(pd.read_csv(out_dir / "agreement_summary.csv")) == 4


def test_write_tables_keeps_its_outputs_without_the_extras(metric_paths, tmp_path):
    out_dir = tmp_path / "tables"
    write_tables(metric_paths, out_dir, None, "ours", tmp_path / "summary.json")
    assert {p.name for p in out_dir.iterdir()} == {"runs.csv", "summary.csv", "paired_vs_joint.csv", "summary.md"}
