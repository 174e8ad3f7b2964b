"""VGGSound: download from a stand-in of the Hugging Face package and the hche11 lists served on
127.0.0.1, tolerant streaming extraction of a damaged part, the OGM-GE catalog, preprocessing,
and the split counts at full size (those of hche11/VGGSound's lists)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from http_server import FileServer
from standins import truncate, write_mp4

from mmbalance.data import recipes
from mmbalance.data.catalog import Catalog, SplitMismatchError
from mmbalance.data.datasets import vggsound, vggsound_download
from mmbalance.data.fetching import archives, http
from mmbalance.data.store import features

HF = "/datasets/Loie/VGGSound/resolve/main/"
TREE = "/api/datasets/Loie/VGGSound/tree/main"
STAT = f"/hche11/VGGSound/{vggsound_download.STAT_CSV_COMMIT}/data/stat.csv"
TEST = f"/hche11/VGGSound/{vggsound_download.TEST_CSV_COMMIT}/data/test.csv"
CLASS_NAMES = ["race car, auto racing", "dog barking", "bird chirping, tweeting", "playing violin, fiddle"]  # stat.csv order
RATES = (16000, 44100, 48000)
RECIPE = recipes.resolve({"preset": "ogm_ge_vggsound", "frame_size": 32, "store_scale": 1.0, "sample_rate": 8000, "seconds": 2.0,
                          "n_fft": 128, "hop_length": 64})
DROP_AFTER = 4000


@dataclass(frozen=True)
class Spec:
    ytid: str
    start: int
    label: str
    split: str
    part: int | None  # None: listed in vggsound.csv but not in the package (the 291 extras)
    kind: str = "ok"  # ok | no_audio | corrupt | short

    @property
    def name(self) -> str:
        return f"{self.ytid}_{self.start:06d}"


def stand_in_specs() -> list[Spec]:
    """4 train + 2 test clips per class; part 01 holds the train clips of two classes."""
    specs = []
    for c, label in enumerate(CLASS_NAMES):
        for i in range(4):
            ytid = f"Y{c}t{0 if (c, i) == (0, 1) else i}-Xab_cd"  # class 0: two segments of one video
            specs.append(Spec(ytid, 5 + 30 * i, label, "train", 0 if c < 2 else 1))
        for i in range(2):
            ytid = "Y1t3-Xab_cd" if (c, i) == (1, 0) else f"Y{c}s{i}-Xab_cd"  # one video in train and test
            kind = {(2, 0): "no_audio", (3, 0): "corrupt", (0, 1): "short"}.get((c, i), "ok")
            specs.append(Spec(ytid, 7 + 11 * i, label, "test", 0, kind))
    return specs + [Spec("Y1x0-Xab_cd", 10, CLASS_NAMES[1], "train", None), Spec("Y2x0-Xab_cd", 20, CLASS_NAMES[2], "test", None)]


def csv_text(rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def targz(members: list[tuple[str, bytes]], links: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in links:
            tar.addfile(info)
    return buf.getvalue()


def complete_members(archive: bytes, cut: int) -> list[str]:
    """Members whose bytes lie entirely inside what the first `cut` compressed bytes decode to."""
    decoded = len(zlib.decompressobj(31).decompress(archive[:cut]))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        return [m.name for m in tar.getmembers() if m.isfile() and m.offset_data + m.size <= decoded]


def flip(data: bytes, at: float) -> bytes:
    """Same length, a run of bytes inverted: fails its sha256, and zlib or the CRC notices."""
    i = int(len(data) * at)
    return data[:i] + bytes(b ^ 0xFF for b in data[i:i + 64]) + data[i + 64:]


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_json(files: dict[str, bytes], lfs_sha: dict[str, str] | None = None) -> bytes:
    """A Hugging Face tree listing: small files with their git blob id, archives with lfs sha256."""
    listing = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": "extras"},
               {"type": "file", "oid": git_oid(b"* text=auto\n"), "size": 12, "path": ".gitattributes"}]
    for name, data in files.items():
        if name.endswith(".tar.gz"):
            sha = (lfs_sha or {}).get(name, hashlib.sha256(data).hexdigest())
            listing.append({"type": "file", "oid": "1" * 40, "size": len(data), "path": name,
                            "lfs": {"oid": sha, "size": len(data), "pointerSize": 134}})
        else:
            listing.append({"type": "file", "oid": git_oid(data), "size": len(data), "path": name})
    return json.dumps(listing).encode()


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """Media, split files and parts in the real formats; part 01 truncated in the middle of a member."""
    media_dir = tmp_path_factory.mktemp("vggsound_media")
    specs = stand_in_specs()
    videos = {}
    for seed, spec in enumerate(s for s in specs if s.part is not None):
        path = write_mp4(media_dir / f"{spec.name}.mp4", seed=seed, seconds=2.0 if spec.kind == "short" else 7.0, fps=5,
                         audio=spec.kind != "no_audio", audio_rate=RATES[seed % 3], channels=1 + seed % 2)
        videos[spec.name] = (truncate(path) if spec.kind == "corrupt" else path).read_bytes()
    part00 = targz([("scratch/video/README.txt", b"VGGSound part 00\n")]
                   + [(f"scratch/video/{s.name}.mp4", videos[s.name]) for s in specs if s.part == 0])
    intact01 = targz([(f"{s.name}.mp4", videos[s.name]) for s in specs if s.part == 1])
    cut = int(len(intact01) * 0.8)
    kept01 = [Path(n).stem for n in complete_members(intact01, cut)]
    part01_names = [s.name for s in specs if s.part == 1]
    assert 0 < len(kept01) < len(part01_names), "the cut must fall inside a member of part 01"
    stat = csv_text([label, sum(s.label == label and s.part is not None for s in specs), "animals"] for label in CLASS_NAMES)
    return SimpleNamespace(
        specs=specs, part00=part00, intact01=intact01, part01=intact01[:cut], kept01=kept01,
        lost01=[n for n in part01_names if n not in kept01],
        vggsound_csv=csv_text([s.ytid, s.start, s.label, s.split] for s in specs).encode(),
        stat_csv=stat.encode(),
        test_csv=csv_text([f"{s.name}.mp4", s.label] for s in specs if s.split == "test" and s.part is not None).encode(),
    )


def serve(server: FileServer, standin, parts: dict[str, bytes], *, lfs_sha: dict | None = None, **part_routes) -> dict:
    """Routes for the split files, the tree listing and `parts`; returns the download source."""
    server.add(HF + "vggsound.csv", body=standin.vggsound_csv, content_type="text/csv")
    server.add(STAT, body=standin.stat_csv, content_type="text/plain")
    server.add(TEST, body=standin.test_csv, content_type="text/plain")
    server.add(TREE, body=tree_json({"vggsound.csv": standin.vggsound_csv, **parts}, lfs_sha), content_type="application/json")
    for name, data in parts.items():
        server.add(HF + name, body=data, **part_routes.get(name.removesuffix(".tar.gz"), {}))
    return {"hf_base_urls": [server.url(HF)], "tree_url": server.url(TREE), "parts": list(parts), "published": {},
            "corrupt_parts": ["vggsound_01.tar.gz"], "stat_csv_urls": [server.url(STAT)], "test_csv_urls": [server.url(TEST)],
            "retries": 0, "timeout": 5, "backoff": 0}


def stand_in_options(**extra) -> dict:
    counts = {"vggsound.csv": {"rows": 26, "train": 17, "test": 9}, "test.csv": {"rows": 8}, "stat.csv": {"clips": 24}}
    return {"expected_classes": 4, "expected_counts": counts, "max_missing_fraction": 0.5, "val_fraction": 0.34,
            "seed": 0, "folds": 2, **extra}


@pytest.fixture(scope="module")
def downloaded(standin, tmp_path_factory):
    """Three download calls: the first breaks off inside part 00, the second resumes it, the third finds all done."""
    raw = tmp_path_factory.mktemp("vggsound_raw")
    with FileServer() as server:
        source = serve(server, standin, {"vggsound_00.tar.gz": standin.part00, "vggsound_01.tar.gz": standin.part01},
                       vggsound_00={"drop_after": DROP_AFTER})
        with pytest.raises(http.DownloadError) as first_error:
            vggsound.download(raw, source, workers=2)
        after_first = SimpleNamespace(part00=(raw / "vggsound_00.tar.gz.part").stat().st_size,
                                      marker01=(raw / "video" / "vggsound_01" / archives.MARKER).is_file(),
                                      archive01=(raw / "vggsound_01.tar.gz").exists())
        second = vggsound.download(raw, source, workers=2)
        requests_before_third = len(server.log)
        third = vggsound.download(raw, source, workers=2)
        yield SimpleNamespace(raw=raw, first_error=first_error.value, after_first=after_first, second=second, third=third,
                              part00_requests=server.requests_for(HF + "vggsound_00.tar.gz"),
                              part01_requests=server.requests_for(HF + "vggsound_01.tar.gz"),
                              third_requests=server.log[requests_before_third:])


# --------------------------------------------------------------------------- download and extraction


def test_an_interrupted_part_resumes_and_finished_parts_are_not_fetched_again(downloaded, standin):
    assert "vggsound_00.tar.gz" in str(downloaded.first_error) and "connection closed" in str(downloaded.first_error)
    assert downloaded.after_first.part00 == DROP_AFTER
    assert downloaded.after_first.marker01 and not downloaded.after_first.archive01  # part 01 finished meanwhile
    assert [r["range"] for r in downloaded.part00_requests] == [None, f"bytes={DROP_AFTER}-"]
    assert len(downloaded.part01_requests) == 1
    assert downloaded.second["parts"]["vggsound_01.tar.gz"]["resumed"] is True
    assert downloaded.third_requests == []  # everything verified and extracted: no request at all
    assert all(record["resumed"] for record in downloaded.third["parts"].values())
    assert not list(downloaded.raw.glob("*.tar.gz*")) and not list((downloaded.raw / "video").glob(".*"))


def test_the_record_names_what_was_verified(downloaded, standin):
    files = downloaded.second["files"]
    assert files["vggsound.csv"]["verified"] == "git blob id" and files["vggsound.csv"]["git_oid"] == git_oid(standin.vggsound_csv)
    assert files["stat.csv"]["verified"].startswith("unverified") and files["stat.csv"]["sha256"] == hashlib.sha256(standin.stat_csv).hexdigest()
    part00 = downloaded.second["parts"]["vggsound_00.tar.gz"]
    assert part00 | {"extracted_at": None} == {
        "archive": "vggsound_00.tar.gz", "sha256": hashlib.sha256(standin.part00).hexdigest(), "size": len(standin.part00),
        "values_from": "tree listing", "verified": "sha256", "mp4_members": 16, "other_members_skipped": 1,
        "duplicate_members_skipped": 0, "complete": True, "damage": None, "extracted_at": None, "resumed": False,
        "archive_deleted": True}
    assert downloaded.second["tree"]["filled_in"] == ["vggsound.csv", "vggsound_00.tar.gz", "vggsound_01.tar.gz"]
    assert json.loads(json.dumps(downloaded.second)) == downloaded.second


def test_the_truncated_known_corrupt_part_keeps_every_complete_member(downloaded, standin):
    record = downloaded.second["parts"]["vggsound_01.tar.gz"]
    assert record["complete"] is False and "truncated" in record["damage"]
    assert record["mp4_members"] == len(standin.kept01)
    folder = downloaded.raw / "video" / "vggsound_01"
    assert sorted(p.stem for p in folder.glob("*.mp4")) == sorted(standin.kept01)
    assert not list(folder.glob("*.partial")) and downloaded.second["damaged_parts"] == ["vggsound_01.tar.gz"]
    assert (downloaded.raw / "video" / "vggsound_00" / f"{standin.specs[0].name}.mp4").read_bytes()[4:8] == b"ftyp"


def test_a_checksum_mismatch_names_the_file_and_both_hashes(standin, tmp_path):
    bad = flip(standin.part00, 0.5)
    good_sha = hashlib.sha256(standin.part00).hexdigest()
    with FileServer() as server:
        source = serve(server, standin, {"vggsound_00.tar.gz": bad}, lfs_sha={"vggsound_00.tar.gz": good_sha})
        with pytest.raises(http.ChecksumError) as error:
            vggsound.download(tmp_path, source)
    message = str(error.value)
    assert "vggsound_00.tar.gz" in message and good_sha in message and hashlib.sha256(bad).hexdigest() in message
    assert (tmp_path / "vggsound_00.tar.gz.corrupt").is_file() and not (tmp_path / "video" / "vggsound_00").exists()


def test_a_known_corrupt_part_that_fails_its_checksum_is_still_extracted_as_far_as_it_goes(standin, tmp_path):
    bad = flip(standin.intact01, 0.7)
    good_sha = hashlib.sha256(standin.intact01).hexdigest()
    with FileServer() as server:
        source = serve(server, standin, {"vggsound_01.tar.gz": bad}, lfs_sha={"vggsound_01.tar.gz": good_sha})
        record = vggsound.download(tmp_path, source)["parts"]["vggsound_01.tar.gz"]
    assert record["checksum_mismatch"] == {"what": "sha256", "expected": good_sha, "actual": hashlib.sha256(bad).hexdigest()}
    assert record["complete"] is False and record["damage"]
    assert 0 < record["mp4_members"] <= 8 and record["mp4_members"] == len(list((tmp_path / "video" / "vggsound_01").glob("*.mp4")))
    assert not (tmp_path / "vggsound_01.tar.gz.corrupt").exists()  # deleted after extraction (keep_archives false)


def test_an_escaping_member_stops_the_download_and_writes_nothing(standin, tmp_path):
    raw = tmp_path / "raw"
    evil = targz([("ok_000001.mp4", b"fine"), ("../evil_000002.mp4", b"escape")])
    with FileServer() as server:
        source = serve(server, standin, {"vggsound_02.tar.gz": evil})
        with pytest.raises(archives.UnsafeArchiveError, match=r"vggsound_02\.tar\.gz.*'\.\./evil_000002\.mp4'"):
            vggsound.download(raw, source)
    assert not (tmp_path / "evil_000002.mp4").exists() and not (raw / "video" / "vggsound_02").exists()
    assert not list((raw / "video").iterdir())  # no staging folder left behind


def test_an_html_page_instead_of_the_tree_listing_is_refused(standin, tmp_path):
    with FileServer() as server:
        source = serve(server, standin, {"vggsound_00.tar.gz": standin.part00})
        server.add(TREE, body=b"<!DOCTYPE html><html><head><title>Too Many Requests</title></head></html>", content_type="text/html")
        with pytest.raises(http.NotMediaError, match="HTML page titled 'Too Many Requests'"):
            vggsound.download(tmp_path, source)


def test_a_json_error_instead_of_the_tree_listing_is_removed_and_named(standin, tmp_path):
    with FileServer() as server:
        source = serve(server, standin, {"vggsound_00.tar.gz": standin.part00})
        server.add(TREE, body=b'{"error": "Repository not found"}', content_type="application/json")
        with pytest.raises(http.DownloadError, match="hf_tree.json: not a Hugging Face tree listing"):
            vggsound.download(tmp_path, source)
    assert not (tmp_path / "hf_tree.json").exists()


def test_a_published_value_the_tree_contradicts_stops_before_downloading(standin, tmp_path):
    with FileServer() as server:
        source = serve(server, standin, {"vggsound_00.tar.gz": standin.part00})
        source["published"] = {"vggsound_00.tar.gz": {"sha256": "ab" * 32}}
        with pytest.raises(http.ChecksumError, match="vggsound_00.tar.gz: the published sha256 abab"):
            vggsound.download(tmp_path, source)
        assert server.requests_for(HF + "vggsound_00.tar.gz") == []


def test_unknown_source_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['url'\]"):
        vggsound.download(tmp_path / "raw", {"url": "x"})
    assert not (tmp_path / "raw").exists()


def unsafe_member(kind: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo({"absolute": "/tmp/abs_000001.mp4", "symlink": "link_000001.mp4", "hardlink": "hard_000001.mp4",
                            "fifo": "pipe_000001.mp4"}[kind])
    info.type = {"absolute": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = {"symlink": "../../etc/passwd", "hardlink": "ok_000001.mp4"}.get(kind, "")
    return info


@pytest.mark.parametrize("kind", ["absolute", "symlink", "hardlink", "fifo"])
def test_unsafe_members_are_refused_like_download_extract_does(tmp_path, kind):
    archive = tmp_path / "vggsound_05.tar.gz"
    archive.write_bytes(targz([("ok_000001.mp4", b"fine")], links=[unsafe_member(kind)]))
    member = unsafe_member(kind).name
    with pytest.raises(archives.UnsafeArchiveError, match=f"refusing to extract {archive}: member '{member}'"):
        vggsound_download.extract_part(archive, tmp_path / "video" / "vggsound_05")
    assert list((tmp_path / "video").iterdir()) == []


@pytest.mark.parametrize("damage, expected", [
    (lambda data: data[: len(data) // 2], "truncated"),
    (lambda data: flip(data, 0.5), ""),  # zlib or the CRC: either way reported
    (lambda data: data[:-4], "truncated"),  # only the gzip trailer lost: tarfile's 'r|gz' would not notice
])
def test_a_damaged_part_not_known_to_be_corrupt_is_an_error(standin, tmp_path, damage, expected):
    archive = tmp_path / "vggsound_00.tar.gz"
    archive.write_bytes(damage(standin.part00))
    with pytest.raises(archives.ExtractError, match=f"{expected}.*complete members came before it.*corrupt_parts"):
        vggsound_download.extract_part(archive, tmp_path / "video" / "vggsound_00")
    assert list((tmp_path / "video").iterdir()) == []


def test_a_lost_gzip_trailer_keeps_all_members_but_is_recorded(standin, tmp_path):
    archive = tmp_path / "vggsound_00.tar.gz"
    archive.write_bytes(standin.part00[:-4])
    record = vggsound_download.extract_part(archive, tmp_path / "video" / "vggsound_00", tolerate_damage=True)
    assert record["mp4_members"] == 16 and record["complete"] is False and "truncated" in record["damage"]
    assert vggsound_download.extract_part(archive, tmp_path / "video" / "vggsound_00") == record  # done: the marker answers
    with pytest.raises(archives.ExtractError, match="exists without a completion marker"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "unrelated.mp4").write_bytes(b"")
        vggsound_download.extract_part(archive, tmp_path / "other")


# --------------------------------------------------------------------------- catalog and preprocessing


def test_the_catalog_keeps_the_clips_it_has_and_notes_the_rest(downloaded, standin):
    catalog = vggsound.build_catalog(downloaded.raw, "ogm_ge", stand_in_options())
    assert catalog.classes == sorted(CLASS_NAMES) and catalog.dataset == "vggsound"
    extras = [s.name for s in standin.specs if s.part is None]
    assert catalog.notes["missing"] == {"train": 1 + len(standin.lost01), "test": 1, "names": sorted(extras + standin.lost01)}
    assert catalog.notes["rows_beyond_stat_total"] == 2
    assert catalog.notes["classes_beyond_stat_counts"] == {CLASS_NAMES[1]: 1, CLASS_NAMES[2]: 1}
    assert catalog.notes["test_rows_not_in_test_csv"] == ["Y2x0-Xab_cd_000020"]
    assert catalog.notes["ytids_in_train_and_test"]["ytids"] == ["Y1t3-Xab_cd"]
    fold = catalog.folds[1]
    listed_test = [s.name for s in standin.specs if s.split == "test" and s.part is not None]
    assert sorted(fold["test"]) == sorted(listed_test)
    available_train = {s.name for s in standin.specs if s.split == "train" and s.part is not None} - set(standin.lost01)
    assert set(fold["train"]) | set(fold["val"]) == available_train and fold["val"]
    same_video = {"Y0t0-Xab_cd_000005", "Y0t0-Xab_cd_000035"}
    assert same_video <= set(fold["train"]) or same_video <= set(fold["val"])  # grouped by YouTube id
    clip = next(c for c in catalog.clips if c.name == "Y0t0-Xab_cd_000005")
    assert clip.group == "Y0t0-Xab_cd" and clip.label == sorted(CLASS_NAMES).index(CLASS_NAMES[0]) and clip.audio == clip.video
    assert catalog.folds[2] == fold and set(catalog.folds) == {1, 2}
    assert vggsound.build_catalog(downloaded.raw, "ogm_ge", stand_in_options()).folds == catalog.folds  # seeded
    assert vggsound.build_catalog(downloaded.raw, "ogm_ge", stand_in_options(seed=5)).folds[1]["val"] != fold["val"]


def test_more_missing_videos_than_allowed_stop_the_catalog(downloaded):
    with pytest.raises(SplitMismatchError, match=r"(train|test): \d+ of \d+ clips have no media.*max_missing_fraction 10.0%.*vggsound.csv lists them"):
        vggsound.build_catalog(downloaded.raw, "ogm_ge", stand_in_options(max_missing_fraction=0.1))


def test_preprocessing_skips_the_defective_clips_with_their_reason(downloaded, standin, tmp_path):
    catalog = vggsound.build_catalog(downloaded.raw, "ogm_ge", stand_in_options())
    catalog.write(tmp_path / "catalog")
    assert Catalog.read(tmp_path / "catalog").clips == catalog.clips
    index = features.preprocess(tmp_path / "catalog", tmp_path / "store", RECIPE)
    by_name = index.set_index("clip")
    kinds = {s.name: s.kind for s in standin.specs}
    assert by_name.loc[[n for n in by_name.index if kinds[n] == "no_audio"], "skip_kind"].tolist() == ["no_audio"]
    assert by_name.loc[[n for n in by_name.index if kinds[n] == "corrupt"], "skip_kind"].tolist() == ["corrupt"]
    assert not by_name.loc[[n for n in by_name.index if kinds[n] in ("ok", "short")], "skipped"].any()
    assert by_name.loc[[n for n in by_name.index if kinds[n] == "short"], "padded_frames"].tolist() == [1]  # 2 s clip: the 1 fps frames of 0 and 1 s, 2 s repeated
    frames = features.np.load(tmp_path / "store" / "frames.npy", mmap_mode="r")
    spectrograms = features.np.load(tmp_path / "store" / "spectrograms.npy", mmap_mode="r")
    assert frames.shape == (len(catalog.clips), 3, 32, 32, 3)
    assert spectrograms.shape == (len(catalog.clips), 65, 251)  # n_fft 128 -> 65 bins; 2 s at 8 kHz, hop 64, centred -> 251
    kept = pd.read_csv(tmp_path / "store" / "kept_skipped.csv")
    assert kept["listed"].sum() == 2 * len(catalog.clips)  # two folds


def test_an_unknown_protocol_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown protocol 'mlb'; known: \['ogm_ge'\]"):
        vggsound.build_catalog(tmp_path, "mlb", {})


# --------------------------------------------------------------------------- split files and counts


def test_split_files_are_read_in_their_real_formats(tmp_path):
    (tmp_path / "vggsound.csv").write_text('---g-f_I2yQ,1,people marching,test\n-0BKyt8iZ1I,30,"bird chirping, tweeting",train\n\n')
    rows = vggsound.read_vggsound_csv(tmp_path / "vggsound.csv")
    assert [(r.name, r.label, r.split) for r in rows] == [("---g-f_I2yQ_000001", "people marching", "test"),
                                                           ("-0BKyt8iZ1I_000030", "bird chirping, tweeting", "train")]
    (tmp_path / "test.csv").write_text('0_8-g2rof7E_000049.mp4,"heart sounds, heartbeat"\nglLQrEijrKg_000300.mp4,playing hammond organ\n')
    assert vggsound.read_test_csv(tmp_path / "test.csv") == [("0_8-g2rof7E_000049", "heart sounds, heartbeat"),
                                                             ("glLQrEijrKg_000300", "playing hammond organ")]
    (tmp_path / "stat.csv").write_text('"female speech, woman speaking",1050\nair horn,197\n')  # the older two-column form
    assert vggsound.classes(tmp_path, expected=2) == ["air horn", "female speech, woman speaking"]


@pytest.mark.parametrize("line, message", [
    ("abc,1,dog barking", r"vggsound.csv:2: expected 'ytid,start_seconds,label,split'"),
    ("abc,1.5,dog barking,train", r"vggsound.csv:2: start_seconds '1.5' is not a whole number"),
    ("abc,1,dog barking,val", r"vggsound.csv:2: split 'val' is neither train nor test"),
])
def test_a_bad_vggsound_row_is_named_with_file_and_line(tmp_path, line, message):
    (tmp_path / "vggsound.csv").write_text(f"xyz,2,dog barking,train\n{line}\n")
    with pytest.raises(ValueError, match=message):
        vggsound.read_vggsound_csv(tmp_path / "vggsound.csv")


def test_the_class_list_is_stat_csv_sorted():
    assert len(vggsound.CLASSES) == 309 and list(vggsound.CLASSES) == sorted(vggsound.CLASSES)
    assert vggsound.CLASSES[:5] == ("air conditioning noise", "air horn", "airplane", "airplane flyby", "alarm clock ringing")
    assert "bird chirping, tweeting" in vggsound.CLASSES and vggsound.CLASSES[-1] == "zebra braying"


def write_full_size_lists(raw: Path) -> tuple[list[str], list[str]]:
    """Split lists with the real sizes (synthetic ids): vggsound.csv 183,971 train + 15,496 test rows,
    test.csv 15,446 rows, stat.csv 309 classes summing to 199,176 (hche11/VGGSound data/, issue #19)."""
    names = list(reversed(vggsound.CLASSES))  # stat.csv is not in sorted order
    counts = [644 + (i < 180) for i in range(309)]  # 199,176 in all
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "stat.csv").write_text(csv_text([n, c, "others"] for n, c in zip(names, counts)))
    rows = [[f"{i:011d}", i % 600, names[i % 309], "train" if i < 183_971 else "test"] for i in range(199_467)]
    vggsound_lines = csv_text(rows).splitlines(keepends=True)
    test_lines = csv_text([f"{r[0]}_{r[1]:06d}.mp4", r[2]] for r in rows[183_971:183_971 + 15_446]).splitlines(keepends=True)
    (raw / "vggsound.csv").write_text("".join(vggsound_lines))
    (raw / "test.csv").write_text("".join(test_lines))
    return vggsound_lines, test_lines


def test_full_size_lists_reproduce_the_published_counts(tmp_path):
    vggsound_lines, test_lines = write_full_size_lists(tmp_path)
    names = vggsound.classes(tmp_path)
    assert names == list(vggsound.CLASSES)
    rows, notes = vggsound.check_split_files(tmp_path, names)
    assert len(rows) == 199_467 and sum(r.split == "train" for r in rows) == 183_971
    assert notes["rows_beyond_stat_total"] == 291 and len(notes["test_rows_not_in_test_csv"]) == 50
    assert notes["test_csv_rows_not_in_vggsound_csv"] == [] and notes["test_label_disagreements"] == []

    (tmp_path / "vggsound.csv").write_text("".join(vggsound_lines[1:]))
    with pytest.raises(SplitMismatchError, match=r"vggsound.csv does not hold the published split \(rows: 199466 .*train: 183970"):
        vggsound.check_split_files(tmp_path, names)
    (tmp_path / "vggsound.csv").write_text("".join(vggsound_lines))
    (tmp_path / "test.csv").write_text("".join(test_lines[:-1]))
    with pytest.raises(SplitMismatchError, match=r"test.csv does not hold the published split \(rows: 15445"):
        vggsound.check_split_files(tmp_path, names)


def test_a_stat_csv_without_309_classes_is_an_error(tmp_path):
    write_full_size_lists(tmp_path)
    lines = (tmp_path / "stat.csv").read_text().splitlines(keepends=True)
    (tmp_path / "stat.csv").write_text("".join(lines[1:]))
    with pytest.raises(SplitMismatchError, match=r"stat.csv lists 308 classes where VGGSound has 309"):
        vggsound.classes(tmp_path)
    (tmp_path / "stat.csv").write_text("".join(lines[1:]) + "people yodelling loudly,12,people\n")
    with pytest.raises(SplitMismatchError, match=r"missing \['zebra braying'\], unknown \['people yodelling loudly'\]"):
        vggsound.classes(tmp_path)


def test_validation_takes_a_seeded_tenth_of_each_class_by_youtube_id():
    from mmbalance.data.catalog import Clip

    clips = [Clip(f"v{c}_{g:03d}_{k:06d}", c, f"v{c}_{g:03d}", Path("x.mp4"), Path("x.mp4"))
             for c in range(5) for g in range(40 + 10 * c) for k in range(1 + (g % 3 == 0))]
    val = vggsound.validation_clips(clips, 0.1, seed=1)
    groups = {c.name: c.group for c in clips}
    chosen = {groups[n] for n in val}
    assert all({c.name for c in clips if c.group == g} <= set(val) for g in chosen)  # whole videos
    per_class = {label: sum(1 for g in chosen if g.startswith(f"v{label}_")) for label in range(5)}
    assert per_class == {c: round(0.1 * (40 + 10 * c)) for c in range(5)}
    assert vggsound.validation_clips(clips, 0.1, seed=1) == val and vggsound.validation_clips(clips, 0.1, seed=2) != val


def test_published_part_values_are_well_formed():
    assert len(vggsound_download.PARTS) == 20 and "vggsound_14.tar.gz" not in vggsound_download.PUBLISHED
    assert all(len(v["sha256"]) == 64 and int(v["sha256"], 16) >= 0 for v in vggsound_download.PUBLISHED.values())
    assert sum(v["size"] is not None for v in vggsound_download.PUBLISHED.values()) == 12
