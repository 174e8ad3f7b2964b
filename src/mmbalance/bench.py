"""Throughput of one training step at the papers' input sizes (a benchmark,
not a test): `python -m mmbalance benchmark [--device cuda] [--backbones ...] [--fusions ...]`.

* ResNet18 at width 64 with recipe-A spectrograms (257 x 188) and 3 RGB frames
  of 224 x 224 (MLB's CREMA-D setting).
* Conformer at the MLB sizes (random weights: speed does not depend on them)
  on the embeddings of a 3 s clip: 149 wav2vec2 CNN steps into the 12-layer
  wav2vec2-large and 90 face-frame EfficientNet-B2 features (30 fps), each then
  the 5-layer Conformer. Also the frozen extraction of one such clip (wav2vec2
  CNN + EfficientNet-B2 on 90 frames of 288 px), which runs once per clip.

Joint training with Adam. Prints ms per step, samples per second and, on a
GPU, peak memory.
"""

from __future__ import annotations

import time

import torch

from mmbalance.balancers import build_balancer
from mmbalance.config import deep_merge, validate
from mmbalance.models.multimodal import build_model
from mmbalance.step import training_step

PAPER_INPUTS = {
    "resnet18": {"audio": (257, 188), "video": (3, 3, 224, 224)},
    "conformer": {"audio": (149, 512), "video": (90, 1408)},
}
# The schema's defaults (the MLB sizes), untrained.
CONFORMER = {"name": "conformer"} | deep_merge(validate({})["backbones"]["conformer"], {"audio": {"weights": "random"}, "video": {"weights": "random"}})
BACKBONES = {"resnet18": {"name": "resnet18", "width": 64}, "conformer": CONFORMER}


def _timed(step, steps: int, warmup: int, device: str) -> float:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        step()
    synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - began) / steps


def time_training_step(backbone: str, fusion: str, batch_size: int, device: str, steps: int, warmup: int = 2) -> dict:
    torch.manual_seed(0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    balancer = build_balancer("joint", {})
    model = build_model(["audio", "video"], BACKBONES[backbone], fusion, 6, heads_are_probes=True).to(device)
    balancer.setup(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = {m: torch.randn(batch_size, *shape, device=device) for m, shape in PAPER_INPUTS[backbone].items()}
    labels = torch.randint(0, 6, (batch_size,), device=device)
    model.train()
    seconds = _timed(lambda: training_step(model, balancer, optimizer, inputs, labels, epoch=0), steps, warmup, device)
    result = {"backbone": backbone, "fusion": fusion, "batch": batch_size, "device": device,
              "ms_per_step": 1000 * seconds, "samples_per_s": batch_size / seconds,
              "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def time_extraction(device: str, steps: int, warmup: int = 1) -> dict:
    """Frozen front-ends on one 3 s clip with 90 frames (done once per clip)."""
    from mmbalance.data.store.embeddings import FrozenExtractors

    extractors = FrozenExtractors(CONFORMER, device)
    waveform = torch.randn(48000).numpy()
    frames = torch.randint(0, 255, (90, 288, 288, 3), dtype=torch.uint8).numpy()
    seconds = _timed(lambda: (extractors.audio_features(waveform), extractors.frame_features(frames)), steps, warmup, device)
    return {"ms_per_clip": 1000 * seconds, "clips_per_s": 1 / seconds}


def run(backbones: list[str], fusions: list[str], batch_size: int | None, device: str, steps: int, threads: int, extraction: bool) -> None:
    torch.set_num_threads(threads)
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else f"{threads} CPU thread(s)"
    print(f"One training step (Joint + Adam), random weights, torch {torch.__version__}, {gpu}")
    for backbone in backbones:
        batch = batch_size or (32 if backbone == "resnet18" else 8)  # MLB's batch sizes
        shapes = ", ".join(f"{m} {s}" for m, s in PAPER_INPUTS[backbone].items())
        print(f"{backbone}: inputs {shapes}")
        for fusion in fusions:
            r = time_training_step(backbone, fusion, batch, device, steps)
            memory = f", peak {r['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r else ""
            print(f"  {fusion:12s} batch {batch:3d} on {device}: {r['ms_per_step']:8.1f} ms/step, "
                  f"{r['samples_per_s']:7.1f} samples/s, {r['parameters_m']:.1f} M parameters{memory}")
    if extraction:
        r = time_extraction(device, steps)
        print(f"conformer extraction (3 s audio + 90 frames of 288 px) on {device}: {r['ms_per_clip']:.1f} ms/clip, {r['clips_per_s']:.2f} clips/s")
