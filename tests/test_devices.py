"""GPU slot leasing, simulated without a GPU via CUDA_VISIBLE_DEVICES and a fake nvidia-smi."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmbalance import devices
from mmbalance.devices import select_device

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Child process: take a lease, report the physical id, hold it for argv[1] seconds.
HOLDER = """
import sys, time
from mmbalance.devices import select_device
lease = select_device("cuda", timeout=5)
print(lease.physical_id, flush=True)
time.sleep(float(sys.argv[1]))
"""


@pytest.fixture(autouse=True)
def lock_env(tmp_path, monkeypatch):
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # restored after each test
    return tmp_path / "locks"


def spawn_holder(seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(seconds)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_slots_in_one_process_conflict_and_time_out(monkeypatch, lock_env):
    first = select_device("cuda")
    assert (first.device, first.physical_id) == ("cuda:0", "3")
    assert first.lock_path == lock_env / "gpu-3.lock"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    # A real second job would inherit the full list; select_device narrowed ours.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    # Separate open() -> separate open file description, so flock conflicts in-process too.
    second = select_device("cuda")
    assert second.physical_id == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    start = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        select_device("cuda", timeout=0.3)
    assert time.monotonic() - start < 3
    msg = str(err.value)
    assert "2 slot(s)" in msg and str(lock_env) in msg and "--resources gpu=N" in msg

    first.release()
    first.release()  # idempotent
    with select_device("cuda", timeout=0.3) as again:
        assert again.physical_id == "3"
        assert "physical GPU 3" in again.describe() and "gpu-3.lock" in again.describe()
    second.release()


def test_release_restores_visible_devices(monkeypatch):
    with select_device("cuda") as lease:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert lease._file is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_uuid_ids_and_slot_mapping(monkeypatch, lock_env):
    uuid = "GPU-8f2a0c1e-1234-5678-9abc-def012345678"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f" 1 ,{uuid}")
    held = select_device("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f" 1 ,{uuid}")
    lease = select_device("auto")
    assert (held.physical_id, lease.physical_id) == ("1", uuid)
    assert lease.lock_path == lock_env / f"gpu-{uuid}.lock"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == uuid
    held.release()
    lease.release()


def test_two_processes_take_different_slots():
    procs = [spawn_holder(1.5) for _ in range(2)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        ids.append(out.strip())
    assert sorted(ids) == ["3", "5"]


def test_sigkill_releases_slot(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    p = spawn_holder(60)
    try:
        assert p.stdout.readline().strip() == "3"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
        with pytest.raises(TimeoutError):
            select_device("cuda", timeout=0.2)  # held by the child
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        p.stdout.close()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with select_device("cuda", timeout=0.3) as lease:
        assert lease.physical_id == "3"


def test_cpu_never_touches_locks(lock_env):
    lease = select_device("cpu")
    assert (lease.device, lease.physical_id, lease.lock_path) == ("cpu", None, None)
    assert lease.describe() == "cpu"
    assert not lock_env.exists()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    lease.release()


def test_cuda_without_gpu_raises(monkeypatch, lock_env):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(devices, "nvidia_smi_count", lambda: 0)
    with pytest.raises(RuntimeError, match="config asks for device 'cuda' but no GPU is visible: "
                                           "CUDA_VISIBLE_DEVICES='', nvidia-smi found 0"):
        select_device("cuda")
    assert not lock_env.exists()


def test_auto_without_gpu_gives_cpu(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    assert devices.nvidia_smi_count() == 0
    assert select_device("auto").device == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with pytest.raises(RuntimeError, match=r"CUDA_VISIBLE_DEVICES=\(unset\), nvidia-smi found 0"):
        select_device("cuda")


def test_pool_from_nvidia_smi(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                    "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.gpu_pool() == ["0", "1"]
    with select_device("auto") as lease:
        assert (lease.device, lease.physical_id) == ("cuda:0", "0")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_rejects_unknown_device():
    with pytest.raises(ValueError):
        select_device("cuda:1")


def test_a_leased_gpu_torch_cannot_use_falls_back_with_auto(monkeypatch, lock_env):
    """A GPU assigned on a node without a working driver: auto runs on the CPU and says why."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(devices, "cuda_usable", lambda: False)
    lease = devices.training_device("auto", timeout=0.2)
    assert lease.device == "cpu" and lease.physical_id is None
    assert lease.describe().startswith("cpu (train.device auto fell back to the CPU: GPU 3 was assigned")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"  # restored
    with select_device("cuda", timeout=0.2) as again:  # the slot was given back
        assert again.physical_id == "3"


def test_a_leased_gpu_torch_cannot_use_stops_cuda_naming_the_setting(monkeypatch, lock_env):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(devices, "cuda_usable", lambda: False)
    with pytest.raises(RuntimeError, match=r"config train.device is 'cuda', but GPU 3 was assigned .* "
                                           r"Set train.device: auto to fall back to the CPU"):
        devices.training_device("cuda", timeout=0.2)
    with select_device("cuda", timeout=0.2) as again:
        assert again.physical_id == "3"


def test_a_usable_gpu_is_kept(monkeypatch, lock_env):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setattr(devices, "cuda_usable", lambda: True)
    with devices.training_device("auto", timeout=0.2) as lease:
        assert (lease.device, lease.physical_id, lease.note) == ("cuda:0", "5", "")


def test_cuda_usable_asks_torch():
    import torch

    assert devices.cuda_usable() is torch.cuda.is_available()


def test_jobs_per_gpu_spreads_over_gpus_then_shares_them(monkeypatch, lock_env):
    """train.jobs_per_gpu 2 on GPUs 3 and 5: the first two jobs take one GPU each, the next two
    share them, a fifth finds no slot."""
    leases = []
    for _ in range(4):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
        leases.append(select_device("cuda", jobs_per_gpu=2))
    assert [lease.physical_id for lease in leases] == ["3", "5", "3", "5"]
    assert [lease.lock_path.name for lease in leases] == ["gpu-3.lock", "gpu-5.lock", "gpu-3-slot1.lock", "gpu-5-slot1.lock"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(TimeoutError, match="4 slot\\(s\\).*jobs_per_gpu 2"):
        select_device("cuda", timeout=0.2, jobs_per_gpu=2)
    for lease in leases:
        lease.release()
