"""Throughput of one training step at the papers' input sizes (a benchmark,
not a test): `python -m mmbalance benchmark [--device cuda] [--fusion ...]`.

ResNet18 at width 64 with recipe-A spectrograms (257 x 188) and 3 RGB frames of
224 x 224 (MLB's CREMA-D setting); Joint training with Adam. Prints ms per step,
samples per second and, on a GPU, peak memory.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mmbalance.models.multimodal import build_model

PAPER_INPUTS = {"audio": (257, 188), "video": (3, 3, 224, 224)}


def time_training_step(fusion: str, batch_size: int, device: str, steps: int, warmup: int = 2, width: int = 64) -> dict:
    torch.manual_seed(0)
    model = build_model(["audio", "video"], {"name": "resnet18", "width": width}, fusion, 6, heads_are_probes=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = {m: torch.randn(batch_size, *shape, device=device) for m, shape in PAPER_INPUTS.items()}
    labels = torch.randint(0, 6, (batch_size,), device=device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for step in range(warmup + steps):
        if step == warmup:
            synchronize()
            began = time.perf_counter()
        out = model(inputs)
        loss = F.cross_entropy(out.fused, labels) + out.probe_loss(labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize()
    seconds = (time.perf_counter() - began) / steps
    result = {"fusion": fusion, "batch": batch_size, "device": device, "ms_per_step": 1000 * seconds, "samples_per_s": batch_size / seconds}
    if device.startswith("cuda"):
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def run(fusions: list[str], batch_size: int, device: str, steps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    print(f"ResNet18 (width 64), audio {PAPER_INPUTS['audio']}, video {PAPER_INPUTS['video']}, Joint + Adam, torch {torch.__version__}, {threads} CPU thread(s)")
    for fusion in fusions:
        r = time_training_step(fusion, batch_size, device, steps)
        memory = f", peak {r['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r else ""
        print(f"{fusion:12s} batch {batch_size:3d} on {device}: {r['ms_per_step']:8.1f} ms/step, {r['samples_per_s']:7.1f} samples/s{memory}")
