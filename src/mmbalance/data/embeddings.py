"""Frozen feature extraction for the Conformer backbone: decode once, extract once.

The Conformer backbone never trains its front-ends: wav2vec2's CNN feature
encoder is frozen and the per-frame EfficientNet-B2 is a fixed feature
extractor. Running them every epoch would cost most of the training time for
nothing, so this step runs them once per clip and writes an `embeddings`
feature store next to the decoded one:

* `audio.npy`  float16 (N, T_a, 512)   wav2vec2 CNN features (20 ms steps)
* `video.npy`  float32 (N, T_v, 1408)  EfficientNet-B2 pooled features per frame
  (float32: the features of an untrained B2 are ~1e-14, below float16's range;
  training standardises each channel with the fold's training statistics)
* `index.csv`, `meta.json`             as in the decoded store (kind: embeddings)

Audio is resampled to 16 kHz (wav2vec2's rate), tiled or cut to the recipe's
length and normalised per utterance (zero mean, unit variance: what the
torchaudio large bundles do to their input). Frames are the recipe's frames,
taken whole (no face detector here; MLB uses face crops), resized to
`frame_size` and normalised with the ImageNet statistics.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmbalance.data import cremad, media
from mmbalance.data.features import IMAGENET_MEAN, IMAGENET_STD, check_folds_cover, index_entry, store_hash
from mmbalance.io import write_text_atomic
from mmbalance.models.pretrained import EFFICIENTNET_B2_FEATURES, build_efficientnet_b2, build_wav2vec2, wav2vec2_feature_dim

log = logging.getLogger(__name__)

WAV2VEC2_SAMPLE_RATE = 16000


class FrozenExtractors:
    """The two frozen networks, in eval mode, on one device."""

    def __init__(self, backbone: dict, device: str = "cpu"):
        self.device = device
        # Only the CNN is used here: build no transformer layer.
        self.audio = build_wav2vec2({**backbone["audio"], "layers": 0}).feature_extractor.eval().to(device)
        self.video = build_efficientnet_b2(backbone["video"]["weights"]).eval().to(device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]

    @torch.no_grad()
    def audio_features(self, waveform: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(waveform, dtype=torch.float32, device=self.device)
        x = (x - x.mean()) / (x.std() + 1e-7)
        features, _ = self.audio(x[None], None)
        return features[0].cpu().numpy()  # (T_a, 512)

    @torch.no_grad()
    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(frames, device=self.device).permute(0, 3, 1, 2).float() / 255.0
        return self.video(((x - self.mean) / self.std).contiguous()).cpu().numpy()  # (T_v, 1408)


def extract_cremad(raw_dir: Path, folds_file: Path, out_dir: Path, recipe: dict, backbone: dict, device: str = "cpu") -> pd.DataFrame:
    """Write the embeddings store of a CREMA-D-format dataset; returns the index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = cremad.list_clips(raw_dir)
    folds = cremad.read_folds(folds_file)
    extractors = FrozenExtractors(backbone, device)
    num_samples = int(round(recipe["seconds"] * WAV2VEC2_SAMPLE_RATE))
    num_frames, size = recipe["frames"], backbone["video"]["frame_size"]
    audio_steps = extractors.audio_features(np.zeros(num_samples, dtype=np.float32)).shape[0]

    audio_tmp, video_tmp = out_dir / "audio.npy.tmp", out_dir / "video.npy.tmp"
    audio = np.lib.format.open_memmap(audio_tmp, "w+", np.float16, (len(clips), audio_steps, wav2vec2_feature_dim(backbone["audio"])))
    video = np.lib.format.open_memmap(video_tmp, "w+", np.float32, (len(clips), num_frames, EFFICIENTNET_B2_FEATURES))
    rows = []
    for row, clip in enumerate(clips):
        entry = index_entry(clip, row, folds)
        try:
            waveform = media.decode_audio(clip.wav, WAV2VEC2_SAMPLE_RATE)
            frames, entry["padded_frames"] = media.decode_frames(clip.video, num_frames, recipe["fps"], size)
            audio[row] = extractors.audio_features(media.fit_length(waveform, num_samples))
            video[row] = extractors.frame_features(frames)
        except media.MediaError as error:
            entry.update(skipped=True, reason=str(error))
            log.warning("skipping %s: %s", clip.name, error)
        rows.append(entry)
        if (row + 1) % 200 == 0:
            log.info("extracted %d / %d clips", row + 1, len(clips))
    audio.flush(), video.flush()
    del audio, video
    os.replace(audio_tmp, out_dir / "audio.npy")
    os.replace(video_tmp, out_dir / "video.npy")

    index = pd.DataFrame(rows)
    check_folds_cover(index, folds, folds_file, raw_dir)
    write_text_atomic(out_dir / "index.csv", index.to_csv(index=False))
    meta = {
        "kind": "embeddings",
        "dataset_format": "cremad",
        "class_names": list(cremad.EMOTIONS),
        "recipe": recipe,
        "extractors": {"audio": backbone["audio"], "video": backbone["video"], "sample_rate": WAV2VEC2_SAMPLE_RATE},
        "clips": len(index),
        "skipped": int(index["skipped"].sum()),
        "audio_shape": [audio_steps, wav2vec2_feature_dim(backbone["audio"])],
        "video_shape": [num_frames, EFFICIENTNET_B2_FEATURES],
        "data_hash": store_hash(out_dir, ["audio.npy", "video.npy", "index.csv"]),
    }
    write_text_atomic(out_dir / "meta.json", json.dumps(meta, indent=2))
    return index
