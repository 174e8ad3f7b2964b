"""The feature store: media decoded once into memory-mappable arrays.

Layout of `results/features/<dataset>/`:

* `frames.npy`        uint8   (N, T, H, W, 3)  RGB frames at the recipe's fps
* `spectrograms.npy`  float16 (N, F, S)        log-magnitude STFT
* `index.csv`         one row per clip (row = array position): clip, group, label,
                      skipped + kind + reason, padded frames, and the split of each
                      fold (`fold1`, `fold2`, ...: train / val / test / empty)
* `kept_skipped.csv`  per fold, split and class: clips listed, kept, skipped per kind
* `meta.json`         dataset, protocol, recipe, class names, shapes, and a hash of the arrays

Skipped clips keep their (zero) row so positions never shift.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmbalance.data.augment import augment_frames, normalise_pixels, resize_frames
from mmbalance.data.catalog import Catalog, Clip, check_skips, skip_report
from mmbalance.io import disk_full_named, file_sha256, read_json, write_text_atomic

log = logging.getLogger(__name__)

# Array file of each modality, per kind of store.
SKIP_REPORT = "kept_skipped.csv"
STORE_FILES = {
    "decoded": {"audio": "spectrograms.npy", "video": "frames.npy"},
    "embeddings": {"audio": "audio.npy", "video": "video.npy"},
}


def preprocess(catalog_dir: Path, out_dir: Path, recipe: dict, skip_log: Path | None = None,
               max_skipped_fraction: float = 1.0) -> pd.DataFrame:
    """Decode every clip of a catalog once and write the decoded store; returns the index.

    `recipe` is a resolved recipe (mmbalance.data.recipes.resolve). The
    kept/skipped table per fold, split, class and reason is written into the
    store and, when given, to `skip_log` (a log file that survives a failed
    job); a split that skipped more than `max_skipped_fraction` or lost a
    class stops the run after both are written."""
    from mmbalance.data import media  # PyAV and torchaudio: only the jobs that decode need them

    catalog = Catalog.read(catalog_dir)
    decoder = media.ClipDecoder(recipe)  # frames kept at store_size: training crops from them

    def decode(clip: Clip) -> tuple[dict[str, np.ndarray], dict]:
        spectrogram, frames, padded = decoder(clip.audio, clip.video, clip.start, clip.end)
        width, height = media.video_size(clip.video)
        return {"spectrograms.npy": spectrogram, "frames.npy": frames}, {"padded_frames": padded, "source_width": width, "source_height": height}

    arrays = {"frames.npy": (np.uint8, decoder.frames_shape), "spectrograms.npy": (np.float16, decoder.spectrogram_shape)}
    meta = {"kind": "decoded", "recipe": recipe, "frames_shape": list(decoder.frames_shape), "spectrogram_shape": list(decoder.spectrogram_shape)}
    index = write_store(catalog, out_dir, arrays, decode, meta)
    report_skips(catalog, index, Path(out_dir), skip_log, max_skipped_fraction)
    return index


def report_skips(catalog: Catalog, index: pd.DataFrame, out_dir: Path, skip_log: Path | None, max_fraction: float) -> None:
    report = skip_report(index, catalog.classes)
    text = report.to_csv(index=False)
    write_text_atomic(out_dir / SKIP_REPORT, text)
    if skip_log is not None:
        Path(skip_log).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(skip_log), text)
    for _, row in report.iterrows():
        log.info("fold %d %-5s %-30s listed %5d kept %5d", row["fold"], row["split"], row["class_name"], row["listed"], row["kept"])
    check_skips(report, catalog.dataset, max_fraction, str(skip_log or out_dir / SKIP_REPORT))


def write_store(catalog: Catalog, out_dir: Path, arrays: dict[str, tuple], encode, meta: dict) -> pd.DataFrame:
    """Run `encode(clip) -> ({file: array}, {index column: value})` once on every clip of
    the catalog and write the store: one memory-mapped array per file of
    `arrays` ({file: (dtype, per-clip shape)}), renamed into place only when
    complete, then index.csv and meta.json (`meta` plus what every store has).
    A clip whose media cannot be decoded keeps a zero row and is marked skipped,
    with the kind of failure (missing, stub, corrupt, truncated, no_audio, too_short)."""
    from mmbalance.data.media import MediaError
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = catalog.clips
    split_of = {
        fold: {name: split for split, members in splits.items() for name in members} for fold, splits in catalog.folds.items()
    }
    partial = {name: out_dir / f"{name}.tmp" for name in arrays}
    needed = sum(np.dtype(dtype).itemsize * len(clips) * int(np.prod(shape)) for dtype, shape in arrays.values())
    free = shutil.disk_usage(out_dir).free
    if needed > free:
        raise OSError(errno.ENOSPC, f"no space left for the feature store {out_dir}: it needs {needed / 1e9:.2f} GB, "
                                    f"the device has {free / 1e9:.2f} GB free")
    with disk_full_named(partial[next(iter(arrays))]):
        maps = {name: np.lib.format.open_memmap(partial[name], "w+", dtype, (len(clips), *shape)) for name, (dtype, shape) in arrays.items()}
    rows = []
    for row, clip in enumerate(clips):
        entry = {"clip": clip.name, "group": clip.group, "label": clip.label, "row": row, "skipped": False, "skip_kind": "",
                 "reason": "", "padded_frames": 0, "source_width": 0, "source_height": 0}
        entry |= {f"fold{fold}": names.get(clip.name, "") for fold, names in split_of.items()}
        try:
            values, columns = encode(clip)
            entry |= columns
            for name, value in values.items():
                maps[name][row] = value
        except MediaError as error:
            entry.update(skipped=True, skip_kind=error.kind, reason=str(error))
            log.warning("skipping %s: %s", clip.name, error)
        rows.append(entry)
        if (row + 1) % 500 == 0:
            log.info("%d / %d clips", row + 1, len(clips))
    with disk_full_named(partial[next(iter(arrays))]):
        for array in maps.values():
            array.flush()
    del maps
    for name, path in partial.items():
        os.replace(path, out_dir / name)

    index = pd.DataFrame(rows)
    write_text_atomic(out_dir / "index.csv", index.to_csv(index=False))
    meta = meta | {
        "dataset": catalog.dataset,
        "protocol": catalog.protocol,
        "class_names": list(catalog.classes),
        "clips": len(index),
        "skipped": int(index["skipped"].sum()),
        "data_hash": store_hash(out_dir, [*arrays, "index.csv"]),
    }
    write_text_atomic(out_dir / "meta.json", json.dumps(meta, indent=2))
    return index


def store_hash(out_dir: Path, names: list[str]) -> str:
    """Tags every run, so a metric can be traced to the exact features it saw."""
    return hashlib.sha256("".join(file_sha256(out_dir / f) for f in names).encode()).hexdigest()[:16]


@dataclass
class FeatureStore:
    """The store's arrays, memory-mapped, with split membership per fold and the batches of a run.

    Two kinds share the index and the fold logic: `decoded` stores (frames and
    spectrograms, for the ResNet backbone) and `embeddings` stores (frozen
    per-step features, for the Conformer backbone; see data/store/embeddings.py).

    `place(device, budget_mb)` decides where batches come from. A store whose arrays fit
    the budget is copied onto the training device once: a batch is then an index lookup
    there. A larger one stays memory-mapped: each batch's rows are read from the page cache
    (shared by every job on the host that reads the same store) on a background thread,
    one batch ahead of the model, so the disk and the gather overlap the model's work (on
    CUDA the host-to-device copy itself is queued on the compute stream, from pinned
    memory). Both paths turn the same raw rows into the same inputs, so a run's results do
    not depend on which one it took (checked on the CPU).
    """

    arrays: dict[str, np.ndarray | torch.Tensor]  # modality -> raw rows: a memory map, or a tensor on the device
    labels: torch.Tensor  # int64 (N,)
    index: pd.DataFrame
    meta: dict
    # Embeddings only: per-channel (mean, std) over the fold's training clips.
    scale: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    device: torch.device = torch.device("cpu")
    # Decoded stores: (N, 2) width and height of each clip's original frames, for the crop boxes.
    source_size: torch.Tensor | None = None
    pixels: str = "rgb"  # the recipe's `pixels`: how frames are scaled for the model (normalise_pixels)

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "decoded")

    @property
    def frames(self) -> np.ndarray | torch.Tensor:  # uint8 (N, T, S, S, 3), decoded stores
        return self.arrays["video"]

    @property
    def spectrograms(self) -> np.ndarray | torch.Tensor:  # float16 (N, F, S), decoded stores
        return self.arrays["audio"]

    @property
    def resident(self) -> bool:
        return all(isinstance(a, torch.Tensor) for a in self.arrays.values())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size() for a in self.arrays.values())

    @classmethod
    def load(cls, store_dir: Path) -> "FeatureStore":
        store_dir = Path(store_dir)
        if not (store_dir / "meta.json").exists():
            raise FileNotFoundError(f"feature store {store_dir} lacks meta.json: run the preprocess (or extract) rule first")
        meta = read_json(store_dir / "meta.json")
        files = STORE_FILES[meta.get("kind", "decoded")]
        for name in [*files.values(), "index.csv"]:
            if not (store_dir / name).exists():
                raise FileNotFoundError(f"feature store {store_dir} lacks {name}: run the preprocess (or extract) rule first")
        index = pd.read_csv(store_dir / "index.csv", keep_default_na=False)
        sizes = index[["source_width", "source_height"]].to_numpy(np.float64) if "source_width" in index.columns else None
        return cls(
            arrays={m: np.load(store_dir / name, mmap_mode="r") for m, name in files.items()},
            labels=torch.tensor(index["label"].to_numpy(), dtype=torch.long),
            index=index,
            meta=meta,
            source_size=None if sizes is None else torch.from_numpy(sizes),
        )

    def place(self, device: torch.device | str, budget_mb: float | None = None) -> "FeatureStore":
        """Copy the arrays onto `device` when they take at most `budget_mb` (None: always);
        otherwise keep them memory-mapped and stream batches (see the class docstring)."""
        self.device = torch.device(device)
        self.labels = self.labels.to(self.device)
        if budget_mb is None or self.nbytes <= budget_mb * 1e6:
            self.arrays = {m: torch.from_numpy(np.array(a)).to(self.device) if isinstance(a, np.ndarray) else a.to(self.device)
                           for m, a in self.arrays.items()}
            log.info("feature store on %s (%.1f MB)", self.device, self.nbytes / 1e6)
        else:
            log.info("feature store streamed from its memory map (%.1f MB > budget %g MB)", self.nbytes / 1e6, budget_mb)
        return self

    def read(self, rows: torch.Tensor, modalities) -> dict[str, torch.Tensor]:
        """The raw rows of `modalities`, as stored, on the training device."""
        if self.resident:
            rows = rows.to(self.device)
            # index_select copies whole rows; advanced indexing (arrays[m][rows]) was 10x slower on the CPU.
            return {m: torch.index_select(self.arrays[m], 0, rows) for m in modalities}
        positions = rows.cpu().numpy()
        batch = {m: torch.from_numpy(self.arrays[m][positions]) for m in modalities}
        if self.device.type == "cuda":  # pinned: an asynchronous copy, queued behind the running kernels
            batch = {m: x.pin_memory().to(self.device, non_blocking=True) for m, x in batch.items()}
        return batch

    def batches(self, rows: torch.Tensor, batch_size: int, modalities, augment: torch.Generator | None = None):
        """(rows, inputs) for consecutive batches of `rows`. A streamed store reads the next
        batch on a background thread while the caller trains on this one; the conversion
        (and the augmentation's random draws) stay on the caller's thread, in order."""
        chunks = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
        if self.resident or len(chunks) < 2:
            for chunk in chunks:
                yield chunk, self.inputs(chunk, modalities, augment)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read") as reader:
            pending = reader.submit(self.read, chunks[0], modalities)
            for k, chunk in enumerate(chunks):
                raw = pending.result()
                if k + 1 < len(chunks):
                    pending = reader.submit(self.read, chunks[k + 1], modalities)
                yield chunk, self.convert(raw, chunk, augment)

    def inputs(self, rows: torch.Tensor, modalities, augment: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for `rows` (see `convert`)."""
        return self.convert(self.read(rows, modalities), rows, augment)

    def convert(self, raw: dict[str, torch.Tensor], rows: torch.Tensor, augment: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Raw rows -> model inputs. Embeddings: (B, T, C) float32, standardised once
        `standardise` has run. Decoded: log-spectrograms (B, F, S) float32 and frames
        (B, T, 3, H, W) at the recipe's frame_size, normalised with the ImageNet statistics
        every reference code uses; with `augment`, each frame randomly cropped and flipped
        (mmbalance.data.augment), otherwise resized whole."""
        if self.kind == "embeddings":
            batch = {m: x.float() for m, x in raw.items()}
            if self.scale is not None:
                batch = {m: (x - self.scale[m][0]) / self.scale[m][1] for m, x in batch.items()}
            return batch
        batch = {}
        if "audio" in raw:
            batch["audio"] = raw["audio"].float()
        if "video" in raw:
            frames = raw["video"]  # uint8 (B, T, S, S, 3), as stored
            b, t = frames.shape[:2]
            size = self.meta["recipe"]["frame_size"]
            images = frames.flatten(0, 1).permute(0, 3, 1, 2)  # (B*T, 3, S, S): a channels-last view, no copy
            if augment is not None:  # the generator the crops and flips are drawn from
                widths, heights = (side.repeat_interleave(t) for side in self.source_sizes(rows))
                images = augment_frames(images, augment, widths, heights, size)
            else:
                images = resize_frames(images, size)
            # Contiguous NCHW float: oneDNN's channels-last path hangs or crashes on narrow convs on
            # CPU (train.channels_last: auto converts the model on CUDA only).
            batch["video"] = normalise_pixels(images, self.pixels).unflatten(0, (b, t))
        return batch

    def source_sizes(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(widths, heights) of the original frames of `rows`: the crop boxes are drawn in them."""
        if self.source_size is None:
            raise KeyError(f"feature store of {self.meta.get('dataset')} has no source_width/source_height columns in "
                           "index.csv (written before augmentation existed): run its preprocess rule again")
        sizes = self.source_size[rows.cpu()]
        return sizes[:, 0], sizes[:, 1]

    def standardise(self, train_rows: torch.Tensor, batch: int = 4096) -> None:
        """Embeddings: standardise each channel with the statistics of the fold's
        training clips (MLB normalises its face features and waveforms with
        per-fold training statistics). Decoded stores are left as they are."""
        if self.kind != "embeddings":
            return
        # Batch by batch (a streamed store never holds the split at once), merged in float64
        # with Chan et al.'s pairwise update of (count, mean, sum of squared deviations).
        totals = {}
        for rows in train_rows.split(batch):
            for m, x in self.read(rows, list(self.arrays)).items():
                x = x.double().flatten(0, -2)
                count, mean, m2 = len(x), x.mean(dim=0), ((x - x.mean(dim=0)) ** 2).sum(dim=0)
                if m in totals:
                    n0, mean0, m20 = totals[m]
                    delta, n = mean - mean0, n0 + count
                    mean, m2, count = mean0 + delta * count / n, m20 + m2 + delta**2 * n0 * count / n, n
                totals[m] = (count, mean, m2)
        # A constant channel stays 0 (0 / tiny); a tiny but varying one is rescaled.
        self.scale = {m: (mean.float(), (m2 / max(count - 1, 1)).sqrt().float().clamp_min(torch.finfo(torch.float32).tiny))
                      for m, (count, mean, m2) in totals.items()}

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
