"""Agreement analysis (MLB paper, Fig. 4): how a multimodal model does on the test samples that
neither, one or both unimodal baselines get right.

The overall accuracy hides where a balancing method helps. Grouping the test set by which
unimodal baseline (audio-only, video-only run of the same dataset, backbone and fold) is right
shows it: a model dominated by audio loses the samples only video gets right, and a balanced
one should recover them without giving up the "only audio" group.
"""

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from mmbalance.evaluate import CELL_KEYS, PROBS_PREFIX

log = logging.getLogger(__name__)

# Index i of a sample's group is audio_correct + 2 * video_correct.
GROUPS = ("both wrong", "only audio", "only video", "both right")
GROUP_KEYS = ["dataset", "backbone", "fusion", "method", "variant"]
AUDIO_BASELINE = "audio_only"
VIDEO_BASELINE = "video_only"


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a predictions.npz, read into memory (the file is closed afterwards)."""
    with np.load(path) as predictions:
        return {key: predictions[key] for key in predictions.files}


def check_same_test_set(predictions: dict[str, dict[str, np.ndarray]]) -> None:
    """Raise ValueError unless every run scored the same test samples in the same order.

    ``predictions`` maps a file name to its arrays. Labels must be equal; clip ids too when
    every file has them, since equal labels alone do not prove the same order.
    """
    (first_name, first), *others = predictions.items()
    for name, other in others:
        for key in ("labels", "clips"):
            if key == "clips" and not ("clips" in first and "clips" in other):
                continue
            a, b = first[key], other[key]
            if a.shape != b.shape or not np.array_equal(a, b):
                where = f"{len(a)} vs {len(b)} samples" if a.shape != b.shape else f"{int((a != b).sum())} of {len(a)} differ"
                raise ValueError(
                    f"the test {key} of {first_name} and {name} do not match ({where}); "
                    "agreement needs runs of the same dataset and fold"
                )


def correct(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probs.argmax(1) == labels


def group_accuracies(
    audio: dict[str, np.ndarray], video: dict[str, np.ndarray], multimodal: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Per agreement group: sample count ``n``, fused accuracy ``acc`` of the multimodal run and
    ``acc_<modality>`` of each of its unimodal heads. Always the four groups in ``GROUPS`` order;
    an empty group has NaN accuracies.

    The baselines are judged by their fused output (for a unimodal run it is its only head).
    Call ``check_same_test_set`` first; this function only checks the lengths.
    """
    labels = multimodal["labels"]
    group = correct(audio[PROBS_PREFIX + "fused"], labels) + 2 * correct(video[PROBS_PREFIX + "fused"], labels)
    heads = sorted(key.removeprefix(PROBS_PREFIX) for key in multimodal if key.startswith(PROBS_PREFIX))
    outputs = {("acc" if head == "fused" else f"acc_{head}"): correct(multimodal[PROBS_PREFIX + head], labels) for head in heads}
    rows = []
    for index, name in enumerate(GROUPS):
        members = group == index
        row = {"group": name, "n": int(members.sum())}
        row.update({column: float(hits[members].mean()) if members.any() else np.nan for column, hits in outputs.items()})
        rows.append(row)
    columns = ["group", "n", "acc", *sorted(c for c in outputs if c != "acc")]
    return pd.DataFrame(rows, columns=columns)


def agreement_from_files(audio_path: str | Path, video_path: str | Path, multimodal_path: str | Path) -> pd.DataFrame:
    """``group_accuracies`` of three predictions.npz files, after checking they share the test set."""
    predictions = {str(path): load_predictions(path) for path in (audio_path, video_path, multimodal_path)}
    if len(predictions) < 3:
        raise ValueError(f"agreement needs three different runs, got {audio_path}, {video_path}, {multimodal_path}")
    check_same_test_set(predictions)
    return group_accuracies(*predictions.values())


def cell_from_path(path: str | Path) -> dict:
    """The run cell of ``.../<dataset>/<backbone>/<fusion>/<method>/<variant>/fold<k>/predictions.npz``."""
    parts = Path(path).parts
    if len(parts) < 7 or not parts[-2].startswith("fold") or not parts[-2][4:].isdigit():
        raise ValueError(f"{path} is not laid out as <dataset>/<backbone>/<fusion>/<method>/<variant>/fold<k>/predictions.npz")
    dataset, backbone, fusion, method, variant = parts[-7:-2]
    return {"dataset": dataset, "backbone": backbone, "fusion": fusion, "method": method, "variant": variant, "fold": int(parts[-2][4:])}


def agreement_table(
    prediction_paths: Iterable[str | Path],
    audio_method: str = AUDIO_BASELINE,
    video_method: str = VIDEO_BASELINE,
) -> pd.DataFrame:
    """Tidy table over many runs: one row per (multimodal run, group) with the cell keys,
    ``group``, ``n``, ``acc`` and the head accuracies ``acc_<modality>``.

    Cells come from the run folder layout (``cell_from_path``). Each multimodal run is paired
    with the baselines of its dataset, backbone and fold: of its own variant when there is
    one, else of the default variant; from the same fusion when there is such a run (a
    unimodal model ignores the fusion), otherwise from the first other fusion. Runs without
    both baselines are skipped with a warning; the baselines get no rows of their own (they
    are right or wrong by definition).
    """
    runs = {}
    for path in prediction_paths:
        cell = cell_from_path(path)
        runs[tuple(cell[key] for key in CELL_KEYS)] = (cell, Path(path))

    def baseline(cell: dict, method: str) -> Path | None:
        for variant in dict.fromkeys([cell["variant"], "default"]):
            same_fusion = (cell["dataset"], cell["backbone"], cell["fusion"], method, variant, cell["fold"])
            if same_fusion in runs:
                return runs[same_fusion][1]
            others = sorted(
                key for key in runs
                if key[3] == method and key[4] == variant and (key[0], key[1], key[5]) == (cell["dataset"], cell["backbone"], cell["fold"])
            )
            if others:
                return runs[others[0]][1]
        return None

    frames = []
    for key in sorted(runs):
        cell, path = runs[key]
        if cell["method"] in (audio_method, video_method):
            continue
        audio, video = baseline(cell, audio_method), baseline(cell, video_method)
        if audio is None or video is None:
            log.warning("no %s and %s runs for %s: left out of the agreement table", audio_method, video_method, path)
            continue
        frames.append(agreement_from_files(audio, video, path).assign(**cell))
    if not frames:
        return pd.DataFrame(columns=[*CELL_KEYS, "group", "n", "acc"])
    table = pd.concat(frames, ignore_index=True)
    head_columns = sorted(c for c in table.columns if c.startswith("acc_"))
    return table[[*CELL_KEYS, "group", "n", "acc", *head_columns]]


def summarize_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Fold aggregate of ``agreement_table``: per cell and group, the mean sample count
    ``n_mean``, ``<acc column>_mean`` and sample ``_std`` (ddof 1: NaN for one fold) over the
    folds where the group is not empty, and ``n_folds`` (folds that have the run)."""
    accuracy_columns = [c for c in table.columns if c == "acc" or c.startswith("acc_")]
    if table.empty:
        columns = [*GROUP_KEYS, "group", "n_mean", *(f"{c}_{s}" for c in accuracy_columns for s in ("mean", "std")), "n_folds"]
        return pd.DataFrame(columns=columns)
    table = table.assign(group=pd.Categorical(table["group"], categories=GROUPS, ordered=True))
    grouped = table.groupby([*GROUP_KEYS, "group"], observed=True)
    summary = grouped[accuracy_columns].agg(["mean", "std"])
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    summary.insert(0, "n_mean", grouped["n"].mean())
    summary["n_folds"] = grouped.size()
    summary = summary.reset_index()
    summary["group"] = summary["group"].astype(str)
    return summary
