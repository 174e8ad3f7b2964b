"""CREMA-D layout: clip names, labels and fold files.

The raw tree is `AudioWAV/<clip>.wav` (16 kHz mono PCM) and `VideoFlash/<clip>.flv`,
with clip names `<actor>_<sentence>_<EMOTION>_<level>` (DATASETS.md 1.2). The label
is the emotion field, indexed in the order of OGM-GE's `stat.csv`, which every
reference code uses. Folds are the MLB json format
(`{"1": {"train": [...], "val": [...], "test": [...]}, ...}`, entries `<clip>.wav`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # label index = position
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")
SPLITS = ("train", "val", "test")

CLIP_NAME = re.compile(
    rf"^(?P<actor>\d{{4}})_(?P<sentence>{'|'.join(SENTENCES)})_"
    rf"(?P<emotion>{'|'.join(EMOTIONS)})_(?P<level>{'|'.join(LEVELS)})$"
)


@dataclass(frozen=True)
class Clip:
    name: str
    actor: str
    label: int
    wav: Path
    video: Path


def parse_clip_name(name: str) -> dict[str, str]:
    match = CLIP_NAME.match(name)
    if match is None:
        raise ValueError(
            f"clip name {name!r} is not of the CREMA-D form <actor>_<sentence>_<EMOTION>_<level>"
        )
    return match.groupdict()


def list_clips(raw_dir: Path) -> list[Clip]:
    """Every clip that has a WAV file, sorted by name; the video may be missing."""
    wav_dir = Path(raw_dir) / "AudioWAV"
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"{wav_dir} does not exist: is {raw_dir} a CREMA-D tree?")
    clips = []
    for wav in sorted(wav_dir.glob("*.wav")):
        fields = parse_clip_name(wav.stem)
        clips.append(
            Clip(
                name=wav.stem,
                actor=fields["actor"],
                label=EMOTIONS.index(fields["emotion"]),
                wav=wav,
                video=Path(raw_dir) / "VideoFlash" / f"{wav.stem}.flv",
            )
        )
    return clips


def write_folds(path: Path, folds: dict[str, dict[str, list[str]]]) -> None:
    """Folds in MLB's `data_splits_VALV.json` form (entries are wav file names)."""
    as_files = {
        fold: {split: [f"{clip}.wav" for clip in members[split]] for split in SPLITS}
        for fold, members in folds.items()
    }
    Path(path).write_text(json.dumps(as_files, indent=1))


def read_folds(path: Path) -> dict[int, dict[str, set[str]]]:
    """fold number -> split -> clip names, checking the splits are disjoint."""
    raw = json.loads(Path(path).read_text())
    folds = {}
    for fold, members in raw.items():
        missing = [split for split in SPLITS if split not in members]
        if missing:
            raise ValueError(f"{path}: fold {fold!r} lacks split(s) {missing}")
        splits = {split: {Path(entry).stem for entry in members[split]} for split in SPLITS}
        for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
            shared = splits[a] & splits[b]
            if shared:
                raise ValueError(f"{path}: fold {fold} has clips in both {a} and {b}: {sorted(shared)[:3]}")
        folds[int(fold)] = splits
    return folds


# --- The two protocols of the papers (DATASETS.md 1.3) -----------------------

# (train, val, test) clips of each fold as published; a split file that differs
# is the wrong file (or an old mirror), and every number downstream would be off.
EXPECTED_COUNTS = {
    # MLB / VAVL actor-independent partitions 1-3 (label_consensus "M": 5,820 clips).
    "mlb": {1: (4043, 878, 899), 2: (4024, 881, 915), 3: (4017, 869, 934)},
    # OGM-GE train.csv / test.csv; validation carved out of train here.
    "ogm": {1: (6698, None, 744)},
}


def read_ogm_split(path: Path) -> list[str]:
    """Clip names of an OGM-GE `train.csv` / `test.csv` (`name,EMO` rows, no
    header, CRLF endings), checking each row's emotion against its name."""
    names = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected 'name,EMOTION', got {line!r}")
        name, emotion = fields
        if parse_clip_name(name)["emotion"] != emotion:
            raise ValueError(f"{path}:{number}: clip {name} is labelled {emotion}, but its name says {parse_clip_name(name)['emotion']}")
        names.append(name)
    return names


def ogm_protocol_folds(train: list[str], test: list[str], val_fraction: float = 0.1, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """The OGM-GE split as fold "1": its test list unchanged, and a validation
    list of `val_fraction` of its training clips, stratified by emotion and
    drawn with a fixed seed (the reference code has no validation set and
    selects on test; we select on this list and publish it)."""
    import random

    shared = set(train) & set(test)
    if shared:
        raise ValueError(f"OGM-GE split: {len(shared)} clips are in both train and test, e.g. {sorted(shared)[:3]}")
    rng = random.Random(seed)
    val = []
    for emotion in EMOTIONS:
        members = sorted(n for n in train if parse_clip_name(n)["emotion"] == emotion)
        val += rng.sample(members, round(val_fraction * len(members)))
    chosen = set(val)
    return {"1": {"train": [n for n in train if n not in chosen], "val": sorted(val), "test": list(test)}}


def check_split_counts(folds: dict[int, dict[str, set[str]]], protocol: str, source: Path) -> None:
    """Stop loudly when a split file's sizes are not the published ones."""
    expected = EXPECTED_COUNTS[protocol]
    problems = []
    for fold, (n_train, n_val, n_test) in expected.items():
        if fold not in folds:
            problems.append(f"fold {fold} is missing")
            continue
        splits = folds[fold]
        got = (len(splits["train"]) + (len(splits["val"]) if n_val is None else 0), len(splits["val"]), len(splits["test"]))
        want = (n_train, got[1] if n_val is None else n_val, n_test)
        if got != want:
            problems.append(f"fold {fold} has train/val/test {got}, the published split has {want}")
    if problems:
        raise ValueError(f"{source}: not the {protocol} protocol's split ({'; '.join(problems)}); see DATASETS.md 1.3")
