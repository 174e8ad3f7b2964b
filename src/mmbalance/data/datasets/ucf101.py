"""UCF101 restricted to the 51 classes with audio, as MLB uses it (Kontras et al., BMVC 2024, kkontras/MLB).

Raw folder (`resources/raw/ucf101/`) after `download`:

* `UCF101.rar` -> `UCF101/UCF-101/<Class>/v_<Class>_gGG_cCC.avi` (13,320 clips, XviD, MP3 audio in about
  half of them). Extraction needs an external RAR reader (unar or bsdtar from Debian main; unrar or 7z
  with the RAR codec also work).
* `UCF101TrainTestSplits-RecognitionTask.zip` -> `splits/ucfTrainTestlist/` with `classInd.txt`,
  `trainlist0{1,2,3}.txt` (`Class/v_Class_gGG_cCC.avi <1-based idx>`) and `testlist0{1,2,3}.txt` (no
  label); CRLF line ends.
* `audio_probe.csv`: which clip has audio, written by `build_catalog` on its first run (media.probe_audio;
  later runs read it back).

`source` keys (all optional; the config's `datasets.ucf101.source`):

* `videos`: the video archive's URLs, tried in order (a `file://` URL reads a copy you have), or a dict
  `{urls, size, md5, sha256}` overriding any of the published values (a value of null skips that check).
* `splits`: the split zip, same forms.
* `archive`: `rar` (default, CRCV's UCF101.rar) or `tfds_zip`: the zip mirror that TensorFlow Datasets
  uses (`UCF101_videos.zip` on storage.googleapis.com, sha256 published by TFDS; no RAR reader needed).
  Its inner layout was not checked, so clips are found by file name anywhere under the extracted folder.
* `retries`, `timeout`, `backoff`: passed to `http.download`.

Protocol `mlb` (MLB's `datasets/UCF101/UCF101_Dataset.py`): fold k = official split k (k = 1..3); test =
testlist0k; validation = 10% (`val_fraction`) of the training GROUPS (`Class_gGG`), stratified by class
and drawn with `seed`, so validation groups never share a person/scene with training groups. The label
is the index of the class folder (never the file name: `HandstandPushups/v_HandStandPushups_...`) in
CLASSES, the 51 audio classes in ascending classInd order (MLB's private `class_change.pkl` mapping is
unverified). Clips without an audio stream, or whose audio decodes to fewer than 2 samples, are dropped
here, as MLB drops them; clips with fewer than 4 frames at 1 fps are dropped at preprocessing by the
`mlb_ucf101` recipe (short_clips: skip).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from mmbalance.data import media
from mmbalance.data.catalog import Catalog, Clip, SplitMismatchError, carve_validation, check_counts
from mmbalance.data.fetching import archives, http

DATASET = "ucf101"
PROTOCOLS = ("mlb",)
SPLITS = (1, 2, 3)

# classInd.txt index (1-based) of the 51 classes UCF101 added to UCF50: the ones with audio (Soomro et
# al., UCF101, CRCV-TR-12-01, Table 1: audio in 51 actions; MLB's configs/UCF101 use num_classes 51).
# classInd is sorted case-insensitively, so these fix the whole file.
AUDIO_CLASS_INDEX = {
    "ApplyEyeMakeup": 1, "ApplyLipstick": 2, "Archery": 3, "BabyCrawling": 4, "BalanceBeam": 5,
    "BandMarching": 6, "BasketballDunk": 9, "BlowDryHair": 13, "BlowingCandles": 14, "BodyWeightSquats": 15,
    "Bowling": 16, "BoxingPunchingBag": 17, "BoxingSpeedBag": 18, "BrushingTeeth": 20, "CliffDiving": 22,
    "CricketBowling": 23, "CricketShot": 24, "CuttingInKitchen": 25, "FieldHockeyPenalty": 29,
    "FloorGymnastics": 30, "FrisbeeCatch": 31, "FrontCrawl": 32, "Haircut": 34, "Hammering": 35,
    "HammerThrow": 36, "HandstandPushups": 37, "HandstandWalking": 38, "HeadMassage": 39, "IceDancing": 44,
    "Knitting": 50, "LongJump": 51, "MoppingFloor": 55, "ParallelBars": 57, "PlayingCello": 59,
    "PlayingDaf": 60, "PlayingDhol": 61, "PlayingFlute": 62, "PlayingSitar": 65, "Rafting": 73,
    "ShavingBeard": 78, "Shotput": 79, "SkyDiving": 83, "SoccerPenalty": 85, "StillRings": 86,
    "SumoWrestling": 87, "Surfing": 88, "TableTennisShot": 90, "Typing": 95, "UnevenBars": 96,
    "WallPushups": 99, "WritingOnBoard": 100,
}
CLASSES = tuple(sorted(AUDIO_CLASS_INDEX, key=AUDIO_CLASS_INDEX.get))  # label index = position

# The UCF50 classes, which carry no audio track (the other 50 lines of classInd.txt).
EXCLUDED_CLASSES = (
    "BaseballPitch", "Basketball", "BenchPress", "Biking", "Billiards", "BreastStroke", "CleanAndJerk",
    "Diving", "Drumming", "Fencing", "GolfSwing", "HighJump", "HorseRace", "HorseRiding", "HulaHoop",
    "JavelinThrow", "JugglingBalls", "JumpingJack", "JumpRope", "Kayaking", "Lunges", "MilitaryParade",
    "Mixing", "Nunchucks", "PizzaTossing", "PlayingGuitar", "PlayingPiano", "PlayingTabla", "PlayingViolin",
    "PoleVault", "PommelHorse", "PullUps", "Punch", "PushUps", "RockClimbingIndoor", "RopeClimbing",
    "Rowing", "SalsaSpin", "SkateBoarding", "Skiing", "Skijet", "SoccerJuggling", "Swing", "TaiChi",
    "TennisSwing", "ThrowDiscus", "TrampolineJumping", "VolleyballSpiking", "WalkingWithDog", "YoYo",
)

# --- sources: CRCV's download page (crcv.ucf.edu/data/UCF101.php), and TFDS's mirror ----------------

VIDEOS_RAR = {
    "name": "UCF101.rar",
    "urls": ["https://www.crcv.ucf.edu/data/UCF101/UCF101.rar",
             "https://www.crcv.ucf.edu/datasets/human-actions/ucf101/UCF101.rar"],
    "size": None,  # ~6.5 GB, exact size not published
    # Third-party value (a PyTorch-Lightning datamodule), not published by CRCV: verify on first download.
    "md5": "6463accf4bbc20fa6418ab7f159e6149",
    "sha256": None,
    "extract_to": "UCF101",
}
VIDEOS_TFDS_ZIP = {
    "name": "UCF101_videos.zip",
    "urls": ["https://storage.googleapis.com/thumos14_files/UCF101_videos.zip"],
    "size": 6_960_400_115,
    "md5": None,
    "sha256": "dabf56f573cd19c79e096563529fec8126a2a34e18e10c72eb621dd687532b0d",  # tensorflow/datasets url_checksums
    "extract_to": "UCF101_videos",
}
SPLITS_ZIP = {
    "name": "UCF101TrainTestSplits-RecognitionTask.zip",
    "urls": ["https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
             "https://www.crcv.ucf.edu/wp-content/uploads/2019/03/UCF101TrainTestSplits-RecognitionTask.zip"],
    "size": 113_943,
    "md5": None,
    "sha256": "5c0d1a53b8ed364a2ac830a73f405e51bece7d98ce1254fd19ed4a36b224bd27",  # tensorflow/datasets url_checksums
    "extract_to": "splits",
}
VIDEO_ARCHIVES = {"rar": VIDEOS_RAR, "tfds_zip": VIDEOS_TFDS_ZIP}
# Where clips are looked for: the two extraction folders, and a tree the user unpacked by hand.
VIDEO_FOLDERS = ("UCF101", "UCF101_videos", "UCF-101")
SPLIT_FOLDERS = ("splits/ucfTrainTestlist", "ucfTrainTestlist")
PROBE_CACHE = "audio_probe.csv"
SOURCE_KEYS = {"videos", "splits", "archive", "retries", "timeout", "backoff"}

# Rows of the 51 classes in the official lists (trainlist0k / testlist0k.txt), before dropping clips
# without audio; "train" includes the validation groups carved out of it.
EXPECTED_COUNTS = {"mlb": {1: {"train": 4901, "test": 1944}, 2: {"train": 4930, "test": 1915}, 3: {"train": 4945, "test": 1900}}}
# Split k tests groups g(7k-6)..g(7k), as the official testlist0k.txt files do.
TEST_GROUPS = {k: range(7 * k - 6, 7 * k + 1) for k in SPLITS}
COUNT_ADVICE = ("Use the official UCF101TrainTestSplits-RecognitionTask.zip (sha256 5c0d1a53...); "
                "the counts are the 51 audio classes' rows of its trainlist0k / testlist0k.txt.")

LIST_ROW = re.compile(r"^(?P<cls>[A-Za-z]+)/(?P<file>v_[A-Za-z]+_g(?P<group>\d{2})_c\d{2}\.avi)$")


# --- download -------------------------------------------------------------------


def download(raw_dir: Path, source: dict, workers: int = 4) -> dict:
    """Fetch and verify the video archive and the split zip, extract both into raw_dir.

    Two files only, fetched one after the other (`workers` is unused: the RAR is one
    6.5 GB stream). Returns what was verified, per file."""
    raw_dir = Path(raw_dir)
    unknown = set(source) - SOURCE_KEYS
    if unknown:
        raise ValueError(f"datasets.ucf101.source: unknown keys {sorted(unknown)} (known: {sorted(SOURCE_KEYS)})")
    archive = source.get("archive", "rar")
    if archive not in VIDEO_ARCHIVES:
        raise ValueError(f"datasets.ucf101.source.archive: {archive!r} is not one of {sorted(VIDEO_ARCHIVES)}")
    transfer = {key: source[key] for key in ("retries", "timeout", "backoff") if key in source}
    record = {"dataset": DATASET, "archive": archive, "files": []}
    for key, spec in (("splits", SPLITS_ZIP), ("videos", VIDEO_ARCHIVES[archive])):
        spec = _with_overrides(spec, source.get(key), key)
        path = _fetch(raw_dir, spec, transfer)
        archives.extract(path, raw_dir / spec["extract_to"])
        record["files"].append(_verified_record(path, spec))
    return record


def _with_overrides(spec: dict, override, key: str) -> dict:
    """A URL list replaces the mirrors; a dict may also replace size and checksums."""
    if override is None:
        return dict(spec)
    if isinstance(override, (str, list)):
        override = {"urls": [override] if isinstance(override, str) else override}
    if not isinstance(override, dict):
        raise TypeError(f"datasets.ucf101.source.{key}: expected a URL list or a dict, got {override!r}")
    unknown = set(override) - {"urls", "size", "md5", "sha256"}
    if unknown:
        raise ValueError(f"datasets.ucf101.source.{key}: unknown keys {sorted(unknown)} (known: urls, size, md5, sha256)")
    return dict(spec) | override


def _fetch(raw_dir: Path, spec: dict, transfer: dict) -> Path:
    dest = raw_dir / spec["name"]
    try:
        return http.download(spec["urls"], dest, size=spec["size"], sha256=spec["sha256"], md5=spec["md5"], **transfer)
    except (http.ChecksumError, http.NotMediaError):
        raise
    except http.DownloadError as error:
        # The CRCV host is often unreachable or has a broken TLS chain: say how to bring a copy.
        raise http.DownloadError(
            f"{error}\nIf you have {spec['name']}, put it at {dest} (it is checked against the published "
            f"size/checksums) or point datasets.ucf101.source to a file:// URL of it."
        ) from error


def _verified_record(path: Path, spec: dict) -> dict:
    checked = {name: spec[name] for name in ("size", "md5", "sha256") if spec.get(name) is not None}
    entry = {"name": spec["name"], "size": path.stat().st_size, "sha256": http.file_digest(path, "sha256"),
             "checked_against": checked or "unverified: none published"}
    if spec.get("md5") == VIDEOS_RAR["md5"]:
        entry["note"] = "md5 from third-party code (a PyTorch Lightning datamodule), not published by CRCV"
    return entry


# --- split files ----------------------------------------------------------------


@dataclass(frozen=True)
class ListedClip:
    """One row of a trainlist/testlist: class folder, file name, group `Class_gGG`."""

    class_name: str
    file: str
    group: str

    @property
    def name(self) -> str:
        return self.file[: -len(".avi")]


def split_dir(raw_dir: Path) -> Path:
    for folder in SPLIT_FOLDERS:
        if (Path(raw_dir) / folder / "classInd.txt").is_file():
            return Path(raw_dir) / folder
    raise FileNotFoundError(
        f"{raw_dir}: no {' or '.join(f'{f}/classInd.txt' for f in SPLIT_FOLDERS)}; run the download rule, or unzip "
        f"{SPLITS_ZIP['name']} into {Path(raw_dir) / 'splits'}"
    )


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines with their numbers; the official files are CRLF."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: split file missing (from {SPLITS_ZIP['name']})")
    text = Path(path).read_text(encoding="utf-8-sig")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_class_index(path: Path) -> dict[str, int]:
    """classInd.txt (`<idx> <Class>`) as name -> 1-based index, checking the 51 audio
    classes sit at the indices of AUDIO_CLASS_INDEX (else the file, or the list, is wrong)."""
    index = {}
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise SplitMismatchError(f"{path}:{number}: expected '<index> <Class>', got {line!r}")
        index[fields[1]] = int(fields[0])
    wrong = {name: (index.get(name), want) for name, want in AUDIO_CLASS_INDEX.items() if index.get(name) != want}
    if wrong:
        detail = ", ".join(f"{name} has {have} where {want} is expected" for name, (have, want) in list(wrong.items())[:5])
        raise SplitMismatchError(f"{path}: the 51 audio classes are not at their official classInd indices ({len(wrong)} differ: {detail})")
    unknown = sorted(set(index) - set(AUDIO_CLASS_INDEX) - set(EXCLUDED_CLASSES))
    if unknown or len(index) != len(AUDIO_CLASS_INDEX) + len(EXCLUDED_CLASSES):
        raise SplitMismatchError(f"{path}: expected the 101 UCF101 classes, got {len(index)} (unknown names: {unknown[:5]})")
    return index


def read_split_file(path: Path, class_index: dict[str, int], labelled: bool) -> list[ListedClip]:
    """Rows of a trainlist (labelled: `Class/file.avi <idx>`) or testlist (`Class/file.avi`).
    A trainlist label must be its folder's classInd index."""
    rows = []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != (2 if labelled else 1):
            raise SplitMismatchError(f"{path}:{number}: expected {'<Class>/<file>.avi <index>' if labelled else '<Class>/<file>.avi'}, got {line!r}")
        match = LIST_ROW.match(fields[0])
        if match is None:
            raise SplitMismatchError(f"{path}:{number}: {fields[0]!r} is not of the form <Class>/v_<Class>_gGG_cCC.avi")
        class_name = match["cls"]  # the folder, not the file name (HandStandPushups)
        if class_name not in class_index:
            raise SplitMismatchError(f"{path}:{number}: class {class_name!r} is not in classInd.txt")
        if labelled and int(fields[1]) != class_index[class_name]:
            raise SplitMismatchError(f"{path}:{number}: label {fields[1]} but classInd.txt gives {class_name} index {class_index[class_name]}")
        rows.append(ListedClip(class_name, match["file"], f"{class_name}_g{match['group']}"))
    return rows


def read_official_splits(folder: Path, splits: tuple[int, ...] = SPLITS, protocol: str = "mlb") -> dict[int, dict[str, list[ListedClip]]]:
    """split -> train/test -> rows of every class, checked: test groups as published, no
    clip in both lists, and the 51 audio classes' rows per list equal EXPECTED_COUNTS."""
    folder = Path(folder)
    class_index = read_class_index(folder / "classInd.txt")
    result = {}
    for k in splits:
        lists = {"train": read_split_file(folder / f"trainlist0{k}.txt", class_index, labelled=True),
                 "test": read_split_file(folder / f"testlist0{k}.txt", class_index, labelled=False)}
        _check_split(folder, k, lists, protocol)
        result[k] = lists
    return result


def _check_split(folder: Path, k: int, lists: dict[str, list[ListedClip]], protocol: str) -> None:
    test_file, train_file = folder / f"testlist0{k}.txt", folder / f"trainlist0{k}.txt"
    off = [row.file for row in lists["test"] if int(row.group[-2:]) not in TEST_GROUPS[k]]
    if off:
        raise SplitMismatchError(f"{test_file}: split {k} tests groups g{TEST_GROUPS[k][0]:02d}-g{TEST_GROUPS[k][-1]:02d}, "
                                 f"but {len(off)} rows are outside them, e.g. {off[:3]}")
    shared = {r.file for r in lists["train"]} & {r.file for r in lists["test"]}
    if shared:
        raise SplitMismatchError(f"{train_file} and {test_file} share {len(shared)} clips, e.g. {sorted(shared)[:3]}")
    for split, path in (("train", train_file), ("test", test_file)):
        got = sum(row.class_name in AUDIO_CLASS_INDEX for row in lists[split])
        check_counts(DATASET, {f"{split} rows of the 51 audio classes": got},
                     {f"{split} rows of the 51 audio classes": EXPECTED_COUNTS[protocol][k][split]}, str(path), COUNT_ADVICE)


def check_audio_classes(status_by_class: dict[str, list[str]]) -> None:
    """The class list is wrong if one of the 51 has no clip with audio, or a UCF50
    class has audio in most of its clips (audio = the 51 classes UCF101 added to UCF50)."""
    problems = []
    for class_name, statuses in sorted(status_by_class.items()):
        with_audio = statuses.count("audio")
        if class_name in AUDIO_CLASS_INDEX and statuses and with_audio == 0:
            problems.append(f"{class_name} (one of the 51) has no clip with audio among {len(statuses)} probed")
        if class_name not in AUDIO_CLASS_INDEX and statuses and with_audio > len(statuses) / 2:
            problems.append(f"{class_name} (a UCF50 class, excluded) has audio in {with_audio} of {len(statuses)} clips")
    if problems:
        raise SplitMismatchError(f"{DATASET}: the audio classes are not the 51 of AUDIO_CLASS_INDEX: {'; '.join(problems)}. "
                                 f"See {PROBE_CACHE} in the raw folder for the per-clip probe.")


# --- catalog ---------------------------------------------------------------------


def find_videos(raw_dir: Path) -> dict[str, Path]:
    """File name -> path of every .avi under the extraction folders. By name, not by
    path: UCF101 file names are unique, and the TFDS zip's inner layout is unchecked."""
    found: dict[str, Path] = {}
    for folder in VIDEO_FOLDERS:
        root = Path(raw_dir) / folder
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".avi"):
                    found.setdefault(name, Path(directory) / name)
    if not found:
        raise FileNotFoundError(
            f"{raw_dir}: no .avi under {', '.join(VIDEO_FOLDERS)}; run the download rule, or extract "
            f"{VIDEOS_RAR['name']} into {Path(raw_dir) / VIDEOS_RAR['extract_to']}"
        )
    return found


def mlb_folds(listed: dict[int, dict[str, list[ListedClip]]], kept: set[str], val_fraction: float, seed: int) -> dict[int, dict[str, list[str]]]:
    """Fold k: testlist k; validation = val_fraction of trainlist k's groups per class
    (at least one when a class has two groups or more), drawn with `seed` from the
    groups as listed, so the draw does not move when a clip's audio probe changes."""
    folds = {}
    for k, lists in listed.items():
        audio_rows = [(row.group, CLASSES.index(row.class_name)) for row in lists["train"] if row.class_name in AUDIO_CLASS_INDEX]
        val_groups = carve_validation(audio_rows, val_fraction, seed, "at_least_one")
        kept_train = [row for row in lists["train"] if row.name in kept]
        folds[k] = {"train": [row.name for row in kept_train if row.group not in val_groups],
                    "val": [row.name for row in kept_train if row.group in val_groups],
                    "test": [row.name for row in lists["test"] if row.name in kept]}
    return folds


def build_catalog(raw_dir: Path, protocol: str, options: dict) -> Catalog:
    """Official splits 1..folds of the 51 audio classes, clips without audio dropped."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"{DATASET}: protocol {protocol!r} is not one of {list(PROTOCOLS)}")
    folds = int(options.get("folds", 3))
    if not 1 <= folds <= len(SPLITS):
        raise ValueError(f"{DATASET}: options folds={folds}, but UCF101 has {len(SPLITS)} official splits (folds 1-3)")
    raw_dir = Path(raw_dir)
    folder = split_dir(raw_dir)
    listed = read_official_splits(folder, SPLITS[:folds], protocol)
    videos = find_videos(raw_dir)

    every_row = {row.file: row for lists in listed.values() for rows in lists.values() for row in rows}
    present = {f: row for f, row in every_row.items() if f in videos}
    status = media.probe_audio(raw_dir, [videos[f] for f in sorted(present)], PROBE_CACHE, options.get("workers", 4))
    status_of = {f: status[videos[f]] for f in present}
    by_class = defaultdict(list)
    for f, row in present.items():
        by_class[row.class_name].append(status_of[f])
    check_audio_classes(by_class)

    ours = {f: row for f, row in every_row.items() if row.class_name in AUDIO_CLASS_INDEX}
    missing = sorted(row.name for f, row in ours.items() if f not in videos)
    _require_every_class_present(ours, videos, raw_dir)
    no_audio = sorted((ours[f].class_name, ours[f].name) for f in present if f in ours and status_of[f] == "no_audio")
    # Undecodable clips stay in the catalog: preprocessing logs them as skipped (kind corrupt).
    clips = [Clip(row.name, CLASSES.index(row.class_name), row.group, videos[f], videos[f])
             for f, row in sorted(ours.items()) if f in videos and status_of[f] != "no_audio"]
    kept = {clip.name for clip in clips}
    catalog = Catalog(DATASET, protocol, list(CLASSES), clips,
                      mlb_folds(listed, kept, float(options.get("val_fraction", 0.1)), int(options.get("seed", 0))), raw_dir)
    catalog.notes = _notes(raw_dir, folder, listed, missing, no_audio, status_of, ours, options)
    return catalog


def _require_every_class_present(ours: dict[str, ListedClip], videos: dict[str, Path], raw_dir: Path) -> None:
    """A listed class none of whose clips is on disk is a broken extraction, not a few lost files."""
    listed = Counter(row.class_name for row in ours.values())
    found = Counter(row.class_name for f, row in ours.items() if f in videos)
    absent = sorted(c for c in listed if found[c] == 0)
    if absent:
        raise FileNotFoundError(f"{raw_dir}: no clip of the listed class(es) {absent} was found under {', '.join(VIDEO_FOLDERS)} "
                                f"(e.g. {next(r.file for r in ours.values() if r.class_name == absent[0])}); re-extract {VIDEOS_RAR['name']}")


def _notes(raw_dir, folder, listed, missing, no_audio, status_of, ours, options) -> dict:
    errors = {ours[f].name: s for f, s in sorted(status_of.items()) if f in ours and s.startswith("error")}
    no_audio_by_class = defaultdict(list)
    for class_name, name in no_audio:
        no_audio_by_class[class_name].append(name)
    return {
        "sources": {"class_index": str(folder / "classInd.txt"),
                    **{f"fold{k}": {"train+val": str(folder / f"trainlist0{k}.txt"), "test": str(folder / f"testlist0{k}.txt")} for k in listed}},
        "classes": "the 51 UCF101 classes with audio in ascending classInd order (MLB's class_change.pkl unverified)",
        "labels": "class folder of the split-file row, never the file name (HandstandPushups/v_HandStandPushups_*)",
        "validation": f"{options.get('val_fraction', 0.1)} of each class's training groups (Class_gGG), seed {options.get('seed', 0)}",
        "listed_rows_51_classes": {str(k): {s: sum(r.class_name in AUDIO_CLASS_INDEX for r in rows) for s, rows in lists.items()}
                                   for k, lists in listed.items()},
        "missing": {"count": len(missing), "clips": missing},
        "no_audio": {"count": len(no_audio), "dropped": dict(sorted(no_audio_by_class.items()))},
        "probe_errors": {"count": len(errors), "clips": errors, "kept": "in the catalog; preprocessing skips them as corrupt"},
        "audio_probe": str(Path(raw_dir) / PROBE_CACHE),
    }
