"""Resumable, verified dataset downloads and safe archive extraction.

The dataset hosts fail in specific ways (see shared/DATASETS.md): CREMA-D's
GitHub copy answers with 130-byte Git LFS pointer stubs instead of media,
Google Drive (AVE) answers large files with an HTML confirmation or quota
page, the 17 GB VGGSound parts on Hugging Face break off mid-transfer and one
of them is corrupt at the source, and UCF101 ships as a RAR archive. This
module turns each of those into either a verified file or an error that names
the URL, the file and what to do, and never leaves a half-written file where a
Snakemake rule would take it for a finished one.

HTTP library: ``urllib.request`` from the standard library, not ``requests``.

* ``requests`` is only installed as a dependency of mlflow; the project does
  not declare it, so importing it here would break if mlflow ever dropped it.
* urllib sends no ``Accept-Encoding`` header, so the bytes on disk are the
  bytes the server stores: Range offsets, Content-Length and the published
  checksums all refer to the same representation. (``requests`` asks for gzip
  by default and decodes it while streaming, so a resume offset could point
  into a different encoding than the one on disk.)
* urllib follows redirects (Hugging Face ``resolve`` -> CDN) and keeps the
  ``Range`` header on the redirected request.

One thing urllib does not do is notice a connection that closes early: it
returns a short body without an error. We therefore count the bytes against
Content-Length ourselves and treat a short body as a retryable failure.

Download protocol: stream into ``<dest>.part``; on a later attempt (or a later
call) resume it with ``Range: bytes=<size>-``; restart from zero when the
server ignores the Range (200) or rejects it (416); retry connection errors
and 5xx/408/429 with exponential backoff; after the retries of one mirror are
spent, go on to the next; verify size and checksums, then rename atomically.
One process per destination: two concurrent calls for the same ``dest``
would append to the same ``.part`` file (Snakemake never does this, since a
file is the output of one job).
"""

from __future__ import annotations

import hashlib
import http.client
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
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "mmbalance-download/1 (python urllib)"
# Statuses worth retrying on the same mirror; every other 4xx moves on to the next mirror.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_DELAY = 60.0
HASH_HEX_LENGTH = {"sha256": 64, "md5": 32}

LFS_PREFIX = b"version https://git-lfs"
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body")
SNIFF_BYTES = 1024

MARKER = ".extracted.json"
# Tried in this order: the reference implementation first, then the free ones.
RAR_TOOLS = ("unrar", "unar", "bsdtar", "7z", "7zz")
RAR_PACKAGES = (
    "apt-get install unar (free, recommended), or libarchive-tools (bsdtar), "
    "or unrar (non-free), or 7zip with 7zip-rar (non-free)"
)


# --------------------------------------------------------------------------- errors


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names the URL(s) and the file."""


class ChecksumError(DownloadError):
    """Downloaded bytes differ from the published size or hash.

    The attributes let a caller report or retry; the bad file is kept at
    ``kept`` for inspection rather than deleted, because a source-side
    corruption (VGGSound part 08) is worth examining before re-fetching 17 GB.
    """

    def __init__(self, message: str, *, url: str | None = None, path: Path | None = None,
                 algorithm: str | None = None, expected: str | None = None,
                 actual: str | None = None, kept: Path | None = None):
        super().__init__(message)
        self.url, self.path, self.kept = url, path, kept
        self.algorithm, self.expected, self.actual = algorithm, expected, actual


class NotMediaError(DownloadError):
    """The host sent a stand-in (LFS pointer stub, HTML page) instead of the file."""


class ExtractError(RuntimeError):
    """An archive could not be extracted; the message names the archive."""


class UnsafeArchiveError(ExtractError):
    """A member would land outside the target directory; names archive and member."""


class MissingToolError(ExtractError):
    """No external program that can read this archive type is installed."""


class _Transient(Exception):
    """A failure worth retrying on the same mirror (network, 5xx, short body)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _RangeNotSatisfiable(Exception):
    """HTTP 416: our partial file is not a prefix the server can continue."""

    def __init__(self, total: int | None):
        super().__init__(total)
        self.total = total


# --------------------------------------------------------------------------- download


def download(urls: Sequence[str], dest: Path, *, size: int | None = None,
             sha256: str | None = None, md5: str | None = None, retries: int = 5,
             timeout: float = 60.0, backoff: float = 1.0, sniff: bool = True) -> Path:
    """Fetch one file from the first mirror in ``urls`` that delivers it intact.

    ``size``/``sha256``/``md5`` are the published values; whatever is given is
    checked before ``dest`` appears, so the existence of ``dest`` means
    "verified". ``retries`` is the number of extra attempts per mirror,
    ``timeout`` the socket inactivity limit in seconds (not a total time),
    ``backoff`` the first retry delay (doubled each time, at most 60 s).
    ``sniff=False`` allows downloading HTML on purpose.

    Returns ``dest``. Raises ``NotMediaError``, ``ChecksumError`` or
    ``DownloadError``; with several mirrors that all failed, a
    ``DownloadError`` that lists each mirror's failure.
    """
    urls = _mirror_list(urls)
    dest = Path(dest)
    expected = _expected_hashes(sha256=sha256, md5=md5)
    if _existing_is_valid(dest, size, expected, sniff):
        log.info("%s already present and verified; skipping download", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    failures: list[tuple[str, DownloadError]] = []
    for url in urls:
        try:
            _fetch_with_retries(url, part, size=size, retries=retries, timeout=timeout,
                                backoff=backoff, sniff=sniff)
            _verify(part, dest=dest, url=url, size=size, expected=expected)
        except DownloadError as exc:
            log.warning("mirror failed: %s", exc)
            failures.append((url, exc))
            continue
        os.replace(part, dest)
        log.info("downloaded %s from %s", dest, url)
        return dest
    raise _all_mirrors_failed(dest, failures)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks so 17 GB archives fit in memory."""
    return _file_digests(Path(path), [algorithm])[algorithm]


def _mirror_list(urls: Sequence[str]) -> list[str]:
    """Guard against a bare string, which would otherwise be iterated per character."""
    if isinstance(urls, (str, bytes)):
        urls = [urls]
    urls = [str(url) for url in urls]
    if not urls:
        raise ValueError("download() needs at least one URL")
    return urls


def _expected_hashes(**given: str | None) -> dict[str, str]:
    """Normalise the published hashes and reject malformed ones early (typos in config)."""
    expected = {}
    for algorithm, value in given.items():
        if value is None:
            continue
        value = value.strip().lower()
        if not re.fullmatch(f"[0-9a-f]{{{HASH_HEX_LENGTH[algorithm]}}}", value):
            raise ValueError(f"{algorithm} must be {HASH_HEX_LENGTH[algorithm]} hex digits, got {value!r}")
        expected[algorithm] = value
    return expected


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _corrupt_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".corrupt")


def _existing_is_valid(dest: Path, size: int | None, expected: dict[str, str], sniff: bool) -> bool:
    """True when ``dest`` can be reused; a wrong ``dest`` is moved aside, not trusted.

    Without a published hash an existing file of the right size (if known) is
    accepted, except an LFS stub or HTML page, which is never what a dataset
    rule wants.
    """
    if not dest.is_file():
        return False
    problems = [_describe(*p) for p in _integrity_problems(dest, size, expected)]
    if not problems and not expected and sniff:
        stand_in = _stand_in_description(_head(dest), "")
        problems = [stand_in] if stand_in else []
    if not problems:
        return True
    kept = _keep_aside(dest, dest)
    log.warning("existing %s is not the expected file (%s); moved to %s, downloading again",
                dest, "; ".join(problems), kept)
    return False


def _fetch_with_retries(url: str, part: Path, *, size: int | None, retries: int,
                        timeout: float, backoff: float, sniff: bool) -> None:
    """Bring ``part`` to the full remote content, retrying transient failures."""
    last: _Transient | None = None
    for attempt in range(retries + 1):
        if attempt:
            delay = _retry_delay(backoff, attempt, last)
            log.info("retry %d/%d of %s in %.1f s after: %s", attempt, retries, url, delay, last)
            time.sleep(delay)
        try:
            _fetch_once(url, part, size=size, timeout=timeout, sniff=sniff)
            return
        except _Transient as exc:
            last = exc
    have = part.stat().st_size if part.exists() else 0
    raise DownloadError(
        f"{url}: gave up after {retries + 1} attempts; last error: {last}. "
        f"{have} bytes are kept in {part} and the next call resumes from there"
    ) from last


def _retry_delay(backoff: float, attempt: int, last: _Transient | None) -> float:
    """Exponential backoff, but honour a server's Retry-After when it sends one."""
    delay = backoff * 2 ** (attempt - 1)
    if last is not None and last.retry_after is not None:
        delay = max(delay, last.retry_after)
    return min(delay, MAX_DELAY)


def _fetch_once(url: str, part: Path, *, size: int | None, timeout: float, sniff: bool) -> None:
    """One HTTP request: continue ``part`` where it stops, or start it over."""
    offset = _usable_offset(part, size)
    if size is not None and offset == size:
        return  # an earlier run received every byte; only verification is left
    log.info("GET %s%s", url, f" (resuming at byte {offset})" if offset else "")
    try:
        response = _open(url, offset, timeout)
    except _RangeNotSatisfiable as exc:
        if exc.total is not None and exc.total == offset:
            return  # the partial file is already complete
        log.info("%s rejected the resume at byte %d; starting over", url, offset)
        part.unlink(missing_ok=True)
        response = _open(url, 0, timeout)
    with response:
        start, end = _body_span(response, offset, url)
        if size is not None and end is not None and end != size:
            raise DownloadError(f"{url}: the server announces {end} bytes but {size} are expected; "
                                "wrong file or outdated mirror")
        _stream(response, part, start=start, end=end, url=url, sniff=sniff)


def _usable_offset(part: Path, size: int | None) -> int:
    """Length of the partial file, discarding one that is longer than the real file."""
    if not part.exists():
        return 0
    offset = part.stat().st_size
    if size is not None and offset > size:
        log.info("%s is longer than the expected %d bytes; starting over", part, size)
        part.unlink()
        return 0
    return offset


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Send the GET; sort failures into retryable, range-rejected and permanent."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _classify_http_error(url, exc, offset) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Transient(f"{url}: {_reason(exc)}") from exc


def _classify_http_error(url: str, exc: urllib.error.HTTPError, offset: int) -> Exception:
    if exc.code == 416 and offset:
        return _RangeNotSatisfiable(_content_range_total(exc.headers.get("Content-Range")))
    message = f"{url}: HTTP {exc.code} {exc.reason}"
    if exc.code in RETRY_STATUSES:
        return _Transient(message, retry_after=_retry_after(exc.headers.get("Retry-After")))
    return DownloadError(message)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc) or type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date; plain backoff is good enough


def _content_range_total(value: str | None) -> int | None:
    """The ``total`` of ``bytes a-b/total`` or ``bytes */total``; None when unknown."""
    match = re.fullmatch(r"bytes\s+(?:\d+-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not match or match.group(1) == "*":
        return None
    return int(match.group(1))


def _body_span(response: http.client.HTTPResponse, offset: int, url: str) -> tuple[int, int | None]:
    """Where the body starts in the file and where it should end (None: unknown).

    A 200 answer to a Range request means the server ignored the Range: the
    body is the whole file, so the partial file must be rewritten from zero.
    """
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if response.status != 206:
        if offset:
            log.info("%s ignored the Range request; restarting from byte 0", url)
        return 0, length
    match = re.fullmatch(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match or int(match.group(1)) != offset:
        raise DownloadError(f"{url}: asked for bytes {offset}- but got Content-Range "
                            f"{response.headers.get('Content-Range')!r}")
    return offset, int(match.group(2)) + 1


def _stream(response: http.client.HTTPResponse, part: Path, *, start: int, end: int | None,
            url: str, sniff: bool) -> None:
    """Copy the body into ``part``; a body shorter than announced is retryable.

    The first chunk is checked before the file is opened, so a stub or an
    error page never overwrites a good partial download.
    """
    chunk = _read(response, url)
    if sniff:
        _reject_stand_in(chunk if start == 0 else b"", response.headers.get_content_type(), url)
    written = start
    with open(part, "ab" if start else "wb") as out:
        while chunk:
            out.write(chunk)
            written += len(chunk)
            chunk = _read(response, url)
        out.flush()
        os.fsync(out.fileno())
    if end is not None and written < end:
        raise _Transient(f"{url}: connection closed after {written} of {end} bytes")


def _read(response: http.client.HTTPResponse, url: str) -> bytes:
    try:
        return response.read(CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"{url}: {_reason(exc)} while reading") from exc


# --------------------------------------------------------------------------- sniffing


def _reject_stand_in(head: bytes, content_type: str, source: str) -> None:
    """Raise ``NotMediaError`` for an LFS stub or an HTML page served as data."""
    problem = _stand_in_description(head, content_type)
    if problem:
        raise NotMediaError(f"{source}: {problem}")


def _stand_in_description(head: bytes, content_type: str) -> str | None:
    """Say what the stand-in is and what to do about it; None when it looks like data."""
    if head.startswith(LFS_PREFIX) and len(head) < SNIFF_BYTES:
        oid = re.search(rb"oid sha256:([0-9a-f]{64})", head)
        real = re.search(rb"size (\d+)", head)
        return (f"received a Git LFS pointer stub ({len(head)} bytes; object sha256 "
                f"{oid.group(1).decode() if oid else '?'}, real size "
                f"{real.group(1).decode() if real else '?'} bytes) instead of the file. The host "
                "served the pointer, not the LFS object (repository zip, raw URL, or exhausted LFS "
                "budget): fetch it with `git lfs pull` in a clone, via the LFS batch API, or from a "
                "mirror that serves the media")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(HTML_STARTS) or content_type == "text/html":
        return (f"received an HTML page{_html_title(head)} instead of the file: the host returned a "
                "login, quota, error or confirmation page. Open the URL in a browser to see what it "
                "wants, then use a direct-download link or the host's own download tool")
    return None


def _html_title(head: bytes) -> str:
    match = re.search(rb"<title[^>]*>(.*?)</title>", head, re.IGNORECASE | re.DOTALL)
    if not match:
        return ""
    title = " ".join(match.group(1).decode("utf-8", "replace").split())
    return f" titled {title[:120]!r}"


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(SNIFF_BYTES)


# --------------------------------------------------------------------------- verification


def _integrity_problems(path: Path, size: int | None,
                        expected: dict[str, str]) -> list[tuple[str, str, str]]:
    """Mismatches of ``path`` against the published values, as (what, expected, actual).

    A wrong size is reported alone: hashing 17 GB to confirm it is pointless.
    """
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return [("size", str(size), str(actual_size))]
    digests = _file_digests(path, expected)
    return [(name, want, digests[name]) for name, want in expected.items() if digests[name] != want]


def _describe(what: str, expected: str, actual: str) -> str:
    unit = " bytes" if what == "size" else ""
    return f"{what} mismatch: expected {expected}{unit}, actual {actual}{unit}"


def _file_digests(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in algorithms}
    if hashers:
        with open(path, "rb") as handle:
            while block := handle.read(CHUNK):
                for hasher in hashers.values():
                    hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _verify(part: Path, *, dest: Path, url: str, size: int | None, expected: dict[str, str]) -> None:
    """Check the finished ``part``; on mismatch keep it as ``<dest>.corrupt`` and raise."""
    problems = _integrity_problems(part, size, expected)
    if not problems:
        return
    kept = _keep_aside(part, dest)
    what, want, got = problems[0]
    raise ChecksumError(
        f"{dest}: downloaded from {url} but {'; '.join(_describe(*p) for p in problems)}. "
        f"The bad file was kept as {kept}; delete it after a look (corrupt source, wrong "
        f"published value, or a stale partial download)",
        url=url, path=dest, algorithm=what, expected=want, actual=got, kept=kept,
    )


def _keep_aside(path: Path, dest: Path) -> Path:
    kept = _corrupt_path(dest)
    os.replace(path, kept)
    return kept


def _all_mirrors_failed(dest: Path, failures: list[tuple[str, DownloadError]]) -> DownloadError:
    """One mirror: its own error (type kept). Several: one error listing all of them."""
    if len(failures) == 1:
        return failures[0][1]
    lines = "\n".join(f"  - {exc}" for _, exc in failures)
    error = DownloadError(f"{dest}: every mirror failed:\n{lines}")
    error.__cause__ = failures[-1][1]
    return error


# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class _Member:
    """What the safety check needs to know about one archive member."""

    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | special
    link: str | None = None


def extract(archive: Path, target_dir: Path) -> Path:
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
    """
    archive, target = Path(archive), Path(target_dir)
    if _already_extracted(archive, target):
        log.info("%s already extracted into %s; skipping", archive, target)
        return target
    _require_free_target(archive, target)
    check, unpack = _HANDLERS[_archive_kind(archive)]
    check(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        unpack(archive, staging)
        _check_tree(staging, archive)
        _write_marker(staging, archive)
        if target.is_dir():
            target.rmdir()  # empty, checked above; rename cannot replace it otherwise
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("extracted %s into %s", archive, target)
    return target


def _already_extracted(archive: Path, target: Path) -> bool:
    """True when the marker says this very archive was extracted here."""
    marker = target / MARKER
    if not marker.is_file():
        return False
    record = json.loads(marker.read_text())
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
                       f"marker (an interrupted older extraction or unrelated files); remove it first")


def _write_marker(staging: Path, archive: Path) -> None:
    record = {"archive": archive.name, "size": archive.stat().st_size,
              "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (staging / MARKER).write_text(json.dumps(record, indent=1) + "\n")


def _archive_kind(archive: Path) -> str:
    """Decide by name first (what the config promised), by magic bytes otherwise."""
    if not archive.is_file():
        raise ExtractError(f"{archive}: archive not found")
    head = _head(archive)
    _reject_stand_in_file(head, archive)
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


def _reject_stand_in_file(head: bytes, archive: Path) -> None:
    """An archive that is really an LFS stub or HTML page gets the download advice."""
    problem = _stand_in_description(head, "")
    if problem:
        raise NotMediaError(f"{archive}: {problem}")


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
