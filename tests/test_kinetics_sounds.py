"""Kinetics-Sounds: a tiny CVDF-style Kinetics-400 stand-in (tar.gz shards of
flat `<ytid>_<start:06d>_<end:06d>.mp4`, annotation csvs, shard path lists, the
replacement archive) and the KS split lists in both real formats, served over
loopback; then the catalog, the feature store, and the split logic at full size."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from http_server import FileServer
from standins import truncate, write_mp4

from mmbalance.data import recipes
from mmbalance.data.catalog import SplitMismatchError
from mmbalance.data.datasets import kinetics_sounds as ks
from mmbalance.data.fetching import archives, http
from mmbalance.data.store import features

BAGPIPES, TAPPING_PEN, BOWLING = 8, 29, 2
BASE = "/kinetics/400"


def cvdf(ytid: str, start: int, end: int | None = None) -> str:
    assert len(ytid) == 11, ytid
    return f"{ytid}_{start:06d}_{(start + 10 if end is None else end):06d}"


# K400 split -> shard -> [(ytid, start, K400 label, KS label or None, defect)]
CLIPS = {
    "train": {
        "part_0.tar.gz": [("-a_bagpipe1", 12, "playing bagpipes", BAGPIPES, "ok"),
                          ("tapPen_x_01", 0, "tapping pen", TAPPING_PEN, "ok"),
                          ("abseil_0001", 3, "abseiling", None, "ok"),
                          ("bowl-ing_01", 40, "bowling", BOWLING, "ten_seconds")],
        "part_1.tar.gz": [("noAudio_001", 5, "playing bagpipes", BAGPIPES, "no_audio"),
                          ("corrupt_mp4", 1, "tapping pen", TAPPING_PEN, "corrupt"),
                          ("seven_sec01", 2, "bowling", BOWLING, "seven_seconds"),
                          ("replaced_01", 9, "bowling", BOWLING, "corrupt"),  # fixed by the replacement archive
                          ("yoga_pose01", 0, "yoga", None, "ok")],
    },
    "val": {"part_0.tar.gz": [("valBagpip_1", 5, "playing bagpipes", BAGPIPES, "ok"),
                              ("valTapPen_1", 30, "tapping pen", TAPPING_PEN, "ok"),
                              ("valBowl_001", 0, "bowling", BOWLING, "ok"),
                              ("val_yoga_01", 4, "yoga", None, "ok")]},
    "test": {"part_0.tar.gz": [("tstBagpip_1", 7, "playing bagpipes", BAGPIPES, "ok"),
                               ("tstTapPen_1", 0, "tapping pen", TAPPING_PEN, "ok"),
                               ("tstBowl_0_1", 6, "bowling", BOWLING, "ok"),
                               ("tst_abseil1", 8, "abseiling", None, "ok")]},
}
MISSING_TEST = ("gone_video1", 3, BOWLING)  # listed by KS, absent from every shard (link rot)
REPLACED = ("replaced_01", 9)
KS_CLIPS = {split: [c for shard in shards.values() for c in shard if c[3] is not None] for split, shards in CLIPS.items()}


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_clip(folder: Path, ytid: str, start: int, defect: str, seed: int) -> Path:
    path = folder / f"{cvdf(ytid, start)}.mp4"
    seconds = {"ten_seconds": 10.0, "seven_seconds": 7.0}.get(defect, 2.0)
    write_mp4(path, seed, seconds=seconds, fps=10, audio=defect != "no_audio", audio_rate=16000, channels=1)
    if defect == "corrupt":
        truncate(path)  # the moov atom (at the end) is lost
    return path


def split_lists() -> dict[str, bytes]:
    """my_train.txt (padded names), my_test.txt (unpadded) and the BML json."""
    train = [(cvdf(y, s), label) for y, s, _, label, _ in KS_CLIPS["train"]]
    val = [(f"{y}_{s}", label) for y, s, _, label, _ in KS_CLIPS["val"]]
    test = [(f"{y}_{s}", label) for y, s, _, label, _ in KS_CLIPS["test"]] + [(f"{MISSING_TEST[0]}_{MISSING_TEST[1]}", MISSING_TEST[2])]
    underscored = [c.replace(" ", "_") for c in ks.CLASSES]
    database = {name: {"subset": subset, "label": underscored[label]}
                for subset, rows in (("training", train), ("validation", val), ("testing", test)) for name, label in rows}
    return {
        "my_train.txt": "".join(f"{n},10,{label}\n" for n, label in train).encode(),
        "my_test.txt": "".join(f"{n},10,{label}\n" for n, label in test).encode(),
        "KS_train_val.json": json.dumps({"labels": underscored, "database": database}).encode(),
    }


def annotations(split: str) -> bytes:
    rows = [c for shard in CLIPS[split].values() for c in shard]
    if split == "test":
        rows.append((MISSING_TEST[0], MISSING_TEST[1], ks.CLASSES[MISSING_TEST[2]], MISSING_TEST[2], "ok"))
    header = "label,youtube_id,time_start,time_end,split" + (",is_cc" if split != "test" else "")
    lines = [header] + [f'"{label}",{y},{s},{s + 10},{split}' + (",0" if split != "test" else "") for y, s, label, _, _ in rows]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> dict[str, bytes]:
    """URL path -> body of the whole stand-in, in the CVDF layout."""
    work = tmp_path_factory.mktemp("k400_media")
    routes = {f"/splits/{name}": body for name, body in split_lists().items()}
    seed = 0
    for split, shards in CLIPS.items():
        for shard, clips in shards.items():
            members = {}
            for ytid, start, _, _, defect in clips:
                seed += 1
                path = make_clip(work / split, ytid, start, defect, seed)
                members[path.name] = path.read_bytes()
            routes[f"{BASE}/{split}/{shard}"] = tar_gz(members)
        routes[f"{BASE}/annotations/{split}.csv"] = annotations(split)
    good = make_clip(work / "replacement", *REPLACED, "ok", 99)
    routes[f"{BASE}/{ks.REPLACEMENT}"] = tar_gz({f"replacement_for_corrupted_k400/{good.name}": good.read_bytes()})
    return routes


def serve(server: FileServer, routes: dict[str, bytes], **behaviour) -> dict:
    """Add every route (with per-path behaviour), the shard path lists, and return the source dict."""
    for path, body in routes.items():
        server.add(path, body=body, **behaviour.get(path, {}))
    for split, shards in CLIPS.items():
        listing = "".join(server.url(f"{BASE}/{split}/{shard}") + "\n" for shard in shards)
        server.add(f"{BASE}/{split}/k400_{split}_path.txt", body=listing.encode(), content_type="text/plain")
    lists = {"ogm_train": "my_train.txt", "ogm_test": "my_test.txt", "bml": "KS_train_val.json"}
    return {"base_url": server.url(BASE), "split_lists": {k: [server.url(f"/splits/{v}")] for k, v in lists.items()},
            "backoff": 0, "timeout": 5}


def shard_hits(server: FileServer) -> Counter:
    return Counter(e["path"] for e in server.log if e["path"].endswith((".tar.gz", ".tgz")))


@pytest.fixture
def small_counts(monkeypatch):
    """The stand-in's split sizes stand in for the paper's."""
    monkeypatch.setitem(ks.EXPECTED_COUNTS, "ogm_ge", {"train": len(KS_CLIPS["train"]), "val": len(KS_CLIPS["val"]),
                                                       "test": len(KS_CLIPS["test"]) + 1})
    monkeypatch.setattr(ks, "EXPECTED_CLASS_COUNTS", {})


# --------------------------------------------------------------------------- download


def test_download_resumes_keeps_only_ks_clips_and_skips_processed_shards(standin, tmp_path):
    raw = tmp_path / "raw"
    part_1 = f"{BASE}/train/part_1.tar.gz"
    with FileServer() as server:
        source = serve(server, standin, **{part_1: {"drop_after": len(standin[part_1]) // 2}}) | {"retries": 0}
        with pytest.raises(http.DownloadError, match="part_1.tar.gz"):
            ks.download(raw, source, workers=2)
        progress = json.loads((raw / ks.PROGRESS).read_text())["shards"]
        assert "train/part_1.tar.gz" not in progress and "train/part_0.tar.gz" in progress
        assert (raw / "shards/train/part_1.tar.gz.part").stat().st_size == len(standin[part_1]) // 2
        before = shard_hits(server)

        record = ks.download(raw, source, workers=2)
        after = shard_hits(server) - before
        assert after == {part_1: 1}  # processed shards are not fetched again
        assert server.requests_for(part_1)[-1]["range"] == f"bytes={len(standin[part_1]) // 2}-"

        ks.download(raw, source, workers=2)
        assert shard_hits(server) - before == {part_1: 1}

    kept = {p.relative_to(raw / ks.MEDIA_DIR).as_posix() for p in (raw / ks.MEDIA_DIR).rglob("*.mp4")}
    expected = {f"{split}/{cvdf(y, s)}.mp4" for split, clips in KS_CLIPS.items() for y, s, *_ in clips}
    assert kept == expected | {f"replacement/{cvdf(*REPLACED)}.mp4"}  # non-KS clips deleted
    assert not [p for p in (raw / ks.SHARD_DIR).rglob("*") if p.is_file()]  # shards gone once processed
    shards = record["shards"]
    assert set(shards) == {"train/part_0.tar.gz", "train/part_1.tar.gz", "val/part_0.tar.gz", "test/part_0.tar.gz",
                           f"replacement/{ks.REPLACEMENT}"}
    assert shards["train/part_1.tar.gz"] == {"size": len(standin[part_1]), "sha256": "unverified: none published",
                                             "check": "tar integrity (fully decompressed)", "kept": 4}
    assert record["files"]["splits/my_train.txt"]["sha256"] == "unverified: none published"
    assert record["files"]["annotations/test.csv"]["size"] == len(standin[f"{BASE}/annotations/test.csv"])
    assert record["ks_clips_kept"] == {"train": 7, "val": 3, "test": 3, "replacement": 1}
    json.dumps(record)


def test_keep_all_keeps_the_other_kinetics_classes(standin, tmp_path):
    with FileServer() as server:
        ks.download(tmp_path, serve(server, standin) | {"keep_all": True}, workers=1)
    assert (tmp_path / ks.MEDIA_DIR / "train" / f"{cvdf('abseil_0001', 3)}.mp4").is_file()


def test_truncated_shard_fails_cleanly_and_is_fetched_again(standin, tmp_path):
    val = f"{BASE}/val/part_0.tar.gz"
    broken = dict(standin) | {val: standin[val][: len(standin[val]) * 2 // 3]}
    with FileServer() as server:
        source = serve(server, broken)
        with pytest.raises(archives.ExtractError, match=r"shard val/part_0.tar.gz from http://127.0.0.1:\d+/kinetics/400/val/part_0.tar.gz is not a complete tar"):
            ks.download(tmp_path, source, workers=1)
        leftovers = sorted(p.name for p in (tmp_path / ks.SHARD_DIR / "val").iterdir())
        assert leftovers == ["part_0.tar.gz.corrupt"]  # nothing half-extracted, bad bytes aside
        assert not (tmp_path / ks.MEDIA_DIR / "val").exists()
        assert "val/part_0.tar.gz" not in json.loads((tmp_path / ks.PROGRESS).read_text())["shards"]
        before = shard_hits(server)
        server.add(val, body=standin[val])  # the host fixed it: the next run fetches it again
        ks.download(tmp_path, source, workers=1)
        assert shard_hits(server) - before == {val: 1}
    assert len(list((tmp_path / ks.MEDIA_DIR / "val").glob("*.mp4"))) == 3


def test_shard_with_escaping_member_is_refused(standin, tmp_path):
    test = f"{BASE}/test/part_0.tar.gz"
    evil = dict(standin) | {test: tar_gz({"../../escaped.mp4": b"x" * 100})}
    with FileServer() as server, pytest.raises(archives.UnsafeArchiveError, match="escaped.mp4"):
        ks.download(tmp_path, serve(server, evil), workers=1)
    assert not list(tmp_path.parent.glob("escaped.mp4")) and not list(tmp_path.rglob("escaped.mp4"))


def test_user_recorded_checksum_mismatch_names_file_and_both_hashes(standin, tmp_path):
    wrong = "0" * 64
    actual = http.file_digest(_write(tmp_path / "ref", standin[f"{BASE}/train/part_0.tar.gz"]))
    with FileServer() as server:
        source = serve(server, standin) | {"checksums": {"train/part_0.tar.gz": wrong}, "retries": 0}
        with pytest.raises(http.ChecksumError) as raised:
            ks.download(tmp_path / "raw", source, workers=1)
    message = str(raised.value)
    assert "part_0.tar.gz" in message and wrong in message and actual in message


def test_html_page_in_place_of_a_shard_is_refused(standin, tmp_path):
    test = f"{BASE}/test/part_0.tar.gz"
    html = dict(standin) | {test: b"<!DOCTYPE html><html><body>Access denied</body></html>"}
    with FileServer() as server, pytest.raises(http.NotMediaError, match="(?i)html"):
        ks.download(tmp_path, serve(server, html) | {"retries": 0}, workers=1)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- catalog and store


@pytest.fixture(scope="module")
def downloaded(standin, tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("ks_raw")
    with FileServer() as server:
        ks.download(raw, serve(server, standin), workers=4)
    return raw


def test_catalog_and_store_on_the_standin(downloaded, tmp_path, small_counts):
    catalog = ks.build_catalog(downloaded, "ogm_ge", {"folds": 3, "max_missing_fraction": 0.3})
    assert catalog.classes == list(ks.CLASSES) and set(catalog.folds) == {1, 2, 3}
    folds = catalog.folds[1]
    assert folds["train"] == [cvdf(y, s) for y, s, *_ in KS_CLIPS["train"]]
    assert folds["val"] == [cvdf(y, s) for y, s, *_ in KS_CLIPS["val"]]  # unpadded list names -> CVDF files
    assert folds["test"] == [cvdf(y, s) for y, s, *_ in KS_CLIPS["test"]]
    by_name = {c.name: c for c in catalog.clips}
    assert by_name[cvdf("tstBowl_0_1", 6)].group == "tstBowl_0_1" and by_name[cvdf("tstBowl_0_1", 6)].label == BOWLING
    assert by_name[cvdf("-a_bagpipe1", 12)].group == "-a_bagpipe1"
    assert by_name[cvdf(*REPLACED)].video.parent.name == "replacement"
    assert catalog.notes["missing"]["test"] == {"count": 1, "listed": 4, "names": ["gone_video1_3"]}
    assert catalog.notes["missing"]["train"]["count"] == 0 and catalog.notes["replacements_used"] == 1
    assert catalog.notes["k400_label_disagreements"] == []
    assert catalog.notes["clips_in_only_one_list_format"] == {"train": 0, "test": 0}

    catalog.write(tmp_path / "catalog")
    recipe = recipes.resolve({"preset": "gewu_kinetics_sounds", "frame_size": 32, "store_scale": 1.0, "fbank_frames": 128})
    index = features.preprocess(tmp_path / "catalog", tmp_path / "store", recipe).set_index("clip")
    skipped = index.loc[index["skipped"], "skip_kind"].to_dict()
    assert skipped == {cvdf("noAudio_001", 5): "no_audio", cvdf("corrupt_mp4", 1): "corrupt"}
    assert index.loc[cvdf("seven_sec01", 2), "padded_frames"] == 0  # 7 s holds frames at 0, 3.3 and 6.7 s
    assert index.loc[cvdf("bowl-ing_01", 40), "padded_frames"] == 0
    assert index.loc[cvdf("tapPen_x_01", 0), "padded_frames"] == 2  # a 2 s clip repeats its only frame
    assert not index.loc[cvdf(*REPLACED), "skipped"]  # the replacement, not the corrupt original
    frames = np.load(tmp_path / "store" / "frames.npy", mmap_mode="r")
    spectrograms = np.load(tmp_path / "store" / "spectrograms.npy", mmap_mode="r")
    assert frames.shape == (len(catalog.clips), 3, 32, 32, 3) and spectrograms.shape == (len(catalog.clips), 128, 128)
    report = pd.read_csv(tmp_path / "store" / "kept_skipped.csv")
    bagpipes_train = report[(report.fold == 1) & (report.split == "train") & (report.class_name == "playing bagpipes")].iloc[0]
    assert (bagpipes_train["listed"], bagpipes_train["kept"], bagpipes_train["skipped_no_audio"]) == (2, 1, 1)


def test_too_many_missing_clips_stop_the_catalog(downloaded, small_counts):
    with pytest.raises(ks.MissingMediaError, match=r"test: 1 of 4 clips have no media \(25.0%\), e.g. \['gone_video1_3'\]"):
        ks.build_catalog(downloaded, "ogm_ge", {})


def test_unknown_protocol_is_named(downloaded):
    with pytest.raises(ValueError, match="'mlb'.*'ogm_ge'"):
        ks.build_catalog(downloaded, "mlb", {})


# --------------------------------------------------------------------------- split logic at full size


def test_class_list_matches_datasets_md():
    assert len(ks.CLASSES) == 31 and len(set(ks.CLASSES)) == 31
    assert ks.CLASSES[:4] == ("blowing nose", "blowing out candles", "bowling", "chopping wood")
    assert ks.CLASSES[9] == "playing bass guitar" and ks.CLASSES[30] == "tickling"
    assert list(ks.CLASSES) == sorted(ks.CLASSES)
    assert {s: sum(c.values()) for s, c in ks.EXPECTED_CLASS_COUNTS["ogm_ge"].items()} == ks.EXPECTED_COUNTS["ogm_ge"]


@pytest.mark.parametrize("name, key", [
    ("--4-0ihtnBU_000058_000068", ("--4-0ihtnBU", 58)),
    ("-3Mwkq-7TV4_2", ("-3Mwkq-7TV4", 2)),
    ("0HQsAGUnQ_0_6", ("0HQsAGUnQ_0", 6)),  # an id ending in "_0": split from the right
    ("-_rX15rXYSk_125", ("-_rX15rXYSk", 125)),
    ("4ot6CQO00l4_1245", ("4ot6CQO00l4", 1245)),
])
def test_list_names_are_keyed_by_youtube_id_and_start(name, key):
    assert ks.clip_key(name) == key


def test_a_name_that_is_not_ytid_start_is_refused():
    with pytest.raises(ValueError, match="'short_12'"):
        ks.clip_key("short_12")


def write_full_lists(folder: Path, drop_test_row: bool = False, relabel_test: bool = False) -> None:
    """Split lists in the real formats with the published sizes and per-class counts."""
    splits = folder / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "val": [], "test": []}
    number = 0
    for label, name in enumerate(ks.CLASSES):
        for split, members in rows.items():
            for _ in range(ks.EXPECTED_CLASS_COUNTS["ogm_ge"][split][name]):
                number += 1
                ytid, start = f"-_{number:09d}", number % 600
                members.append((cvdf(ytid, start) if split == "train" else f"{ytid}_{start}", label))
    underscored = [c.replace(" ", "_") for c in ks.CLASSES]
    database = {n: {"subset": subset, "label": underscored[label]}
                for subset, split in (("training", "train"), ("validation", "val"), ("testing", "test")) for n, label in rows[split]}
    (splits / "KS_train_val.json").write_text(json.dumps({"labels": underscored, "database": database}))
    test = rows["test"][1:] if drop_test_row else rows["test"]
    if relabel_test:
        test = [(test[0][0], (test[0][1] + 1) % 31), *test[1:]]
    (splits / "my_train.txt").write_text("".join(f"{n},10,{label}\n" for n, label in rows["train"]))
    (splits / "my_test.txt").write_text("".join(f"{n},10,{label}\n" for n, label in test))


def test_full_size_lists_give_the_published_counts(tmp_path):
    write_full_lists(tmp_path)
    lists, notes = ks.protocol_lists(tmp_path, "ogm_ge")
    assert {split: len(rows) for split, rows in lists.items()} == {"train": 14799, "val": 1320, "test": 2597}
    per_class = Counter(ks.CLASSES[label] for _, label in lists["val"].values())
    assert per_class["stomping grapes"] == 47 and per_class["tickling"] == 30
    assert notes["clips_in_only_one_list_format"] == {"train": 0, "test": 0}
    assert len(ks.wanted_keys(tmp_path)) == 14799 + 1320 + 2597
    # With no media at all every clip is missing, and that is loud.
    with pytest.raises(ks.MissingMediaError, match="train: 14799 of 14799"):
        ks.build_catalog(tmp_path, "ogm_ge", {})


def test_a_missing_row_is_a_split_mismatch_naming_the_file(tmp_path):
    write_full_lists(tmp_path, drop_test_row=True)
    with pytest.raises(SplitMismatchError, match=r"my_test.txt does not hold the published split \(test: 2596 where the paper's split has 2597\)"):
        ks.protocol_lists(tmp_path, "ogm_ge")


def test_the_two_list_formats_must_agree_on_labels(tmp_path, monkeypatch):
    write_full_lists(tmp_path, relabel_test=True)
    monkeypatch.setattr(ks, "EXPECTED_CLASS_COUNTS", {})  # reach the cross-format check
    with pytest.raises(SplitMismatchError, match=r"my_test.txt and .*KS_train_val.json disagree on the label of 1 test clips"):
        ks.protocol_lists(tmp_path, "ogm_ge")
