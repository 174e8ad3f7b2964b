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
