"""Small file helpers shared by every stage: atomic writes and hashing.

Atomic writes (temp file in the same folder, then rename) mean a killed job
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

# Below this many free bytes a failed write is reported as a full disk (numpy, for one,
# says "unexpected pos" rather than ENOSPC when a .npy header cannot be written).
LOW_SPACE = 1 << 20


@contextmanager
def disk_full_named(path: str | Path):
    """Turn a write that failed for lack of space into an OSError(ENOSPC) naming `path`."""
    try:
        yield
    except (OSError, ValueError) as error:
        folder = Path(path).parent
        free = shutil.disk_usage(folder).free if folder.exists() else None
        if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < LOW_SPACE):
            raise OSError(errno.ENOSPC, f"no space left on the device while writing {path} ({free} bytes free): {error}") from error
        raise


def write_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and move the result onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with disk_full_named(path):
            write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path):
    """A JSON file, with an error naming the file and the place when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file ({error})") from None
