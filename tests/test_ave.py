"""AVE: split files, MLB's protocol, download/verify/extract of AVE_Dataset.zip, and
preprocessing of the event segment, on a stand-in in the real layout (that of AVE_Dataset.zip, README of
YapengTian/AVE-ECCV18).

The stand-in zip holds `AVE/<id>.mp4` (H.264 + AAC stereo 44.1 kHz, 64x48, mostly
4 s, one 10 s), `Annotations.txt` with its header line and the three split files,
with the known defects: a category with commas, one id labelled differently in
train and test, a repeated id inside train, the `&0&0` row, an mp4 without audio
and a truncated mp4. The published counts are checked on full-size synthetic
lists (text plus empty mp4 files).
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from http_server import FileServer
from standins import truncate, write_mp4

from mmbalance.data import media, recipes
from mmbalance.data.catalog import Catalog, SplitMismatchError
from mmbalance.data.datasets import ave
from mmbalance.data.fetching import archives, http
from mmbalance.data.store import features

HEADER = "Category&VideoID&Quality&StartTime&EndTime"
MALE, FEMALE, BELL, VIOLIN = "Male speech, man speaking", "Female speech, woman speaking", "Church bell", "Violin, fiddle"
LEAK_ID = "-9_5_2i4igQ"  # Male speech in train (event 2-4 s), Female speech in test (0-2 s)
NO_AUDIO, TRUNCATED, EMPTY_EVENT, TEN_SECONDS, REPEATED = "-en7GAdXAQk", "e_5ngCwYckE", "VWi2ENBuTbw", "RUhOCu3LNXM", "0f_iTO5t3hU"
ROWS = {
    "train": [
        (BELL, TEN_SECONDS, 0, 10),
        (BELL, EMPTY_EVENT, 0, 0),
        (MALE, LEAK_ID, 2, 4),
        (VIOLIN, REPEATED, 0, 4),
        (VIOLIN, REPEATED, 1, 3),
        (MALE, NO_AUDIO, 0, 4),
        (FEMALE, TRUNCATED, 0, 4),
        (FEMALE, "gjCew0Kp0iM", 3, 4),
    ],
    "val": [(BELL, "2An2JMGMbbs", 0, 4), (MALE, "0jr-YC7JdwQ", 1, 4), (VIOLIN, "c---zaDCTaE", 0, 4), (FEMALE, "1_4j6VRHZAw", 0, 4)],
    "test": [(FEMALE, LEAK_ID, 0, 2), (BELL, "5wHd0VafUAA", 0, 4), (VIOLIN, "AiJTCFtN0BY", 0, 4), (MALE, "Zlwu4AROYzg", 0, 4)],
}
VIDEO_IDS = sorted({row[1] for rows in ROWS.values() for row in rows})
STANDIN_COUNTS = {"train": {"lines": 8, "videos": 7}, "val": {"lines": 4, "videos": 4}, "test": {"lines": 4, "videos": 4}}
TINY_RECIPE = {"preset": "mlb_ave", "frame_size": 32, "store_scale": 1.0, "sample_rate": 8000, "seconds": 2.0, "n_fft": 128, "hop_length": 64}
ZIP_PATH = "/drive/AVE_Dataset.zip"


def line(category: str, video_id: str, start: int, end: int) -> str:
    return f"{category}&{video_id}&good&{start}&{end}"


@dataclass
class Standin:
    folder: Path  # AVE/, Annotations.txt, split files, ReadMe.txt

    def zip_bytes(self, top: str | None = None, leave_out: tuple[str, ...] = (), extra: dict[str, bytes] | None = None) -> bytes:
        """The archive as the real one is laid out; mp4 stored (already compressed), text deflated."""
        prefix = f"{top}/" if top else ""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr(f"{prefix}AVE/", b"")
            for mp4 in sorted((self.folder / "AVE").glob("*.mp4")):
                if mp4.stem not in leave_out:
                    zf.write(mp4, f"{prefix}AVE/{mp4.name}", compress_type=zipfile.ZIP_STORED)
            for text in ["Annotations.txt", "ReadMe.txt", *ave.SPLIT_FILES.values()]:
                zf.write(self.folder / text, prefix + text, compress_type=zipfile.ZIP_DEFLATED)
            for name, data in (extra or {}).items():
                zf.writestr(name, data)
        return buffer.getvalue()


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Standin:
    folder = tmp_path_factory.mktemp("ave_standin")
    for seed, video_id in enumerate(VIDEO_IDS):
        path = folder / "AVE" / f"{video_id}.mp4"
        write_mp4(path, seed=seed, seconds=10.0 if video_id == TEN_SECONDS else 4.0, audio=video_id != NO_AUDIO)
        if video_id == TRUNCATED:
            truncate(path)
    every_row = [line(*row) for rows in ROWS.values() for row in rows]
    (folder / "Annotations.txt").write_text("\n".join([HEADER, *every_row]) + "\n")
    for split, name in ave.SPLIT_FILES.items():
        (folder / name).write_text("\n".join(line(*row) for row in ROWS[split]) + "\n")
    (folder / "ReadMe.txt").write_text("AVE dataset stand-in: 10-second videos, 28 event categories.\n")
    return Standin(folder)


@pytest.fixture
def standin_sizes(monkeypatch):
    """The stand-in's own sizes in place of the published ones (checked separately below)."""
    monkeypatch.setattr(ave, "EXPECTED_VIDEOS", len(VIDEO_IDS))
    monkeypatch.setitem(ave.EXPECTED_COUNTS, "mlb", STANDIN_COUNTS)
    monkeypatch.setattr(ave, "EXPECTED_CLASSES", 4)


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


@pytest.fixture
def no_backoff(monkeypatch):
    """Retries of download.download wait 1 s, 2 s...; record the waits instead."""
    waits = []
    monkeypatch.setattr(http.time, "sleep", waits.append)
    return waits


# --------------------------------------------------------------------------- classes and split files


def test_classes_are_mlbs_order_with_the_files_spelling():
    assert len(ave.CLASSES) == 28 == len(set(ave.CLASSES))
    assert ave.CLASSES[:6] == ("Church bell", MALE, "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing", FEMALE)
    assert ave.CLASSES.index("Frying (food)") == 10
    assert ave.CLASSES.index("Rodents, rats, mice") == 25
    assert ave.CLASSES[-1] == "Mandolin"


def test_rows_with_and_without_header_crlf_and_bom(tmp_path):
    rows = [line(MALE, "-J_mFjrsMlo", 3, 10), line("Rodents, rats, mice", "c---zaDCTaE", 0, 10)]
    with_header = tmp_path / "Annotations.txt"
    with_header.write_bytes(("\ufeff" + "\r\n".join([HEADER, *rows]) + "\r\n").encode())
    github_copy = tmp_path / "annotations_github.txt"
    github_copy.write_text("\n".join(rows))  # no header, no final newline
    parsed = ave.read_rows(with_header)
    assert [r.text for r in parsed] == rows == [r.text for r in ave.read_rows(github_copy)]
    assert (parsed[0].category, parsed[0].video_id, parsed[0].start, parsed[0].end) == (MALE, "-J_mFjrsMlo", 3.0, 10.0)
    assert parsed[1].source == "Annotations.txt:3"


@pytest.mark.parametrize("bad, message", [
    (line("Male speech", "-J_mFjrsMlo", 0, 10), "category 'Male speech'"),
    (line(MALE, "../../etc/pw", 0, 10), "video id '../../etc/pw'"),
    (line(MALE, "-J_mFjrsMlo", 0, "ten"), "start/end"),
    (f"{MALE}&-J_mFjrsMlo&good&0", "expected 'Category&VideoID"),
])
def test_malformed_rows_name_file_and_line(tmp_path, bad, message):
    path = tmp_path / "trainSet.txt"
    path.write_text(line(BELL, "RUhOCu3LNXM", 0, 10) + "\n" + bad + "\n")
    with pytest.raises(ValueError, match="trainSet.txt:2") as error:
        ave.read_rows(path)
    assert message in str(error.value)


def test_first_occurrence_is_kept_within_a_split():
    rows = [ave.Row(c, i, "good", s, e, f"x:{n}") for n, (c, i, s, e) in enumerate(ROWS["train"], start=1)]
    kept, dropped = ave.first_occurrences(rows)
    assert [r.video_id for r in dropped] == [REPEATED]
    assert next(r for r in kept if r.video_id == REPEATED).start == 0.0


# --------------------------------------------------------------------------- published counts, full size


def synthetic_ids(count: int, seed: int = 0) -> list[str]:
    """Distinct 11-character ids in YouTube's alphabet, some starting with '-' and holding '_'."""
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    ids = {EMPTY_EVENT}
    while len(ids) < count:
        dash = len(ids) % 7 == 0
        ids.add("-" * dash + "".join(rng.choice(alphabet) for _ in range(11 - dash)))
    return sorted(ids)


def write_full_size_tree(root: Path, media: bool = True) -> dict:
    """Split lists with the published sizes (PMR data/AVE/ = MLB datasets/AVE/): 3,339/402/402 rows,
    3,312/401/402 ids, 27 ids repeated inside train and 1 inside val, 10 train ids
    also in val and 8 also in test (other label), the `&0&0` row in train;
    4,097 distinct videos, every class used. Media are empty files (or absent)."""
    ids = synthetic_ids(4097)
    ids.remove(EMPTY_EVENT)
    train_ids = [EMPTY_EVENT, *ids[:3311]]
    val_only, test_only = ids[3311:3311 + 391], ids[3702:3702 + 394]
    label = {video_id: ave.CLASSES[n % 28] for n, video_id in enumerate(ids)} | {EMPTY_EVENT: BELL}
    other = {video_id: ave.CLASSES[(ave.CLASSES.index(c) + 1) % 28] for video_id, c in label.items()}
    train = [line(label[i], i, 0, 0 if i == EMPTY_EVENT else 10) for i in train_ids]
    train += [line(other[i], i, 1, 5) for i in train_ids[100:127]]  # repeats: the second label is dropped
    val = [line(label[i], i, 0, 10) for i in val_only] + [line(other[i], i, 2, 6) for i in train_ids[1:11]]
    val.append(line(other[val_only[0]], val_only[0], 0, 3))
    test = [line(label[i], i, 0, 10) for i in test_only] + [line(other[i], i, 3, 7) for i in train_ids[11:19]]
    (root / "AVE").mkdir(parents=True)
    for video_id in [*train_ids, *val_only, *test_only] if media else []:
        (root / "AVE" / f"{video_id}.mp4").touch()
    for name, rows in [("trainSet.txt", train), ("valSet.txt", val), ("testSet.txt", test)]:
        (root / name).write_text("\n".join(rows) + "\n")
    (root / "Annotations.txt").write_text("\n".join([HEADER, *train, *val, *test]) + "\n")
    return {"train_ids": train_ids, "val_only": val_only, "label": label}


def test_full_size_lists_give_the_published_counts(tmp_path):
    made = write_full_size_tree(tmp_path / "AVE_Dataset" / "AVE_Dataset")
    record = ave.verify_tree(ave.dataset_root(tmp_path))
    assert (record["videos"], record["split_videos"], record["missing"]) == (4097, 4097, [])

    catalog = ave.build_catalog(tmp_path, "mlb", {})
    sizes = {split: len(members) for split, members in catalog.folds[1].items()}
    assert sizes == {"train": 3312 - 1, "val": 401, "test": 402}  # the &0&0 row is skipped
    assert sorted(catalog.folds) == [1, 2, 3] and catalog.folds[3] == catalog.folds[1]
    assert len(catalog.classes) == 28 and {c.label for c in catalog.clips} == set(range(28))
    notes = catalog.notes
    assert [len(notes["duplicates_dropped"][s]) for s in ("train", "val", "test")] == [27, 1, 0]
    assert len(notes["empty_segments_skipped"]) == 1 and EMPTY_EVENT in notes["empty_segments_skipped"][0]
    assert {k: len(v) for k, v in notes["cross_split_ids"].items()} == {"train&val": 10, "train&test": 8}
    assert notes["annotations"]["rows"] == 3339 + 402 + 402 and notes["annotations"]["split_rows_not_annotated_count"] == 0

    by_name = {c.name: c for c in catalog.clips}
    leaked = made["train_ids"][1]
    assert leaked not in by_name
    in_train, in_val = by_name[f"{leaked}__train"], by_name[f"{leaked}__val"]
    assert (in_train.group, in_val.group) == (leaked, leaked)
    assert in_train.label != in_val.label and (in_val.start, in_val.end) == (2.0, 6.0)
    repeated = by_name[made["train_ids"][100]]
    assert catalog.classes[repeated.label] == made["label"][repeated.group] and (repeated.start, repeated.end) == (0.0, 10.0)
    assert sum(len(name) > 11 for name in by_name) == 2 * 18  # ids are 11 characters: suffixed names never collide


@pytest.mark.parametrize("split_file", ["trainSet.txt", "valSet.txt", "testSet.txt"])
def test_a_list_with_one_row_missing_is_refused_naming_the_file(tmp_path, split_file):
    write_full_size_tree(tmp_path, media=False)  # the sizes are checked before any media
    path = tmp_path / split_file
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(SplitMismatchError, match=split_file) as error:
        ave.build_catalog(tmp_path, "mlb", {})
    assert f"lines: {len(rows) - 1} where the paper's split has {len(rows)}" in str(error.value)


def test_missing_videos_are_refused_unless_tolerated(tmp_path):
    made = write_full_size_tree(tmp_path)
    lost = made["val_only"][5]
    (tmp_path / "AVE" / f"{lost}.mp4").unlink()
    with pytest.raises(ave.IncompleteDatasetError, match=lost):
        ave.verify_tree(tmp_path)
    assert ave.verify_tree(tmp_path, max_missing=1)["missing"] == [lost]
    with pytest.raises(FileNotFoundError, match="max_missing"):
        ave.build_catalog(tmp_path, "mlb", {})
    catalog = ave.build_catalog(tmp_path, "mlb", {"max_missing": 1, "folds": 1})
    assert catalog.notes["missing"] == {"count": 1, "clips": [lost]}
    assert len(catalog.folds[1]["val"]) == 400 and sorted(catalog.folds) == [1]


def test_unknown_protocol_is_named(tmp_path):
    with pytest.raises(ValueError, match="'ogm'.*known: mlb"):
        ave.build_catalog(tmp_path, "ogm", {})


# --------------------------------------------------------------------------- download


@pytest.mark.parametrize("top", [None, "AVE_Dataset"])
def test_download_resumes_extracts_and_verifies(server, tmp_path, standin, standin_sizes, no_backoff, top):
    body = standin.zip_bytes(top=top)
    url = server.add(ZIP_PATH, body=body, drop_after=len(body) // 3)
    raw = tmp_path / "raw"
    record = ave.download(raw, {"urls": [url]})
    ranges = [r["range"] for r in server.requests_for(ZIP_PATH)]
    assert ranges == [None, f"bytes={len(body) // 3}-"] and len(no_backoff) == 1
    assert (raw / ave.ARCHIVE).read_bytes() == body
    root = raw / "AVE_Dataset" / top if top else raw / "AVE_Dataset"
    assert ave.dataset_root(raw) == root and (root / "AVE" / f"{LEAK_ID}.mp4").is_file()
    assert record["videos"] == len(VIDEO_IDS) and record["missing"] == []
    assert record["archive"]["published_checksum"].startswith("unverified")
    assert set(record["split_files"]) == {"trainSet.txt", "valSet.txt", "testSet.txt", "Annotations.txt"}
    json.dumps(record)

    again = ave.download(raw, {"urls": [url]})  # verified file and marked extraction: nothing fetched
    assert len(server.requests_for(ZIP_PATH)) == 2 and again == record


def test_a_copy_downloaded_in_a_browser_is_used_via_file_url(tmp_path, standin, standin_sizes):
    copy = tmp_path / "Downloads" / "AVE_Dataset.zip"
    copy.parent.mkdir()
    copy.write_bytes(standin.zip_bytes())
    record = ave.download(tmp_path / "raw", {"urls": [copy.as_uri()], "sha256": http.file_digest(copy)})
    assert record["archive"]["sha256"] == http.file_digest(copy)
    assert record["archive"]["published_checksum"] == "matched source.sha256"


def test_a_tree_unpacked_by_hand_is_verified_without_fetching(server, tmp_path, standin, standin_sizes):
    url = server.add(ZIP_PATH, status=404)
    with zipfile.ZipFile(io.BytesIO(standin.zip_bytes())) as zf:
        zf.extractall(tmp_path)
    record = ave.download(tmp_path, {"urls": [url]})
    assert server.requests_for(ZIP_PATH) == [] and record["root"] == "." and record["archive"]["present"] is False


def test_drive_html_page_is_not_media_with_advice(server, tmp_path):
    page = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
            b"<body>Google Drive can't scan this file for viruses.</body></html>")
    urls = [server.add("/download?id=X&export=download&confirm=t", body=page, content_type="text/html"),
            server.add("/uc?export=download&id=X&confirm=t", body=page, content_type="text/html")]
    with pytest.raises(http.NotMediaError) as error:
        ave.download(tmp_path, {"urls": urls})
    message = str(error.value)
    assert "Virus scan warning" in message and "in a browser" in message and "file:///path/to/AVE_Dataset.zip" in message
    assert not (tmp_path / ave.ARCHIVE).exists()


def test_pinned_checksum_mismatch_names_file_and_both_hashes(server, tmp_path, standin):
    body = standin.zip_bytes()
    url = server.add(ZIP_PATH, body=body)
    wrong = "0" * 64
    with pytest.raises(http.ChecksumError) as error:
        ave.download(tmp_path, {"urls": [url], "sha256": wrong})
    message = str(error.value)
    actual = http.file_digest(tmp_path / "AVE_Dataset.zip.corrupt")  # the bad download is kept aside
    assert str(tmp_path / ave.ARCHIVE) in message and wrong in message and actual in message


def test_member_escaping_the_folder_is_refused(server, tmp_path, standin):
    url = server.add(ZIP_PATH, body=standin.zip_bytes(extra={"../../evil.txt": b"x"}))
    with pytest.raises(archives.UnsafeArchiveError, match=r"\.\./\.\./evil\.txt"):
        ave.download(tmp_path / "raw", {"urls": [url]})
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "raw" / "AVE_Dataset").exists()


@pytest.mark.parametrize("member", [f"AVE/{LEAK_ID}.mp4", "Annotations.txt"])  # stored, deflated
def test_corrupt_member_fails_extraction(server, tmp_path, standin, member):
    body = bytearray(standin.zip_bytes())
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        info = zf.getinfo(member)
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    body[data_start + info.compress_size // 2] ^= 0xFF  # bad CRC-32, or a broken deflate stream
    url = server.add(ZIP_PATH, body=bytes(body))
    with pytest.raises(archives.ExtractError, match="AVE_Dataset.zip"):
        ave.download(tmp_path, {"urls": [url]})
    assert not (tmp_path / "AVE_Dataset").exists()


def test_zip_lacking_a_listed_video(server, tmp_path, standin, standin_sizes):
    lost = "Zlwu4AROYzg"
    url = server.add(ZIP_PATH, body=standin.zip_bytes(leave_out=(lost,)))
    with pytest.raises(ave.IncompleteDatasetError, match=lost):
        ave.download(tmp_path, {"urls": [url]})
    assert ave.download(tmp_path, {"urls": [url], "max_missing": 1})["missing"] == [lost]


# --------------------------------------------------------------------------- catalog and preprocessing


def test_standin_catalog_and_event_segment_preprocessing(tmp_path, standin, standin_sizes):
    raw = tmp_path / "raw"
    archive = tmp_path / ave.ARCHIVE
    archive.write_bytes(standin.zip_bytes(top="AVE_Dataset"))
    archives.extract(archive, raw / "AVE_Dataset")
    catalog = ave.build_catalog(raw, "mlb", {"folds": 2})
    names = {c.name for c in catalog.clips}
    assert names == {TEN_SECONDS, f"{LEAK_ID}__train", f"{LEAK_ID}__test", REPEATED, NO_AUDIO, TRUNCATED, "gjCew0Kp0iM",
                     "2An2JMGMbbs", "0jr-YC7JdwQ", "c---zaDCTaE", "1_4j6VRHZAw", "5wHd0VafUAA", "AiJTCFtN0BY", "Zlwu4AROYzg"}
    assert catalog.notes["cross_split_ids"] == {"train&test": [LEAK_ID]}
    assert "trainSet.txt:2" in catalog.notes["empty_segments_skipped"][0]
    assert "trainSet.txt:5" in catalog.notes["duplicates_dropped"]["train"][0]

    catalog.write(tmp_path / "catalog")
    table = pd.read_csv(tmp_path / "catalog" / "catalog.csv", keep_default_na=False)
    assert set(table.loc[table["clip"] == f"{LEAK_ID}__train", "class_name"]) == {MALE}
    assert table.loc[table["clip"] == f"{LEAK_ID}__train", "video"].item() == f"AVE_Dataset/AVE_Dataset/AVE/{LEAK_ID}.mp4"
    assert Catalog.read(tmp_path / "catalog").clips == sorted(catalog.clips, key=lambda c: c.name)

    recipe = recipes.resolve(TINY_RECIPE)
    store = tmp_path / "store"
    index = features.preprocess(tmp_path / "catalog", store, recipe).set_index("clip")
    assert index.loc[NO_AUDIO, "skip_kind"] == "no_audio" and index.loc[TRUNCATED, "skip_kind"] == "corrupt"
    assert int(index["skipped"].sum()) == 2
    frames, spectrograms = np.load(store / "frames.npy"), np.load(store / "spectrograms.npy")
    assert frames.shape == (14, 4, 32, 32, 3) and spectrograms.shape == (14, 65, 249)
    assert json.loads((store / "meta.json").read_text())["spectrogram_shape"] == [65, 249]

    # The event segment: the train row of LEAK_ID starts at 2 s (frames 2, 3 s, then
    # past the 4 s clip's end: padded), its test row at 0 s (frames 0-3 s).
    train_row, test_row = index.loc[f"{LEAK_ID}__train", "row"], index.loc[f"{LEAK_ID}__test", "row"]
    assert index.loc[f"{LEAK_ID}__train", "padded_frames"] == 2 and index.loc[f"{LEAK_ID}__test", "padded_frames"] == 0
    np.testing.assert_array_equal(frames[train_row][:2], frames[test_row][2:])
    assert not np.array_equal(frames[train_row][0], frames[test_row][0])
    expected, _ = media.decode_frames(raw / "AVE_Dataset" / "AVE_Dataset" / "AVE" / f"{LEAK_ID}.mp4", 4, 1.0, 32, start=2.0)
    np.testing.assert_array_equal(frames[train_row], expected)

    report = pd.read_csv(store / "kept_skipped.csv").fillna(0)
    male_train = report[(report["fold"] == 1) & (report["split"] == "train") & (report["class_name"] == MALE)].iloc[0]
    assert (male_train["listed"], male_train["kept"], male_train["skipped_no_audio"]) == (2, 1, 1)
    assert sorted(report["fold"].unique()) == [1, 2]
