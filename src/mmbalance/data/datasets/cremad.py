"""CREMA-D: download, layout, clip names, labels and the papers' two protocols.

The raw tree is `AudioWAV/<clip>.wav` (16 kHz mono PCM) and `VideoFlash/<clip>.flv`,
with clip names `<actor>_<sentence>_<EMOTION>_<level>` (the README of
CheyneyComputerScience/CREMA-D describes each field). The label is the emotion
field, indexed in the order of OGM-GE's `data/CREMAD/stat.csv`
(GeWu-Lab/OGM-GE_CVPR2022), which the reference codes share. Folds are the MLB
json format (`{"1": {"train": [...], "val": [...], "test": [...]}, ...}`, entries
`<clip>.wav`).

Download: the GitHub repository's zip holds a Git LFS pointer (sha256 and size)
in place of every media file. Each WAV and FLV is then fetched from the media
mirrors in order (the maintainers' GitLab mirror first: the GitHub repository ran
out of LFS bandwidth in 2025, CREMA-D issue #15) and checked against its pointer,
so an interrupted download resumes file by file and a mirror that answers with a
stub falls through to the next. The split files come from the reference
repositories at pinned commits.

`source` keys (config `datasets.cremad.source`), each a list tried in order:
  pointers        URLs of the repository zip with the LFS pointers
  media_mirrors   URL templates with `{path}` (e.g. `AudioWAV/1001_DFA_ANG_XX.wav`);
                  `file:///data/CREMA-D/{path}` uses a copy you already have
                  (a git-lfs clone), still checked against the pointers
  ogm_train, ogm_test, mlb_folds   the split files
and `retries` (per mirror, default 5) and `backoff` (first delay in seconds, 1).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mmbalance.data.catalog import Catalog, Clip, carve_validation, check_counts, check_missing, read_folds
from mmbalance.data.fetching import archives, http

log = logging.getLogger(__name__)

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # label index = position
CLASSES = EMOTIONS
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
LEVELS = ("LO", "MD", "HI", "XX")
SPLITS = ("train", "val", "test")

CLIP_NAME = re.compile(
    rf"^(?P<actor>\d{{4}})_(?P<sentence>{'|'.join(SENTENCES)})_"
    rf"(?P<emotion>{'|'.join(EMOTIONS)})_(?P<level>{'|'.join(LEVELS)})$"
)


def parse_clip_name(name: str) -> dict[str, str]:
    match = CLIP_NAME.match(name)
    if match is None:
        raise ValueError(
            f"clip name {name!r} is not of the CREMA-D form <actor>_<sentence>_<EMOTION>_<level>"
        )
    return match.groupdict()


def list_clips(raw_dir: Path) -> list[Clip]:
    """Every clip that has a WAV file, sorted by name; the video may be missing.
    Audio comes from AudioWAV, never the FLV soundtrack, as in every reference recipe
    (OGM-GE, PMR and MLB's ResNet configs load the WAV files)."""
    wav_dir = Path(raw_dir) / "AudioWAV"
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"{wav_dir} does not exist: is {raw_dir} a CREMA-D tree?")
    clips = []
    for wav in sorted(wav_dir.glob("*.wav")):
        fields = parse_clip_name(wav.stem)
        video = Path(raw_dir) / "VideoFlash" / f"{wav.stem}.flv"
        clips.append(Clip(name=wav.stem, label=EMOTIONS.index(fields["emotion"]), group=fields["actor"], audio=wav, video=video))
    return clips


def write_folds(path: Path, folds: dict[str, dict[str, list[str]]]) -> None:
    """Folds in MLB's `data_splits_VALV.json` form (entries are wav file names)."""
    as_files = {
        fold: {split: [f"{clip}.wav" for clip in members[split]] for split in SPLITS}
        for fold, members in folds.items()
    }
    Path(path).write_text(json.dumps(as_files, indent=1))


# --- The two protocols of the papers ----------------------------------------------

# (train, val, test) clips of each fold as published; a split file that differs
# is the wrong file (or an old mirror), and every number downstream would be off.
EXPECTED_COUNTS = {
    # MLB / VAVL actor-independent partitions 1-3 (label_consensus "M": 5,820 clips): Goncalves et al.
    # (VAVL), ilucasgoncalves/VAVL VAVL/data/CREMA-D/labels_consensus_6class_M/, as MLB's data_splits_VALV.
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
    shared = set(train) & set(test)
    if shared:
        raise ValueError(f"OGM-GE split: {len(shared)} clips are in both train and test, e.g. {sorted(shared)[:3]}")
    labelled = ((name, EMOTIONS.index(parse_clip_name(name)["emotion"])) for name in train)
    chosen = carve_validation(labelled, val_fraction, seed, "round")
    return {"1": {"train": [n for n in train if n not in chosen], "val": sorted(chosen), "test": list(test)}}


def fold_sizes(folds: dict[int, dict[str, set[str]]], protocol: str) -> tuple[dict, dict]:
    """(got, expected) train/val/test sizes per fold, for check_counts. Where the published
    validation size is None (carved here), train is counted with validation."""
    got, expected = {}, {}
    for fold, (n_train, n_val, n_test) in EXPECTED_COUNTS[protocol].items():
        key = f"fold {fold} train/val/test"
        splits = folds.get(fold)
        if splits is None:
            got[key], expected[key] = "missing", (n_train, n_val, n_test)
            continue
        got[key] = (len(splits["train"]) + (len(splits["val"]) if n_val is None else 0), len(splits["val"]), len(splits["test"]))
        expected[key] = (n_train, got[key][1] if n_val is None else n_val, n_test)
    return got, expected


# Where each protocol's split file comes from, named when its sizes are wrong.
SPLIT_ADVICE = ("The mlb folds are MLB's datasets/CREMAD/data_splits_VALV.pkl (kkontras/MLB) = VAVL partitions 1-3; "
                "the ogm split is OGM-GE's data/CREMAD/train.csv and test.csv (GeWu-Lab/OGM-GE_CVPR2022); "
                "SOURCES pins the commits.")


# Clips that ship broken in the real dataset (the CREMA-D README lists them; issue #8): kept, as
# the papers keep them, but named in the catalog's notes. Their audio comes from AudioWAV.
MLB_PARTITIONS = (1, 2, 3)  # MLB's folds 0-2 are VAVL partitions 1-3
KNOWN_BAD = ("1076_MTI_NEU_XX", "1076_MTI_SAD_XX", "1064_TIE_SAD_XX", "1064_IEO_DIS_MD")


def build_catalog(raw_dir: Path, protocol: str, options: dict) -> Catalog:
    """The clips of one protocol: `mlb` (VAVL partitions 1-3 as MLB uses them),
    `ogm` (OGM-GE's train/test lists with a stratified validation list carved
    from train) or `generated` (the embedded default's own fold file)."""
    raw_dir = Path(raw_dir)
    by_name = {clip.name: clip for clip in list_clips(raw_dir)}
    notes: dict = {}
    if protocol == "generated":
        folds_file = raw_dir / "data_splits.json"
        folds = read_folds(folds_file)
    elif protocol == "mlb":
        folds_file = raw_dir / "splits" / "data_splits_VALV.json"
        folds = {k: v for k, v in read_folds(folds_file).items() if k in MLB_PARTITIONS}
        check_counts("cremad", *fold_sizes(folds, "mlb"), f"{folds_file} (mlb protocol)", SPLIT_ADVICE)
    elif protocol == "ogm":
        folds_file = raw_dir / "splits" / "train.csv"
        train, test = read_ogm_split(folds_file), read_ogm_split(raw_dir / "splits" / "test.csv")
        built = ogm_protocol_folds(train, test, options.get("val_fraction", 0.1), options.get("seed", 0))
        folds = {1: {split: set(members) for split, members in built["1"].items()}}
        check_counts("cremad", *fold_sizes(folds, "ogm"), f"{folds_file} (ogm protocol)", SPLIT_ADVICE)
        notes["validation"] = f"stratified {options.get('val_fraction', 0.1):.0%} of train.csv, seed {options.get('seed', 0)}"
    else:
        raise ValueError(f"CREMA-D has no protocol {protocol!r}; known: generated, mlb, ogm")
    listed = set().union(*(members for splits in folds.values() for members in splits.values()))
    check_missing("cremad", {str(folds_file): sorted(listed - set(by_name))}, {str(folds_file): len(listed)}, raw_dir / "AudioWAV",
                  "re-run the download", max_count=0, error=FileNotFoundError)
    clips = [clip for name, clip in sorted(by_name.items()) if name in listed]
    notes |= {"split_file": str(folds_file), "unused_clips": len(by_name) - len(clips),
              "known_bad_clips_kept": [n for n in KNOWN_BAD if n in listed]}
    catalog = Catalog("cremad", protocol, list(EMOTIONS), clips, {k: {s: sorted(m) for s, m in v.items()} for k, v in folds.items()}, raw_dir, notes)
    catalog.replicate_folds(options.get("folds", 3))
    return catalog


# --- Download -------------------------------------------------------------------

REPOSITORY_COMMIT = "63f0471e4a7db8cec2b1aae42e732fe2792e978c"
SOURCES = {
    "pointers": [f"https://github.com/CheyneyComputerScience/CREMA-D/archive/{REPOSITORY_COMMIT}.zip"],
    "media_mirrors": [
        "https://gitlab.com/cs-cooper-lab/crema-d-mirror/-/raw/master/{path}",
        "https://media.githubusercontent.com/media/CheyneyComputerScience/CREMA-D/master/{path}",
    ],
    # OGM-GE's lists (identical in PMR, MLB and MMCosine) and MLB's VAVL partitions.
    "ogm_train": ["https://raw.githubusercontent.com/GeWu-Lab/OGM-GE_CVPR2022/65a8324464207f5efd41533cb362648c0cdee8a8/data/CREMAD/train.csv"],
    "ogm_test": ["https://raw.githubusercontent.com/GeWu-Lab/OGM-GE_CVPR2022/65a8324464207f5efd41533cb362648c0cdee8a8/data/CREMAD/test.csv"],
    # The file is JSON despite its .pkl name.
    "mlb_folds": ["https://raw.githubusercontent.com/kkontras/MLB/68ad48d45fe001499e1506fa9e36a793ef0e5d84/datasets/CREMAD/data_splits_VALV.pkl"],
}
MEDIA_FOLDERS = {"AudioWAV": ".wav", "VideoFlash": ".flv"}
POINTER = re.compile(rb"^version https://git-lfs\S*\noid sha256:(?P<oid>[0-9a-f]{64})\nsize (?P<size>\d+)\n?$")


@dataclass(frozen=True)
class LfsObject:
    path: str  # relative to the repository root
    sha256: str
    size: int


def read_pointers(repo_dir: Path) -> list[LfsObject]:
    """The LFS pointer of every media file we need, from the repository's tree."""
    objects = []
    for folder, suffix in MEDIA_FOLDERS.items():
        files = sorted((repo_dir / folder).glob(f"*{suffix}"))
        if not files:
            raise FileNotFoundError(f"{repo_dir / folder} holds no {suffix} file: not a CREMA-D repository tree")
        for path in files:
            match = POINTER.match(path.read_bytes()[:400])
            if match is None:
                raise ValueError(f"{path}: not a Git LFS pointer (the repository zip should hold pointers, not media)")
            objects.append(LfsObject(f"{folder}/{path.name}", match["oid"].decode(), int(match["size"])))
    return objects


def download(raw_dir: Path, source: dict, workers: int = 4) -> dict:
    """Fetch and verify every WAV and FLV, summaryTable.csv and both protocols' split files."""
    raw_dir = Path(raw_dir)
    urls = SOURCES | source
    patience = {"retries": source.get("retries", 5), "backoff": source.get("backoff", 1.0)}
    zip_path = http.download(urls["pointers"], raw_dir / "downloads" / "crema-d-pointers.zip", **patience)
    repo_dir = _single_folder(archives.extract(zip_path, raw_dir / "downloads" / "pointers"))
    objects = read_pointers(repo_dir)

    def fetch(obj: LfsObject) -> str | None:
        try:
            http.download([m.format(path=obj.path) for m in urls["media_mirrors"]], raw_dir / obj.path, size=obj.size, sha256=obj.sha256, **patience)
            return None
        except http.DownloadError as error:
            return f"{obj.path}: {error}"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        failures = [f for f in pool.map(fetch, objects) if f]
    if failures:
        raise http.DownloadError(
            f"CREMA-D: {len(failures)} of {len(objects)} media files could not be fetched and verified; the "
            f"{len(objects) - len(failures)} verified ones are kept, so re-running resumes. First failures:\n  " + "\n  ".join(failures[:5])
        )
    summary = raw_dir / "processedResults" / "summaryTable.csv"
    summary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo_dir / "processedResults" / "summaryTable.csv", summary)
    splits = raw_dir / "splits"
    for key, name in [("ogm_train", "train.csv"), ("ogm_test", "test.csv"), ("mlb_folds", "data_splits_VALV.json")]:
        http.download(urls[key], splits / name, **patience)
    return {
        "repository_commit": REPOSITORY_COMMIT,
        "media_files": len(objects),
        "media_bytes": sum(o.size for o in objects),
        "verified": "sha256 and size of every media file against its LFS pointer",
        "split_files": {name: http.file_digest(splits / name) for name in ("train.csv", "test.csv", "data_splits_VALV.json")},
    }


def _single_folder(extracted: Path) -> Path:
    """GitHub zips hold one top folder, `<repo>-<commit>/`."""
    folders = [p for p in extracted.iterdir() if p.is_dir()]
    return folders[0] if len(folders) == 1 and not (extracted / "AudioWAV").exists() else extracted
