"""Test-set metrics of training runs, from their saved predictions."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_average_precision,
    multiclass_calibration_error,
    multiclass_f1_score,
)

from mmbalance.io import write_text_atomic

PROBS_PREFIX = "probs_"
CELL_KEYS = ("dataset", "backbone", "fusion", "method", "variant", "fold")


def compute_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro-F1, macro one-vs-rest average precision and 15-bin L1 ECE.

    Classes absent from both labels and predictions are left out of the macro
    averages (torchmetrics' behaviour), so small test folds stay comparable.
    """
    preds = torch.as_tensor(probs, dtype=torch.float32)
    target = torch.as_tensor(labels, dtype=torch.long)
    return {
        "accuracy": float(multiclass_accuracy(preds, target, num_classes, average="micro")),
        "macro_f1": float(multiclass_f1_score(preds, target, num_classes, average="macro")),
        "mAP": float(multiclass_average_precision(preds, target, num_classes, average="macro")),
        "ece": float(multiclass_calibration_error(preds, target, num_classes, n_bins=15, norm="l1")),
    }


def evaluate_run(predictions_path: str | Path, history_path: str | Path, cell: dict) -> dict:
    """Metrics of the fused output and of every unimodal head of one run."""
    history = pd.read_csv(history_path)
    with np.load(predictions_path) as predictions:
        labels = predictions["labels"]
        num_classes = len(predictions["class_names"])
        result = {
            "cell": cell,
            "best_epoch": int(predictions["best_epoch"]),
            "epochs_trained": len(history),
            "num_test": len(labels),
            # Training steps whose loss was not finite (train.on_nonfinite: continue); the tables mark such runs.
            "nonfinite_steps": int(history["nonfinite_steps"].sum()) if "nonfinite_steps" in history else 0,
        }
        # "fused" first, then the modalities alphabetically, for stable JSON.
        heads = sorted(
            (key.removeprefix(PROBS_PREFIX) for key in predictions.files if key.startswith(PROBS_PREFIX)),
            key=lambda head: (head != "fused", head),
        )
        for head in heads:
            result[head] = compute_metrics(predictions[PROBS_PREFIX + head], labels, num_classes)
    return result


def write_metrics(prediction_paths: list[str | Path], out_path: str | Path) -> list[dict]:
    """Evaluate runs (each folder holds predictions.npz, history.csv and run.json, whose
    ``cell`` names the run) and write the list of results as JSON to ``out_path``; returns it too."""
    results = []
    for predictions in map(Path, prediction_paths):
        run = json.loads((predictions.parent / "run.json").read_text())
        results.append(evaluate_run(predictions, predictions.parent / "history.csv", run["cell"]))
    write_text_atomic(out_path, json.dumps(results, indent=2) + "\n")
    return results
