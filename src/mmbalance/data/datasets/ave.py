"""AVE (Audio-Visual Event, Tian et al., ECCV 2018): download, split files and MLB's protocol.

The dataset is one zip on Google Drive (`AVE_Dataset.zip`, linked from the README of
YapengTian/AVE-ECCV18; about 4,097 ten-second YouTube clips). It unpacks to

    AVE/<11-char YouTube id>.mp4     H.264 + AAC
    Annotations.txt                  every annotation, with a header line
    trainSet.txt valSet.txt testSet.txt   `Category&VideoID&Quality&Start&End` rows
    ReadMe.txt

possibly inside one top-level folder. No size or checksum is published, so the
download is verified by the zip's own CRCs (checked while extracting), the number
of mp4 files (4,097) and the presence of every video the split files name.

Layout here: the zip is kept as `<raw_dir>/AVE_Dataset.zip` and extracted into
`<raw_dir>/AVE_Dataset/` (`archives.extract` needs a folder of its own). A tree
you unpacked yourself directly in `<raw_dir>` (AVE/, trainSet.txt...) is verified
and used without fetching anything.

`source` keys (config `datasets.ave.source`), all optional:
  urls         mirrors of AVE_Dataset.zip, tried in order; `file:///path/AVE_Dataset.zip`
               uses a copy you downloaded in a browser. Third-party copies exist on
               Hugging Face (e.g. the UnFaZeD07/AVE-Dataset dataset) but their contents
               are unchecked.
  sha256, size what your copy of the zip must match, once you have recorded them
  max_missing  how many split-file videos may lack their mp4 (default 0)

`options` keys of build_catalog (config `datasets.ave.catalog`): folds (default 3),
max_missing (default 0: any listed video without its mp4 stops the run).

Protocol "mlb" (PMR and MLB read the same three files): labels in MLB's
hard-coded order (= PMR's order of first appearance in testSet.txt), the first
row of a video id kept within a split, the row whose event ends at 0 s skipped,
and each clip limited to its event segment (Clip.start/end, used by recipes with
`segment: true`). The same video may be listed in two splits with different
labels (8 ids between train and test, 10 between train and val, in the split files of
PMR's data/AVE/ = MLB's datasets/AVE/); the papers keep both, so do we, under the names
`<id>__<split>`, and the catalog's notes list those ids.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mmbalance.data.catalog import Catalog, Clip, check_counts, check_missing
from mmbalance.data.fetching import archives, http

log = logging.getLogger(__name__)

DATASET = "ave"
# MLB's class_dict order (identical to PMR's first appearance in testSet.txt),
# spelled as in the split files: the commas belong to the category names.
CLASSES = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane",
    "Race car, auto racing", "Female speech, woman speaking", "Helicopter", "Violin, fiddle",
    "Flute", "Ukulele", "Frying (food)", "Truck", "Shofar", "Motorcycle", "Acoustic guitar",
    "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus", "Chainsaw", "Cat",
    "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
)

DRIVE_ID = "1FjKwe79e0u96vdjIVwfRQ1V6SoDHe7kK"
# `confirm=t` skips Drive's virus-scan page for large files (the form third-party download scripts
# use; unverified here).
URLS = (
    f"https://drive.usercontent.google.com/download?id={DRIVE_ID}&export=download&confirm=t",
    f"https://drive.google.com/uc?export=download&id={DRIVE_ID}&confirm=t",
)
ARCHIVE = "AVE_Dataset.zip"
EXTRACTED = "AVE_Dataset"  # extraction folder inside raw_dir
VIDEO_DIR = "AVE"
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
ANNOTATIONS = "Annotations.txt"

EXPECTED_VIDEOS = 4097  # mp4 files in AVE/ (4,143 annotations: some videos carry two labels)
# Per split file: rows, and distinct video ids (= clips after MLB's first-occurrence dedup).
EXPECTED_COUNTS = {
    "mlb": {
        "train": {"lines": 3339, "videos": 3312},
        "val": {"lines": 402, "videos": 401},
        "test": {"lines": 402, "videos": 402},
    },
}
EXPECTED_CLASSES = len(CLASSES)
PROTOCOLS = tuple(EXPECTED_COUNTS)

# YouTube's id alphabet (the ids are 11 characters; the length is not enforced).
# Nothing else is accepted: an id becomes a file name inside AVE/.
VIDEO_ID = re.compile(r"[A-Za-z0-9_-]+")
HEADER_FIRST_FIELD = "category"


class IncompleteDatasetError(http.DownloadError):
    """The extracted tree lacks videos the split files list (or holds the wrong number)."""


# --------------------------------------------------------------------------- split files


@dataclass(frozen=True)
class Row:
    """One `Category&VideoID&Quality&Start&End` line."""

    category: str
    video_id: str
    quality: str
    start: float
    end: float
    source: str  # "<file>:<line>", for messages and notes

    @property
    def text(self) -> str:
        return f"{self.category}&{self.video_id}&{self.quality}&{self.start:g}&{self.end:g}"


def read_rows(path: Path) -> list[Row]:
    """The rows of an AVE split or annotation file.

    A first line whose times are not numbers is a header (the zip's
    Annotations.txt has one, the GitHub copy and the split files do not).
    Categories contain commas, so only `&` separates fields. BOM and CRLF
    endings are tolerated.
    """
    path = Path(path)
    rows = []
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        fields = [field.strip() for field in line.split("&")]
        if not rows and _is_header(fields):
            continue
        rows.append(_parse_row(fields, f"{path.name}:{number}", line))
    return rows


def _is_header(fields: list[str]) -> bool:
    return len(fields) == 5 and fields[0].lower() == HEADER_FIRST_FIELD and not _is_number(fields[3])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parse_row(fields: list[str], where: str, line: str) -> Row:
    if len(fields) != 5:
        raise ValueError(f"{where}: expected 'Category&VideoID&Quality&Start&End', got {line!r}")
    category, video_id, quality, start, end = fields
    if category not in CLASSES:
        raise ValueError(f"{where}: category {category!r} is not one of the 28 AVE classes {list(CLASSES)}")
    if not VIDEO_ID.fullmatch(video_id):
        raise ValueError(f"{where}: video id {video_id!r} is not a YouTube id (letters, digits, '-' and '_')")
    if not (_is_number(start) and _is_number(end)):
        raise ValueError(f"{where}: start/end {start!r}/{end!r} are not seconds")
    return Row(category, video_id, quality, float(start), float(end), where)


def first_occurrences(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """PMR/MLB keep the first row of a video id within a split (their loaders
    skip an id already loaded); returns (kept, dropped)."""
    seen: set[str] = set()
    kept, dropped = [], []
    for row in rows:
        (dropped if row.video_id in seen else kept).append(row)
        seen.add(row.video_id)
    return kept, dropped


def read_mlb_splits(root: Path) -> tuple[dict[str, list[Row]], dict]:
    """Split -> rows of the mlb protocol, checked against the published counts.

    The files' sizes (rows and distinct ids) are checked first, so a wrong or
    edited file stops here, naming it. Then rows repeating an id within a split
    are dropped (first kept) and rows whose event is empty (`&0&0`) skipped,
    as MLB's frame extraction does; both are listed in the returned notes.
    """
    notes: dict = {"duplicates_dropped": {}, "empty_segments_skipped": []}
    splits: dict[str, list[Row]] = {}
    for split, name in SPLIT_FILES.items():
        path = Path(root) / name
        if not path.is_file():
            raise FileNotFoundError(f"AVE split file {path} is missing: is {root} the extracted {ARCHIVE}?")
        rows = read_rows(path)
        kept, dropped = first_occurrences(rows)
        check_counts(DATASET, {"lines": len(rows), "videos": len(kept)}, EXPECTED_COUNTS["mlb"][split], str(path),
                     "Use the split files of AVE_Dataset.zip (= PMR data/AVE/, MLB datasets/AVE/: 3,339 / 402 / 402 rows, "
                     "3,312 / 401 / 402 distinct ids).")
        notes["duplicates_dropped"][split] = [f"{r.source} {r.text} (kept: {_first(kept, r).text})" for r in dropped]
        empty = [r for r in kept if r.end <= r.start]
        notes["empty_segments_skipped"] += [f"{r.source} {r.text}" for r in empty]
        splits[split] = [r for r in kept if r.end > r.start]
    categories = {r.category for rows in splits.values() for r in rows}
    check_counts(DATASET, {"classes": len(categories)}, {"classes": EXPECTED_CLASSES},
                 " + ".join(SPLIT_FILES.values()), "Every AVE class should appear in the split files.")
    return splits, notes


def _first(kept: list[Row], row: Row) -> Row:
    return next(r for r in kept if r.video_id == row.video_id)


def cross_split_ids(splits: dict[str, list[Row]]) -> dict[str, list[str]]:
    """Video ids listed in two splits ("train&test": [...]): leakage the papers keep."""
    ids = {split: {r.video_id for r in rows} for split, rows in splits.items()}
    names = list(ids)
    shared = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(ids[a] & ids[b])
            if common:
                shared[f"{a}&{b}"] = common
    return shared


def clip_name(video_id: str, split: str, repeated: set[str]) -> str:
    """`<id>`, or `<id>__<split>` for an id listed in more than one split
    (catalog names must be unique; the suffix keeps them deterministic, and
    the Catalog refuses any name that would still repeat)."""
    return f"{video_id}__{split}" if video_id in repeated else video_id


# --------------------------------------------------------------------------- raw tree


def dataset_root(raw_dir: Path) -> Path:
    """The folder holding AVE/ and the split files: the extraction folder (or
    its single top-level folder, if the zip has one), or raw_dir itself for a
    tree unpacked by hand."""
    raw_dir = Path(raw_dir)
    extracted = raw_dir / EXTRACTED
    candidates = [raw_dir, extracted]
    if extracted.is_dir():
        candidates += sorted(p for p in extracted.iterdir() if p.is_dir())
    for candidate in candidates:
        if (candidate / VIDEO_DIR).is_dir() and (candidate / SPLIT_FILES["train"]).is_file():
            return candidate
    raise FileNotFoundError(
        f"no AVE tree under {raw_dir}: expected {VIDEO_DIR}/ and {', '.join(SPLIT_FILES.values())} in {raw_dir}, "
        f"{extracted} or one folder inside it (run the download, or unpack {ARCHIVE} there)"
    )


def missing_videos(root: Path, video_ids: set[str]) -> list[str]:
    folder = Path(root) / VIDEO_DIR
    present = {p.stem for p in folder.glob("*.mp4")}
    return sorted(video_ids - present)


# --------------------------------------------------------------------------- download


def download(raw_dir: Path, source: dict, workers: int = 4) -> dict:
    """Fetch AVE_Dataset.zip, extract it into raw_dir and verify the tree.

    `workers` is unused: the dataset is a single archive.
    """
    raw_dir = Path(raw_dir)
    archive = raw_dir / ARCHIVE
    if _unpacked_by_hand(raw_dir):
        log.info("%s holds an AVE tree unpacked by hand; verifying it without fetching %s", raw_dir, ARCHIVE)
    elif _extraction_done(raw_dir) and not archive.exists():
        log.info("%s was extracted before and the archive removed; verifying the tree only", ARCHIVE)
    else:
        _fetch_archive(list(source.get("urls", URLS)), archive, source)
        archives.extract(archive, raw_dir / EXTRACTED)
    root = dataset_root(raw_dir)
    record = verify_tree(root, int(source.get("max_missing", 0)))
    return {
        "archive": _archive_record(archive, source),
        "zip_integrity": "CRC-32 of every member checked during extraction",
        "root": str(root.relative_to(raw_dir)) if root != raw_dir else ".",
        **record,
    }


def _unpacked_by_hand(raw_dir: Path) -> bool:
    return (raw_dir / VIDEO_DIR).is_dir() and (raw_dir / SPLIT_FILES["train"]).is_file()


def _archive_record(archive: Path, source: dict) -> dict:
    if not archive.exists():
        return {"name": ARCHIVE, "present": False, "note": "removed after extraction, or the tree was unpacked by hand"}
    checksum = "matched source.sha256" if source.get("sha256") else "unverified: none published"
    return {"name": ARCHIVE, "size": archive.stat().st_size, "sha256": http.file_digest(archive), "published_checksum": checksum}


def _extraction_done(raw_dir: Path) -> bool:
    return (raw_dir / EXTRACTED / archives.MARKER).is_file()


def _fetch_archive(urls: list[str], archive: Path, source: dict) -> None:
    """download.download per mirror, so that an HTML answer from Drive (virus
    scan, quota or sign-in page) surfaces as NotMediaError with what to do."""
    failures: list[http.DownloadError] = []
    for url in urls:
        try:
            http.download([url], archive, size=source.get("size"), sha256=source.get("sha256"))
            return
        except http.ChecksumError:
            raise  # the bytes arrived: another mirror would not change a pinned checksum's verdict
        except http.DownloadError as error:
            failures.append(error)
    detail = "\n".join(f"  - {e}" for e in failures)
    if any(isinstance(e, http.NotMediaError) for e in failures):
        raise http.NotMediaError(
            f"{archive}: Google Drive answered with a web page instead of {ARCHIVE}:\n{detail}\n"
            f"Download it in a browser from https://drive.google.com/open?id={DRIVE_ID} , then either put it at "
            f"{archive} or set datasets.ave.source.urls to ['file:///path/to/{ARCHIVE}'], and run the download again."
        )
    raise http.DownloadError(f"{archive}: every mirror failed:\n{detail}")


def verify_tree(root: Path, max_missing: int = 0) -> dict:
    """Count the mp4 files and check every video named by the split files is there."""
    videos = sorted((root / VIDEO_DIR).glob("*.mp4"))
    listed = {r.video_id for name in SPLIT_FILES.values() for r in read_rows(root / name)}
    missing = missing_videos(root, listed)
    advice = (f"Re-download {ARCHIVE} (delete it and its extraction folder {EXTRACTED}/ first), or allow the "
              "loss with datasets.ave.source.max_missing.")
    check_missing("AVE", {"split files": missing}, {"split files": len(listed)}, root / VIDEO_DIR, advice,
                  max_count=max_missing, examples=10, error=IncompleteDatasetError)
    if not EXPECTED_VIDEOS - max_missing <= len(videos) <= EXPECTED_VIDEOS:
        raise IncompleteDatasetError(
            f"AVE: {root / VIDEO_DIR} holds {len(videos)} mp4 files where {ARCHIVE} has {EXPECTED_VIDEOS} "
            f"(at most {max_missing} missing allowed). {advice}"
        )
    return {
        "videos": len(videos),
        "expected_videos": EXPECTED_VIDEOS,
        "split_videos": len(listed),
        "missing": missing,
        "split_files": {name: http.file_digest(root / name) for name in [*SPLIT_FILES.values(), ANNOTATIONS]
                        if (root / name).exists()},
    }


# --------------------------------------------------------------------------- catalog


def build_catalog(raw_dir: Path, protocol: str, options: dict) -> Catalog:
    """The clips of the mlb protocol: one per (split, video id), limited to its event segment."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"AVE has no protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    raw_dir = Path(raw_dir)
    root = dataset_root(raw_dir)
    splits, notes = read_mlb_splits(root)
    leakage = cross_split_ids(splits)
    repeated = {video_id for ids in leakage.values() for video_id in ids}

    listed = {r.video_id for rows in splits.values() for r in rows}
    missing = set(missing_videos(root, listed))
    max_missing = int(options.get("max_missing", 0))
    check_missing("AVE", {"split files": sorted(missing)}, {"split files": len(listed)}, root / VIDEO_DIR,
                  "Re-run the download, or allow the loss with datasets.ave.catalog.max_missing.",
                  max_count=max_missing, examples=10, error=FileNotFoundError)

    clips, folds, dropped = [], {1: {split: [] for split in SPLIT_FILES}}, []
    for split, rows in splits.items():
        for row in rows:
            name = clip_name(row.video_id, split, repeated)
            if row.video_id in missing:
                dropped.append(name)
                continue
            video = root / VIDEO_DIR / f"{row.video_id}.mp4"
            clips.append(Clip(name, CLASSES.index(row.category), row.video_id, video, video, row.start, row.end))
            folds[1][split].append(name)
    notes |= {
        "split_files": {split: str((root / name).relative_to(raw_dir)) for split, name in SPLIT_FILES.items()},
        "labels": "MLB's class_dict order (= PMR's first appearance in testSet.txt)",
        "dedup": "first row of a video id kept within each split (PMR/MLB)",
        "segment": "start/end are the annotated event seconds; group is the YouTube id",
        "cross_split_ids": leakage,
        "cross_split_naming": "ids listed in two splits are named <id>__<split>, with that split's label and segment",
        "missing": {"count": len(dropped), "clips": sorted(dropped)},
        "annotations": _annotation_check(root, splits),
    }
    catalog = Catalog(DATASET, protocol, list(CLASSES), sorted(clips, key=lambda c: c.name), folds, raw_dir, notes)
    catalog.replicate_folds(options.get("folds", 3))
    return catalog


def _annotation_check(root: Path, splits: dict[str, list[Row]]) -> dict:
    """The split files should be exactly Annotations.txt's rows; a difference is recorded, not fatal."""
    path = root / ANNOTATIONS
    if not path.is_file():
        return {"file": None, "note": f"{ANNOTATIONS} absent; not compared"}
    annotated = Counter(r.text for r in read_rows(path))
    listed = [r.text for rows in splits.values() for r in rows]
    absent = sorted(t for t in set(listed) if t not in annotated)
    return {"file": ANNOTATIONS, "rows": sum(annotated.values()), "split_rows_not_annotated": absent[:20],
            "split_rows_not_annotated_count": len(absent)}
