import json

import numpy as np
import pandas as pd
import pytest

from mmbalance.evaluate import compute_metrics, evaluate_run, write_metrics

CELL = {"dataset": "cremad", "backbone": "resnet18", "fusion": "concat", "method": "joint", "fold": 1}

# 4 samples, 3 classes. Predictions (argmax) are 0, 1, 2, 2; sample 2 is wrong.
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],  # label 0
        [0.03, 0.50, 0.47],  # label 1
        [0.10, 0.25, 0.65],  # label 0
        [0.20, 0.35, 0.45],  # label 2
    ],
    dtype=np.float32,
)
LABELS = np.array([0, 1, 0, 2])


def test_compute_metrics_by_hand():
    metrics = compute_metrics(PROBS, LABELS, num_classes=3)

    # accuracy: 3 of 4 correct.
    assert metrics["accuracy"] == pytest.approx(0.75)
    # F1 per class: class 0: tp 1, fn 1 (sample 2) -> P 1, R 1/2 -> 2/3; class 1: tp 1 -> 1;
    # class 2: tp 1, fp 1 (sample 2) -> P 1/2, R 1 -> 2/3. Macro: (2/3 + 1 + 2/3) / 3 = 7/9.
    assert metrics["macro_f1"] == pytest.approx(7 / 9)
    # AP per class, samples ranked by that class's score (+ positive, - negative):
    # class 0: .70+ .20- .10+ .03- -> (1/1 + 2/3) / 2 = 5/6; class 1: .50+ first -> 1;
    # class 2: .65- .47- .45+ -> 1/3. Macro: (5/6 + 1 + 1/3) / 3 = 13/18.
    assert metrics["mAP"] == pytest.approx(13 / 18)
    # ECE, bins of width 1/15: confidences .70 (bin 10, correct), .50 (bin 7, correct),
    # .65 (bin 9, wrong), .45 (bin 6, correct): one sample per bin, so
    # ECE = (|1 - .70| + |1 - .50| + |0 - .65| + |1 - .45|) / 4 = 2.0 / 4 = 0.5.
    assert metrics["ece"] == pytest.approx(0.5, abs=1e-6)
    assert all(isinstance(value, float) for value in metrics.values())


def test_ece_with_all_confidences_in_one_bin():
    # Confidences .62, .64, .62, .64 all fall in bin 9 = [0.600, 0.667); 3 of 4 correct.
    # ECE = |accuracy - mean confidence| = |0.75 - 0.63| = 0.12 (not the per-sample mean 0.44).
    probs = np.array(
        [[0.62, 0.20, 0.18], [0.18, 0.64, 0.18], [0.20, 0.18, 0.62], [0.64, 0.18, 0.18]], dtype=np.float32
    )
    labels = np.array([0, 1, 2, 1])
    assert compute_metrics(probs, labels, num_classes=3)["ece"] == pytest.approx(0.12, abs=1e-6)


def test_map_with_known_ranking():
    # Class 0 scores .9+ .8- .3+ .1- -> AP (1 + 2/3) / 2 = 5/6; class 1 scores are
    # 1 - those: .9+ .7- .2+ .1- -> also 5/6. Accuracy is only 1/2, so AP is not accuracy.
    p0 = np.array([0.9, 0.8, 0.3, 0.1], dtype=np.float32)
    probs = np.stack([p0, 1 - p0], axis=1)
    labels = np.array([0, 1, 0, 1])
    metrics = compute_metrics(probs, labels, num_classes=2)
    assert metrics["mAP"] == pytest.approx(5 / 6)
    assert metrics["accuracy"] == pytest.approx(0.5)


def _write_run(directory, heads, best_epoch=3, epochs=5):
    predictions_path = directory / "predictions.npz"
    np.savez(
        predictions_path,
        clips=np.array([f"clip{i}" for i in range(len(LABELS))]),
        labels=LABELS,
        class_names=np.array(["angry", "happy", "sad"]),
        best_epoch=np.array(best_epoch),
        **{f"probs_{head}": PROBS for head in heads},
    )
    history_path = directory / "history.csv"
    pd.DataFrame({"epoch": range(epochs), "val_acc": np.linspace(0.3, 0.6, epochs)}).to_csv(history_path, index=False)
    return predictions_path, history_path


def test_evaluate_run_has_a_metrics_block_per_head(tmp_path):
    result = evaluate_run(*_write_run(tmp_path, ["fused", "audio", "video"]), CELL)

    assert result["cell"] == CELL
    assert result["best_epoch"] == 3
    assert result["epochs_trained"] == 5
    assert result["num_test"] == 4
    assert {"fused", "audio", "video"} <= result.keys()
    assert result["fused"]["accuracy"] == pytest.approx(0.75)
    assert "agreement" not in result


def test_evaluate_run_of_unimodal_baseline_has_only_audio(tmp_path):
    cell = {**CELL, "method": "audio_only"}
    result = evaluate_run(*_write_run(tmp_path, ["fused", "audio"]), cell)

    assert "audio" in result and "video" not in result
    assert result["audio"] == result["fused"]


def test_write_metrics_writes_one_list_per_panel(tmp_path):
    runs = []
    for method in ("joint", "audio_only"):
        folder = tmp_path / "runs" / method
        folder.mkdir(parents=True)
        predictions, _ = _write_run(folder, ["fused", "audio", "video"] if method == "joint" else ["fused", "audio"])
        (folder / "run.json").write_text(json.dumps({"cell": {**CELL, "method": method}}))
        runs.append(predictions)
    out_path = tmp_path / "results" / "cremad" / "metrics.json"
    results = write_metrics(runs, out_path)

    assert json.loads(out_path.read_text()) == results
    assert [r["cell"]["method"] for r in results] == ["joint", "audio_only"]
    assert "video" not in results[1]
    assert [path.name for path in out_path.parent.iterdir()] == ["metrics.json"]  # no temp file left
