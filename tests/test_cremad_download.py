"""CREMA-D from download to feature store, offline: a stand-in of the GitHub
repository zip (Git LFS pointers in place of media), two media mirrors and the
split files, all served from a loopback server."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from conftest import TINY_PREPROCESSING
from http_server import FileServer
from standins import lfs_pointer

from mmbalance.data import recipes
from mmbalance.data.catalog import Catalog, SplitMismatchError
from mmbalance.data.datasets import cremad
from mmbalance.data.fetching import http
from mmbalance.data.store import features

COMMIT_FOLDER = f"CREMA-D-{cremad.REPOSITORY_COMMIT}"


@pytest.fixture
def standin(tiny_raw, tmp_path):
    """Media of the tiny generated CREMA-D tree, its repository zip of pointers,
    OGM-GE split files (CRLF, no header) and an MLB fold json."""
    media = {}
    for folder, suffix in cremad.MEDIA_FOLDERS.items():
        for path in sorted((tiny_raw / folder).glob(f"*{suffix}")):
            if not path.read_bytes().startswith(b"version https://git-lfs"):  # the generated stub has no media to serve
                media[f"{folder}/{path.name}"] = path.read_bytes()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as repo:
        for path, data in media.items():
            repo.writestr(f"{COMMIT_FOLDER}/{path}", lfs_pointer(data))
        repo.writestr(f"{COMMIT_FOLDER}/processedResults/summaryTable.csv", (tiny_raw / "processedResults" / "summaryTable.csv").read_text())
    names = sorted(p[len("AudioWAV/"):-4] for p in media if p.startswith("AudioWAV/"))
    test = [n for n in names if n.startswith("1001")]
    train = [n for n in names if n not in test]
    folds = json.loads((tiny_raw / "data_splits.json").read_text())
    return {
        "media": media,
        "zip": archive.getvalue(),
        "train.csv": "".join(f"{n},{n.split('_')[2]}\r\n" for n in train).encode(),
        "test.csv": "".join(f"{n},{n.split('_')[2]}\r\n" for n in test).encode(),
        "folds.json": json.dumps(folds).encode(),
        "names": names,
    }


def serve(srv: FileServer, standin: dict, broken: dict | None = None) -> dict:
    """Routes for everything; `broken` maps a media path to {mirror: route settings}."""
    broken = broken or {}
    for path, data in standin["media"].items():
        for mirror in ("gitlab", "github"):
            srv.add(f"/{mirror}/{path}", **({"body": data} | broken.get(path, {}).get(mirror, {})))
    return {
        "pointers": [srv.add("/repo.zip", body=standin["zip"])],
        "media_mirrors": [srv.url("/gitlab/{path}"), srv.url("/github/{path}")],
        "ogm_train": [srv.add("/ogm/train.csv", body=standin["train.csv"])],
        "ogm_test": [srv.add("/ogm/test.csv", body=standin["test.csv"])],
        "mlb_folds": [srv.add("/mlb/data_splits_VALV.pkl", body=standin["folds.json"])],
        "retries": 1,
        "backoff": 0,
    }


def test_download_verifies_every_file_against_its_pointer(standin, tmp_path):
    stub_path = next(p for p in standin["media"] if p.startswith("AudioWAV/"))
    stub = lfs_pointer(standin["media"][stub_path]).encode()
    with FileServer() as srv:
        # The first mirror answers one file with its pointer stub (an exhausted LFS budget).
        source = serve(srv, standin, {stub_path: {"gitlab": {"body": stub}}})
        record = cremad.download(tmp_path / "raw", source, workers=4)
    raw = tmp_path / "raw"
    assert record["media_files"] == len(standin["media"])
    for path, data in standin["media"].items():
        assert (raw / path).read_bytes() == data
    assert (raw / "splits" / "train.csv").read_bytes() == standin["train.csv"]
    assert (raw / "processedResults" / "summaryTable.csv").exists()
    assert len(srv.requests_for(f"/github/{stub_path}")) == 1  # fell through to the second mirror


def test_interrupted_download_resumes_and_verified_files_are_not_fetched_again(standin, tmp_path):
    path = next(p for p in standin["media"] if p.startswith("VideoFlash/"))
    with FileServer() as srv:
        # Both mirrors break off the same file every time within this call.
        broken = {path: {m: {"drop_after": 100, "drop_times": 100} for m in ("gitlab", "github")}}
        source = serve(srv, standin, broken) | {}
        with pytest.raises(http.DownloadError) as error:
            cremad.download(tmp_path / "raw", source, workers=2)
        assert f"1 of {len(standin['media'])} media files" in str(error.value) and path in str(error.value)
        assert (tmp_path / "raw" / f"{path}.part").stat().st_size >= 100
        first = {p: len(srv.requests_for(f"/gitlab/{p}")) for p in standin["media"]}
        srv.routes[f"/gitlab/{path}"].drop_times = 0  # the mirror recovers
        cremad.download(tmp_path / "raw", source, workers=2)
        again = {p: len(srv.requests_for(f"/gitlab/{p}")) - first[p] for p in standin["media"]}
    assert again[path] == 1 and srv.requests_for(f"/gitlab/{path}")[-1]["range"].startswith("bytes=")
    assert sum(again.values()) == 1  # every verified file was kept
    assert (tmp_path / "raw" / path).read_bytes() == standin["media"][path]


def test_checksum_mismatch_names_the_file_and_both_hashes(standin, tmp_path):
    path = next(p for p in standin["media"] if p.startswith("AudioWAV/"))
    corrupt = bytearray(standin["media"][path])
    corrupt[len(corrupt) // 2] ^= 0xFF
    with FileServer() as srv:
        source = serve(srv, standin, {path: {m: {"body": bytes(corrupt)} for m in ("gitlab", "github")}})
        with pytest.raises(http.DownloadError) as error:
            cremad.download(tmp_path / "raw", source, workers=2)
    message = str(error.value)
    assert path in message and "sha256" in message and http.file_digest(tmp_path / "raw" / f"{path}.corrupt") in message
    assert not (tmp_path / "raw" / path).exists()


def test_a_zip_of_media_instead_of_pointers_is_refused(tmp_path):
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "VideoFlash").mkdir()
    (tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav").write_bytes(b"RIFF....WAVEfmt ")
    (tmp_path / "VideoFlash" / "1001_DFA_ANG_XX.flv").write_text(lfs_pointer(b"x"))
    with pytest.raises(ValueError, match=r"1001_DFA_ANG_XX.wav: not a Git LFS pointer"):
        cremad.read_pointers(tmp_path)


@pytest.fixture
def downloaded(standin, tmp_path):
    with FileServer() as srv:
        cremad.download(tmp_path / "raw", serve(srv, standin), workers=4)
    return tmp_path / "raw"


def test_ogm_protocol_catalog_and_store(downloaded, standin, tmp_path, monkeypatch):
    n_train, n_test = len(standin["names"]) - 6, 6
    monkeypatch.setitem(cremad.EXPECTED_COUNTS, "ogm", {1: (n_train, None, n_test)})
    catalog = cremad.build_catalog(downloaded, "ogm", {"folds": 3, "seed": 1, "val_fraction": 0.2})
    assert sorted(catalog.folds) == [1, 2, 3] and catalog.folds[2] == catalog.folds[1]
    assert len(catalog.folds[1]["val"]) == 6  # a fifth of 30 train clips: one per emotion
    assert {n[:4] for n in catalog.folds[1]["test"]} == {"1001"}
    catalog.write(tmp_path / "catalog")
    index = features.preprocess(tmp_path / "catalog", tmp_path / "store", recipes.resolve(TINY_PREPROCESSING))
    skipped = index[index["skipped"]]
    # The generated tree's last FLV is a pointer stub with no media behind it, so
    # the repository has no pointer for it and the clip's video is missing: a logged skip.
    assert skipped["skip_kind"].tolist() == ["missing"]
    report = (tmp_path / "store" / "kept_skipped.csv").read_text()
    assert report.splitlines()[0] == "fold,split,class_name,listed,kept,skipped_missing"
    assert Catalog.read(tmp_path / "catalog").notes["validation"].startswith("stratified 20%")


def test_mlb_protocol_refuses_a_split_file_of_other_sizes(downloaded):
    with pytest.raises(SplitMismatchError, match=r"data_splits_VALV.json \(mlb protocol\) does not hold the published split \(fold 1 train/val/test: "):
        cremad.build_catalog(downloaded, "mlb", {})


def test_a_listed_clip_without_its_wav_is_named(downloaded, standin, monkeypatch):
    monkeypatch.setitem(cremad.EXPECTED_COUNTS, "mlb", {})
    name = standin["names"][0]
    (downloaded / "AudioWAV" / f"{name}.wav").unlink()
    with pytest.raises(FileNotFoundError, match=f"data_splits_VALV.json: 1 of \\d+ clips have no media .*{name}.* under .*AudioWAV"):
        cremad.build_catalog(downloaded, "mlb", {})


def test_unknown_protocol_is_named(downloaded):
    with pytest.raises(ValueError, match="no protocol 'vavl'; known: generated, mlb, ogm"):
        cremad.build_catalog(downloaded, "vavl", {})
