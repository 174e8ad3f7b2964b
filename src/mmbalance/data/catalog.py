"""The catalog: what every dataset module hands to the feature store.

Each dataset has its own raw layout, split files and class list; the catalog
is the one form they all become, written to `results/catalog/<dataset>/`:

* `catalog.csv`        one row per clip: clip, label, class_name, group (actor,
                       YouTube id or UCF group: what splits keep together),
                       audio and video (paths relative to the raw folder; the
                       same file when the audio track is read from the video),
                       start and end (seconds of the clip to use; end empty =
                       to the end)
* `data_splits.json`   fold -> train / val / test clip names (MLB's json form)
* `catalog.json`       dataset, protocol, class names, raw folder, the source of
                       every split and what each split holds per class

A dataset with a single official split gets folds 2, 3... that repeat fold 1
(seed replicates: a cell's seed is train.seed + fold), recorded in catalog.json.

The checks every dataset module makes on its way there live here too, each
with the dataset's own rule as a parameter: `check_counts` (split files
against the published sizes), `check_missing` (listed clips without media)
and `carve_validation` (a seeded validation list drawn from train).
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmbalance.io import read_json, write_text_atomic

SPLITS = ("train", "val", "test")
COLUMNS = ["clip", "label", "class_name", "group", "audio", "video", "start", "end"]
FILES = ["catalog.csv", "data_splits.json", "catalog.json"]


class SplitMismatchError(ValueError):
    """A split file does not hold what the paper's split holds (sizes or classes)."""


@dataclass(frozen=True)
class Clip:
    name: str
    label: int
    group: str
    audio: Path  # absolute, or relative to the working directory
    video: Path
    start: float = 0.0
    end: float | None = None  # None: to the end of the file


@dataclass
class Catalog:
    dataset: str
    protocol: str
    classes: list[str]
    clips: list[Clip]
    folds: dict[int, dict[str, list[str]]]  # fold -> split -> clip names
    raw_dir: Path
    notes: dict = field(default_factory=dict)  # sources, replicated folds, dropped clips...

    def __post_init__(self) -> None:
        names = [clip.name for clip in self.clips]
        repeated = [name for name, n in Counter(names).items() if n > 1]
        if repeated:
            raise ValueError(f"{self.dataset}: clip names must be unique, repeated: {repeated[:5]}")
        for clip in self.clips:
            if not 0 <= clip.label < len(self.classes):
                raise ValueError(
                    f"{self.dataset}: clip {clip.name!r} has label {clip.label}, outside the {len(self.classes)} classes "
                    f"(0..{len(self.classes) - 1}: {', '.join(self.classes)})"
                )
        known = set(names)
        for fold, splits in self.folds.items():
            for split, members in splits.items():
                unknown = [m for m in members if m not in known]
                if unknown:
                    raise ValueError(f"{self.dataset} fold {fold} {split} lists {len(unknown)} clips not in the catalog, e.g. {unknown[:3]}")
            for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
                shared = set(splits[a]) & set(splits[b])
                if shared:
                    raise ValueError(f"{self.dataset} fold {fold} has clips in both {a} and {b}: {sorted(shared)[:3]}")

    def replicate_folds(self, count: int) -> None:
        """Folds 2..count repeat fold 1: for datasets with one official split."""
        if set(self.folds) != {1}:
            return
        for fold in range(2, count + 1):
            self.folds[fold] = {split: list(members) for split, members in self.folds[1].items()}
        self.notes["replicated_folds"] = f"folds 2-{count} repeat the single official split (fold 1) with other seeds"

    def split_counts(self) -> dict[int, dict[str, dict[str, int]]]:
        """fold -> split -> class name -> clips."""
        label_of = {clip.name: clip.label for clip in self.clips}
        return {
            fold: {split: dict(sorted(Counter(self.classes[label_of[n]] for n in members).items())) for split, members in splits.items()}
            for fold, splits in self.folds.items()
        }

    def write(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = [
            {"clip": c.name, "label": c.label, "class_name": self.classes[c.label], "group": c.group,
             "audio": _relative(c.audio, self.raw_dir), "video": _relative(c.video, self.raw_dir),
             "start": c.start, "end": "" if c.end is None else c.end}
            for c in self.clips
        ]
        write_text_atomic(out_dir / "catalog.csv", pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
        folds = {str(fold): {split: list(splits[split]) for split in SPLITS} for fold, splits in sorted(self.folds.items())}
        write_text_atomic(out_dir / "data_splits.json", json.dumps(folds, indent=1))
        meta = {
            "dataset": self.dataset, "protocol": self.protocol, "classes": list(self.classes),
            "raw_dir": str(self.raw_dir), "clips": len(self.clips),
            "split_sizes": {str(f): {s: len(m) for s, m in splits.items()} for f, splits in sorted(self.folds.items())},
            "class_counts": {str(f): counts for f, counts in self.split_counts().items()},
            "notes": self.notes,
        }
        write_text_atomic(out_dir / "catalog.json", json.dumps(meta, indent=1))

    @classmethod
    def read(cls, catalog_dir: Path) -> "Catalog":
        catalog_dir = Path(catalog_dir)
        for name in FILES:
            if not (catalog_dir / name).exists():
                raise FileNotFoundError(f"catalog {catalog_dir} lacks {name}: run the catalog rule first")
        meta = read_json(catalog_dir / "catalog.json")
        raw_dir = Path(meta["raw_dir"])
        table = pd.read_csv(catalog_dir / "catalog.csv", keep_default_na=False, dtype={"clip": str, "group": str})
        try:
            clips = [
                Clip(name=r.clip, label=int(r.label), group=r.group, audio=raw_dir / r.audio, video=raw_dir / r.video,
                     start=float(r.start), end=None if r.end == "" else float(r.end))
                for r in table.itertuples()
            ]
            folds = read_folds(catalog_dir / "data_splits.json")
            return cls(meta["dataset"], meta["protocol"], meta["classes"], clips,
                       {f: {s: sorted(m) for s, m in splits.items()} for f, splits in folds.items()}, raw_dir, meta.get("notes", {}))
        except ValueError as error:
            if str(catalog_dir) in str(error):
                raise
            raise ValueError(f"{catalog_dir / 'catalog.csv'}: {error}") from None


def read_folds(path: Path) -> dict[int, dict[str, set[str]]]:
    """fold number -> split -> clip names (MLB json form; entries may carry a
    file extension, as MLB's `<clip>.wav`), checking the splits are disjoint."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object of folds ({{\"1\": {{\"train\": [...], ...}}}}), got a {type(raw).__name__}")
    folds = {}
    for fold, members in raw.items():
        missing = [split for split in SPLITS if split not in members]
        if missing:
            raise ValueError(f"{path}: fold {fold!r} lacks split(s) {missing}")
        splits = {split: {_strip_media_suffix(entry) for entry in members[split]} for split in SPLITS}
        for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
            shared = splits[a] & splits[b]
            if shared:
                raise ValueError(f"{path}: fold {fold} has clips in both {a} and {b}: {sorted(shared)[:3]}")
        folds[int(fold)] = splits
    return folds


MEDIA_SUFFIXES = (".wav", ".flv", ".mp4", ".avi", ".mp3")


def _strip_media_suffix(entry: str) -> str:
    for suffix in MEDIA_SUFFIXES:
        if entry.endswith(suffix):
            return entry[: -len(suffix)]
    return entry


def _relative(path: Path, raw_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(raw_dir))
    except ValueError:
        return str(path)


def check_counts(dataset: str, got: dict, expected: dict, source: str, advice: str = "") -> None:
    """Stop loudly when split sizes (or class counts) differ from the paper's.

    got and expected map a name (a split, a class, `fold 2 train/val/test`...) to a count or a
    tuple of counts; an expected value of None is not checked."""
    wrong = {key: (got.get(key), want) for key, want in expected.items() if want is not None and got.get(key) != want}
    if wrong:
        detail = "; ".join(f"{key}: {have} where the paper's split has {want}" for key, (have, want) in wrong.items())
        raise SplitMismatchError(f"{dataset}: {source} does not hold the published split ({detail}).{' ' + advice if advice else ''}")


def check_missing(dataset: str, missing: dict[str, list[str]], listed: dict[str, int], where: Path | str, advice: str, *,
                  max_fraction: float | None = None, max_count: int | None = None, examples: int = 3,
                  error: type[Exception] = SplitMismatchError) -> None:
    """Stop when more listed clips lack their media than the dataset allows.

    `missing` holds, per part (a split, or a split file), the sorted names of the listed clips whose
    media is absent; `listed` how many that part lists. A part fails when more than `max_count` of
    its clips are missing, or more than the share `max_fraction`. The error names every failing
    part with its counts and first `examples` names, where the media was looked for, and `advice`.
    """
    problems = []
    for part, names in missing.items():
        lost, total = len(names), listed[part]
        if (max_count is not None and lost > max_count) or (max_fraction is not None and total and lost / total > max_fraction):
            problems.append(f"{part}: {lost} of {total} clips have no media ({lost / total:.1%}), e.g. {names[:examples]}")
    if problems:
        limit = f"more than max_missing_fraction {max_fraction:.1%}" if max_fraction is not None else f"at most {max_count} allowed"
        raise error(f"{dataset}: {'; '.join(problems)} under {where} ({limit}); {advice}")


# How many of a class's n units go to validation: each rule is the one a dataset has always used,
# kept so that its validation list does not move.
VALIDATION_COUNTS = {
    "round": lambda fraction, n: round(fraction * n),  # CREMA-D (OGM-GE split): the rounded share
    "at_least_one": lambda fraction, n: max(1, round(fraction * n)) if n >= 2 else 0,  # UCF101: one of two groups or more
    "keep_one_in_train": lambda fraction, n: min(round(fraction * n), n - 1),  # VGGSound: never a class's last id
}


def carve_validation(train: Iterable[tuple[str, int]], fraction: float, seed: int, count: str) -> set[str]:
    """The units drawn from train for validation, stratified by class.

    `train` gives (unit, label) for every training clip: the unit is the clip's own name, or the
    group whose clips must stay together (a UCF101 `Class_gGG`, a YouTube id). A unit belongs to
    the class most of its clips have (ties: the lowest label). One random.Random(seed) draws, class
    by class in label order, VALIDATION_COUNTS[count] of the class's units from their sorted list.
    """
    labels: dict[str, Counter] = defaultdict(Counter)
    for unit, label in train:
        labels[unit][label] += 1
    units_of_class: dict[int, list[str]] = defaultdict(list)
    for unit, counts in sorted(labels.items()):
        units_of_class[min(counts, key=lambda label: (-counts[label], label))].append(unit)
    rule, rng, chosen = VALIDATION_COUNTS[count], random.Random(seed), set()
    for label in sorted(units_of_class):
        units = units_of_class[label]
        chosen.update(rng.sample(units, rule(fraction, len(units))))
    return chosen


def skip_report(index: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per fold, split and class: clips listed, kept, and skipped per reason."""
    rows = []
    for column in [c for c in index.columns if c.startswith("fold")]:
        listed = index[index[column] != ""]
        for (split, label), group in listed.groupby([column, "label"]):
            reasons = Counter(group.loc[group["skipped"], "skip_kind"])
            rows.append({"fold": int(column[4:]), "split": split, "class_name": classes[label], "listed": len(group),
                         "kept": int((~group["skipped"]).sum()), **{f"skipped_{k}": v for k, v in sorted(reasons.items())}})
    report = pd.DataFrame(rows)
    skip_columns = sorted(c for c in report.columns if c.startswith("skipped_"))
    return report.fillna(0).astype({c: int for c in skip_columns})[["fold", "split", "class_name", "listed", "kept", *skip_columns]] if rows else report


def check_skips(report: pd.DataFrame, dataset: str, max_fraction: float, log_path: str) -> None:
    """A split that lost a class, or more clips than the dataset's pitfalls
    explain (`max_skipped_fraction`), stops the run, naming the log.
    A fraction of 1 turns the check off."""
    if max_fraction >= 1:
        return
    problems = []
    for (fold, split), group in report.groupby(["fold", "split"]):
        listed, kept = group["listed"].sum(), group["kept"].sum()
        lost = group.loc[group["kept"] == 0, "class_name"].tolist()
        if lost:
            problems.append(f"fold {fold} {split} kept no clip of {lost}")
        if listed and (listed - kept) / listed > max_fraction:
            problems.append(f"fold {fold} {split} skipped {listed - kept} of {listed} clips ({(listed - kept) / listed:.1%} > {max_fraction:.1%})")
    if problems:
        raise SplitMismatchError(
            f"{dataset}: {'; '.join(problems)}. The kept/skipped log per class and reason is {log_path}; "
            f"fix the data, or raise datasets.{dataset}.max_skipped_fraction if these losses are expected."
        )
