"""VGGSound (309 classes; Chen et al., ICASSP 2020): the split lists and OGM-GE's protocol.

The files come from vggsound_download (the Hugging Face package `Loie/VGGSound` and the
authors' `hche11/VGGSound` lists; its docstring has the sources, the raw layout and the
`source` keys); `download` is that module's.

build_catalog options: folds (3), val_fraction (0.1), seed (0), max_missing_fraction (0.1: share of
a split's listed clips whose video may be absent), expected_classes (309) and expected_counts
(EXPECTED_COUNTS), the last two only for stand-ins.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mmbalance.data.catalog import Catalog, Clip, SplitMismatchError, carve_validation, check_counts, check_missing
from mmbalance.data.datasets.vggsound_download import DATASET, HF_BASE_URLS, STAT_CSV_URLS, TEST_CSV_URLS, VIDEO_DIR
from mmbalance.data.datasets.vggsound_download import download  # noqa: F401 - the registry calls vggsound.download
from mmbalance.data.fetching import archives

PROTOCOLS = ("ogm_ge",)

# Rows of the split files: vggsound.csv holds 291 rows more than train.csv + test.csv (= the stat.csv
# total; hche11/VGGSound issue #19); the video package matches the 199,176.
EXPECTED_COUNTS = {
    "vggsound.csv": {"rows": 199_467, "train": 183_971, "test": 15_496},
    "test.csv": {"rows": 15_446},
    "stat.csv": {"clips": 199_176},
}
# What the papers trained on, for the record only (OGM-GE's is recalled, unverified; Shen et al.'s as quoted in
# MengShen0709/bmmal issue #4).
PAPER_COUNTS = {"ogm_ge": {"train_and_val": 168_618, "test": 13_954}, "bmmal": {"train": 180_911, "test": 14_843}}

# The 309 class names of stat.csv in Python's string order (label index = position); OGM-GE indexes by
# first appearance among the clips one happens to have, which differs between copies
# (OGM-GE's dataset/VGGSoundDataset.py).
CLASSES = (
    'air conditioning noise', 'air horn', 'airplane', 'airplane flyby', 'alarm clock ringing',
    'alligators, crocodiles hissing', 'ambulance siren', 'arc welding', 'baby babbling', 'baby crying',
    'baby laughter', 'baltimore oriole calling', 'barn swallow calling', 'basketball bounce',
    'bathroom ventilation fan running', 'beat boxing', 'bee, wasp, etc. buzzing', 'bird chirping, tweeting',
    'bird squawking', 'bird wings flapping', 'black capped chickadee calling', 'blowtorch igniting',
    'bouncing on trampoline', 'bowling impact', 'bull bellowing', 'canary calling', 'cap gun shooting',
    'car engine idling', 'car engine knocking', 'car engine starting', 'car passing by', 'cat caterwauling',
    'cat growling', 'cat hissing', 'cat meowing', 'cat purring', 'cattle mooing', 'cattle, bovinae cowbell',
    'cell phone buzzing', 'chainsawing trees', 'cheetah chirrup', 'chicken clucking', 'chicken crowing',
    'child singing', 'child speech, kid speaking', 'children shouting', 'chimpanzee pant-hooting',
    'chinchilla barking', 'chipmunk chirping', 'chopping food', 'chopping wood', 'church bell ringing',
    'civil defense siren', 'cow lowing', 'coyote howling', 'cricket chirping', 'crow cawing', 'cuckoo bird calling',
    'cupboard opening or closing', 'cutting hair with electric trimmers', 'dinosaurs bellowing', 'disc scratching',
    'dog barking', 'dog baying', 'dog bow-wow', 'dog growling', 'dog howling', 'dog whimpering',
    'donkey, ass braying', 'door slamming', 'driving buses', 'driving motorcycle', 'driving snowmobile',
    'duck quacking', 'eagle screaming', 'eating with cutlery', 'electric grinder grinding',
    'electric shaver, electric razor shaving', 'elephant trumpeting', 'eletric blender running', 'elk bugling',
    'engine accelerating, revving, vroom', 'female singing', 'female speech, woman speaking', 'ferret dooking',
    'fire crackling', 'fire truck siren', 'fireworks banging', 'firing cannon', 'firing muskets',
    'fly, housefly buzzing', 'foghorn', 'footsteps on snow', 'forging swords', 'fox barking', 'francolin calling',
    'frog croaking', 'gibbon howling', 'goat bleating', 'golf driving', 'goose honking', 'hail',
    'hair dryer drying', 'hammering nails', 'heart sounds, heartbeat', 'hedge trimmer running', 'helicopter',
    'horse clip-clop', 'horse neighing', 'ice cracking', 'ice cream truck, ice cream van', 'lathe spinning',
    'lawn mowing', 'lighting firecrackers', 'lions growling', 'lions roaring', 'lip smacking',
    'machine gun shooting', 'magpie calling', 'male singing', 'male speech, man speaking', 'metronome',
    'missile launch', 'mosquito buzzing', 'motorboat, speedboat acceleration', 'mouse clicking', 'mouse pattering',
    'mouse squeaking', 'mynah bird singing', 'ocean burbling', 'opening or closing car doors',
    'opening or closing car electric windows', 'opening or closing drawers', 'orchestra', 'otter growling',
    'owl hooting', 'parrot talking', 'penguins braying', 'people babbling', 'people battle cry',
    'people belly laughing', 'people booing', 'people burping', 'people cheering', 'people clapping',
    'people coughing', 'people crowd', 'people eating', 'people eating apple', 'people eating crisps',
    'people eating noodle', 'people farting', 'people finger snapping', 'people gargling', 'people giggling',
    'people hiccup', 'people humming', 'people marching', 'people nose blowing', 'people running',
    'people screaming', 'people shuffling', 'people slapping', 'people slurping', 'people sneezing',
    'people sniggering', 'people sobbing', 'people whispering', 'people whistling', 'pheasant crowing',
    'pig oinking', 'pigeon, dove cooing', 'planing timber', 'plastic bottle crushing', 'playing accordion',
    'playing acoustic guitar', 'playing badminton', 'playing bagpipes', 'playing banjo', 'playing bass drum',
    'playing bass guitar', 'playing bassoon', 'playing bongo', 'playing bugle', 'playing castanets',
    'playing cello', 'playing clarinet', 'playing congas', 'playing cornet', 'playing cymbal', 'playing darts',
    'playing didgeridoo', 'playing djembe', 'playing double bass', 'playing drum kit', 'playing electric guitar',
    'playing electronic organ', 'playing erhu', 'playing flute', 'playing french horn', 'playing glockenspiel',
    'playing gong', 'playing guiro', 'playing hammond organ', 'playing harmonica', 'playing harp',
    'playing harpsichord', 'playing hockey', 'playing lacrosse', 'playing mandolin', 'playing marimba, xylophone',
    'playing oboe', 'playing piano', 'playing saxophone', 'playing shofar', 'playing sitar', 'playing snare drum',
    'playing squash', 'playing steel guitar, slide guitar', 'playing steelpan', 'playing synthesizer',
    'playing tabla', 'playing table tennis', 'playing tambourine', 'playing tennis', 'playing theremin',
    'playing timbales', 'playing timpani', 'playing trombone', 'playing trumpet', 'playing tuning fork',
    'playing tympani', 'playing ukulele', 'playing vibraphone', 'playing violin, fiddle', 'playing volleyball',
    'playing washboard', 'playing zither', 'police car (siren)', 'police radio chatter', 'popping popcorn',
    'printer printing', 'pumping water', 'race car, auto racing', 'railroad car, train wagon', 'raining', 'rapping',
    'reversing beeps', 'ripping paper', 'roller coaster running', 'rope skipping', 'rowboat, canoe, kayak rowing',
    'running electric fan', 'sailing', 'scuba diving', 'sea lion barking', 'sea waves', 'sharpen knife',
    'sheep bleating', 'shot football', 'singing bowl', 'singing choir', 'skateboarding', 'skidding', 'skiing',
    'sliding door', 'sloshing water', 'slot machine', 'smoke detector beeping', 'snake hissing', 'snake rattling',
    'splashing water', 'spraying water', 'squishing water', 'stream burbling', 'strike lighter', 'striking bowling',
    'striking pool', 'subway, metro, underground', 'swimming', 'tap dancing', 'tapping guitar',
    'telephone bell ringing', 'thunder', 'toilet flushing', 'tornado roaring', 'tractor digging', 'train horning',
    'train wheels squealing', 'train whistling', 'turkey gobbling', 'typing on computer keyboard',
    'typing on typewriter', 'underwater bubbling', 'using sewing machines', 'vacuum cleaner cleaning floors',
    'vehicle horn, car horn, honking', 'volcano explosion', 'warbler chirping', 'waterfall burbling',
    'whale calling', 'wind chime', 'wind noise', 'wind rustling leaves', 'wood thrush calling',
    'woodpecker pecking tree', 'writing on blackboard with chalk', 'yodelling', 'zebra braying',
)


# --------------------------------------------------------------------------- split files


@dataclass(frozen=True)
class Row:
    """One row of vggsound.csv."""

    ytid: str
    start: int
    label: str
    split: str

    @property
    def name(self) -> str:
        """The package's file stem; OGM-GE joins the unpadded start, which matches no file."""
        return f"{self.ytid}_{self.start:06d}"


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank rows; a CSV reader, as labels contain commas."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the vggsound download first")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return [(number, row) for number, row in enumerate(csv.reader(handle), start=1) if "".join(row).strip()]


def read_stat(path: Path) -> list[tuple[str, int]]:
    """(label, count) rows of hche11's stat.csv (`label,count` or `label,count,category`, no header)."""
    rows = []
    for number, fields in _csv_rows(path):
        if len(fields) not in (2, 3) or not fields[1].strip().isdigit():
            raise ValueError(f"{path}:{number}: expected 'label,count[,category]', got {fields}")
        rows.append((fields[0].strip(), int(fields[1])))
    repeated = sorted(label for label, n in Counter(label for label, _ in rows).items() if n > 1)
    if repeated:
        raise ValueError(f"{path}: labels listed more than once: {repeated[:5]}")
    return rows


def classes(raw_dir: Path, expected: int = len(CLASSES)) -> list[str]:
    """The class names of raw_dir/stat.csv, sorted (label index = position), checked to be `expected`
    many; with the real count they must also be exactly CLASSES."""
    path = Path(raw_dir) / "stat.csv"
    names = sorted(label for label, _ in read_stat(path))
    if len(names) != expected:
        raise SplitMismatchError(f"{DATASET}: {path} lists {len(names)} classes where VGGSound has {expected}; "
                                 "wrong or truncated file (hche11/VGGSound data/stat.csv)")
    if expected == len(CLASSES) and tuple(names) != CLASSES:
        missing, extra = sorted(set(CLASSES) - set(names)), sorted(set(names) - set(CLASSES))
        raise SplitMismatchError(f"{DATASET}: {path} does not list VGGSound's classes: missing {missing[:5]}, unknown {extra[:5]}")
    return names


def read_vggsound_csv(path: Path) -> list[Row]:
    """Rows of vggsound.csv (`ytid,start_seconds,label,split`, no header)."""
    rows = []
    for number, fields in _csv_rows(path):
        if len(fields) != 4:
            raise ValueError(f"{path}:{number}: expected 'ytid,start_seconds,label,split', got {fields}")
        ytid, start, label, split = fields[0].strip(), fields[1].strip(), fields[2].strip(), fields[3].strip()
        if not start.isdigit():
            raise ValueError(f"{path}:{number}: start_seconds {start!r} is not a whole number of seconds")
        if split not in ("train", "test"):
            raise ValueError(f"{path}:{number}: split {split!r} is neither train nor test")
        rows.append(Row(ytid, int(start), label, split))
    return rows


def read_test_csv(path: Path) -> list[tuple[str, str]]:
    """(clip name, label) rows of hche11's test.csv (`<ytid>_<start:06d>.mp4,label`)."""
    rows = []
    for number, fields in _csv_rows(path):
        if len(fields) != 2 or not re.fullmatch(r".+_\d{6}\.mp4", fields[0].strip()):
            raise ValueError(f"{path}:{number}: expected '<ytid>_<start:06d>.mp4,label', got {fields}")
        rows.append((fields[0].strip().removesuffix(".mp4"), fields[1].strip()))
    return rows


def check_split_files(raw_dir: Path, class_names: list[str], expected: dict = EXPECTED_COUNTS) -> tuple[list[Row], dict]:
    """Read vggsound.csv, test.csv and stat.csv, check their sizes against `expected` (loud
    SplitMismatchError naming the file) and note how they disagree; returns the rows and notes."""
    raw_dir = Path(raw_dir)
    paths = {name: raw_dir / name for name in ("vggsound.csv", "test.csv", "stat.csv")}
    rows = read_vggsound_csv(paths["vggsound.csv"])
    split_sizes = Counter(row.split for row in rows)
    advice = ("Fetch the files again (datasets.vggsound.source); the published sizes are the rows of hche11/VGGSound's "
              "data/vggsound.csv, test.csv and stat.csv (EXPECTED_COUNTS).")
    check_counts(DATASET, {"rows": len(rows), **split_sizes}, expected["vggsound.csv"], str(paths["vggsound.csv"]), advice)
    test_rows = read_test_csv(paths["test.csv"])
    check_counts(DATASET, {"rows": len(test_rows)}, expected["test.csv"], str(paths["test.csv"]), advice)
    stat = dict(read_stat(paths["stat.csv"]))
    check_counts(DATASET, {"clips": sum(stat.values())}, expected["stat.csv"], str(paths["stat.csv"]), advice)
    unknown = sorted({row.label for row in rows} - set(class_names))
    if unknown:
        raise SplitMismatchError(f"{DATASET}: {paths['vggsound.csv']} has labels that {paths['stat.csv']} does not list: {unknown[:5]}")
    return rows, _split_file_notes(rows, test_rows, stat)


def _split_file_notes(rows: list[Row], test_rows: list[tuple[str, str]], stat: dict[str, int]) -> dict:
    """Where vggsound.csv goes beyond train.csv + test.csv (the stat.csv counts): in total, per
    class, and on the test side, which test.csv lets us name."""
    per_class = Counter(row.label for row in rows)
    listed_test = {row.name: row.label for row in rows if row.split == "test"}
    test_csv = dict(test_rows)
    return {
        "rows_beyond_stat_total": len(rows) - sum(stat.values()),
        "classes_beyond_stat_counts": {label: per_class[label] - n for label, n in sorted(stat.items()) if per_class[label] != n},
        "test_rows_not_in_test_csv": sorted(set(listed_test) - set(test_csv)),
        "test_csv_rows_not_in_vggsound_csv": sorted(set(test_csv) - set(listed_test)),
        "test_label_disagreements": sorted(n for n in set(listed_test) & set(test_csv) if listed_test[n] != test_csv[n]),
    }


# --------------------------------------------------------------------------- catalog


def index_videos(raw_dir: Path) -> tuple[dict[str, Path], dict]:
    """clip name -> mp4 path over the extracted part folders (the first copy of a repeated name wins)."""
    video_dir = Path(raw_dir) / VIDEO_DIR
    if not video_dir.is_dir():
        raise FileNotFoundError(f"{video_dir} does not exist: run the vggsound download (it extracts the parts there)")
    found: dict[str, Path] = {}
    repeated, unmarked = [], []
    folders = sorted(p for p in video_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        if not (folder / archives.MARKER).is_file():
            unmarked.append(folder.name)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.endswith(".mp4") and entry.is_file():
                stem = entry.name[: -len(".mp4")]
                if stem in found:
                    repeated.append(stem)
                else:
                    found[stem] = Path(entry.path)
    return found, {"folders": [f.name for f in folders], "videos": len(found), "repeated_videos": sorted(repeated),
                   "folders_without_marker (user copies)": unmarked}


def validation_clips(train: list[Clip], fraction: float, seed: int) -> list[str]:
    """A seeded `fraction` of the training YouTube ids per class (a video with clips of several
    classes counts for its most frequent one), all clips of a chosen id going to validation;
    each class keeps at least one id in train."""
    chosen = carve_validation(((clip.group, clip.label) for clip in train), fraction, seed, "keep_one_in_train")
    return sorted(clip.name for clip in train if clip.group in chosen)


def build_catalog(raw_dir: Path, protocol: str, options: dict) -> Catalog:
    """OGM-GE's protocol: train/test of vggsound.csv restricted to the videos one has, a grouped
    stratified validation list from train, classes = stat.csv's names sorted."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"{DATASET}: unknown protocol {protocol!r}; known: {list(PROTOCOLS)}")
    raw_dir = Path(raw_dir)
    names = classes(raw_dir, options.get("expected_classes", len(CLASSES)))
    rows, notes = check_split_files(raw_dir, names, EXPECTED_COUNTS | options.get("expected_counts", {}))
    rows, repeated = _first_of_each_name(rows)
    videos, notes["videos"] = index_videos(raw_dir)
    available = [row for row in rows if row.name in videos]
    missing = [row for row in rows if row.name not in videos]
    notes["missing"] = {**{split: sum(row.split == split for row in missing) for split in ("train", "test")},
                        "names": sorted(row.name for row in missing)}
    check_missing(DATASET, {split: sorted(row.name for row in missing if row.split == split) for split in ("train", "test")},
                  {split: sum(row.split == split for row in rows) for split in ("train", "test")}, raw_dir / VIDEO_DIR,
                  f"{raw_dir / 'vggsound.csv'} lists them; finish the download (parts missing?) or raise "
                  "datasets.vggsound.catalog.max_missing_fraction", max_fraction=options.get("max_missing_fraction", 0.1))
    label_of = {name: index for index, name in enumerate(names)}
    clips = [Clip(row.name, label_of[row.label], row.ytid, videos[row.name], videos[row.name]) for row in available]
    train = [clip for clip, row in zip(clips, available) if row.split == "train"]
    test = [clip.name for clip, row in zip(clips, available) if row.split == "test"]
    val = validation_clips(train, options.get("val_fraction", 0.1), options.get("seed", 0))
    in_val = set(val)
    folds = {1: {"train": [c.name for c in train if c.name not in in_val], "val": val, "test": test}}
    notes |= _protocol_notes(raw_dir, repeated, train, test, clips, options)
    catalog = Catalog(DATASET, protocol, names, clips, folds, raw_dir, notes)
    catalog.replicate_folds(options.get("folds", 3))
    return catalog


def _first_of_each_name(rows: list[Row]) -> tuple[list[Row], list[str]]:
    """A clip listed twice keeps its first row (catalog names are unique); the others are noted."""
    seen, kept, repeated = set(), [], []
    for row in rows:
        if row.name in seen:
            repeated.append(row.name)
            continue
        seen.add(row.name)
        kept.append(row)
    return kept, repeated


def _protocol_notes(raw_dir: Path, repeated: list[str], train: list[Clip], test: list[str], clips: list[Clip], options: dict) -> dict:
    group_of = {clip.name: clip.group for clip in clips}
    shared = sorted({clip.group for clip in train} & {group_of[name] for name in test})
    return {
        "sources": {"vggsound.csv": f"{HF_BASE_URLS[0]}vggsound.csv (train/test split)",
                    "stat.csv": STAT_CSV_URLS[0], "test.csv": TEST_CSV_URLS[0], "videos": f"{HF_BASE_URLS[0]}vggsound_NN.tar.gz"},
        "class_index": "stat.csv names in Python string order (OGM-GE: first appearance among available train rows)",
        "file_names": "<ytid>_<start:06d>.mp4 (start zero-padded, as the package and test.csv; OGM-GE's unpadded join matches no file)",
        "repeated_rows_first_kept": repeated,
        "validation": f"{options.get('val_fraction', 0.1)} of the available train YouTube ids per class, seed {options.get('seed', 0)}; "
                      "the reference code has no validation list",
        "ytids_in_train_and_test": {"count": len(shared), "ytids": shared,
                                    "decision": "kept as listed (OGM-GE's split); re-uploads under other ids cannot be seen"},
        "paper_counts": PAPER_COUNTS,
    }

