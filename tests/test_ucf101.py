"""UCF101-51 (the 51 classes with audio, as MLB uses them) on a stand-in in the real layout and formats.

The stand-in (tests/standins.py): `UCF101.rar` (stored RAR 4, backslash paths) holding
`UCF-101/<Class>/v_<Class>_gGG_cCC.avi` (mpeg4/XVID + MP3 mono or stereo, 64x48) for
three audio classes (HandstandPushups with `v_HandStandPushups_` file names) and two
UCF50 classes without audio tracks; one audio-class clip without audio, one 2 s clip,
one 29.97 fps clip, one truncated clip, one listed clip absent from the archive. The
split zip holds `ucfTrainTestlist/` with the real 101-line classInd.txt and CRLF lists
whose split k tests groups g(7k-6)..g(7k). Served from 127.0.0.1 only.

Tests that extract the RAR skip when no RAR reader is installed (unar or bsdtar).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from http_server import FileServer
from standins import rar4, truncate, write_avi

from mmbalance.data import media
from mmbalance.data.catalog import Catalog, SplitMismatchError
from mmbalance.data.datasets import ucf101
from mmbalance.data.fetching import archives, http
from mmbalance.data.recipes import resolve
from mmbalance.data.store import features

FILE = stat.S_IFREG | 0o644
FAST = {"retries": 0, "backoff": 0, "timeout": 5}
needs_rar = pytest.mark.skipif(
    not archives.installed_rar_tools(),
    reason="no RAR reader installed (download.installed_rar_tools() is empty; apt-get install unar or libarchive-tools)",
)

# Official classInd.txt indices of the 51 audio classes (from the split zip, transcribed separately
# from the module so a typo in either shows up).
OFFICIAL_INDICES = """ApplyEyeMakeup 1, ApplyLipstick 2, Archery 3, BabyCrawling 4, BalanceBeam 5, BandMarching 6,
BasketballDunk 9, BlowDryHair 13, BlowingCandles 14, BodyWeightSquats 15, Bowling 16, BoxingPunchingBag 17,
BoxingSpeedBag 18, BrushingTeeth 20, CliffDiving 22, CricketBowling 23, CricketShot 24, CuttingInKitchen 25,
FieldHockeyPenalty 29, FloorGymnastics 30, FrisbeeCatch 31, FrontCrawl 32, Haircut 34, Hammering 35, HammerThrow 36,
HandstandPushups 37, HandstandWalking 38, HeadMassage 39, IceDancing 44, Knitting 50, LongJump 51, MoppingFloor 55,
ParallelBars 57, PlayingCello 59, PlayingDaf 60, PlayingDhol 61, PlayingFlute 62, PlayingSitar 65, Rafting 73,
ShavingBeard 78, Shotput 79, SkyDiving 83, SoccerPenalty 85, StillRings 86, SumoWrestling 87, Surfing 88,
TableTennisShot 90, Typing 95, UnevenBars 96, WallPushups 99, WritingOnBoard 100"""
KNOWN_INDEX = {item.split()[0]: int(item.split()[1]) for item in OFFICIAL_INDICES.replace("\n", " ").split(", ")}


def class_ind_lines() -> list[str]:
    """The real 101-line classInd.txt: the 51 known indices, the 50 UCF50 names in
    the free indices in case-insensitive alphabetical order (as the real file is sorted)."""
    free = [i for i in range(1, 102) if i not in KNOWN_INDEX.values()]
    index = KNOWN_INDEX | dict(zip(sorted(ucf101.EXCLUDED_CLASSES, key=str.lower), free))
    return [f"{i} {name}" for name, i in sorted(index.items(), key=lambda item: item[1])]


def crlf(lines: list[str]) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode()


# --- the stand-in --------------------------------------------------------------

# (class folder, clip stem, how it is written); groups g01/g08/g15 are each split's test group.
STANDIN = [
    *[(c, f"v_{f}_g{g}_c01", "audio") for c, f in [("ApplyEyeMakeup", "ApplyEyeMakeup"), ("HandstandPushups", "HandStandPushups"),
                                                    ("PlayingDhol", "PlayingDhol")] for g in ("01", "08", "15", "22", "23")],
    ("ApplyEyeMakeup", "v_ApplyEyeMakeup_g22_c02", "short"),       # 2 s: 2 frames at 1 fps -> too_short
    ("ApplyEyeMakeup", "v_ApplyEyeMakeup_g23_c03", "absent"),      # listed, not in the archive -> notes["missing"]
    ("HandstandPushups", "v_HandStandPushups_g23_c02", "ntsc"),    # 29.97 fps, kept
    ("PlayingDhol", "v_PlayingDhol_g22_c02", "silent"),            # no audio stream -> dropped by the catalog
    ("PlayingDhol", "v_PlayingDhol_g23_c02", "corrupt"),           # truncated -> skipped as corrupt
    *[("YoYo", f"v_YoYo_g{g}_c01", "silent") for g in ("01", "08")],  # UCF50: no audio
    *[("Basketball", f"v_Basketball_g{g}_c01", "silent") for g in ("15", "22")],
]
KEPT_BY_CATALOG = sorted(stem for c, stem, kind in STANDIN if c in ucf101.CLASSES and kind in ("audio", "short", "ntsc", "corrupt"))
# Rows of the 51 classes per list in the stand-in's split files.
STANDIN_COUNTS = {"mlb": {k: {"train": 17, "test": 3} for k in (1, 2, 3)}}


def write_clip(path: Path, kind: str, seed: int) -> None:
    channels = 1 + seed % 2  # mono and stereo MP3, as in the real data
    if kind == "short":
        write_avi(path, seed, seconds=2.0, channels=channels)
    elif kind == "ntsc":
        write_avi(path, seed, seconds=4.2, fps=29.97, channels=channels)
    elif kind == "silent":
        write_avi(path, seed, seconds=4.2, audio=False)
    else:
        write_avi(path, seed, seconds=4.2, channels=channels)
        if kind == "corrupt":
            truncate(path, keep=0.1)


def split_lists() -> dict[str, bytes]:
    index = {line.split()[1]: line.split()[0] for line in class_ind_lines()}
    files = {"ucfTrainTestlist/classInd.txt": crlf(class_ind_lines())}
    for k in (1, 2, 3):
        rows = [(c, stem) for c, stem, _ in STANDIN]
        test = [(c, s) for c, s in rows if int(s.split("_g")[1][:2]) in ucf101.TEST_GROUPS[k]]
        train = [(c, s) for c, s in rows if (c, s) not in test]
        files[f"ucfTrainTestlist/trainlist0{k}.txt"] = crlf([f"{c}/{s}.avi {index[c]}" for c, s in train])
        files[f"ucfTrainTestlist/testlist0{k}.txt"] = crlf([f"{c}/{s}.avi" for c, s in test])
    return files


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> dict:
    """The media tree (UCF-101/...), the split zip and the RAR, built once."""
    root = tmp_path_factory.mktemp("ucf_standin")
    tree = root / "UCF-101"
    for seed, (class_name, stem, kind) in enumerate(STANDIN):
        if kind != "absent":
            write_clip(tree / class_name / f"{stem}.avi", kind, seed)
    avis = sorted(tree.rglob("*.avi"))
    members = {f"UCF-101/{p.relative_to(tree).as_posix()}": p.read_bytes() for p in avis}
    return {"tree": tree, "splits_zip": zip_bytes(split_lists()),
            "rar": rar4([(name, data, FILE) for name, data in members.items()]), "members": members}


def raw_tree(standin: dict, raw: Path) -> Path:
    """A raw folder as download() leaves it, without needing a RAR reader."""
    shutil.copytree(standin["tree"], raw / "UCF101" / "UCF-101")
    with zipfile.ZipFile(io.BytesIO(standin["splits_zip"])) as zf:
        zf.extractall(raw / "splits")
    return raw


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def sources(standin: dict, rar_url: str, zip_url: str) -> dict:
    return {"videos": {"urls": [rar_url], "md5": hashlib.md5(standin["rar"]).hexdigest()},
            "splits": {"urls": [zip_url], "size": len(standin["splits_zip"]),
                       "sha256": hashlib.sha256(standin["splits_zip"]).hexdigest()}, **FAST}


# --- class list --------------------------------------------------------------------


def test_classes_are_the_51_audio_classes_in_class_ind_order():
    assert len(ucf101.CLASSES) == 51 and len(set(ucf101.CLASSES)) == 51
    assert ucf101.CLASSES[:5] == ("ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam")
    assert ucf101.CLASSES[-2:] == ("WallPushups", "WritingOnBoard")
    assert ucf101.AUDIO_CLASS_INDEX == KNOWN_INDEX
    assert len(ucf101.EXCLUDED_CLASSES) == 50 and not set(ucf101.EXCLUDED_CLASSES) & set(ucf101.CLASSES)


def test_reconstructed_class_ind_is_sorted_like_the_real_file(tmp_path):
    # classInd.txt is alphabetical (case-insensitive: JumpingJack 47 before JumpRope 48); filling the
    # free indices with the UCF50 names in that order must leave the whole file sorted.
    names = [line.split()[1] for line in class_ind_lines()]
    assert len(names) == 101 and names == sorted(names, key=str.lower)
    assert names[46:48] == ["JumpingJack", "JumpRope"] and names[7] == "Basketball" and names[-1] == "YoYo"
    (tmp_path / "classInd.txt").write_bytes(crlf(class_ind_lines()))
    assert ucf101.read_class_index(tmp_path / "classInd.txt")["HandstandPushups"] == 37


def test_class_ind_with_shifted_classes_is_refused(tmp_path):
    lines = class_ind_lines()
    lines[0], lines[1] = "1 ApplyLipstick", "2 ApplyEyeMakeup"
    (tmp_path / "classInd.txt").write_bytes(crlf(lines))
    with pytest.raises(SplitMismatchError, match=r"classInd.txt: the 51 audio classes .*ApplyEyeMakeup has 2 where 1"):
        ucf101.read_class_index(tmp_path / "classInd.txt")


# --- full-size split lists (text only) ---------------------------------------------


def full_size_lists(folder: Path) -> Path:
    """Split files with the real per-split totals of the 51 classes: 25 groups per class,
    group sizes spread so that g01-07 / g08-14 / g15-21 / g22-25 hold 1,944 / 1,915 /
    1,900 / 1,086 clips (6,845 in all), plus UCF50 rows that must not be counted."""
    index = {line.split()[1]: line.split()[0] for line in class_ind_lines()}
    blocks = {range(1, 8): 1944, range(8, 15): 1915, range(15, 22): 1900, range(22, 26): 1086}
    rows = []  # (class folder, file stem, group number)
    for groups, total in blocks.items():
        slots = [(c, g) for c in ucf101.CLASSES for g in groups]
        base, extra = divmod(total, len(slots))
        for i, (c, g) in enumerate(slots):
            name = "HandStandPushups" if c == "HandstandPushups" else c
            rows += [(c, f"v_{name}_g{g:02d}_c{n:02d}", g) for n in range(1, base + 1 + (i < extra))]
    rows += [(c, f"v_{c}_g{g:02d}_c01", g) for c in ("YoYo", "Basketball", "PlayingGuitar") for g in range(1, 26)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_bytes(crlf(class_ind_lines()))
    for k in (1, 2, 3):
        tested = ucf101.TEST_GROUPS[k]
        (folder / f"trainlist0{k}.txt").write_bytes(crlf([f"{c}/{s}.avi {index[c]}" for c, s, g in rows if g not in tested]))
        (folder / f"testlist0{k}.txt").write_bytes(crlf([f"{c}/{s}.avi" for c, s, g in rows if g in tested]))
    return folder


def test_full_size_lists_reproduce_the_published_counts(tmp_path):
    listed = ucf101.read_official_splits(full_size_lists(tmp_path / "lists"))
    for k, want in ucf101.EXPECTED_COUNTS["mlb"].items():
        ours = {s: [r for r in rows if r.class_name in ucf101.AUDIO_CLASS_INDEX] for s, rows in listed[k].items()}
        assert {s: len(rows) for s, rows in ours.items()} == want
        assert len(listed[k]["train"]) == want["train"] + 3 * 18  # the UCF50 rows are read, not counted
        assert {int(r.group[-2:]) for r in ours["test"]} == set(ucf101.TEST_GROUPS[k])
    row = next(r for r in listed[1]["train"] if r.file.startswith("v_HandStandPushups"))
    assert row.class_name == "HandstandPushups" and row.group.startswith("HandstandPushups_g")


def test_full_size_validation_is_groups_of_train_stratified_and_seeded(tmp_path):
    listed = ucf101.read_official_splits(full_size_lists(tmp_path / "lists"))
    kept = {r.name for lists in listed.values() for rows in lists.values() for r in rows}
    folds = ucf101.mlb_folds(listed, kept, val_fraction=0.1, seed=0)
    group_of = {r.name: r.group for lists in listed.values() for rows in lists.values() for r in rows}
    for k, want in ucf101.EXPECTED_COUNTS["mlb"].items():
        fold = {s: [n for n in names if group_of[n].rsplit("_g", 1)[0] in ucf101.CLASSES] for s, names in folds[k].items()}
        assert len(fold["train"]) + len(fold["val"]) == want["train"] and len(fold["test"]) == want["test"]
        val_groups, train_groups = {group_of[n] for n in fold["val"]}, {group_of[n] for n in fold["train"]}
        assert not val_groups & train_groups
        # 18 training groups per class -> round(1.8) = 2 validation groups of every class.
        per_class = pd.Series([g.rsplit("_g", 1)[0] for g in val_groups]).value_counts()
        assert set(per_class.index) == set(ucf101.CLASSES) and set(per_class) == {2}
    again = ucf101.mlb_folds(listed, kept, val_fraction=0.1, seed=0)
    other = ucf101.mlb_folds(listed, kept, val_fraction=0.1, seed=1)
    assert again[1]["val"] == folds[1]["val"] and other[1]["val"] != folds[1]["val"]


def test_list_with_one_row_missing_names_the_file(tmp_path):
    folder = full_size_lists(tmp_path / "lists")
    path = folder / "testlist02.txt"
    lines = path.read_bytes().split(b"\r\n")
    path.write_bytes(b"\r\n".join(lines[1:]))  # drop the first row (ApplyEyeMakeup g08)
    with pytest.raises(SplitMismatchError, match=r"testlist02.txt does not hold the published split \(test rows of the 51 audio classes: 1914 where the paper's split has 1915\)"):
        ucf101.read_official_splits(folder)


def test_wrong_label_and_wrong_test_group_are_refused(tmp_path):
    folder = full_size_lists(tmp_path / "lists")
    train = folder / "trainlist01.txt"
    train.write_bytes(train.read_bytes().replace(b"v_ApplyEyeMakeup_g08_c01.avi 1\r\n", b"v_ApplyEyeMakeup_g08_c01.avi 2\r\n", 1))
    with pytest.raises(SplitMismatchError, match=r"trainlist01.txt:1: label 2 but classInd.txt gives ApplyEyeMakeup index 1"):
        ucf101.read_official_splits(folder)
    folder = full_size_lists(tmp_path / "lists2")
    test = folder / "testlist03.txt"
    test.write_bytes(test.read_bytes() + b"ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c09.avi\r\n")
    with pytest.raises(SplitMismatchError, match=r"testlist03.txt: split 3 tests groups g15-g21, but 1 rows"):
        ucf101.read_official_splits(folder)


# --- audio probing -----------------------------------------------------------------


def test_has_audio_on_each_kind_of_clip(standin):
    tree = standin["tree"]
    assert media.has_audio(tree / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")  # stereo
    assert media.has_audio(tree / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi")  # mono
    assert not media.has_audio(tree / "PlayingDhol" / "v_PlayingDhol_g22_c02.avi")
    assert not media.has_audio(tree / "YoYo" / "v_YoYo_g01_c01.avi")
    with pytest.raises(media.MediaError) as info:
        media.has_audio(tree / "PlayingDhol" / "v_PlayingDhol_g23_c02.avi")
    assert info.value.kind == "corrupt" and "v_PlayingDhol_g23_c02.avi" in str(info.value)


def test_class_list_checks_against_the_probe():
    ucf101.check_audio_classes({"ApplyEyeMakeup": ["audio", "no_audio"], "YoYo": ["no_audio", "audio", "no_audio"]})
    with pytest.raises(SplitMismatchError, match=r"PlayingDhol \(one of the 51\) has no clip with audio among 2 probed"):
        ucf101.check_audio_classes({"PlayingDhol": ["no_audio", "error: corrupt: x"]})
    with pytest.raises(SplitMismatchError, match=r"YoYo \(a UCF50 class, excluded\) has audio in 2 of 3 clips"):
        ucf101.check_audio_classes({"YoYo": ["audio", "audio", "no_audio"]})


# --- catalog and preprocessing --------------------------------------------------------


@pytest.fixture
def catalog_counts(monkeypatch):
    """The stand-in lists are small: check them against their own counts."""
    monkeypatch.setitem(ucf101.EXPECTED_COUNTS, "mlb", STANDIN_COUNTS["mlb"])


def test_catalog_and_store_on_the_standin(standin, tmp_path, catalog_counts, monkeypatch):
    raw = raw_tree(standin, tmp_path / "raw")
    catalog = ucf101.build_catalog(raw, "mlb", {"folds": 3, "seed": 0, "workers": 2})
    names = sorted(c.name for c in catalog.clips)
    assert names == KEPT_BY_CATALOG
    assert catalog.classes == list(ucf101.CLASSES)
    clip = next(c for c in catalog.clips if c.name == "v_HandStandPushups_g01_c01")
    assert clip.label == ucf101.CLASSES.index("HandstandPushups") == 25
    assert clip.group == "HandstandPushups_g01" and clip.audio == clip.video
    assert catalog.notes["no_audio"]["dropped"] == {"PlayingDhol": ["v_PlayingDhol_g22_c02"]}
    assert catalog.notes["missing"]["clips"] == ["v_ApplyEyeMakeup_g23_c03"]
    assert list(catalog.notes["probe_errors"]["clips"]) == ["v_PlayingDhol_g23_c02"]
    for k in (1, 2, 3):
        fold = catalog.folds[k]
        assert {n.split("_g")[1][:2] for n in fold["test"]} == {f"{7 * k - 6:02d}"}
        assert sorted(fold["train"] + fold["val"] + fold["test"]) == names
        groups = {c.name: c.group for c in catalog.clips}
        val_groups = {groups[n] for n in fold["val"]}
        assert not val_groups & {groups[n] for n in fold["train"]}
        assert sorted(g.rsplit("_g", 1)[0] for g in val_groups) == ["ApplyEyeMakeup", "HandstandPushups", "PlayingDhol"]

    # The probe ran once: its cache answers the second build (UCF50 clips included).
    probe = pd.read_csv(raw / ucf101.PROBE_CACHE)
    assert len(probe) == sum(kind != "absent" for *_, kind in STANDIN)
    assert set(probe.loc[probe["path"].str.contains("YoYo|Basketball"), "status"]) == {"no_audio"}
    monkeypatch.setattr(media, "has_audio", lambda path: pytest.fail(f"probed {path} again"))
    assert sorted(c.name for c in ucf101.build_catalog(raw, "mlb", {"folds": 3}).clips) == names

    catalog.write(tmp_path / "catalog")
    recipe = resolve({"preset": "mlb_ucf101", "frame_size": 32, "store_scale": 1.0, "sample_rate": 8000, "n_fft": 128, "hop_length": 64})
    index = features.preprocess(tmp_path / "catalog", tmp_path / "store", recipe).set_index("clip")
    skipped = index.loc[index["skipped"], "skip_kind"].to_dict()
    assert skipped == {"v_ApplyEyeMakeup_g22_c02": "too_short", "v_PlayingDhol_g23_c02": "corrupt"}
    assert index.loc["v_HandStandPushups_g23_c02", "padded_frames"] == 0  # the 29.97 fps clip
    frames = np.load(tmp_path / "store" / "frames.npy")
    spectrograms = np.load(tmp_path / "store" / "spectrograms.npy")
    assert frames.shape == (len(names), 4, 32, 32, 3) and spectrograms.shape == (len(names), 65, 376)
    kept_rows = index.loc[~index["skipped"], "row"]
    assert (frames[kept_rows].reshape(len(kept_rows), -1).max(axis=1) > 0).all()
    report = pd.read_csv(tmp_path / "store" / "kept_skipped.csv")
    assert report["skipped_too_short"].sum() == 3 and report["skipped_corrupt"].sum() == 3  # one clip in each of 3 folds
    assert Catalog.read(tmp_path / "catalog").notes["no_audio"]["count"] == 1


def test_ucf50_class_with_audio_means_a_wrong_class_list(standin, tmp_path, catalog_counts):
    raw = raw_tree(standin, tmp_path / "raw")
    for seed, avi in enumerate(sorted((raw / "UCF101" / "UCF-101" / "YoYo").glob("*.avi"))):
        write_avi(avi, seed)  # now with an audio track
    with pytest.raises(SplitMismatchError, match=r"YoYo \(a UCF50 class, excluded\) has audio in 2 of 2 clips"):
        ucf101.build_catalog(raw, "mlb", {"folds": 3})


def test_absent_class_folder_and_unknown_protocol_are_loud(standin, tmp_path, catalog_counts):
    raw = raw_tree(standin, tmp_path / "raw")
    with pytest.raises(ValueError, match=r"protocol 'ogm' is not one of \['mlb'\]"):
        ucf101.build_catalog(raw, "ogm", {})
    with pytest.raises(ValueError, match=r"folds=4"):
        ucf101.build_catalog(raw, "mlb", {"folds": 4})
    shutil.rmtree(raw / "UCF101" / "UCF-101" / "PlayingDhol")
    with pytest.raises(FileNotFoundError, match=r"no clip of the listed class\(es\) \['PlayingDhol'\]"):
        ucf101.build_catalog(raw, "mlb", {"folds": 3})


# --- download ------------------------------------------------------------------------


@needs_rar
def test_download_resumes_extracts_and_records(standin, tmp_path, server, catalog_counts):
    rar_url = server.add("/data/UCF101/UCF101.rar", body=standin["rar"], drop_after=len(standin["rar"]) // 2)
    zip_url = server.add("/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip", body=standin["splits_zip"])
    raw = tmp_path / "raw"
    with pytest.raises(http.DownloadError, match=r"(?s)connection closed after .*put it at .*UCF101.rar"):
        ucf101.download(raw, sources(standin, rar_url, zip_url))
    record = ucf101.download(raw, sources(standin, rar_url, zip_url))
    assert [r["range"] for r in server.requests_for("/data/UCF101/UCF101.rar")] == [None, f"bytes={len(standin['rar']) // 2}-"]
    assert len(server.requests_for("/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip")) == 1
    assert [f["name"] for f in record["files"]] == ["UCF101TrainTestSplits-RecognitionTask.zip", "UCF101.rar"]
    assert record["files"][1]["sha256"] == hashlib.sha256(standin["rar"]).hexdigest()
    assert record["files"][1]["checked_against"] == {"md5": hashlib.md5(standin["rar"]).hexdigest()}
    video = raw / "UCF101" / "UCF-101" / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi"
    assert video.read_bytes() == standin["members"]["UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi"]
    assert (raw / "splits" / "ucfTrainTestlist" / "trainlist01.txt").read_bytes().endswith(b"v_Basketball_g22_c01.avi 8\r\n")

    ucf101.download(raw, sources(standin, rar_url, zip_url))  # verified and extracted: nothing fetched
    assert len(server.log) == 3
    assert sorted(c.name for c in ucf101.build_catalog(raw, "mlb", {"folds": 3}).clips) == KEPT_BY_CATALOG


@needs_rar
def test_html_page_from_first_mirror_falls_back_to_the_next(standin, tmp_path, server):
    page = server.add("/data/UCF101/UCF101.rar", body=b"<!DOCTYPE html><html><title>CRCV</title></html>", content_type="text/html")
    good = server.add("/mirror/UCF101.rar", body=standin["rar"])
    zip_url = server.add("/splits.zip", body=standin["splits_zip"])
    source = sources(standin, good, zip_url)
    source["videos"]["urls"] = [page, good]
    ucf101.download(tmp_path / "raw", source)
    assert len(server.requests_for("/data/UCF101/UCF101.rar")) == 1
    assert (tmp_path / "raw" / "UCF101" / "UCF-101" / "YoYo" / "v_YoYo_g01_c01.avi").is_file()


@needs_rar
def test_escaping_rar_member_is_refused(standin, tmp_path, server):
    evil = rar4([("UCF-101/YoYo/v_YoYo_g01_c01.avi", b"avi", FILE), ("UCF-101/../../evil.avi", b"bad", FILE)])
    rar_url = server.add("/UCF101.rar", body=evil)
    zip_url = server.add("/splits.zip", body=standin["splits_zip"])
    source = sources(standin, rar_url, zip_url)
    source["videos"]["md5"] = hashlib.md5(evil).hexdigest()
    with pytest.raises(archives.UnsafeArchiveError, match=r"UCF101.rar: member 'UCF-101/../../evil.avi'"):
        ucf101.download(tmp_path / "raw", source)
    assert not (tmp_path / "raw" / "UCF101").exists() and not list(tmp_path.rglob("evil.avi"))


def test_checksum_mismatch_names_file_and_both_hashes(standin, tmp_path, server):
    # The stand-in zip is not the real one: the published sha256 (TFDS) must refuse it.
    zip_url = server.add("/splits.zip", body=standin["splits_zip"])
    source = {"splits": {"urls": [zip_url], "size": None}, **FAST}
    with pytest.raises(http.ChecksumError) as info:
        ucf101.download(tmp_path / "raw", source)
    message = str(info.value)
    assert "UCF101TrainTestSplits-RecognitionTask.zip" in message
    assert ucf101.SPLITS_ZIP["sha256"] in message and hashlib.sha256(standin["splits_zip"]).hexdigest() in message
    assert (tmp_path / "raw" / "UCF101TrainTestSplits-RecognitionTask.zip.corrupt").is_file()


def test_tfds_zip_mirror_is_an_alternative_source(standin, tmp_path, server, catalog_counts):
    # The TFDS zip's inner layout is unchecked: clips are found by file name, here in a flat UCF101/ folder.
    videos = zip_bytes({f"UCF101/{name.rsplit('/', 1)[1]}": data for name, data in standin["members"].items()})
    source = {"archive": "tfds_zip", "videos": {"urls": [server.add("/UCF101_videos.zip", body=videos)], "size": len(videos),
                                                "sha256": hashlib.sha256(videos).hexdigest()},
              "splits": sources(standin, "", server.add("/splits.zip", body=standin["splits_zip"]))["splits"], **FAST}
    record = ucf101.download(tmp_path / "raw", source)
    assert record["archive"] == "tfds_zip" and (tmp_path / "raw" / "UCF101_videos" / "UCF101").is_dir()
    catalog = ucf101.build_catalog(tmp_path / "raw", "mlb", {"folds": 1})
    assert sorted(c.name for c in catalog.clips) == KEPT_BY_CATALOG and set(catalog.folds) == {1}
    with pytest.raises(ValueError, match=r"source.archive: 'zip' is not one of"):
        ucf101.download(tmp_path / "raw", {"archive": "zip"})
    with pytest.raises(ValueError, match=r"source: unknown keys \['video'\]"):
        ucf101.download(tmp_path / "raw", {"video": ["file:///UCF101.rar"]})
