"""tcmalloc for the commands that train, preloaded by re-executing the command once.

Why: glibc's malloc serves every request above its mmap threshold (at most 32 MB on 64-bit
Linux) with a fresh `mmap` and unmaps it on `free`, so each batch of 64 frames at 224 px
(38.5 MB as float32), and each large activation of a CPU training step, is faulted in page
by page again on every step. tcmalloc keeps freed memory for reuse. Measured with
`python -m mmbalance benchmark --pipeline` (the allocator it ran with is in its first line),
this doubled the in-memory data path; PyTorch's CPU launcher (`torch.backends.xeon.run_cpu`)
preloads tcmalloc or jemalloc for the same reason. Results do not change: torch asks every
allocator for the same 64-byte alignment, and the kernels are the same.

`MMBALANCE_ALLOCATOR` chooses:

* `auto` (default): tcmalloc when the system has it (Debian/Ubuntu: `apt-get install
  libtcmalloc-minimal4`; conda: `gperftools`), otherwise glibc's malloc, as before;
* `system`: glibc's malloc, no re-execution;
* a path to an allocator library to preload instead (jemalloc, a tcmalloc elsewhere).

Only the command line runs this (`python -m mmbalance`, `mmbalance.__main__`), never a
caller that imports the package, and only on Linux. A process whose LD_PRELOAD already names
an allocator is left as it is, so the re-executed command does not loop.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VARIABLE = "MMBALANCE_ALLOCATOR"
# The commands whose steps allocate large tensors: training, tuning trials, the benchmarks.
COMMANDS = ("train", "tune", "benchmark")
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
SEARCH_DIRS = (Path(sys.prefix) / "lib", Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib/aarch64-linux-gnu"),
               Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib"))
ALLOCATOR_NAMES = ("tcmalloc", "jemalloc", "mimalloc")


def find_tcmalloc(dirs=SEARCH_DIRS) -> Path | None:
    """The first tcmalloc library in `dirs` (the environment's own lib directory first)."""
    for directory in dirs:
        for name in LIBRARIES:
            if (Path(directory) / name).is_file():
                return Path(directory) / name
    return None


def chosen_library(environ=os.environ, dirs=SEARCH_DIRS) -> Path | None:
    """The library MMBALANCE_ALLOCATOR asks to preload, or None for glibc's malloc."""
    choice = environ.get(VARIABLE, "auto")
    if choice == "system":
        return None
    if choice == "auto":
        return find_tcmalloc(dirs)
    library = Path(choice)
    if not library.is_file():
        raise SystemExit(f"{VARIABLE}={choice!r}: no such library file (use auto, system, or the path of an allocator's .so)")
    return library


def preload_command(argv: list[str], environ=os.environ, dirs=SEARCH_DIRS) -> dict[str, str] | None:
    """The environment to re-execute `python -m mmbalance <argv>` with, or None to run as is."""
    if sys.platform != "linux" or not argv or argv[0] not in COMMANDS:
        return None
    library = chosen_library(environ, dirs)
    preloaded = environ.get("LD_PRELOAD", "")
    if library is None or any(name in preloaded for name in ALLOCATOR_NAMES):
        return None
    return dict(environ, LD_PRELOAD=" ".join(filter(None, [str(library), preloaded])))


def reexec_with_preload(argv: list[str]) -> None:
    """Replace this process (same pid, same arguments) by one with the allocator preloaded."""
    environ = preload_command(argv)
    if environ is not None:
        sys.stdout.flush(), sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "mmbalance", *argv], environ)


def active() -> str:
    """Which allocator this process runs on, from the libraries mapped into it."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return "the system's malloc"
    for name in ALLOCATOR_NAMES:
        for line in maps:
            if name in line:
                return f"{name} ({line.split()[-1]})"
    return "the system's malloc"
