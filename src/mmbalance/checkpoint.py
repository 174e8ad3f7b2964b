"""A training cell's resume state: safe to load, healed when damaged, owned by one process.

Each cell keeps, in results/checkpoints/<cell>/ (never a declared output, so
Snakemake does not delete it with a failed job's outputs):

* ``last.pt``: the state after the last finished epoch (model, optimizer,
  scheduler, RNG states, balancer state, history, best epoch, MLflow run id);
* ``final.pt``: once the cell has finished, what its outputs are made of
  (history, best epoch's weights and test probabilities, run id). A rerun of a
  finished cell with the same settings, code, data and device (e.g. after the
  scheduler was killed while the job ran) rewrites the outputs from it instead
  of training again: training is deterministic, so it would give the same
  numbers. Delete the file to train the cell again anyway;
* ``lock``: held (flock) by the process training the cell, so two processes
  never train one cell; the kernel drops it when the process dies.

Everything is loaded with ``torch.load(weights_only=True)``: only tensors and
plain Python types, never arbitrary pickled objects, because a results folder
may be shared or copied from elsewhere. A file that does not load (truncated,
corrupt, or a pickle with code in it) is set aside as ``<name>.corrupt`` with
a warning naming it, and the cell starts again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from mmbalance.io import write_atomic

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parent


class CellBusyError(RuntimeError):
    """Another live process holds the cell's lock."""


class CellLock:
    """An exclusive, non-blocking flock on ``<folder>/lock`` for the life of the process."""

    def __init__(self, folder: Path, cell: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "lock"
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise CellBusyError(
                f"cell {cell} is being trained by another process (pid {holder}, lock {self.path}); "
                "wait for it to finish or stop it, then run again"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # drops the flock


def remove_stale_temporaries(*folders: Path) -> None:
    """Temp files of atomic writes a killed process left behind (only call while holding the cell's lock)."""
    for folder in folders:
        for stale in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else []:
            log.info("removing %s, left by a killed write", stale)
            stale.unlink(missing_ok=True)


def code_fingerprint() -> str:
    """Hash of the package's Python sources: a finished cell is reused only with the same code."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def save(path: Path, state: dict) -> None:
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def load(path: Path, device: torch.device | str = "cpu") -> dict | None:
    """The state in ``path``, or None when there is none or it does not load (then it is set aside)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"holds a {type(state).__name__}, not a state dict")
        return state
    except Exception as error:  # truncated zip, bad pickle opcode, a refused global, wrong type ...
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning("%s does not load safely (%s: %s); set aside as %s, the cell starts again", path, type(error).__name__, reason[:300], aside)
        return None


def rng_states(generators: dict[str, torch.Generator]) -> dict:
    """Every RNG the loop draws from (the global ones and its own `generators`, e.g. the data
    order and the augmentation), as tensors and plain types (loadable with weights_only)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    # CUDA's generators drive dropout and noise (OGM-GE's) in a GPU run.
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "generators": {key: generator.get_state() for key, generator in generators.items()},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_states(states: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
    for key, generator in generators.items():
        generator.set_state(states["generators"][key].cpu())
    numpy = states["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
