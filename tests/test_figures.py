import numpy as np
import pandas as pd

from mmbalance.figures import plot_accuracy_per_method, plot_balance_over_training

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
