"""Throughput of the input pipeline and of the training step around it, at the papers' sizes
(a benchmark, not a test): `python -m mmbalance benchmark --pipeline`.

The shapes are OGM-GE's CREMA-D setting: one 224 px frame per clip (kept in the store at
256 px, so training crops have room) and a 257 x 188 log-spectrogram; batch 64, SGD.
It prints:

* the data path alone (samples/s): batches from a feature store copied into memory and
  from one streamed from its memory map, each without and with the reference augmentation,
  next to a loader written the way the reference code loads (a torch DataLoader with two
  workers, each clip's frame a 480 x 360 JPEG decoded with PIL and transformed by
  torchvision's RandomResizedCrop, flip, ToTensor and Normalize, its spectrogram an .npy);
* the training step: CPU time per step of the model alone (inputs built once) and of the
  full step (batch assembly included), fp32 and bf16 autocast, contiguous and channels-last,
  the configurations taking turns so that a noisy neighbour slows them all alike;
* the process's anonymous (non-file-backed) memory with each store placement: a streamed
  store leaves its arrays in the page cache, shared by every job that reads them.

`--startup` instead times what a training job imports before its first step, each in a
fresh interpreter (see `startup`).

Figures are only comparable within one run: machines differ.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmbalance import allocator
from mmbalance.balancers import build_balancer
from mmbalance.config import validate
from mmbalance.data.augment import IMAGENET_MEAN, IMAGENET_STD
from mmbalance.data.store.features import FeatureStore
from mmbalance.models.multimodal import build_model
from mmbalance.step import training_step

FRAME, STORED, SOURCE = 224, 256, (480, 360)  # model input, store square, CREMA-D's video size
SPECTROGRAM = (257, 188)
CLASSES = 6
OGM_GE = validate({})["methods"]["ogm_ge"]  # the method's default settings


def write_store(root: Path, clips: int, stored: int = STORED) -> Path:
    """A decoded store of random arrays at the papers' shapes, as preprocess writes one, its
    frames kept at `stored` px (the presets' 256; FRAME for a recipe with store_scale 1)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    frames = np.lib.format.open_memmap(root / "frames.npy", "w+", np.uint8, (clips, 1, stored, stored, 3))
    spectrograms = np.lib.format.open_memmap(root / "spectrograms.npy", "w+", np.float16, (clips, *SPECTROGRAM))
    for start in range(0, clips, 256):
        stop = min(clips, start + 256)
        frames[start:stop] = rng.integers(0, 256, (stop - start, 1, stored, stored, 3), dtype=np.uint8)
        spectrograms[start:stop] = rng.normal(-4, 2, (stop - start, *SPECTROGRAM)).astype(np.float16)
    frames.flush(), spectrograms.flush()
    index = pd.DataFrame({"clip": [f"c{i}" for i in range(clips)], "label": rng.integers(0, CLASSES, clips), "skipped": False,
                          "fold1": "train", "source_width": SOURCE[0], "source_height": SOURCE[1]})
    index.to_csv(root / "index.csv", index=False)
    meta = {"kind": "decoded", "recipe": {"frame_size": FRAME, "store_size": stored}, "class_names": [str(c) for c in range(CLASSES)]}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def write_reference_files(root: Path, clips: int) -> Path:
    """What the reference loaders read: one JPEG per frame, one spectrogram file per clip."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    # Smooth images compress like video frames (noise would make the JPEGs unrealistically large).
    base = rng.integers(0, 256, (SOURCE[1] // 8, SOURCE[0] // 8, 3), dtype=np.uint8)
    for i in range(clips):
        image = Image.fromarray(np.roll(base, i, axis=1)).resize(SOURCE)
        image.save(root / f"{i}.jpg", quality=90)
        np.save(root / f"{i}.npy", rng.normal(-4, 2, SPECTROGRAM).astype(np.float32))
    return root


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """Per item: PIL decodes the frame's JPEG, torchvision transforms it, numpy reads the spectrogram."""

    def __init__(self, root: Path, clips: int):
        from torchvision import transforms

        self.root, self.clips = root, clips
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(FRAME), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return self.clips

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.root / f"{i}.jpg") as image:
            frame = self.transform(image.convert("RGB"))
        return torch.from_numpy(np.load(self.root / f"{i}.npy")), frame[None], i % CLASSES


def samples_per_second(batches, clips: int) -> float:
    synchronize = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    synchronize()
    began = time.perf_counter()
    for _ in batches:
        pass
    synchronize()  # the device's queued work counts too
    return clips / (time.perf_counter() - began)


def anonymous_memory_mb() -> float:
    """RssAnon of this process: its private memory, without file pages it maps."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def data_path(store_dir: Path, reference_dir: Path, clips: int, batch: int, device: str, workers: int) -> None:
    rows = torch.arange(clips)
    print(f"data path: {clips} clips, batch {batch}, 1 frame {STORED} px -> {FRAME} px + spectrogram {SPECTROGRAM}, on {device}; "
          f"memory allocator: {allocator.active()} (mmbalance.allocator)")
    reference = torch.utils.data.DataLoader(ReferenceStyleDataset(reference_dir, clips), batch_size=batch, shuffle=True,
                                            num_workers=workers, persistent_workers=False)
    samples_per_second(reference, clips)  # warm the file cache and the workers' imports
    reference_rate = samples_per_second(reference, clips)
    print(f"  reference-style loader ({workers} workers, JPEG + torchvision, augmented): {reference_rate:9.0f} samples/s")
    # The floor under any host-side path: writing the float32 frames the model takes, from uint8
    # already in place (no gather, no resize, no spectrogram).
    ready = torch.randint(0, 256, (batch, 3, FRAME, FRAME), dtype=torch.uint8)
    widened = torch.empty(batch, 3, FRAME, FRAME)
    rate = samples_per_second((widened.copy_(ready) for _ in range(clips // batch)), clips)
    print(f"  ceiling: only widening {FRAME} px uint8 frames to float32 ({4 * 3 * FRAME * FRAME * rate / 1e9:.1f} GB/s written): "
          f"{rate:9.0f} samples/s = {rate / reference_rate:5.1f}x")
    for placement, budget in (("in memory", None), ("streamed", 0)):
        before = anonymous_memory_mb()
        store = FeatureStore.load(store_dir).place(device, budget)
        held = anonymous_memory_mb() - before
        for augment in (None, torch.Generator().manual_seed(0)):
            samples_per_second(store.batches(rows, batch, ["audio", "video"], augment), clips)  # warm
            rate = samples_per_second(store.batches(rows, batch, ["audio", "video"], augment), clips)
            label = "augmented" if augment is not None else "plain"
            print(f"  store {placement:9s} {label:9s}: {rate:9.0f} samples/s = {rate / reference_rate:5.1f}x the reference-style "
                  f"loader; store adds {held:7.1f} MB of private memory")
        del store
    # A recipe without augmentation can keep frames at the model's size (store_scale 1): no resize.
    store = FeatureStore.load(write_store(store_dir.parent / "store-at-frame-size", clips, FRAME)).place(device, None)
    samples_per_second(store.batches(rows, batch, ["audio", "video"]), clips)
    rate = samples_per_second(store.batches(rows, batch, ["audio", "video"]), clips)
    print(f"  store in memory plain, kept at {FRAME} px (store_scale 1): {rate:9.0f} samples/s = {rate / reference_rate:5.1f}x")


def cpu_seconds_per_step(step, steps: int) -> float:
    began = time.process_time()
    for _ in range(steps):
        step()
    return (time.process_time() - began) / steps


def training_step_times(store_dir: Path, batch: int, steps: int, rounds: int) -> None:
    """CPU time per step on one thread, taking turns between configurations (on the CPU
    whatever --device says: process time measures CPU work only)."""
    torch.set_num_threads(1)
    store = FeatureStore.load(store_dir).place("cpu")
    rows = torch.arange(batch)
    labels = store.labels[rows]
    generator = torch.Generator().manual_seed(0)
    fixed = store.inputs(rows, ["audio", "video"], generator)
    capability = torch.backends.cpu.get_cpu_capability()
    configs = {}
    for precision in ("fp32", "bf16"):
        for layout in ("contiguous", "channels_last"):
            torch.manual_seed(0)
            model = build_model(["audio", "video"], {"name": "resnet18", "width": 64}, "late_linear", CLASSES, heads_are_probes=True)
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            balancer = build_balancer("ogm_ge", OGM_GE)
            balancer.setup(model)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
            model.train()
            model_only = lambda m=model, b=balancer, o=optimizer, p=precision: training_step(m, b, o, fixed, labels, 0, precision=p)
            full = lambda m=model, b=balancer, o=optimizer, p=precision: training_step(
                m, b, o, store.inputs(rows, ["audio", "video"], generator), labels, 0, precision=p)
            model_only()  # warm up (first-call allocations, oneDNN kernel choice)
            configs[(precision, layout)] = {"model only": model_only, "full step": full, "times": {"model only": [], "full step": []}}
    for _ in range(rounds):
        for config in configs.values():
            for kind in ("model only", "full step"):
                config["times"][kind].append(cpu_seconds_per_step(config[kind], steps))
    print(f"training step (OGM-GE, SGD, ResNet18 width 64, batch {batch}, 1 thread, CPU time per step, median of {rounds} rounds "
          f"of {steps}; torch's CPU capability {capability}):")
    baseline = float(np.median(configs[("fp32", "contiguous")]["times"]["model only"]))
    for (precision, layout), config in configs.items():
        model_only, full = (float(np.median(config["times"][k])) for k in ("model only", "full step"))
        print(f"  {precision} {layout:13s}: model only {1000 * model_only:8.1f} ms, full step {1000 * full:8.1f} ms "
              f"(model only / full = {model_only / full:4.2f}); {baseline / model_only:4.2f}x fp32 contiguous")


def run(clips: int, batch: int, device: str, steps: int, rounds: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mmbalance-bench-") as tmp:
        store_dir = write_store(Path(tmp) / "store", clips)
        reference_dir = write_reference_files(Path(tmp) / "reference", clips)
        data_path(store_dir, reference_dir, clips, batch, device, workers)
        if rounds > 0:  # --rounds 0: the data path only
            training_step_times(store_dir, batch, steps, rounds)


# What a ResNet training job imports before its first step, cumulatively: each line runs in a
# fresh interpreter, so a line's time includes the lines above it.
STARTUP_STEPS = [
    ("python itself", "pass"),
    ("+ torch", "import torch"),
    ("+ torch._dynamo (torch.optim imports it on an optimizer's construction and on each step)",
     "import torch._dynamo"),
    ("+ mmbalance's training code (pandas, the ResNet, the balancers, the feature store)",
     "import mmbalance.train, mmbalance.balancers, mmbalance.models.multimodal"),
    ("+ the MLflow client and its SQLite store (SQLAlchemy, alembic)",
     "from mlflow.tracking import MlflowClient; import mlflow.store.tracking.sqlalchemy_store"),
]


def startup(repeats: int = 3) -> None:
    """Wall time of each cumulative import set of a training job (median of `repeats` fresh
    interpreters): the floor under a job's time to its first step."""
    import statistics
    import subprocess
    import sys

    print(f"training job start-up: cumulative imports, each in a fresh interpreter, median of {repeats}")
    code = []
    for label, statement in STARTUP_STEPS:
        code.append(statement)
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", "; ".join(code)], check=True)
            times.append(time.perf_counter() - began)
        print(f"  {statistics.median(times):6.2f} s  {label}")
