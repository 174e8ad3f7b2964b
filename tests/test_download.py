"""Downloads against a misbehaving loopback server, and safe archive extraction.

Everything runs offline: HTTP goes to ``http_server.FileServer`` on
127.0.0.1, archives are built here. RAR archives are written byte by byte
(RAR 4 layout, stored members) because no free tool can create them; the RAR
extraction tests run once per installed reader (unrar, unar, bsdtar, 7z) and
are skipped only when none of them is installed (Debian: unar or
libarchive-tools). The "no tool" error is tested everywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from http_server import FileServer
from standins import rar4

import mmbalance.data.fetching.archives as archives_module
from mmbalance.data.fetching.archives import ExtractError, MissingToolError, UnsafeArchiveError, extract
from mmbalance.data.fetching.http import ChecksumError, DownloadError, NotMediaError, download

BODY = bytes(range(256)) * 1200 + b"tail"  # 307,204 bytes, more than one read chunk
SHA = hashlib.sha256(BODY).hexdigest()
FAST = {"timeout": 5, "backoff": 0}
LFS_STUB = (b"version https://git-lfs.github.com/spec/v1\n"
            b"oid sha256:10dc3fd1f2bc8203657431598bd7dc9312462008f93d08fda786043ae6a8d2f4\n"
            b"size 265922\n")
HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head>"
             b"<body>Google Drive can't scan this file for viruses.</body></html>")


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


# --------------------------------------------------------------------------- download


def test_download_verifies_and_renames(server, tmp_path):
    url = server.add("/data.bin", body=BODY)
    dest = tmp_path / "sub" / "data.bin"
    assert download([url], dest, size=len(BODY), sha256=SHA, **FAST) == dest
    assert dest.read_bytes() == BODY
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data.bin"]  # no .part left
    assert server.requests_for("/data.bin")[0]["range"] is None


def test_existing_verified_file_is_not_downloaded_again(server, tmp_path):
    url = server.add("/data.bin", body=BODY)
    dest = tmp_path / "data.bin"
    dest.write_bytes(BODY)
    download([url], dest, sha256=SHA, **FAST)
    assert server.requests_for("/data.bin") == []


def test_existing_wrong_file_is_kept_aside_and_replaced(server, tmp_path):
    url = server.add("/data.bin", body=BODY)
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale copy")
    download([url], dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == BODY
    assert (tmp_path / "data.bin.corrupt").read_bytes() == b"stale copy"


def test_interrupted_download_resumes_on_next_call(server, tmp_path):
    url = server.add("/data.bin", body=BODY, drop_after=100_000)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError) as info:
        download([url], dest, sha256=SHA, retries=0, **FAST)
    assert "100000 of 307204 bytes" in str(info.value) and url in str(info.value)
    assert (tmp_path / "data.bin.part").stat().st_size == 100_000
    assert not dest.exists()

    download([url], dest, sha256=SHA, retries=0, **FAST)
    assert [r["range"] for r in server.requests_for("/data.bin")] == [None, "bytes=100000-"]
    assert dest.read_bytes() == BODY


def test_interruption_is_retried_within_one_call(server, tmp_path):
    url = server.add("/data.bin", body=BODY, drop_after=50_000, drop_times=2)
    dest = tmp_path / "data.bin"
    download([url], dest, size=len(BODY), sha256=SHA, retries=2, **FAST)
    assert [r["range"] for r in server.requests_for("/data.bin")] == [None, "bytes=50000-", "bytes=100000-"]
    assert dest.read_bytes() == BODY


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = server.add("/data.bin", body=BODY, drop_after=70_000, ignore_range=True)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError):
        download([url], dest, retries=0, **FAST)
    download([url], dest, sha256=SHA, retries=0, **FAST)
    assert server.requests_for("/data.bin")[1]["range"] == "bytes=70000-"
    assert dest.read_bytes() == BODY  # not the 70,000-byte prefix plus the whole body


def test_range_rejected_with_416_restarts_from_zero(server, tmp_path):
    url = server.add("/data.bin", body=BODY)
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"x" * (len(BODY) + 10))  # longer than the file
    download([url], dest, sha256=SHA, retries=0, **FAST)
    assert [r["range"] for r in server.requests_for("/data.bin")] == [f"bytes={len(BODY) + 10}-", None]
    assert dest.read_bytes() == BODY


def test_complete_partial_file_is_only_verified(server, tmp_path):
    url = server.add("/data.bin", body=BODY)
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(BODY)  # a crash after the last byte, before the rename
    download([url], dest, sha256=SHA, retries=0, **FAST)
    assert [r["range"] for r in server.requests_for("/data.bin")] == [f"bytes={len(BODY)}-"]
    assert dest.read_bytes() == BODY


def test_server_errors_are_retried(server, tmp_path):
    url = server.add("/data.bin", body=BODY, fail_first=2)
    dest = tmp_path / "data.bin"
    download([url], dest, sha256=SHA, retries=2, **FAST)
    assert len(server.requests_for("/data.bin")) == 3
    assert dest.read_bytes() == BODY


def test_spent_retries_move_on_to_next_mirror(server, tmp_path):
    broken = server.add("/a/data.bin", body=BODY, fail_first=100)
    good = server.add("/b/data.bin", body=BODY)
    dest = tmp_path / "data.bin"
    download([broken, good], dest, sha256=SHA, retries=2, **FAST)
    assert len(server.requests_for("/a/data.bin")) == 3
    assert dest.read_bytes() == BODY


def test_404_falls_back_to_second_mirror_without_retrying(server, tmp_path):
    missing = server.add("/a/data.bin", status=404)
    good = server.add("/b/data.bin", body=BODY)
    dest = tmp_path / "data.bin"
    download([missing, good], dest, sha256=SHA, retries=3, **FAST)
    assert len(server.requests_for("/a/data.bin")) == 1
    assert dest.read_bytes() == BODY


def test_every_mirror_failing_names_each_url(server, tmp_path):
    first = server.add("/a/data.bin", status=404)
    second = server.add("/b/data.bin", status=403)
    with pytest.raises(DownloadError) as info:
        download([first, second], tmp_path / "data.bin", retries=0, **FAST)
    message = str(info.value)
    assert f"{first}: HTTP 404" in message and f"{second}: HTTP 403" in message
    assert not (tmp_path / "data.bin").exists()


def test_resume_survives_a_redirect(server, tmp_path):
    url = server.add("/resolve/data.bin", redirect_to="/cdn/data.bin")
    server.add("/cdn/data.bin", body=BODY, drop_after=120_000)
    dest = tmp_path / "data.bin"
    download([url], dest, sha256=SHA, retries=1, **FAST)
    assert [r["range"] for r in server.requests_for("/cdn/data.bin")] == [None, "bytes=120000-"]
    assert dest.read_bytes() == BODY


def test_lfs_pointer_stub_is_refused(server, tmp_path):
    url = server.add("/VideoFlash/1001_DFA_ANG_XX.flv", body=LFS_STUB, content_type="text/plain")
    dest = tmp_path / "1001_DFA_ANG_XX.flv"
    with pytest.raises(NotMediaError) as info:
        download([url], dest, **FAST)
    message = str(info.value)
    assert url in message and "Git LFS pointer stub" in message and "git lfs pull" in message
    assert "265922" in message
    assert list(tmp_path.iterdir()) == []


def test_html_error_page_is_refused(server, tmp_path):
    url = server.add("/uc?id=AVE", body=HTML_PAGE, content_type="text/html; charset=utf-8")
    dest = tmp_path / "AVE_Dataset.zip"
    with pytest.raises(NotMediaError) as info:
        download([url], dest, **FAST)
    message = str(info.value)
    assert url in message and "HTML page" in message and "Virus scan warning" in message
    assert "login, quota, error or confirmation page" in message
    assert list(tmp_path.iterdir()) == []


def test_html_content_type_alone_is_refused_unless_sniffing_is_off(server, tmp_path):
    url = server.add("/page", body=b"<h1>Quota exceeded</h1>", content_type="text/html")
    with pytest.raises(NotMediaError, match="HTML page"):
        download([url], tmp_path / "clip.mp4", **FAST)
    download([url], tmp_path / "page.html", sniff=False, **FAST)
    assert (tmp_path / "page.html").read_bytes() == b"<h1>Quota exceeded</h1>"


def test_checksum_mismatch_keeps_bad_file_and_names_everything(server, tmp_path):
    served = BODY[:-1] + b"X"  # one corrupted byte
    url = server.add("/data.bin", body=served)
    dest = tmp_path / "data.bin"
    with pytest.raises(ChecksumError) as info:
        download([url], dest, sha256=SHA, **FAST)
    actual = hashlib.sha256(served).hexdigest()
    message = str(info.value)
    assert url in message and str(dest) in message
    assert f"expected {SHA}" in message and f"actual {actual}" in message
    assert (info.value.expected, info.value.actual) == (SHA, actual)
    assert (tmp_path / "data.bin.corrupt").read_bytes() == served
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()


def test_md5_is_checked_too(server, tmp_path):
    url = server.add("/data.bin", body=BODY)
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        download([url], tmp_path / "bad.bin", md5="0" * 32, **FAST)
    download([url], tmp_path / "good.bin", md5=hashlib.md5(BODY).hexdigest(), **FAST)
    assert (tmp_path / "good.bin").read_bytes() == BODY


def test_announced_size_mismatch_fails_before_downloading(server, tmp_path):
    url = server.add("/data.bin", body=BODY)
    with pytest.raises(DownloadError, match=f"announces {len(BODY)} bytes but 1000 are expected"):
        download([url], tmp_path / "data.bin", size=1000, **FAST)
    assert not (tmp_path / "data.bin.part").exists()


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="64 hex digits"):
        download(["http://127.0.0.1:9/x"], tmp_path / "x", sha256="abc")
    with pytest.raises(ValueError, match="at least one URL"):
        download([], tmp_path / "x")


# --------------------------------------------------------------------------- archives


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """Members are (name, data, symlink target); data None and target set makes a symlink."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def assert_nothing_written(root: Path, target: Path) -> None:
    """No target, no leftover staging directory, no escaped file anywhere under ``root``.

    Only the (empty) parent folders of the target may have been created.
    """
    assert not target.exists()
    parents = {p.relative_to(root).as_posix() for p in target.parents if p.is_relative_to(root)}
    written = [p.relative_to(root).as_posix() for p in root.rglob("*")]
    assert [p for p in written if not p.startswith("archives") and p not in parents] == []


@pytest.fixture
def archives(tmp_path):
    folder = tmp_path / "archives"
    folder.mkdir()
    return folder


def test_zip_extracts_and_second_call_skips(tmp_path, archives):
    archive = make_zip(archives / "AVE_Dataset.zip",
                       {"AVE/-0A9suni5YA.mp4": b"video", "Annotations.txt": b"Category&ID\n"})
    target = tmp_path / "out" / "ave"
    extract(archive, target)
    assert (target / "AVE" / "-0A9suni5YA.mp4").read_bytes() == b"video"
    assert (target / "Annotations.txt").read_bytes() == b"Category&ID\n"
    assert '"archive": "AVE_Dataset.zip"' in (target / archives_module.MARKER).read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["ave"]  # staging dir renamed away

    (target / "Annotations.txt").write_bytes(b"edited")
    extract(archive, target)  # marker present: nothing is rewritten
    assert (target / "Annotations.txt").read_bytes() == b"edited"


def test_tar_gz_extracts_with_inside_symlink(tmp_path, archives):
    archive = make_tar(archives / "part_0.tar.gz", [
        ("train/abc_000010_000020.mp4", b"clip", None),
        ("latest", None, "train/abc_000010_000020.mp4"),
    ])
    target = tmp_path / "out" / "k400"
    extract(archive, target)
    assert (target / "train" / "abc_000010_000020.mp4").read_bytes() == b"clip"
    assert (target / "latest").is_symlink() and (target / "latest").read_bytes() == b"clip"


@pytest.mark.parametrize("member", ["../escape.txt", "data/../../escape.txt", "/tmp/abs_escape.txt"])
def test_zip_with_escaping_member_is_refused(tmp_path, archives, member):
    archive = make_zip(archives / "evil.zip", {"ok.txt": b"fine", member: b"bad"})
    target = tmp_path / "out" / "data"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert str(archive) in str(info.value) and repr(member) in str(info.value)
    assert_nothing_written(tmp_path, target)
    assert not Path("/tmp/abs_escape.txt").exists()


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/abs_escape.txt"])
def test_tar_with_escaping_member_is_refused(tmp_path, archives, member):
    archive = make_tar(archives / "evil.tar.gz", [("ok.txt", b"fine", None), (member, b"bad", None)])
    target = tmp_path / "out" / "data"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert str(archive) in str(info.value) and repr(member) in str(info.value)
    assert_nothing_written(tmp_path, target)


@pytest.mark.parametrize("members, culprit", [
    ([("etc", None, "../../etc")], "etc"),
    ([("abs", None, "/etc/passwd")], "abs"),
    ([("here", None, "."), ("up", None, "here/..")], "up"),  # escapes only via another link
    ([("dir", None, ".."), ("dir/escape.txt", b"bad", None)], "dir"),
])
def test_tar_symlink_leading_outside_is_refused(tmp_path, archives, members, culprit):
    archive = make_tar(archives / "links.tar.gz", [("ok.txt", b"fine", None), *members])
    target = tmp_path / "out" / "data"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert f"member {culprit!r}" in str(info.value) and "links.tar.gz" in str(info.value)
    assert_nothing_written(tmp_path, target)


def test_tar_hardlink_to_outside_is_refused(tmp_path, archives):
    archive = archives / "hard.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("passwd")
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="member 'passwd' has a hard link target '/etc/passwd' is an absolute path"):
        extract(archive, tmp_path / "out" / "data")
    assert_nothing_written(tmp_path, tmp_path / "out" / "data")


def test_truncated_archive_fails_cleanly(tmp_path, archives):
    whole = make_tar(archives / "whole.tar.gz", [(f"clip{i}.mp4", os.urandom(20_000), None) for i in range(5)])
    broken = archives / "vggsound_08.tar.gz"
    broken.write_bytes(whole.read_bytes()[:40_000])
    target = tmp_path / "out" / "vgg"
    with pytest.raises(ExtractError, match="vggsound_08.tar.gz.*truncated or corrupt"):
        extract(broken, target)
    assert_nothing_written(tmp_path, target)


def test_stub_in_place_of_archive_is_refused(tmp_path, archives):
    stub = archives / "UCF101.rar"
    stub.write_bytes(LFS_STUB)
    with pytest.raises(NotMediaError, match="UCF101.rar: received a Git LFS pointer stub"):
        extract(stub, tmp_path / "out" / "ucf")


def test_non_empty_target_without_marker_is_refused(tmp_path, archives):
    archive = make_zip(archives / "a.zip", {"x.txt": b"x"})
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(ExtractError, match="already exists without a completion marker"):
        extract(archive, target)
    assert sorted(p.name for p in target.iterdir()) == ["mine.txt"]


def test_streamed_tar_gz_is_flat_and_counts_in_the_marker(tmp_path, archives):
    archive = make_tar(archives / "part.tar.gz", [("a/one.mp4", b"1", None), ("b/one.mp4", b"dup", None),
                                                  ("b/two.mp4", b"2", None), ("notes.txt", b"n", None)])
    target = tmp_path / "out" / "part"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".part.x1.extracting").mkdir()  # left by an interrupted run: removed
    extract(archive, target, stream=True, keep_only=".mp4", record={"sha256": "ab"})
    assert sorted(p.name for p in target.iterdir()) == [archives_module.MARKER, "one.mp4", "two.mp4"]
    assert (target / "one.mp4").read_bytes() == b"1"  # the first of a repeated name wins
    record = archives_module.extraction_record(target)
    assert {k: record[k] for k in ("archive", "sha256", "mp4_members", "other_members_skipped",
                                   "duplicate_members_skipped", "complete", "damage")} == {
        "archive": "part.tar.gz", "sha256": "ab", "mp4_members": 2, "other_members_skipped": 1,
        "duplicate_members_skipped": 1, "complete": True, "damage": None}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part"]


def test_streamed_damage_is_an_error_or_kept_up_to_it(tmp_path, archives):
    whole = make_tar(archives / "whole.tar.gz", [(f"clip{i}.mp4", os.urandom(20_000), None) for i in range(5)])
    broken = archives / "broken.tar.gz"
    broken.write_bytes(whole.read_bytes()[:-4])  # the gzip trailer lost: every member is whole
    with pytest.raises(archives_module.DamagedArchiveError, match="truncated.*5 complete members came before it"):
        extract(broken, tmp_path / "out" / "a", stream=True)
    assert not (tmp_path / "out" / "a").exists()
    extract(broken, tmp_path / "out" / "b", stream=True, tolerate_damage=True)
    record = archives_module.extraction_record(tmp_path / "out" / "b")
    assert record["members"] == 5 and record["complete"] is False and "truncated" in record["damage"]


def test_streamed_links_are_refused(tmp_path, archives):
    archive = make_tar(archives / "links.tar.gz", [("ok.mp4", b"fine", None), ("inside", None, "ok.mp4")])
    with pytest.raises(UnsafeArchiveError, match="member 'inside' is a link to 'ok.mp4'"):
        extract(archive, tmp_path / "out" / "links", stream=True)
    assert not (tmp_path / "out" / "links").exists()


def test_stream_options_need_stream(tmp_path, archives):
    archive = make_tar(archives / "a.tar.gz", [("ok.mp4", b"fine", None)])
    with pytest.raises(ValueError, match="stream=True"):
        extract(archive, tmp_path / "out", keep_only=".mp4")


# --- rar


FILE, LINK = stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777
INSTALLED_RAR_TOOLS = archives_module.installed_rar_tools()


@pytest.fixture(params=INSTALLED_RAR_TOOLS or ["none"])
def rar_tool(request, monkeypatch):
    """Run a RAR test once per installed reader, each forced in turn."""
    if request.param == "none":
        pytest.skip("no RAR reader installed (apt-get install unar or libarchive-tools)")
    monkeypatch.setattr(archives_module, "RAR_TOOLS", (request.param,))
    return request.param


def test_rar_extracts(tmp_path, archives, rar_tool):
    archive = archives / "UCF101.rar"
    archive.write_bytes(rar4([("UCF-101/YoYo/v_YoYo_g01_c01.avi", b"avi-bytes", FILE),
                              ("UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi", b"more", FILE)]))
    target = tmp_path / "out" / "ucf101"
    extract(archive, target)
    assert (target / "UCF-101" / "YoYo" / "v_YoYo_g01_c01.avi").read_bytes() == b"avi-bytes"
    assert (target / "UCF-101" / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi").read_bytes() == b"more"
    assert (target / archives_module.MARKER).is_file()


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/abs_escape_rar.txt"])
def test_rar_with_escaping_member_is_refused(tmp_path, archives, rar_tool, member):
    archive = archives / "evil.rar"
    archive.write_bytes(rar4([("ok.txt", b"fine", FILE), (member, b"bad", FILE)]))
    target = tmp_path / "out" / "data"
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert repr(member) in str(info.value) and "evil.rar" in str(info.value)
    assert_nothing_written(tmp_path, target)
    assert not Path("/tmp/abs_escape_rar.txt").exists()


def test_rar_symlink_leading_outside_is_refused(tmp_path, archives, rar_tool):
    archive = archives / "links.rar"
    archive.write_bytes(rar4([("ok.txt", b"fine", FILE), ("etc", b"../../etc", LINK)]))
    target = tmp_path / "out" / "data"
    with pytest.raises(UnsafeArchiveError, match="member 'etc' is a symlink"):
        extract(archive, target)
    assert_nothing_written(tmp_path, target)


def test_missing_rar_tool_names_debian_packages(tmp_path, archives, monkeypatch):
    archive = archives / "UCF101.rar"
    archive.write_bytes(rar4([("a.txt", b"a", FILE)]))
    monkeypatch.setattr(archives_module.shutil, "which", lambda name: None)
    with pytest.raises(MissingToolError) as info:
        extract(archive, tmp_path / "out" / "ucf")
    message = str(info.value)
    assert "UCF101.rar" in message and "apt-get install unar" in message and "libarchive-tools" in message
    assert_nothing_written(tmp_path, tmp_path / "out" / "ucf")
