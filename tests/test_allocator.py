"""tcmalloc for the commands that train (mmbalance.allocator): which library is chosen, when
the command is re-executed, and that a real training job runs on it with identical results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mmbalance import allocator


def fake_library(directory: Path, name: str = "libtcmalloc_minimal.so.4") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"")
    return directory / name


def test_auto_takes_the_first_tcmalloc_found_and_system_takes_none(tmp_path):
    empty, first, second = tmp_path / "empty", tmp_path / "first", tmp_path / "second"
    empty.mkdir()
    found = fake_library(first, "libtcmalloc.so.4")
    fake_library(second)
    dirs = (empty, first, second)
    assert allocator.chosen_library({}, dirs) == found
    assert allocator.chosen_library({"MMBALANCE_ALLOCATOR": "auto"}, (empty,)) is None  # glibc's malloc, as before
    assert allocator.chosen_library({"MMBALANCE_ALLOCATOR": "system"}, dirs) is None
    other = fake_library(tmp_path / "elsewhere", "libjemalloc.so.2")
    assert allocator.chosen_library({"MMBALANCE_ALLOCATOR": str(other)}, dirs) == other


def test_a_missing_library_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match=r"MMBALANCE_ALLOCATOR='/no/such/lib.so': no such library file"):
        allocator.chosen_library({"MMBALANCE_ALLOCATOR": "/no/such/lib.so"}, ())


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD is Linux's")
def test_only_training_commands_are_re_executed_and_never_twice(tmp_path):
    library = fake_library(tmp_path)
    dirs = (tmp_path,)
    assert allocator.preload_command(["catalog", "--dataset", "x"], {}, dirs) is None
    assert allocator.preload_command([], {}, dirs) is None
    environ = allocator.preload_command(["train", "--threads", "1"], {"PATH": "/bin"}, dirs)
    assert environ == {"PATH": "/bin", "LD_PRELOAD": str(library)}
    # The re-executed command finds its allocator preloaded and runs as it is.
    assert allocator.preload_command(["train"], environ, dirs) is None
    # A user's own allocator is respected; another preloaded library is kept after ours.
    assert allocator.preload_command(["train"], {"LD_PRELOAD": "/opt/libjemalloc.so.2"}, dirs) is None
    assert allocator.preload_command(["tune"], {"LD_PRELOAD": "/opt/libfoo.so"}, dirs)["LD_PRELOAD"] == f"{library} /opt/libfoo.so"


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD is Linux's")
def test_a_training_job_runs_on_tcmalloc_with_the_same_results(tiny_store, train_settings, tmp_path):
    """.ci/run installs Debian's libtcmalloc-minimal4, so the command really re-executes here."""
    assert allocator.find_tcmalloc() is not None, "no tcmalloc on this machine: apt-get install libtcmalloc-minimal4"
    settings = json.dumps(train_settings("ogm_ge", epochs=2))
    histories, logs = {}, {}
    for choice in ("auto", "system"):
        out = tmp_path / choice
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {"MMBALANCE_ALLOCATOR": choice}
        job = subprocess.run([sys.executable, "-m", "mmbalance", "train", "--features", str(tiny_store), "--settings", settings,
                              "--out", str(out), "--checkpoint", str(tmp_path / f"{choice}-ckpt" / "last.pt"), "--threads", "1"],
                             env=env, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, job.stdout + job.stderr
        logs[choice] = job.stdout
        histories[choice] = pd.read_csv(out / "history.csv").drop(columns=["seconds"])
    assert "memory allocator: tcmalloc" in logs["auto"]
    assert "memory allocator: the system's malloc" in logs["system"]
    pd.testing.assert_frame_equal(histories["auto"], histories["system"])
