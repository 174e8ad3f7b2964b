"""VGGSound's download: the Hugging Face package `Loie/VGGSound` and the hche11 split lists.

Sources, all public (no account or token needed, so no Authorization header is sent):

* Hugging Face dataset `Loie/VGGSound`: `vggsound.csv` (rows `ytid,start_seconds,label,split`, no
  header) and the videos in 20 parts `vggsound_00.tar.gz` ... `vggsound_19.tar.gz` (~17 GB each,
  ~337 GB in all) holding `<ytid>_<start:06d>.mp4`. PUBLISHED holds the sizes and sha256 of the
  parts' Git LFS pointers on Hugging Face; what it lacks (sizes of 8 parts, part 14 entirely,
  vggsound.csv) is read from the Hugging Face tree listing (`hf_tree.json`: per file `size`, and
  `lfs.oid` = sha256, or the git blob `oid` of a small file).
* `hche11/VGGSound` (the authors' repository, Chen et al., ICASSP 2020) `data/stat.csv`
  (`label,count[,category]`, the 309 classes) and `data/test.csv` (`<ytid>_<start:06d>.mp4,label`),
  from raw.githubusercontent.com pinned at a commit (no checksum is published; the commit pins the
  content and the record keeps the sha256 of what was received).

Part 08 is corrupt at the source (a damaged gzip stream, Loie/VGGSound discussion #1): every part is
therefore extracted in one streamed pass with a checking gzip reader (archives.extract with
stream=True), keeping each complete member before the damage; a part listed in `corrupt_parts` is
kept as far as it goes (also when it fails its checksum), any other damaged part is an error.

Layout of raw_dir after download():

    vggsound.csv, stat.csv, test.csv, hf_tree.json
    video/vggsound_NN/<ytid>_<start:06d>.mp4   members flattened to their file name
    video/vggsound_NN/.extracted.json          the part's record (a part with it is never fetched again)

`source` keys (all optional):
    hf_base_urls   mirrors of the Hugging Face folder, tried in order; a file's URL is base + file name
                   (file:///path/ for a copy you already have)
    tree_url       the Hugging Face tree listing (JSON list of {path, size, oid, lfs: {oid, size}})
    parts          part file names to fetch (default all 20)
    published      {file: {sha256, size}} replacing the values of PUBLISHED ({} = all from the tree)
    corrupt_parts  parts known to be damaged at the source (default ["vggsound_08.tar.gz"])
    stat_csv_urls, test_csv_urls   mirrors of the hche11 files
    keep_archives  keep each .tar.gz after extraction (default false: 337 GB)
    retries, timeout, backoff      passed to http.download
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mmbalance.data.fetching import archives, http

log = logging.getLogger(__name__)

DATASET = "vggsound"

HF_BASE_URLS = ("https://huggingface.co/datasets/Loie/VGGSound/resolve/main/",)
HF_TREE_URL = "https://huggingface.co/api/datasets/Loie/VGGSound/tree/main"
# hche11/VGGSound commits holding these file versions (stat.csv with the category column).
STAT_CSV_COMMIT = "8746bd1341e3f4f5461abe202392b5704b21ea7d"
TEST_CSV_COMMIT = "1e75f4d30de3a99115ee9333464854c5e3d161a7"
STAT_CSV_URLS = (f"https://raw.githubusercontent.com/hche11/VGGSound/{STAT_CSV_COMMIT}/data/stat.csv",)
TEST_CSV_URLS = (f"https://raw.githubusercontent.com/hche11/VGGSound/{TEST_CSV_COMMIT}/data/test.csv",)

PARTS = tuple(f"vggsound_{i:02d}.tar.gz" for i in range(20))
KNOWN_CORRUPT_PARTS = ("vggsound_08.tar.gz",)
# The Hugging Face LFS pointers of the parts; None: read from the tree listing. Part 14 is not known.
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

SOURCE_DEFAULTS = {
    "hf_base_urls": list(HF_BASE_URLS), "tree_url": HF_TREE_URL, "parts": list(PARTS), "published": PUBLISHED,
    "corrupt_parts": list(KNOWN_CORRUPT_PARTS), "stat_csv_urls": list(STAT_CSV_URLS),
    "test_csv_urls": list(TEST_CSV_URLS), "keep_archives": False, "retries": 5, "timeout": 60.0, "backoff": 1.0,
}
PINNED = "unverified: none published (the URL pins a commit; sha256 recorded)"
TREE_FILE = "hf_tree.json"
VIDEO_DIR = "video"
CHUNK = 1 << 20


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
    http.download([settings["tree_url"]], tree_path, **fetch)
    listing = read_tree(tree_path)
    for name, value in values.items():
        listed = listing.get(name)
        if listed is None:
            if name in gaps:
                raise http.DownloadError(f"{settings['tree_url']} (saved as {tree_path}) lists no {name}, and no size/sha256 "
                                       f"is published for it; set datasets.vggsound.source.published.{name}")
            continue
        for key in ("sha256", "size"):
            if key in value and key in listed and value[key] != listed[key]:
                raise http.ChecksumError(f"{name}: the published {key} {value[key]} differs from {listed[key]} in the tree "
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
        raise http.DownloadError(f"{path}: not a Hugging Face tree listing (a JSON list of files); removed it, run again")
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
    http.download(urls, dest, size=value.get("size"), sha256=value.get("sha256"), **fetch)
    if "git_oid" in value:
        _check_git_oid(dest, value["git_oid"], urls)
    verified = "sha256" if "sha256" in value else "git blob id" if "git_oid" in value else unverified
    return {"file": dest.name, "size": dest.stat().st_size, "sha256": http.file_digest(dest), "verified": verified,
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
        raise http.ChecksumError(f"{path}: downloaded from {list(urls)} but git blob id mismatch: expected {expected}, actual "
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
        raise http.DownloadError(f"{len(failures)} VGGSound parts failed (the others are done and kept):\n{lines}") from next(iter(failures.values()))
    return records


def _fetch_part(raw_dir: Path, name: str, value: dict, settings: dict, fetch: dict) -> dict:
    """Download, verify and extract one part unless its extraction marker says it is done."""
    target = raw_dir / VIDEO_DIR / part_stem(name)
    archive = raw_dir / name
    done = archives.extraction_record(target)
    if done is not None:
        if value.get("sha256") and done.get("sha256") and done["sha256"] != value["sha256"]:
            raise archives.ExtractError(f"{target} was extracted from {name} with sha256 {done['sha256']}, but {value['sha256']} "
                                  f"is expected now; remove {target} to fetch and extract the part again")
        return done | {"resumed": True, "archive_deleted": _drop_archive(archive, settings)}
    details = {"sha256": value.get("sha256"), "size": value.get("size"), "values_from": value.get("from"),
               "verified": "sha256" if value.get("sha256") else "size only" if value.get("size") else "unverified: none published"}
    tolerate = name in settings["corrupt_parts"]
    try:
        http.download(_hf_urls(settings, name), archive, size=value.get("size"), sha256=value.get("sha256"), **fetch)
    except http.ChecksumError as exc:
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


def extract_part(archive: Path, target: Path, *, name: str | None = None, tolerate_damage: bool = False,
                 details: dict | None = None) -> dict:
    """One part's .mp4 members, flattened to their file names, into `target`; returns the part's record.

    archives.extract streams the part (member checks, staging, marker); the record is its marker,
    with `details` (what the archive was verified against) and `name` (the part, when `archive` is
    a kept .corrupt copy). A part with a marker is not extracted again: its record is returned.
    The streamed mode refuses links; VGGSound parts hold only regular files.
    """
    done = archives.extraction_record(target)
    if done is not None:
        return done
    record = {"archive": name or Path(archive).name, **(details or {})}
    try:
        archives.extract(archive, target, stream=True, keep_only=".mp4", tolerate_damage=tolerate_damage, record=record)
    except archives.DamagedArchiveError as exc:
        raise archives.DamagedArchiveError(f"{exc}; if the source itself is damaged (as part 08), list the part in "
                                           "datasets.vggsound.source.corrupt_parts to keep what it holds") from exc
    return archives.extraction_record(target)
