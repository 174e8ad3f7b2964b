"""Kinetics-Sounds (KS): the 31 sound-making classes of Kinetics-400, as the GeWu-Lab papers use them
(the class list of Arandjelović & Zisserman, "Look, Listen and Learn", ICCV 2017, mapped to Kinetics-400 names).

Media: the CVDF copy of Kinetics-400 on S3 (cvdfoundation/kinetics-dataset). Each K400 split has a text
file of `.tar.gz` shard URLs; a shard holds flat `<ytid>_<start:06d>_<end:06d>.mp4` clips of every class
(shards are not grouped by class), so every shard is fetched, and after extraction only the clips named
by the KS split lists are kept. Shards are processed one by one (at most `workers` at a time) and deleted
when done, so disk use stays bounded by a few shards plus the KS clips. A progress file,
`k400_progress.json` in the raw folder, lists the processed shards; a later call skips them (resume). A
shard's `.tar.gz` that breaks off mid-transfer resumes through `http.download`; one that is truncated at
the source fails extraction and is moved aside as `.corrupt` (re-fetched next run).
`replacement_for_corrupted_k400.tgz` holds re-encoded copies of ~1,400 corrupted clips; they win over the
shard copies.

No checksums are published for any of these files: shards are verified by tar integrity (full
decompression during extraction), everything else is recorded as "unverified: none published" with its size.

Split lists (pinned at the commits where they were read):
* OGM-GE `data/KineticSound/my_train.txt` / `my_test.txt`: `<name>,10,<label index>`;
* BML `code/dataset/KS_train_val.json`: `{"labels": [...], "database":
  {name: {"subset": training|validation|testing, "label": <name_with_underscores>}}}`.
Train names are `<ytid>_<start:06d>_<end:06d>`, val/test names `<ytid>_<start>` (unpadded), so clips are
keyed by (YouTube id, start second); YouTube ids are 11 characters of `[A-Za-z0-9_-]` and may start with
'-' and contain '_'.

Protocol "ogm_ge": train = my_train.txt (14,799), val = BML `validation` (1,320), test = my_test.txt
(2,597). A catalog clip is named after its media file's stem (`<ytid>_<start:06d>_<end:06d>`), grouped by
YouTube id.

`source` keys (all optional; `file://` URLs work for user copies):
  base_url        CVDF root, default https://s3.amazonaws.com/kinetics/400
  path_lists      {train|val|test: [urls]}   shard lists (mirrors in order)
  annotations     {train|val|test: [urls]}   K400 csv files
  replacement     [urls]                      replacement_for_corrupted_k400.tgz
  split_lists     {ogm_train|ogm_test|bml: [urls]}
  checksums       {"<split>/<shard file>" or file name: sha256}  user-recorded hashes (none are
                  published); checked when given
  keep_all        false (default): keep only the KS clips of each shard; true: keep every clip of K400
  retries, backoff, timeout   passed to http.download

build_catalog `options`: folds (3), max_missing_fraction (0.05: share of a split's listed clips that may
lack media, Kinetics has link rot).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from mmbalance.data.catalog import Catalog, Clip, SplitMismatchError, check_counts, check_missing
from mmbalance.data.fetching import archives, http
from mmbalance.io import write_text_atomic

log = logging.getLogger(__name__)

DATASET = "kinetics_sounds"

# Alphabetical = label index of GeWu-Lab's lists (the `labels` of BML's code/dataset/KS_train_val.json).
CLASSES = (
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball",
    "laughing", "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar",
    "playing clarinet", "playing drums", "playing guitar", "playing harmonica", "playing keyboard",
    "playing organ", "playing piano", "playing saxophone", "playing trombone", "playing trumpet",
    "playing violin", "playing xylophone", "ripping paper", "shoveling snow", "shuffling cards",
    "singing", "stomping grapes", "tap dancing", "tapping guitar", "tapping pen", "tickling",
)

K400_BASE = "https://s3.amazonaws.com/kinetics/400"
K400_SPLITS = ("train", "val", "test")
REPLACEMENT = "replacement_for_corrupted_k400.tgz"

# Full commits of GeWu-Lab/OGM-GE_CVPR2022 and GeWu-Lab/BML_TPAMI2024 at which the split files were read.
OGM_GE_COMMIT = "149c68e5987f92484dd30cd468d444f6d98f57bd"
BML_COMMIT = "8db168f1a08c030abd0f9524ec02a48e4cb977d2"
SPLIT_FILES = {  # key -> (file name in raw_dir/splits, default URLs)
    "ogm_train": ("my_train.txt", [f"https://raw.githubusercontent.com/GeWu-Lab/OGM-GE_CVPR2022/{OGM_GE_COMMIT}/data/KineticSound/my_train.txt"]),
    "ogm_test": ("my_test.txt", [f"https://raw.githubusercontent.com/GeWu-Lab/OGM-GE_CVPR2022/{OGM_GE_COMMIT}/data/KineticSound/my_test.txt"]),
    "bml": ("KS_train_val.json", [f"https://raw.githubusercontent.com/GeWu-Lab/BML_TPAMI2024/{BML_COMMIT}/code/dataset/KS_train_val.json"]),
}
BML_SUBSETS = {"training": "train", "validation": "val", "testing": "test"}

EXPECTED_COUNTS = {"ogm_ge": {"train": 14799, "val": 1320, "test": 2597}}
# Per-class train / val / test of the BML json (counted from KS_train_val.json at BML_COMMIT), in CLASSES order.
_PER_CLASS = (
    (268, 44, 81), (690, 45, 92), (607, 40, 87), (512, 42, 87), (497, 43, 87), (445, 40, 68), (635, 46, 90),
    (478, 41, 90), (457, 45, 86), (605, 43, 79), (563, 48, 91), (486, 46, 88), (604, 42, 73), (592, 47, 85),
    (366, 41, 86), (339, 44, 91), (333, 44, 82), (489, 44, 84), (653, 39, 90), (538, 41, 90), (654, 42, 83),
    (386, 49, 91), (281, 40, 80), (493, 44, 92), (395, 37, 79), (672, 38, 66), (197, 47, 85), (523, 43, 84),
    (433, 43, 91), (354, 42, 76), (254, 30, 63),
)
EXPECTED_CLASS_COUNTS = {
    "ogm_ge": {split: {name: counts[i] for name, counts in zip(CLASSES, _PER_CLASS)} for i, split in enumerate(K400_SPLITS)}
}
PROTOCOLS = tuple(EXPECTED_COUNTS)

UNVERIFIED = "unverified: none published"
PROGRESS = "k400_progress.json"
MEDIA_DIR = "k400"  # raw_dir/k400/{train,val,test,replacement}/<ytid>_<start>_<end>.mp4
SHARD_DIR = "shards"  # downloads and extractions in flight

# Split-list names: 11-character YouTube id, then the start second, then (train) the end second.
LIST_NAME = re.compile(r"^(?P<ytid>[A-Za-z0-9_-]{11})_(?P<start>\d+)(?:_(?P<end>\d{6}))?$")
MEDIA_NAME = re.compile(r"^(?P<ytid>[A-Za-z0-9_-]{11})_(?P<start>\d{6})_(?P<end>\d{6})\.mp4$")


class MissingMediaError(RuntimeError):
    """More listed clips lack their media than Kinetics' link rot explains."""


# --------------------------------------------------------------------------- names


def clip_key(name: str, where: str = "") -> tuple[str, int]:
    """(YouTube id, start second) of a split-list name, padded or not."""
    match = LIST_NAME.match(name)
    if match is None:
        raise ValueError(f"{where}clip name {name!r} is not <11-char YouTube id>_<start>[_<end:06d>]")
    return match["ytid"], int(match["start"])


def media_key(filename: str) -> tuple[str, int] | None:
    """(YouTube id, start second) of a CVDF file name, None for anything else."""
    match = MEDIA_NAME.match(filename)
    return None if match is None else (match["ytid"], int(match["start"]))


# --------------------------------------------------------------------------- split lists


def read_ogm_list(path: Path) -> dict[tuple[str, int], tuple[str, int]]:
    """key -> (name, label) of an OGM-GE `<name>,10,<label index>` file."""
    path = Path(path)
    rows: dict[tuple[str, int], tuple[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[2].isdigit() or int(fields[2]) >= len(CLASSES):
            raise ValueError(f"{path}:{number}: expected '<name>,10,<label 0-{len(CLASSES) - 1}>', got {line!r}")
        key = clip_key(fields[0], f"{path}:{number}: ")
        if key in rows:
            raise SplitMismatchError(f"{path}:{number}: clip {fields[0]} repeats {rows[key][0]} (same YouTube id and start)")
        rows[key] = (fields[0], int(fields[2]))
    return rows


def read_bml_json(path: Path) -> dict[str, dict[tuple[str, int], tuple[str, int]]]:
    """split -> key -> (name, label) of BML's KS json, checking its class list."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    labels = [label.replace("_", " ") for label in data.get("labels", [])]
    if tuple(labels) != CLASSES:
        raise SplitMismatchError(f"{path}: 'labels' is not the 31-class KS list of CLASSES (got {len(labels)}: {labels[:3]}...)")
    splits: dict[str, dict] = {split: {} for split in K400_SPLITS}
    for name, entry in data.get("database", {}).items():
        subset, label = entry.get("subset"), entry.get("label", "").replace("_", " ")
        if subset not in BML_SUBSETS or label not in CLASSES:
            raise ValueError(f"{path}: database[{name!r}] has subset {subset!r} / label {entry.get('label')!r}; "
                             f"expected one of {sorted(BML_SUBSETS)} and a KS class")
        key = clip_key(name, f"{path}: ")
        splits[BML_SUBSETS[subset]][key] = (name, CLASSES.index(label))
    return splits


def check_lists_agree(ogm: dict[str, dict], bml: dict[str, dict], sources: dict[str, Path]) -> dict[str, int]:
    """Both formats must give a clip the same label; returns, per split, how many
    clips one format lists and the other does not (recorded, not fatal)."""
    only_one = {}
    for split in ("train", "test"):
        shared = ogm[split].keys() & bml[split].keys()
        wrong = sorted(k for k in shared if ogm[split][k][1] != bml[split][k][1])
        if wrong:
            examples = [f"{ogm[split][k][0]}: {CLASSES[ogm[split][k][1]]} vs {CLASSES[bml[split][k][1]]}" for k in wrong[:3]]
            raise SplitMismatchError(f"{DATASET}: {sources['ogm_' + split]} and {sources['bml']} disagree on the label of "
                                     f"{len(wrong)} {split} clips, e.g. {examples}")
        only_one[split] = len(ogm[split].keys() ^ bml[split].keys())
    return only_one


def protocol_lists(raw_dir: Path, protocol: str) -> tuple[dict[str, dict], dict]:
    """split -> key -> (list name, label) of the protocol, checked against the
    published counts; plus notes on the sources."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"{DATASET}: unknown protocol {protocol!r}; known: {list(PROTOCOLS)}")
    sources = {key: Path(raw_dir) / "splits" / name for key, (name, _) in SPLIT_FILES.items()}
    for key, path in sources.items():
        if not path.is_file():
            raise FileNotFoundError(f"{DATASET}: split list {path} is missing (run the download rule; source key split_lists.{key})")
    ogm = {"train": read_ogm_list(sources["ogm_train"]), "test": read_ogm_list(sources["ogm_test"])}
    bml = read_bml_json(sources["bml"])
    lists = {"train": ogm["train"], "val": bml["val"], "test": ogm["test"]}
    for split, source in (("train", sources["ogm_train"]), ("val", sources["bml"]), ("test", sources["ogm_test"])):
        _check_split(lists[split], split, protocol, source)
    _check_disjoint(lists, sources)
    notes = {
        "split_sources": {"train": str(sources["ogm_train"]), "val": f"{sources['bml']} (subset 'validation')",
                          "test": str(sources["ogm_test"])},
        "split_list_commits": {"OGM-GE": OGM_GE_COMMIT, "BML": BML_COMMIT},
        "clips_in_only_one_list_format": check_lists_agree(ogm, bml, sources),
        "keying": "clips matched by (YouTube id, start second): train names are padded, val/test names are not",
    }
    return lists, notes


def _check_split(rows: dict, split: str, protocol: str, source: Path) -> None:
    advice = f"Is it the file of the pinned commit (OGM-GE {OGM_GE_COMMIT[:7]}, BML {BML_COMMIT[:7]})?"
    check_counts(DATASET, {split: len(rows)}, {split: EXPECTED_COUNTS[protocol][split]}, str(source), advice)
    per_class = Counter(CLASSES[label] for _, label in rows.values())
    expected = EXPECTED_CLASS_COUNTS.get(protocol, {}).get(split)
    if expected:
        check_counts(DATASET, dict(per_class), expected, f"{source} ({split}, clips per class)", advice)


def _check_disjoint(lists: dict[str, dict], sources: dict[str, Path]) -> None:
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = lists[a].keys() & lists[b].keys()
        if shared:
            raise SplitMismatchError(f"{DATASET}: {len(shared)} clips are listed in both {a} and {b} "
                                     f"(files {sorted(map(str, sources.values()))}), e.g. {[lists[a][k][0] for k in sorted(shared)[:3]]}")


def wanted_keys(raw_dir: Path) -> set[tuple[str, int]]:
    """Every (YouTube id, start) named by any of the split lists: what a shard must keep."""
    splits = Path(raw_dir) / "splits"
    keys: set = set()
    for key in ("ogm_train", "ogm_test"):
        keys |= read_ogm_list(splits / SPLIT_FILES[key][0]).keys()
    for rows in read_bml_json(splits / SPLIT_FILES["bml"][0]).values():
        keys |= rows.keys()
    return keys


# --------------------------------------------------------------------------- download


def download(raw_dir: Path, source: dict, workers: int = 4) -> dict:
    """Fetch split lists, K400 annotations, shard lists, every shard (keeping the
    KS clips) and the replacement archive into raw_dir; returns the record."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    fetch = _Fetcher(raw_dir, source)
    files = {}
    for key, (name, urls) in SPLIT_FILES.items():
        files[f"splits/{name}"] = fetch.small(source.get("split_lists", {}).get(key, urls), raw_dir / "splits" / name)
    base = source.get("base_url", K400_BASE).rstrip("/")
    shard_urls = {}
    for split in K400_SPLITS:
        csv_urls = source.get("annotations", {}).get(split, [f"{base}/annotations/{split}.csv"])
        files[f"annotations/{split}.csv"] = fetch.small(csv_urls, raw_dir / "annotations" / f"{split}.csv")
        list_urls = source.get("path_lists", {}).get(split, [f"{base}/{split}/k400_{split}_path.txt"])
        path_list = raw_dir / "path_lists" / f"k400_{split}_path.txt"
        files[f"path_lists/{path_list.name}"] = fetch.small(list_urls, path_list)
        shard_urls[split] = [line.strip() for line in path_list.read_text().splitlines() if line.strip()]
    wanted = wanted_keys(raw_dir)
    jobs = [(split, url) for split in K400_SPLITS for url in shard_urls[split]]
    jobs.append(("replacement", None))
    replacement_urls = source.get("replacement", [f"{base}/{REPLACEMENT}"])
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(fetch.shard, split, url or replacement_urls, wanted) for split, url in jobs]
    _raise_failures(futures, jobs)
    kept = Counter()
    for (split, _), future in zip(jobs, futures):
        kept[split] += future.result()["kept"]
    return {"dataset": DATASET, "files": files, "shards": fetch.progress["shards"], "ks_clips_kept": dict(kept),
            "keep_all": fetch.keep_all, "wanted_clips": len(wanted)}


def _raise_failures(futures: list, jobs: list) -> None:
    """Every shard gets its chance (one bad shard must not stop hundreds of GB of
    others); then the failures are raised: one as itself, several together."""
    failed = [(job, f.exception()) for job, f in zip(jobs, futures) if f.exception() is not None]
    if len(failed) == 1:
        raise failed[0][1]
    if failed:
        detail = "; ".join(f"{split} {url or REPLACEMENT}: {exc}" for (split, url), exc in failed)
        raise http.DownloadError(f"{DATASET}: {len(failed)} shards failed (the others are recorded in {PROGRESS} and "
                               f"will be skipped next time): {detail}") from failed[0][1]


class _Fetcher:
    """Downloads with the source's settings, and the shard progress file."""

    def __init__(self, raw_dir: Path, source: dict):
        self.raw_dir = raw_dir
        self.options = {k: source[k] for k in ("retries", "backoff", "timeout") if k in source}
        self.checksums = source.get("checksums", {})
        self.keep_all = bool(source.get("keep_all", False))
        self.lock = threading.Lock()
        path = raw_dir / PROGRESS
        self.progress = json.loads(path.read_text()) if path.is_file() else {"shards": {}}

    def small(self, urls, dest: Path) -> dict:
        """A list or csv file: fetched once, recorded with its size."""
        http.download(urls, dest, sha256=self.checksums.get(dest.name), **self.options)
        return {"size": dest.stat().st_size, "sha256": self.checksums.get(dest.name, UNVERIFIED),
                "sha256_of_download": http.file_digest(dest)}

    def shard(self, split: str, urls, wanted: set) -> dict:
        """Fetch, extract and filter one shard unless the progress file lists it."""
        urls = [urls] if isinstance(urls, str) else list(urls)
        name = urls[0].rstrip("/").rsplit("/", 1)[-1]
        record_key = f"{split}/{name}"
        with self.lock:
            if record_key in self.progress["shards"]:
                log.info("%s already processed (%s); skipping", record_key, PROGRESS)
                return self.progress["shards"][record_key]
        archive = self.raw_dir / SHARD_DIR / split / name
        http.download(urls, archive, sha256=self.checksums.get(record_key), **self.options)
        size = archive.stat().st_size
        unpacked = archive.with_name(archive.name + ".d")
        try:
            archives.extract(archive, unpacked)
        except archives.UnsafeArchiveError:
            raise
        except archives.ExtractError as exc:
            # Keep the bad bytes for inspection, but out of the way so the next run fetches the shard again.
            kept_aside = archive.with_name(archive.name + ".corrupt")
            os.replace(archive, kept_aside)
            raise archives.ExtractError(f"{DATASET}: shard {record_key} from {urls[0]} is not a complete tar archive "
                                  f"({exc}); moved to {kept_aside}, run the download again to re-fetch it") from exc
        kept = _keep_clips(unpacked, self.raw_dir / MEDIA_DIR / split, None if self.keep_all else wanted)
        record = {"size": size, "sha256": self.checksums.get(record_key, UNVERIFIED),
                  "check": "tar integrity (fully decompressed)", "kept": kept}
        with self.lock:  # recorded before the cleanup: a crash now costs disk, not a re-download
            self.progress["shards"][record_key] = record
            write_text_atomic(self.raw_dir / PROGRESS, json.dumps(self.progress, indent=1, sort_keys=True))
        shutil.rmtree(unpacked)
        archive.unlink()
        return record


def _keep_clips(unpacked: Path, media_dir: Path, wanted: set | None) -> int:
    """Move the wanted CVDF clips (all with wanted None) into media_dir."""
    media_dir.mkdir(parents=True, exist_ok=True)
    kept = 0
    for path in sorted(unpacked.rglob("*.mp4")):
        key = media_key(path.name)
        if key is not None and (wanted is None or key in wanted):
            os.replace(path, media_dir / path.name)
            kept += 1
    return kept


# --------------------------------------------------------------------------- catalog


def media_index(raw_dir: Path) -> dict[tuple[str, int], Path]:
    """(YouTube id, start) -> media file; a replacement copy wins over the original."""
    index: dict[tuple[str, int], Path] = {}
    for folder in (*K400_SPLITS, "replacement"):  # replacement last: it overrides
        for path in sorted((Path(raw_dir) / MEDIA_DIR / folder).glob("*.mp4")):
            key = media_key(path.name)
            if key is not None:
                index[key] = path
    return index


def k400_labels(raw_dir: Path) -> dict[tuple[str, int], str]:
    """(YouTube id, start) -> K400 label from the annotation csvs that are present."""
    labels = {}
    for split in K400_SPLITS:
        path = Path(raw_dir) / "annotations" / f"{split}.csv"
        if path.is_file():
            table = pd.read_csv(path, dtype={"youtube_id": str}, keep_default_na=False)
            if "label" in table.columns:
                labels |= {(r.youtube_id, int(r.time_start)): r.label for r in table.itertuples()}
    return labels


def build_catalog(raw_dir: Path, protocol: str, options: dict) -> Catalog:
    raw_dir = Path(raw_dir)
    lists, notes = protocol_lists(raw_dir, protocol)
    media = media_index(raw_dir)
    k400 = k400_labels(raw_dir)
    clips, folds, missing, disagree = [], {"train": [], "val": [], "test": []}, {}, []
    for split, rows in lists.items():
        absent = []
        for key, (name, label) in rows.items():
            path = media.get(key)
            if path is None:
                absent.append(name)
                continue
            if key in k400 and k400[key] != CLASSES[label]:
                disagree.append(f"{name}: KS {CLASSES[label]!r}, K400 {k400[key]!r}")
            clip_name = path.name[: -len(".mp4")]
            clips.append(Clip(clip_name, label, key[0], path, path))
            folds[split].append(clip_name)
        missing[split] = {"count": len(absent), "listed": len(rows), "names": sorted(absent)}
    check_missing(DATASET, {s: m["names"] for s, m in missing.items()}, {s: m["listed"] for s, m in missing.items()},
                  raw_dir / MEDIA_DIR, f"finish the download, or raise datasets.{DATASET}.catalog.max_missing_fraction",
                  max_fraction=options.get("max_missing_fraction", 0.05), error=MissingMediaError)
    notes |= {
        "missing": missing,
        "replacements_used": sum(1 for c in clips if c.video.parent.name == "replacement"),
        "k400_label_disagreements": disagree,
        "media": f"{MEDIA_DIR}/<K400 split or replacement>/<ytid>_<start:06d>_<end:06d>.mp4 (CVDF), audio read from the mp4",
    }
    catalog = Catalog(DATASET, protocol, list(CLASSES), clips, {1: folds}, raw_dir, notes)
    catalog.replicate_folds(options.get("folds", 3))
    return catalog
