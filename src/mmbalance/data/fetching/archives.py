"""Safe archive extraction: zip, tar (optionally streamed with a gzip check) and rar.

One entry point, ``extract``. Every archive is unpacked into a private staging
folder beside the target, checked, and renamed into place with a marker
(``.extracted.json``) only when complete, so a Snakemake rule never takes a
half-extracted folder for a finished one. Members that would land, or point,
outside the target are refused (``UnsafeArchiveError``, naming the archive and
the member). UCF101 ships as a RAR archive, which needs an external program
(``installed_rar_tools``); VGGSound's Hugging Face parts are .tar.gz files of
17 GB, one of them damaged at the source, which the streamed mode reads in a
single pass and can keep up to the damage.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mmbalance.data.fetching.gzip_stream import CHUNK, CheckedGzipReader, GzipDamage
from mmbalance.data.fetching.http import NotMediaError, read_head, stand_in_description

log = logging.getLogger(__name__)

MARKER = ".extracted.json"
# Tried in this order: the reference implementation first, then the free ones.
RAR_TOOLS = ("unrar", "unar", "bsdtar", "7z", "7zz")
RAR_PACKAGES = (
    "apt-get install unar (free, recommended), or libarchive-tools (bsdtar), "
    "or unrar (non-free), or 7zip with 7zip-rar (non-free)"
)


class ExtractError(RuntimeError):
    """An archive could not be extracted; the message names the archive."""


class UnsafeArchiveError(ExtractError):
    """A member would land outside the target directory; names archive and member."""


class MissingToolError(ExtractError):
    """No external program that can read this archive type is installed."""


class DamagedArchiveError(ExtractError):
    """A streamed archive is truncated or corrupt; says how many members came before the damage."""


@dataclass(frozen=True)
class _Member:
    """What the safety check needs to know about one archive member."""

    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | special
    link: str | None = None


def extract(archive: Path, target_dir: Path, *, stream: bool = False, keep_only: str | None = None,
            tolerate_damage: bool = False, record: dict | None = None) -> Path:
    """Unpack a zip, tar (.tar, .tar.gz/.tgz, .bz2, .xz) or rar archive into ``target_dir``.

    Every member is checked before anything is written: absolute paths,
    ``..`` components, links leading outside and special files are refused
    with ``UnsafeArchiveError``. (For RAR only the names can be listed
    reliably; links are checked in the staging directory before it becomes
    ``target_dir``.) A truncated or corrupt archive raises ``ExtractError``
    and leaves nothing behind. The archive is unpacked into a temporary
    sibling of ``target_dir`` that is renamed into place only when complete,
    together with a marker (``.extracted.json``); a later call that finds the
    marker returns at once. ``target_dir`` belongs to one archive.

    ``stream=True`` reads a .tar.gz in one pass instead of listing it first
    (which would decompress 17 GB twice), through ``CheckedGzipReader``.
    Members are checked as they arrive; a link cannot be checked against
    members not yet read, so links are refused. The result is flat: each
    regular member whose name ends with ``keep_only`` (every one when None) is
    written under its file name, a repeated name keeps its first copy, and the
    marker counts what was kept and skipped (``<suffix>_members``, e.g.
    ``mp4_members``). Damage raises ``DamagedArchiveError``; with
    ``tolerate_damage`` the members before it are kept and the marker says
    ``complete: false`` and what the damage was.

    ``record`` adds fields to the marker (e.g. the checksums the archive was
    verified against); they override the defaults ``archive`` and ``size``.
    """
    archive, target = Path(archive), Path(target_dir)
    if not stream and (keep_only is not None or tolerate_damage):
        raise ValueError("keep_only and tolerate_damage apply to a streamed extraction (stream=True)")
    if _already_extracted(archive, target):
        log.info("%s already extracted into %s; skipping", archive, target)
        return target
    _require_free_target(archive, target)
    if stream:
        _require_archive_file(archive)
        unpack = functools.partial(_stream_tar, keep_only=keep_only, tolerate_damage=tolerate_damage)
    else:
        check, unpack = _HANDLERS[_archive_kind(archive)]
        check(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.extracting"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted extraction into this target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        counts = unpack(archive, staging)
        _check_tree(staging, archive)
        _write_marker(staging, archive, {**(record or {}), **(counts or {})})
        if target.is_dir():
            target.rmdir()  # empty, checked above; rename cannot replace it otherwise
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("extracted %s into %s", archive, target)
    return target


def extraction_record(target: Path) -> dict | None:
    """The marker of a finished extraction into ``target``, None when there is none."""
    marker = Path(target) / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def _already_extracted(archive: Path, target: Path) -> bool:
    """True when the marker says this very archive was extracted here."""
    record = extraction_record(target)
    if record is None:
        return False
    size = archive.stat().st_size if archive.exists() else None  # the archive may be gone by now
    if record.get("archive") == archive.name and size in (None, record.get("size")):
        return True
    raise ExtractError(f"{target} holds the extraction of {record.get('archive')} "
                       f"({record.get('size')} bytes), not of {archive}; remove it to re-extract")


def _require_free_target(archive: Path, target: Path) -> None:
    """Refuse to merge into an existing directory whose origin we cannot vouch for."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return
    raise ExtractError(f"cannot extract {archive}: {target} already exists without a completion "
                       f"marker ({MARKER}: an interrupted older extraction or unrelated files); remove it first")


def _write_marker(staging: Path, archive: Path, fields: dict) -> None:
    record = {"archive": archive.name, "size": archive.stat().st_size, **fields,
              "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (staging / MARKER).write_text(json.dumps(record, indent=1) + "\n")


def _require_archive_file(archive: Path) -> None:
    """The archive exists and is not an LFS stub or HTML page (those get the download advice)."""
    if not archive.is_file():
        raise ExtractError(f"{archive}: archive not found")
    problem = stand_in_description(read_head(archive), "")
    if problem:
        raise NotMediaError(f"{archive}: {problem}")


def _archive_kind(archive: Path) -> str:
    """Decide by name first (what the config promised), by magic bytes otherwise."""
    _require_archive_file(archive)
    head = read_head(archive)
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".rar"):
        return "rar"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise ExtractError(f"{archive}: not a zip, tar or rar archive")


# --- member safety, shared by all formats


def _check_members(archive: Path, members: Iterable[_Member]) -> None:
    """Refuse any member that would be written, or would point, outside the target."""
    members = list(members)
    links = {"/".join(_safe_parts(archive, m.name)): m.link for m in members
             if m.kind == "symlink" and m.link is not None}
    for member in members:
        parts = _safe_parts(archive, member.name)
        if member.kind == "special":
            _unsafe(archive, member.name, "is a device, FIFO or other special file")
        written_through = parts[:-1] if member.kind == "symlink" else parts
        if _resolve(written_through, links) is None:
            _unsafe(archive, member.name, "would be written through a link that leads outside")
        if member.kind == "symlink":
            _check_symlink(archive, member, parts, links)
        if member.kind == "hardlink":
            _safe_parts(archive, member.name, member.link or "", label="has a hard link target")


def _check_symlink(archive: Path, member: _Member, parts: list[str], links: dict) -> None:
    target = member.link or ""
    if _is_absolute(target):
        _unsafe(archive, member.name, f"is a symlink to the absolute path {target!r}")
    if _resolve(parts[:-1] + _split(target), links) is None:
        _unsafe(archive, member.name, f"is a symlink to {target!r}, outside the target directory")


def _safe_parts(archive: Path, name: str, path: str | None = None, label: str = "") -> list[str]:
    """Components of ``path`` (default: the member name); refuses absolute paths and any ``..``.

    ``name`` is the member reported in the error; ``label`` says which of its
    paths is at fault (e.g. a hard link's target).
    """
    path = name if path is None else path
    prefix = f"{label} {path!r} " if label else ""
    if _is_absolute(path):
        _unsafe(archive, name, f"{prefix}is an absolute path")
    parts = _split(path)
    if ".." in parts:
        _unsafe(archive, name, f"{prefix}contains '..' and would escape the target directory")
    return parts


def _split(name: str) -> list[str]:
    """Components of an archive path; backslashes count as separators (Windows-made archives)."""
    return [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) is not None


def _resolve(parts: list[str], links: dict[str, str | None], depth: int = 0) -> list[str] | None:
    """Resolve a path inside the (empty) target using the archive's own symlinks.

    Returns the resolved components, or None when the path leaves the target
    (or loops). This catches a link chain such as ``a -> .`` plus
    ``b -> a/..``, which a purely textual check would let through.
    """
    resolved: list[str] = []
    for part in parts:
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        resolved.append(part)
        link = links.get("/".join(resolved))
        if link is None:
            continue
        if depth > 40 or _is_absolute(link):
            return None
        resolved = _resolve(resolved[:-1] + _split(link), links, depth + 1)
        if resolved is None:
            return None
    return resolved


def _unsafe(archive: Path, member: str, why: str) -> None:
    raise UnsafeArchiveError(f"refusing to extract {archive}: member {member!r} {why}")


def _check_tree(root: Path, archive: Path) -> None:
    """After unpacking, check what external tools actually created.

    RAR listings do not reliably report link targets, so links are checked
    here, in the private staging directory, before anything reaches the
    target: a symlink resolving outside, a hard link shared with a file
    outside, or a special file fails the extraction.
    """
    real_root = Path(os.path.realpath(root))
    inode_count: dict[tuple[int, int], int] = {}
    for path in _walk(root):
        info = path.lstat()
        member = path.relative_to(root).as_posix()
        if stat.S_ISLNK(info.st_mode):
            if not Path(os.path.realpath(path)).is_relative_to(real_root):
                _unsafe(archive, member, f"is a symlink to {os.readlink(path)!r}, outside the target")
        elif stat.S_ISREG(info.st_mode):
            key = (info.st_dev, info.st_ino)
            inode_count[key] = inode_count.get(key, 0) + 1
        elif not stat.S_ISDIR(info.st_mode):
            _unsafe(archive, member, "is a device, FIFO or other special file")
    for path in _walk(root):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_nlink > inode_count[(info.st_dev, info.st_ino)]:
            _unsafe(archive, path.relative_to(root).as_posix(), "is a hard link to a file outside")


def _walk(root: Path) -> Iterable[Path]:
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            yield Path(directory, name)


# --- zip


def _check_zip(archive: Path) -> None:
    with _open_zip(archive) as zf:
        _check_members(archive, (_Member(i.filename, "dir" if i.is_dir() else "file")
                                 for i in zf.infolist()))


def _extract_zip(archive: Path, staging: Path) -> None:
    """zipfile never creates links: a symlink entry becomes a small file holding its target."""
    with _open_zip(archive) as zf:
        try:
            zf.extractall(staging)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error) as exc:
            raise ExtractError(f"{archive}: extraction failed: {exc}") from exc


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExtractError(f"{archive}: not a readable zip archive ({exc})") from exc


# --- tar


_TAR_READ_ERRORS = (tarfile.TarError, EOFError, OSError)


def _check_tar(archive: Path) -> None:
    """Listing a .tar.gz decompresses it once; extraction is a second pass."""
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = [_tar_member(info) for info in tf.getmembers()]
    except _TAR_READ_ERRORS as exc:
        raise ExtractError(f"{archive}: cannot read the tar archive (truncated or corrupt?): {exc}") from exc
    _check_members(archive, members)


def _tar_member(info: tarfile.TarInfo) -> _Member:
    if info.issym():
        return _Member(info.name, "symlink", info.linkname)
    if info.islnk():
        return _Member(info.name, "hardlink", info.linkname)
    if info.isdir():
        return _Member(info.name, "dir")
    if info.isreg():
        return _Member(info.name, "file")
    return _Member(info.name, "special")


def _extract_tar(archive: Path, staging: Path) -> None:
    """Extract with tarfile's "data" filter as a second line of defence (Python >= 3.11.4)."""
    options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(staging, **options)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"refusing to extract {archive}: {exc}") from exc
    except _TAR_READ_ERRORS as exc:
        raise ExtractError(f"{archive}: extraction failed (truncated or corrupt?): {exc}") from exc


# --- a .tar.gz streamed in one pass (extract(stream=True))


def _stream_tar(archive: Path, staging: Path, keep_only: str | None, tolerate_damage: bool) -> dict:
    """Write the kept members flat into staging; returns the marker's counts and damage."""
    key = f"{keep_only.lstrip('.')}_members" if keep_only else "members"  # the marker's count, e.g. mp4_members
    what = key.replace("_", " ")
    counts: Counter = Counter()
    damage = None
    with open(archive, "rb") as handle:
        reader = CheckedGzipReader(handle)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                while (info := tar.next()) is not None:
                    _check_streamed_member(archive, info)
                    if info.isreg() and info.name.endswith(keep_only or ""):
                        counts[_write_streamed_member(tar, info, staging)] += 1
                    elif not info.isdir():
                        counts["other"] += 1
            reader.drain()
        except (GzipDamage, tarfile.TarError, EOFError) as exc:
            damage = f"{exc} (after {counts['kept']} {what}, {reader.compressed_read} compressed bytes read)"
    if damage and not tolerate_damage:
        raise DamagedArchiveError(f"{archive}: {damage}; {counts['kept']} complete members came before it. "
                                  "Delete the archive and download it again")
    if damage:
        log.warning("%s: %s; kept the %d complete %s before it", archive, damage, counts["kept"], what)
    return {key: counts["kept"], "other_members_skipped": counts["other"], "duplicate_members_skipped": counts["duplicate"],
            "complete": damage is None, "damage": damage}


def _check_streamed_member(archive: Path, info: tarfile.TarInfo) -> None:
    _safe_parts(archive, info.name)
    if info.issym() or info.islnk():
        _unsafe(archive, info.name, f"is a link to {info.linkname!r} (a streamed archive is checked member by member, "
                                    "so links are refused)")
    if not (info.isreg() or info.isdir()):
        _unsafe(archive, info.name, "is a device, FIFO or other special file")


def _write_streamed_member(tar: tarfile.TarFile, info: tarfile.TarInfo, staging: Path) -> str:
    """Write via a .partial name, so that a member cut off by damage never looks complete; "kept" or "duplicate"."""
    dest = staging / _split(info.name)[-1]
    if dest.exists():
        return "duplicate"
    partial = dest.with_name(dest.name + ".partial")
    try:
        with open(partial, "wb") as out:
            shutil.copyfileobj(tar.extractfile(info), out, CHUNK)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.rename(partial, dest)
    return "kept"


# --- rar, through an external program


def installed_rar_tools() -> list[str]:
    """Names from ``RAR_TOOLS`` that are installed and can read RAR, in preference order.

    unar needs its companion lsar for listing; Debian's free 7-Zip builds
    lack the RAR codec (it lives in the non-free 7zip-rar), so 7z counts only
    when ``7z i`` lists a Rar format.
    """
    usable = []
    for name in RAR_TOOLS:
        path = shutil.which(name)
        if not path or (name == "unar" and not shutil.which("lsar")):
            continue
        if name.startswith("7z") and not _7z_reads_rar(path):
            continue
        usable.append(name)
    return usable


def _7z_reads_rar(path: str) -> bool:
    done = subprocess.run([path, "i"], check=False, capture_output=True, stdin=subprocess.DEVNULL)
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    return any(line.split()[1:2] == ["Rar"] for line in lines)


def _rar_tool(archive: Path) -> tuple[str, str]:
    """The preferred installed RAR reader, as (name, path)."""
    tools = installed_rar_tools()
    if not tools:
        raise MissingToolError(f"cannot extract {archive}: no RAR extractor found (looked for "
                               f"{', '.join(RAR_TOOLS)}); {RAR_PACKAGES}")
    return tools[0], shutil.which(tools[0])


def _run(command: list[str], archive: Path, what: str) -> str:
    """Run a tool without a terminal (a password prompt fails instead of hanging)."""
    done = subprocess.run(command, check=False, capture_output=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).decode("utf-8", "replace").strip()[-1000:]
        raise ExtractError(f"{archive}: {what} with {Path(command[0]).name} failed "
                           f"(exit {done.returncode}): {detail}")
    return done.stdout.decode("utf-8", "surrogateescape")


def _check_rar(archive: Path) -> None:
    """Validate member names from the tool's listing; link targets are checked after unpacking."""
    name, path = _rar_tool(archive)
    _check_members(archive, (_Member(n) for n in _rar_names(name, path, archive)))


def _rar_names(tool: str, path: str, archive: Path) -> list[str]:
    if tool == "unar":
        listing = json.loads(_run([shutil.which("lsar"), "-j", str(archive)], archive, "listing"))
        return [entry["XADFileName"] for entry in listing.get("lsarContents", [])]
    if tool == "unrar":
        return _run([path, "lb", "-p-", "--", str(archive)], archive, "listing").splitlines()
    if tool == "bsdtar":
        return _run([path, "-t", "-f", str(archive)], archive, "listing").splitlines()
    return _7z_names(_run([path, "l", "-slt", "--", str(archive)], archive, "listing"))


def _7z_names(listing: str) -> list[str]:
    """Member paths of ``7z l -slt``; the block before the dashes describes the archive itself."""
    _, _, members = listing.partition("\n----------\n")
    return [line[len("Path = "):] for line in members.splitlines() if line.startswith("Path = ")]


def _extract_rar(archive: Path, staging: Path) -> None:
    tool, path = _rar_tool(archive)
    commands = {
        "unrar": [path, "x", "-p-", "-o-", "-idq", "--", str(archive), f"{staging}{os.sep}"],
        "unar": [path, "-q", "-no-directory", "-no-recursion", "-o", str(staging), str(archive)],
        "bsdtar": [path, "-x", "-f", str(archive), "-C", str(staging), "--no-same-owner"],
    }
    default = [path, "x", "-y", f"-o{staging}", "--", str(archive)]  # 7z / 7zz
    _run(commands.get(tool, default), archive, "extraction")


_HANDLERS = {
    "zip": (_check_zip, _extract_zip),
    "tar": (_check_tar, _extract_tar),
    "rar": (_check_rar, _extract_rar),
}
