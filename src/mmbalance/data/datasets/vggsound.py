"""VGGSound (309 classes): the Hugging Face package and the hche11 split lists (DATASETS.md 5).

Sources, all public (no account or token needed, so no Authorization header is sent):

* Hugging Face dataset `Loie/VGGSound`: `vggsound.csv` (rows `ytid,start_seconds,label,split`, no
  header) and the videos in 20 parts `vggsound_00.tar.gz` ... `vggsound_19.tar.gz` (~17 GB each,
  ~337 GB in all) holding `<ytid>_<start:06d>.mp4`. Part sizes and sha256 are those of DATASETS.md 5.1;
  what it lacks (sizes of 8 parts, part 14 entirely, vggsound.csv) is read from the Hugging Face tree
  listing (`hf_tree.json`: per file `size`, and `lfs.oid` = sha256, or the git blob `oid` of a small file).
* `hche11/VGGSound` `data/stat.csv` (`label,count[,category]`, the 309 classes) and `data/test.csv`
  (`<ytid>_<start:06d>.mp4,label`), from raw.githubusercontent.com pinned at a commit (no checksum is
  published; the commit pins the content and the record keeps the sha256 of what was received).

Part 08 is corrupt at the source (a damaged gzip stream, Loie/VGGSound discussion #1): every part is
therefore streamed through a checking gzip reader and a tar stream, keeping each complete member
before the damage; a part listed in `corrupt_parts` is kept as far as it goes (also when it fails
its checksum), any other damaged part is an error.

Layout of raw_dir after download():

    vggsound.csv, stat.csv, test.csv, hf_tree.json
    video/vggsound_NN/<ytid>_<start:06d>.mp4   members flattened to their file name
    video/vggsound_NN/.extracted.json          the part's record (a part with it is never fetched again)

`source` keys (all optional):
    hf_base_urls   mirrors of the Hugging Face folder, tried in order; a file's URL is base + file name
                   (file:///path/ for a copy you already have)
    tree_url       the Hugging Face tree listing (JSON list of {path, size, oid, lfs: {oid, size}})
    parts          part file names to fetch (default all 20)
    published      {file: {sha256, size}} replacing the DATASETS.md values ({} = all from the tree)
    corrupt_parts  parts known to be damaged at the source (default ["vggsound_08.tar.gz"])
    stat_csv_urls, test_csv_urls   mirrors of the hche11 files
    keep_archives  keep each .tar.gz after extraction (default false: 337 GB)
    retries, timeout, backoff      passed to download.download

build_catalog options: folds (3), val_fraction (0.1), seed (0), max_missing_fraction (0.1: share of
a split's listed clips whose video may be absent), expected_classes (309) and expected_counts
(EXPECTED_COUNTS), the last two only for stand-ins.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mmbalance.data import download as dl
from mmbalance.data.catalog import Catalog, Clip, SplitMismatchError, check_counts

log = logging.getLogger(__name__)

DATASET = "vggsound"
PROTOCOLS = ("ogm_ge",)

HF_BASE_URLS = ("https://huggingface.co/datasets/Loie/VGGSound/resolve/main/",)
HF_TREE_URL = "https://huggingface.co/api/datasets/Loie/VGGSound/tree/main"
# hche11/VGGSound commits holding these file versions (stat.csv with the category column).
STAT_CSV_COMMIT = "8746bd1341e3f4f5461abe202392b5704b21ea7d"
TEST_CSV_COMMIT = "1e75f4d30de3a99115ee9333464854c5e3d161a7"
STAT_CSV_URLS = (f"https://raw.githubusercontent.com/hche11/VGGSound/{STAT_CSV_COMMIT}/data/stat.csv",)
TEST_CSV_URLS = (f"https://raw.githubusercontent.com/hche11/VGGSound/{TEST_CSV_COMMIT}/data/test.csv",)

PARTS = tuple(f"vggsound_{i:02d}.tar.gz" for i in range(20))
KNOWN_CORRUPT_PARTS = ("vggsound_08.tar.gz",)
# Hugging Face LFS pointers (DATASETS.md 5.1); None: read from the tree listing. Part 14 is not known.
PUBLISHED = {
    "vggsound_00.tar.gz": {"sha256": "7e6d4a1717d55235890997f368af42407852432e4f90518826e877c623ffcd13", "size": 16_423_310_623},
    "vggsound_01.tar.gz": {"sha256": "c19a3895f74e56ef238acc5362f977d37bb0694e4bec4ada243c034ddddfc534", "size": 16_930_420_885},
    "vggsound_02.tar.gz": {"sha256": "0f99551ed175d44e54d8c2d0a3967cd34b1ad2845b34cb8cdc2e5524687ba17c", "size": 16_279_714_878},
    "vggsound_03.tar.gz": {"sha256": "58a16853b4a46d17b452eec67b9f822aa53caab026fbd470d2ab4bbb22c80273", "size": None},
    "vggsound_04.tar.gz": {"sha256": "cbb21b808210e148be09f8c6c9a848d13c1b707f21fcf15ebb93c5494918d410", "size": None},
    "vggsound_05.tar.gz": {"sha256": "c6de193a743cbee8e0bbd188394eb10662669237ab433436cb0ec2e44b643aab", "size": None},
    "vggsound_06.tar.gz": {"sha256": "1e9a3bebda99bebd65d27d21069fdc691587d0928ae3469bab90a46aed31f55f", "size": 17_152_826_222},
    "vggsound_07.tar.gz": {"sha256": "fd74eebaed601c46e41a1b8790f543328e07bef445749ac86d635184d60f946a", "size": 17_137_107_919},
    "vggsound_08.tar.gz": {"sha256": "8df29d9c82b3b9f1e85441ffe594647f5cfc8fefbb89d20436c608380204bfb7", "size": 17_229_443_613},
    "vggsound_09.tar.gz": {"sha256": "f03546610bdc6aae8efdf192a28f9ab131534e1a60dd58625b27a3deb585faec", "size": 16_830_078_413},
    "vggsound_10.tar.gz": {"sha256": "f80b2ac3ce53e9182aeeaf5cbdae668f8fc95c2b7607b3a06de4d3197e10bce1", "size": 16_824_806_541},
    "vggsound_11.tar.gz": {"sha256": "196cbe4bbaec4735d1e5cc25e133af93fac7034d624db529d88d1232c54f7391", "size": 17_215_497_599},
    "vggsound_12.tar.gz": {"sha256": "e596933ffdba82484395e99746d56cf10b0f5c8ff526ff1404236ed411fd4cb4", "size": None},
    "vggsound_13.tar.gz": {"sha256": "9ec68dfd4052919666162229db165630744ca5c9b3eaf8c8aa712ccf6988fbce", "size": None},
    "vggsound_15.tar.gz": {"sha256": "aeb8e7ee49b23f506eeddcae58bbcd44c24d4be376c684a6732ae67b963e591e", "size": 17_169_171_306},
    "vggsound_16.tar.gz": {"sha256": "4b3c4ec549b8340e811071b12b12099437ca6363926f4f092fe538d106d586e3", "size": 17_005_372_098},
    "vggsound_17.tar.gz": {"sha256": "cf9169de86fdea41b83c2f3b02772cebb06e5eeaae2179fac312699b71296716", "size": 17_286_135_349},
    "vggsound_18.tar.gz": {"sha256": "12dca6949a7f164623633a36c1ac09b318a286cc2a737c4716e155a6ffbc3329", "size": None},
    "vggsound_19.tar.gz": {"sha256": "73d0a6d3d1acb28126af8fdd09f81e6de6f085f75dbef7f3aa7a6965c7e0e765", "size": None},
}

# Rows of the split files (DATASETS.md 5.1): vggsound.csv holds 291 rows more than train.csv +
# test.csv (= the stat.csv total); the video package matches the 199,176.
EXPECTED_COUNTS = {
    "vggsound.csv": {"rows": 199_467, "train": 183_971, "test": 15_496},
    "test.csv": {"rows": 15_446},
    "stat.csv": {"clips": 199_176},
}
# What the papers trained on, for the record only (OGM-GE's is recalled, unverified; Shen et al. quoted).
PAPER_COUNTS = {"ogm_ge": {"train_and_val": 168_618, "test": 13_954}, "bmmal": {"train": 180_911, "test": 14_843}}

# The 309 class names of stat.csv in Python's string order (label index = position); OGM-GE indexes by
# first appearance among the clips one happens to have, which differs between copies (DATASETS.md 5.3).
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

SOURCE_DEFAULTS = {
    "hf_base_urls": list(HF_BASE_URLS), "tree_url": HF_TREE_URL, "parts": list(PARTS), "published": PUBLISHED,
    "corrupt_parts": list(KNOWN_CORRUPT_PARTS), "stat_csv_urls": list(STAT_CSV_URLS),
    "test_csv_urls": list(TEST_CSV_URLS), "keep_archives": False, "retries": 5, "timeout": 60.0, "backoff": 1.0,
}
PINNED = "unverified: none published (the URL pins a commit; sha256 recorded)"
TREE_FILE = "hf_tree.json"
VIDEO_DIR = "video"
CHUNK = 1 << 20
FEED = 1 << 14


# --------------------------------------------------------------------------- download


def download(raw_dir: Path, source: dict, workers: int = 4) -> dict:
    """Fetch the split files and every part, verify, extract the mp4 files; returns the record."""
    settings = _settings(source)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    fetch = {key: settings[key] for key in ("retries", "timeout", "backoff")}
    values, tree = _published_values(raw_dir, settings, fetch)
    files = {
        "vggsound.csv": _fetch_file(_hf_urls(settings, "vggsound.csv"), raw_dir / "vggsound.csv", values["vggsound.csv"], fetch),
        "stat.csv": _fetch_file(settings["stat_csv_urls"], raw_dir / "stat.csv", {}, fetch, PINNED),
        "test.csv": _fetch_file(settings["test_csv_urls"], raw_dir / "test.csv", {}, fetch, PINNED),
    }
    parts = _fetch_parts(raw_dir, settings, values, fetch, workers)
    damaged = sorted(name for name, record in parts.items() if not record["complete"])
    return {"dataset": DATASET, "tree": tree, "files": files, "parts": parts, "damaged_parts": damaged,
            "videos": sum(record["mp4_members"] for record in parts.values())}


def _settings(source: dict | None) -> dict:
    source = dict(source or {})
    unknown = sorted(set(source) - set(SOURCE_DEFAULTS))
    if unknown:
        raise ValueError(f"datasets.vggsound.source: unknown key(s) {unknown}; the known keys are {sorted(SOURCE_DEFAULTS)}")
    settings = SOURCE_DEFAULTS | source
    for key in ("hf_base_urls", "stat_csv_urls", "test_csv_urls", "parts", "corrupt_parts"):
        if isinstance(settings[key], str):
            settings[key] = [settings[key]]
    settings["hf_base_urls"] = [url if url.endswith("/") else url + "/" for url in settings["hf_base_urls"]]
    return settings


def _hf_urls(settings: dict, name: str) -> list[str]:
    return [base + name for base in settings["hf_base_urls"]]


def _published_values(raw_dir: Path, settings: dict, fetch: dict) -> tuple[dict[str, dict], dict | None]:
    """sha256 / size (or git blob id) per file: the published values, gaps filled from the tree listing.

    The listing is also checked against the published values: a disagreement means the
    repository changed, and 17 GB would be fetched only to fail verification."""
    wanted = ["vggsound.csv", *settings["parts"]]
    values = {name: {k: v for k, v in settings["published"].get(name, {}).items() if v is not None} for name in wanted}
    for value in values.values():
        value["from"] = "published"
    gaps = [name for name, value in values.items() if "size" not in value or ("sha256" not in value and "git_oid" not in value)]
    if not gaps:
        return values, None
    tree_path = raw_dir / TREE_FILE
    dl.download([settings["tree_url"]], tree_path, **fetch)
    listing = read_tree(tree_path)
    for name, value in values.items():
        listed = listing.get(name)
        if listed is None:
            if name in gaps:
                raise dl.DownloadError(f"{settings['tree_url']} (saved as {tree_path}) lists no {name}, and no size/sha256 "
                                       f"is published for it; set datasets.vggsound.source.published.{name}")
            continue
        for key in ("sha256", "size"):
            if key in value and key in listed and value[key] != listed[key]:
                raise dl.ChecksumError(f"{name}: the published {key} {value[key]} differs from {listed[key]} in the tree "
                                       f"listing {settings['tree_url']} (saved as {tree_path}); the repository changed: "
                                       f"check it and set datasets.vggsound.source.published.{name}",
                                       path=raw_dir / name, algorithm=key, expected=str(value[key]), actual=str(listed[key]))
        if name in gaps:
            value.update({k: v for k, v in listed.items() if k not in value}, **{"from": "tree listing"})
    return values, {"url": settings["tree_url"], "file": TREE_FILE, "filled_in": gaps}


def read_tree(path: Path) -> dict[str, dict]:
    """file name -> {size, sha256 (LFS files) or git_oid (small files)} from a Hugging Face tree listing."""
    try:
        listing = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        listing = exc
    if not isinstance(listing, list):
        Path(path).unlink()  # an error answer must not be reused by the next call
        raise dl.DownloadError(f"{path}: not a Hugging Face tree listing (a JSON list of files); removed it, run again")
    entries = {}
    for item in listing:
        if not isinstance(item, dict) or item.get("type", "file") != "file" or "path" not in item:
            continue
        lfs = item.get("lfs") or {}
        entry = {"size": int(lfs.get("size", item.get("size")))}
        sha256 = lfs.get("sha256") or lfs.get("oid")
        if sha256:
            entry["sha256"] = str(sha256).removeprefix("sha256:").lower()
        elif item.get("oid"):
            entry["git_oid"] = str(item["oid"]).lower()
        entries[item["path"]] = entry
    return entries


def _fetch_file(urls, dest: Path, value: dict, fetch: dict, unverified: str = "unverified: none published") -> dict:
    """One small file: download (size/sha256 when known), then the git blob id when that is what is known."""
    dl.download(urls, dest, size=value.get("size"), sha256=value.get("sha256"), **fetch)
    if "git_oid" in value:
        _check_git_oid(dest, value["git_oid"], urls)
    verified = "sha256" if "sha256" in value else "git blob id" if "git_oid" in value else unverified
    return {"file": dest.name, "size": dest.stat().st_size, "sha256": dl.file_digest(dest), "verified": verified,
            **({"git_oid": value["git_oid"]} if "git_oid" in value else {}), "values_from": value.get("from", "none")}


def _check_git_oid(path: Path, expected: str, urls) -> None:
    """A small file of a Hugging Face repo is listed with its git blob id: sha1 of 'blob <size>\\0' + bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected:
        kept = path.with_name(path.name + ".corrupt")
        os.replace(path, kept)
        raise dl.ChecksumError(f"{path}: downloaded from {list(urls)} but git blob id mismatch: expected {expected}, actual "
                               f"{actual}. The bad file was kept as {kept}", path=path, algorithm="git_oid",
                               expected=expected, actual=actual, kept=kept)


def _fetch_parts(raw_dir: Path, settings: dict, values: dict, fetch: dict, workers: int) -> dict[str, dict]:
    """Every part in its own worker; one part's failure does not stop the others (their work is kept)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {name: pool.submit(_fetch_part, raw_dir, name, values[name], settings, fetch) for name in settings["parts"]}
    records, failures = {}, {}
    for name, future in futures.items():
        try:
            records[name] = future.result()
        except Exception as exc:  # noqa: BLE001 - collected and raised below
            failures[name] = exc
    if len(failures) == 1:
        raise next(iter(failures.values()))
    if failures:
        lines = "\n".join(f"  - {name}: {exc}" for name, exc in failures.items())
        raise dl.DownloadError(f"{len(failures)} VGGSound parts failed (the others are done and kept):\n{lines}") from next(iter(failures.values()))
    return records


def _fetch_part(raw_dir: Path, name: str, value: dict, settings: dict, fetch: dict) -> dict:
    """Download, verify and extract one part unless its extraction marker says it is done."""
    target = raw_dir / VIDEO_DIR / part_stem(name)
    archive = raw_dir / name
    done = extraction_record(target)
    if done is not None:
        if value.get("sha256") and done.get("sha256") and done["sha256"] != value["sha256"]:
            raise dl.ExtractError(f"{target} was extracted from {name} with sha256 {done['sha256']}, but {value['sha256']} "
                                  f"is expected now; remove {target} to fetch and extract the part again")
        return done | {"resumed": True, "archive_deleted": _drop_archive(archive, settings)}
    details = {"sha256": value.get("sha256"), "size": value.get("size"), "values_from": value.get("from"),
               "verified": "sha256" if value.get("sha256") else "size only" if value.get("size") else "unverified: none published"}
    tolerate = name in settings["corrupt_parts"]
    try:
        dl.download(_hf_urls(settings, name), archive, size=value.get("size"), sha256=value.get("sha256"), **fetch)
    except dl.ChecksumError as exc:
        if not tolerate:
            raise
        # Known damaged at the source: keep what it holds, and say that it failed its check.
        log.warning("%s is a known-corrupt part and failed its check (%s); extracting what it holds", name, exc)
        details |= {"verified": f"failed ({exc.algorithm} mismatch), extracted as a known-corrupt part",
                    "checksum_mismatch": {"what": exc.algorithm, "expected": exc.expected, "actual": exc.actual}}
        archive = exc.kept
    record = extract_part(archive, target, name=name, tolerate_damage=tolerate, details=details)
    return record | {"resumed": False, "archive_deleted": _drop_archive(archive, settings)}


def _drop_archive(archive: Path, settings: dict) -> bool:
    """After extraction the 17 GB archive is only kept on request (the marker records what it was)."""
    if settings["keep_archives"] or not archive.exists():
        return False
    archive.unlink()
    return True


def part_stem(name: str) -> str:
    return name.removesuffix(".tar.gz").removesuffix(".tgz")


def extraction_record(target: Path) -> dict | None:
    marker = Path(target) / dl.MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


# --------------------------------------------------------------------------- tolerant streaming extraction


class _Damaged(Exception):
    """The compressed stream of a part is truncated or corrupt at this point."""


class CheckedGzipReader:
    """Decompresses a .gz file as tarfile reads it, checking what tarfile's own 'r|gz' does not.

    tarfile's stream mode neither checks the gzip CRC nor notices data after a header it cannot
    parse (it just ends the archive), so a damaged part would look complete. Here zlib checks
    every gzip member's CRC and length, a file that stops inside a member is reported as
    truncated, and data the tar reader left behind is inspected by drain(). Bytes decoded
    before the damage are handed out first, so every member that was complete survives.
    """

    def __init__(self, handle):
        self.handle = handle
        self.inflate = zlib.decompressobj(31)  # gzip wrapper, CRC-checked
        self.fed = False
        self.buffer = bytearray()
        self.compressed_read = 0
        self.damage: str | None = None
        self.finished = False

    def read(self, size: int = -1) -> bytes:
        while not self.finished and (size < 0 or len(self.buffer) < size):
            self._inflate_more()
        if not self.buffer and self.damage:
            raise _Damaged(self.damage)
        size = len(self.buffer) if size < 0 else min(size, len(self.buffer))
        out = bytes(self.buffer[:size])
        del self.buffer[:size]  # cheap: bytearray drops a prefix without moving the rest
        return out

    def drain(self) -> None:
        """Read past the tar's end-of-archive blocks to the end of the file; only zeros may follow."""
        while block := self.read(CHUNK):
            if block.strip(b"\0"):
                raise _Damaged("data follows the tar end-of-archive marker (a damaged member header ended the archive early)")

    def _inflate_more(self) -> None:
        data = self.handle.read(CHUNK)
        self.compressed_read += len(data)
        if not data:
            if self.fed and not self.inflate.eof:
                self.damage = f"the gzip stream is truncated (the file ends after {self.compressed_read} bytes inside it)"
            self.finished = True
            return
        # Small slices: zlib discards the output of a call that fails, so a slice is what damage costs.
        for offset in range(0, len(data), FEED):
            if not self._feed(data[offset : offset + FEED], self.compressed_read - len(data) + offset):
                return

    def _feed(self, data: bytes, position: int) -> bool:
        while data:
            if self.inflate.eof:  # concatenated gzip members; trailing zero padding is allowed (as gzip -d does)
                if not data.strip(b"\0"):
                    return True
                self.inflate, self.fed = zlib.decompressobj(31), False
            try:
                self.buffer += self.inflate.decompress(data)
            except zlib.error as exc:
                self.damage = f"invalid compressed data within bytes {position}-{position + len(data)} ({exc})"
                self.finished = True
                return False
            self.fed = True
            data = self.inflate.unused_data if self.inflate.eof else b""
        return True


def extract_part(archive: Path, target: Path, *, name: str | None = None, tolerate_damage: bool = False,
                 details: dict | None = None) -> dict:
    """Stream one part's .mp4 members into `target` (flattened to their file names); returns its record.

    Members are checked as they arrive, as download.extract checks them: an absolute path, a '..'
    component, a link (a stream cannot check it against members not yet read; the parts hold only
    regular files) or a special file raises UnsafeArchiveError naming archive and member. Files go
    to a staging folder renamed to `target` with a marker (.extracted.json) once done, so `target`
    either does not exist or is complete (a second call returns the recorded result). Damage (truncation, bad data, CRC) keeps the members
    before it when `tolerate_damage`, and raises ExtractError otherwise.
    """
    archive, target = Path(archive), Path(target)
    name = name or archive.name
    done = extraction_record(target)
    if done is not None:
        return done  # extracted by an earlier call
    for stale in target.parent.glob(f".{target.name}.*.extracting"):
        shutil.rmtree(stale, ignore_errors=True)  # an interrupted earlier extraction of this part
    if target.exists():
        raise dl.ExtractError(f"cannot extract {archive}: {target} exists without the marker {dl.MARKER} "
                              "(files that did not come from this module); remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        counts, damage = _stream_members(archive, staging)
        if damage and not tolerate_damage:
            raise dl.ExtractError(f"{archive}: {damage}; {counts['mp4']} complete members came before it. Delete the archive "
                                  "and download it again; if the source itself is damaged (as part 08), list the part in "
                                  "datasets.vggsound.source.corrupt_parts to keep what it holds")
        record = {"archive": name, **(details or {}), "mp4_members": counts["mp4"], "other_members_skipped": counts["other"],
                  "duplicate_members_skipped": counts["duplicate"], "complete": damage is None, "damage": damage,
                  "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (staging / dl.MARKER).write_text(json.dumps(record, indent=1) + "\n")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if damage:
        log.warning("%s: %s; kept the %d complete mp4 members before it", archive, damage, counts["mp4"])
    return record


def _stream_members(archive: Path, staging: Path) -> tuple[Counter, str | None]:
    counts: Counter = Counter()
    with open(archive, "rb") as handle:
        stream = CheckedGzipReader(handle)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                while (info := tar.next()) is not None:
                    _check_member(archive, info)
                    if info.isreg() and info.name.endswith(".mp4"):
                        _write_member(tar, info, staging, counts)
                    elif not info.isdir():
                        counts["other"] += 1
            stream.drain()
        except (_Damaged, tarfile.TarError, EOFError) as exc:
            return counts, f"{exc} (after {counts['mp4']} mp4 members, {stream.compressed_read} compressed bytes read)"
    return counts, None


def _check_member(archive: Path, info: tarfile.TarInfo) -> None:
    name = info.name
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        _unsafe(archive, name, "is an absolute path")
    if ".." in re.split(r"[/\\]", name):
        _unsafe(archive, name, "contains '..' and would escape the target directory")
    if info.issym() or info.islnk():
        _unsafe(archive, name, f"is a link to {info.linkname!r} (a streamed part is checked member by member, "
                               "so links are refused; VGGSound parts hold only regular files)")
    if not (info.isreg() or info.isdir()):
        _unsafe(archive, name, "is a device, FIFO or other special file")


def _unsafe(archive: Path, member: str, why: str) -> None:
    raise dl.UnsafeArchiveError(f"refusing to extract {archive}: member {member!r} {why}")


def _write_member(tar: tarfile.TarFile, info: tarfile.TarInfo, staging: Path, counts: Counter) -> None:
    """Write via a .partial name: a member cut off by the damage never looks complete."""
    dest = staging / re.split(r"[/\\]", info.name)[-1]
    if dest.exists():
        counts["duplicate"] += 1
        return
    partial = dest.with_name(dest.name + ".partial")
    try:
        with open(partial, "wb") as out:
            shutil.copyfileobj(tar.extractfile(info), out, CHUNK)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.rename(partial, dest)
    counts["mp4"] += 1


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
    advice = "Fetch the files again (datasets.vggsound.source); DATASETS.md 5.1 gives the published sizes."
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
        if not (folder / dl.MARKER).is_file():
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
    by_group: dict[str, list[Clip]] = defaultdict(list)
    for clip in train:
        by_group[clip.group].append(clip)
    groups_of_class: dict[int, list[str]] = defaultdict(list)
    for group, members in sorted(by_group.items()):
        counts = Counter(clip.label for clip in members)
        groups_of_class[min(counts, key=lambda label: (-counts[label], label))].append(group)
    rng = random.Random(seed)
    chosen = []
    for label in sorted(groups_of_class):
        groups = groups_of_class[label]
        chosen += rng.sample(groups, min(round(fraction * len(groups)), len(groups) - 1))
    return sorted(clip.name for group in chosen for clip in by_group[group])


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
    _check_missing(rows, missing, options.get("max_missing_fraction", 0.1), raw_dir)
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


def _check_missing(rows: list[Row], missing: list[Row], max_fraction: float, raw_dir: Path) -> None:
    """The package lacks a few hundred listed clips and part 08 loses some; more than that is an error."""
    for split in ("train", "test"):
        listed = sum(row.split == split for row in rows)
        lost = sum(row.split == split for row in missing)
        if listed and lost / listed > max_fraction:
            raise SplitMismatchError(
                f"{DATASET}: {lost} of {listed} {split} clips of {raw_dir / 'vggsound.csv'} have no video under "
                f"{raw_dir / VIDEO_DIR} ({lost / listed:.1%} > max_missing_fraction {max_fraction:.1%}); finish the "
                "download (parts missing?) or raise datasets.vggsound.catalog.max_missing_fraction")


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
