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

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmbalance.data import media
from mmbalance.data.catalog import Catalog, Clip
from mmbalance.data.store.features import write_store
from mmbalance.models.pretrained import EFFICIENTNET_B2_FEATURES, build_efficientnet_b2, build_wav2vec2

WAV2VEC2_SAMPLE_RATE = 16000


class FrozenExtractors:
    """The two frozen networks, in eval mode, on one device."""

    def __init__(self, backbone: dict, device: str = "cpu"):
        self.device = device
        # Only the CNN is used here: build no transformer layer.
        self.audio = build_wav2vec2({**backbone["audio"], "layers": 0}).feature_extractor.eval().to(device)
        self.video = build_efficientnet_b2(backbone["video"]["weights"]).eval().to(device)

    @torch.no_grad()
    def audio_features(self, waveform: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(waveform, dtype=torch.float32, device=self.device)
        x = (x - x.mean()) / (x.std() + 1e-7)
        features, _ = self.audio(x[None], None)
        return features[0].cpu().numpy()  # (T_a, 512)

    @torch.no_grad()
    def frame_features(self, frames: np.ndarray) -> np.ndarray:
        x = media.frames_to_input(torch.as_tensor(frames, device=self.device))
        return self.video(x).cpu().numpy()  # (T_v, 1408)


def extract(catalog_dir: Path, out_dir: Path, recipe: dict, backbone: dict, device: str = "cpu") -> pd.DataFrame:
    """Write the embeddings store of a catalog's clips; returns the index."""
    if recipe["crop"] == "none":
        raise ValueError("preprocessing.crop: 'none' keeps clips of any length; the Conformer's embeddings store needs "
                         "one length per clip: set crop to start or centre")
    catalog = Catalog.read(catalog_dir)
    extractors = FrozenExtractors(backbone, device)
    # The recipe's decoding keys (downmix, frame choice, ...), at wav2vec2's rate and EfficientNet-B2's frame size.
    decoder = media.ClipDecoder(recipe | {"sample_rate": WAV2VEC2_SAMPLE_RATE, "store_size": backbone["video"]["frame_size"]})
    audio_shape = extractors.audio_features(np.zeros(decoder.num_samples, dtype=np.float32)).shape
    video_shape = (recipe["frames"], EFFICIENTNET_B2_FEATURES)

    def encode(clip: Clip) -> tuple[dict[str, np.ndarray], dict]:
        audio = extractors.audio_features(decoder.waveform(clip.audio, clip.start, clip.end))
        frames, padded = decoder.frames(clip.video, clip.start)
        return {"audio.npy": audio, "video.npy": extractors.frame_features(frames)}, {"padded_frames": padded}

    arrays = {"audio.npy": (np.float16, audio_shape), "video.npy": (np.float32, video_shape)}
    meta = {
        "kind": "embeddings",
        "recipe": recipe,
        "extractors": {"audio": backbone["audio"], "video": backbone["video"], "sample_rate": WAV2VEC2_SAMPLE_RATE},
        "audio_shape": list(audio_shape),
        "video_shape": list(video_shape),
    }
    return write_store(catalog, out_dir, arrays, encode, meta)
