"""The feature store: media decoded once into memory-mappable arrays.

Layout of `results/features/<dataset>/`:

* `frames.npy`        uint8   (N, T, H, W, 3)  RGB frames at the recipe's fps
* `spectrograms.npy`  float16 (N, F, S)        log-magnitude STFT
* `index.csv`         one row per clip (row = array position): clip, actor, label,
                      skipped + reason, padded frames, and the split of each fold
                      (`fold1`, `fold2`, ...: train / val / test / empty)
* `meta.json`         recipe, class names, shapes, and a hash of the arrays

Skipped clips keep their (zero) row so positions never shift.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmbalance.data import cremad, media
from mmbalance.io import file_sha256, write_text_atomic

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_cremad(raw_dir: Path, folds_file: Path, out_dir: Path, recipe: dict) -> pd.DataFrame:
    """Decode every CREMA-D clip once and write the store; returns the index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = cremad.list_clips(raw_dir)
    folds = cremad.read_folds(folds_file)
    size, num_frames = recipe["frame_size"], recipe["frames"]
    num_samples = int(round(recipe["seconds"] * recipe["sample_rate"]))
    to_spectrogram = media.LogSpectrogram(recipe["n_fft"], recipe["hop_length"])
    spec_shape = to_spectrogram(np.zeros(num_samples, dtype=np.float32)).shape

    frames_tmp, specs_tmp = out_dir / "frames.npy.tmp", out_dir / "spectrograms.npy.tmp"
    frames = np.lib.format.open_memmap(frames_tmp, "w+", np.uint8, (len(clips), num_frames, size, size, 3))
    specs = np.lib.format.open_memmap(specs_tmp, "w+", np.float16, (len(clips),) + spec_shape)
    rows = []
    for row, clip in enumerate(clips):
        entry = {"clip": clip.name, "actor": clip.actor, "label": clip.label, "row": row, "skipped": False, "reason": "", "padded_frames": 0}
        try:
            waveform = media.decode_audio(clip.wav, recipe["sample_rate"])
            specs[row] = to_spectrogram(media.fit_length(waveform, num_samples))
            frames[row], entry["padded_frames"] = media.decode_frames(clip.video, num_frames, recipe["fps"], size)
        except media.MediaError as error:
            entry.update(skipped=True, reason=str(error))
            log.warning("skipping %s: %s", clip.name, error)
        for fold, splits in folds.items():
            entry[f"fold{fold}"] = next((s for s in cremad.SPLITS if clip.name in splits[s]), "")
        rows.append(entry)
    frames.flush(), specs.flush()
    del frames, specs
    os.replace(frames_tmp, out_dir / "frames.npy")
    os.replace(specs_tmp, out_dir / "spectrograms.npy")

    index = pd.DataFrame(rows)
    listed = set().union(*(s for splits in folds.values() for s in splits.values()))
    unknown = sorted(listed - set(index["clip"]))
    if unknown:
        raise ValueError(f"{folds_file} lists {len(unknown)} clips with no WAV in {raw_dir}, e.g. {unknown[:3]}")
    write_text_atomic(out_dir / "index.csv", index.to_csv(index=False))
    meta = {
        "dataset_format": "cremad",
        "class_names": list(cremad.EMOTIONS),
        "recipe": recipe,
        "clips": len(index),
        "skipped": int(index["skipped"].sum()),
        "frames_shape": [num_frames, size, size, 3],
        "spectrogram_shape": list(spec_shape),
        # Tags every run, so a metric can be traced to the exact features it saw.
        "data_hash": hashlib.sha256(
            "".join(file_sha256(out_dir / f) for f in ("frames.npy", "spectrograms.npy", "index.csv")).encode()
        ).hexdigest()[:16],
    }
    write_text_atomic(out_dir / "meta.json", json.dumps(meta, indent=2))
    return index


@dataclass
class FeatureStore:
    """The whole store in memory, as tensors, with split membership per fold."""

    frames: torch.Tensor  # uint8 (N, T, H, W, 3)
    spectrograms: torch.Tensor  # float16 (N, F, S)
    labels: torch.Tensor  # int64 (N,)
    index: pd.DataFrame
    meta: dict

    @classmethod
    def load(cls, store_dir: Path) -> "FeatureStore":
        store_dir = Path(store_dir)
        for name in ("frames.npy", "spectrograms.npy", "index.csv", "meta.json"):
            if not (store_dir / name).exists():
                raise FileNotFoundError(f"feature store {store_dir} lacks {name}: run the preprocess rule first")
        index = pd.read_csv(store_dir / "index.csv", keep_default_na=False)
        return cls(
            frames=torch.from_numpy(np.load(store_dir / "frames.npy")),
            spectrograms=torch.from_numpy(np.load(store_dir / "spectrograms.npy")),
            labels=torch.tensor(index["label"].to_numpy(), dtype=torch.long),
            index=index,
            meta=json.loads((store_dir / "meta.json").read_text()),
        )

    def to(self, device: torch.device | str) -> "FeatureStore":
        """Keep the whole store on the training device: batches are then index
        lookups, and an epoch is bound by model compute, not by data loading."""
        self.frames, self.spectrograms, self.labels = (t.to(device) for t in (self.frames, self.spectrograms, self.labels))
        return self

    def inputs(self, rows: torch.Tensor, modalities: list[str]) -> dict[str, torch.Tensor]:
        """Model inputs for `rows`: log-spectrograms (B, F, S) float32 and frames
        (B, T, 3, H, W) scaled to [0, 1] and normalised with the ImageNet
        statistics every reference code uses."""
        batch = {}
        if "audio" in modalities:
            batch["audio"] = self.spectrograms[rows].float()
        if "video" in modalities:
            frames = self.frames[rows].permute(0, 1, 4, 2, 3).float() / 255.0
            mean = frames.new_tensor(IMAGENET_MEAN)[:, None, None]
            std = frames.new_tensor(IMAGENET_STD)[:, None, None]
            # Contiguous NCHW: oneDNN's channels-last path (which the permuted view
            # would select) hangs or crashes on narrow convs on CPU.
            batch["video"] = ((frames - mean) / std).contiguous()
        return batch

    @property
    def num_classes(self) -> int:
        return len(self.meta["class_names"])

    def split_rows(self, fold: int, split: str) -> torch.Tensor:
        column = f"fold{fold}"
        if column not in self.index.columns:
            folds = [c[4:] for c in self.index.columns if c.startswith("fold")]
            raise KeyError(f"fold {fold} is not in the feature store (it has folds {folds})")
        keep = (self.index[column] == split) & ~self.index["skipped"].astype(bool)
        return torch.tensor(self.index.index[keep].to_numpy(), dtype=torch.long)
