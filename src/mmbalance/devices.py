"""Pick a free GPU for this process from a node-local lock-file pool.

Snakemake's ``--resources gpu=N`` only counts GPUs; it never says which one a
job should use, so without this every job would land on cuda:0. Each training
job calls :func:`select_device` once, before anything touches CUDA. It takes an
exclusive ``flock`` on one ``gpu-<id>.lock`` file and keeps that file open for
the rest of the process; the kernel drops the lock when the process dies, even
on SIGKILL, so a crashed job never leaks its GPU. With ``train.jobs_per_gpu``
J > 1 each GPU has J lock files (job slots), so J small jobs share it.

A leased GPU is not necessarily a usable one: a scheduler may hand out a GPU
(CUDA_VISIBLE_DEVICES) on a node whose driver is missing or broken.
:func:`training_device` therefore checks that torch can use it, and then
either falls back to the CPU (``device: auto``, saying so in the log and in the
lease's description, which the run records) or stops with a message naming the
setting to change (``device: cuda``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOCK_DIR_ENV = "MMBALANCE_GPU_LOCK_DIR"
_UNSET = object()  # "CUDA_VISIBLE_DEVICES was not set before we chose"


def lock_dir() -> Path:
    # Node-local /tmp on purpose: flock over NFS is unreliable.
    return Path(os.environ.get(LOCK_DIR_ENV) or f"/tmp/mmbalance-gpu-slots-{os.getuid()}")


def nvidia_smi_count() -> int:
    """GPUs on this node, counted without initialising CUDA (0 if nvidia-smi is absent or fails)."""
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def gpu_pool() -> list[str]:
    """Physical GPU ids this process may use: indices or UUIDs, as CUDA_VISIBLE_DEVICES spells them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # set by SLURM or the user: that list is the pool ("" = no GPU)
        return [i.strip() for i in visible.split(",") if i.strip()]
    return [str(i) for i in range(nvidia_smi_count())]


@dataclass
class DeviceLease:
    device: str  # "cpu" or "cuda:0" (the chosen GPU is the only one left visible)
    physical_id: str | None = None
    lock_path: Path | None = None
    _file: IO | None = field(default=None, repr=False)
    _previous_visible: object = field(default=_UNSET, repr=False)
    note: str = ""  # why the device differs from the one asked for (a CPU fallback)

    def release(self) -> None:
        """Give the slot back early (normally the process just exits holding it)."""
        if self._file is not None:
            self._file.close()  # closing the last descriptor drops the flock
            self._file = None
            if self._previous_visible is _UNSET:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = self._previous_visible

    def describe(self) -> str:
        if self.note:
            return f"{self.device} ({self.note})"
        if self.physical_id is None:
            return self.device
        return f"{self.device} (physical GPU {self.physical_id}, lock {self.lock_path})"

    def __enter__(self) -> DeviceLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(path: Path) -> IO | None:
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")  # for humans inspecting the lock dir; the flock is what counts
    f.flush()
    return f


def slot_paths(pool: list[str], jobs_per_gpu: int = 1) -> list[tuple[str, Path]]:
    """(GPU, lock file) of every job slot, the first slot of each GPU before any second one, so
    jobs spread over the GPUs before they share one. Keyed by physical id (not position) so
    that jobs on one node with different CUDA_VISIBLE_DEVICES lists contend for the right GPU."""
    directory = lock_dir()
    slots = []
    for slot in range(jobs_per_gpu):
        for gpu in pool:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)
            slots.append((gpu, directory / (f"gpu-{name}.lock" if slot == 0 else f"gpu-{name}-slot{slot}.lock")))
    return slots


def _acquire(pool: list[str], timeout: float, jobs_per_gpu: int = 1) -> DeviceLease:
    directory = lock_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    slots = slot_paths(pool, jobs_per_gpu)
    deadline = time.monotonic() + timeout
    backoff = 0.1
    while True:
        for gpu, path in slots:
            if (f := _try_lock(path)) is not None:
                previous = os.environ.get("CUDA_VISIBLE_DEVICES", _UNSET)
                os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # so this process sees it as cuda:0
                return DeviceLease("cuda:0", gpu, path, f, previous)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"no free GPU slot after {timeout:g} s: all {len(slots)} slot(s) "
                f"(GPUs {','.join(pool)}) are held by other jobs; lock dir {directory}. "
                f"Check that snakemake --resources gpu=N does not exceed the number of slots "
                f"({len(pool)} GPU(s) x train.jobs_per_gpu {jobs_per_gpu}) and look for stray processes holding locks there.")
        # Jitter so jobs started together do not retry in lockstep.
        time.sleep(min(remaining, backoff * random.uniform(0.5, 1.5)))
        backoff = min(backoff * 2, 5.0)


def select_device(requested: str, timeout: float = 600.0, jobs_per_gpu: int = 1) -> DeviceLease:
    """Lease a device for this process: "cpu", "cuda" (must get a GPU) or "auto" (GPU if any);
    up to `jobs_per_gpu` processes share one GPU.

    Call before any torch.cuda.* use: CUDA reads CUDA_VISIBLE_DEVICES once, at init.
    """
    if requested not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', not {requested!r}")
    if requested == "cpu":
        return DeviceLease("cpu")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # is_initialized() does not init
        raise RuntimeError("select_device() called after CUDA was initialised; "
                           "CUDA_VISIBLE_DEVICES can no longer take effect")
    pool = gpu_pool()
    if not pool:
        if requested == "auto":
            return DeviceLease("cpu")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(
            f"config asks for device 'cuda' but no GPU is visible: CUDA_VISIBLE_DEVICES="
            f"{'(unset)' if visible is None else repr(visible)}, "
            f"nvidia-smi found {nvidia_smi_count()}")
    return _acquire(pool, timeout, jobs_per_gpu)


def cuda_usable() -> bool:
    """Whether torch can use the GPU this process sees (a driver and a device). Call after
    leasing: CUDA reads CUDA_VISIBLE_DEVICES when it starts."""
    import torch

    return torch.cuda.is_available()


def training_device(requested: str, timeout: float = 600.0, jobs_per_gpu: int = 1) -> DeviceLease:
    """`select_device`, then make sure torch can use the leased GPU. If it cannot, `auto`
    falls back to the CPU (logged, and recorded in the lease's description) and `cuda`
    stops with a message naming the setting."""
    lease = select_device(requested, timeout, jobs_per_gpu)
    if lease.device == "cpu" or cuda_usable():
        return lease
    why = (f"GPU {lease.physical_id} was assigned (CUDA_VISIBLE_DEVICES) and torch cannot use it "
           "(torch.cuda.is_available() is False: no working NVIDIA driver on this node?)")
    lease.release()
    if requested == "auto":
        note = f"train.device auto fell back to the CPU: {why}"
        logging.getLogger(__name__).warning(note)
        return DeviceLease("cpu", note=note)
    raise RuntimeError(f"config train.device is 'cuda', but {why}. Set train.device: auto to fall back to "
                       "the CPU on such nodes, or cpu, or run on a node with a working GPU")
