"""Resumable, verified downloads over HTTP (and file:// for a copy you already have).

The dataset hosts fail in specific ways: CREMA-D's GitHub repository answers
with 130-byte Git LFS pointer stubs instead of media once its LFS bandwidth
is spent (CheyneyComputerScience/CREMA-D issue #15), Google Drive (AVE)
answers large files with an HTML virus-scan, quota or sign-in page, and the
17 GB VGGSound parts on Hugging Face (Loie/VGGSound) break off mid-transfer,
one of them corrupt at the source. This module turns each of those into
either a verified file or an error that names the URL, the file and what to
do, and never leaves a half-written file where a Snakemake rule would take it
for a finished one. Archives are unpacked by archives.extract.

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
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
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
        stand_in = stand_in_description(read_head(dest), "")
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
    problem = stand_in_description(head, content_type)
    if problem:
        raise NotMediaError(f"{source}: {problem}")


def stand_in_description(head: bytes, content_type: str) -> str | None:
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


def read_head(path: Path) -> bytes:
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
