"""Test-set metrics of one training run, from its saved predictions."""

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
CELL_KEYS = ("dataset", "backbone", "fusion", "method", "fold")


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
        }
        # "fused" first, then the modalities alphabetically, for stable JSON.
        heads = sorted(
            (key.removeprefix(PROBS_PREFIX) for key in predictions.files if key.startswith(PROBS_PREFIX)),
            key=lambda head: (head != "fused", head),
        )
        for head in heads:
            result[head] = compute_metrics(predictions[PROBS_PREFIX + head], labels, num_classes)
    return result


def write_metrics(
    predictions_path: str | Path, history_path: str | Path, cell: dict, out_path: str | Path
) -> dict:
    """Evaluate one run and write the result as JSON to ``out_path``; returns it too."""
    result = evaluate_run(predictions_path, history_path, cell)
    write_text_atomic(out_path, json.dumps(result, indent=2) + "\n")
    return result
