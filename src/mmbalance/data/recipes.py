"""Preprocessing recipes: the papers' recipes as named presets, any key of which a config may override.

The presets follow the reference code's loaders, each preset's comment says whose:
OGM-GE's dataset/CramedDataset.py and dataset/VGGSoundDataset.py (GeWu-Lab/OGM-GE_CVPR2022),
PMR's and MMCosine's CREMA-D spectrograms (fanyunfeng-bit/Modal-Imbalance-PMR,
GeWu-Lab/MMCosine_ICASSP23), MLB's CREMA-D, AVE and UCF101 datasets (kkontras/MLB) and
GeWu-Lab's Kinetics-Sounds fbank cache (OGM-GE's data/KineticSound/process_audio.py).

A dataset's `preprocessing` is `{preset: <name>, <key>: <override>, ...}` or a
full recipe without a preset. The resolved recipe (preset name included) is a
param of the preprocess rule, is written into the feature store's meta.json
and is logged as MLflow tags of every run that trains on the store.

Keys:
  frames, fps, frame_size   frames at times start + k/fps; the model sees frame_size squares
  store_size                the square size frames are kept at in the store (default
                            frame_size); training crops come from it, so a larger one keeps
                            more detail in small crops, at (store_size / frame_size)^2 memory
  augment                   reference (every reference loader's RandomResizedCrop + flip
                            of each training frame, mmbalance.data.augment) or none; read by
                            the training job, so changing it retrains but never re-decodes
  short_clips               pad (repeat the last frame) or skip (MLB's UCF101 rule)
  segment                   use the catalog's start/end (AVE's event segment)
  sample_rate, seconds      audio resampled, then tiled or cut to this length
  crop                      start or centre: which part of a longer clip is kept
  audio_features            stft (log|STFT|, librosa-like), psd (scipy
                            spectrogram) or fbank (kaldi log-mel)
  n_fft, hop_length         stft / psd window and hop (psd: noverlap = n_fft - hop)
  normalise                 none or per_clip (PMR's z-score per spectrogram)
  mel_bins, fbank_frames    fbank only
"""

from __future__ import annotations

DEFAULTS = {"short_clips": "pad", "segment": False, "crop": "start", "audio_features": "stft", "normalise": "none", "augment": "none"}
# Keys the training job reads; the store is built from the others.
TRAINING_KEYS = ("augment",)
REQUIRED = ["frames", "fps", "frame_size", "sample_rate", "seconds"]

# Recipe A: librosa.load(sr=22050), tile to 3 s, stft(512, hop 353), log -> 257 x 188.
_RECIPE_A = {"sample_rate": 22050, "seconds": 3.0, "audio_features": "stft", "n_fft": 512, "hop_length": 353}

PRESETS: dict[str, dict] = {
    # The embedded default on a laptop CPU: 2 frames of 64 px, 8 kHz, STFT 256/250 -> 129 x 65 (about a second per epoch).
    "synthetic_cpu": {"frames": 2, "fps": 1.0, "frame_size": 64, "sample_rate": 8000, "seconds": 2.0, "n_fft": 256, "hop_length": 250},
    # OGM-GE on CREMA-D: one frame (1 fps), recipe A.
    "ogm_ge_cremad": {"frames": 1, "fps": 1.0, "frame_size": 224, **_RECIPE_A},
    # MLB ResNet on CREMA-D: three consecutive frames at 1 fps (0, 1, 2 s), recipe A.
    "mlb_cremad": {"frames": 3, "fps": 1.0, "frame_size": 224, **_RECIPE_A},
    # PMR / MMCosine on CREMA-D: recipe B, scipy spectrogram of 3 s at 16 kHz, z-scored -> 257 x 299.
    "pmr_cremad": {"frames": 3, "fps": 1.0, "frame_size": 224, "sample_rate": 16000, "seconds": 3.0,
                   "audio_features": "psd", "n_fft": 512, "hop_length": 159, "normalise": "per_clip"},
    # MLB / PMR on AVE ("SE"): the event segment, 4 frames at 1 fps from its start;
    # audio of the segment tiled to 10 s at 16 kHz, scipy spectrogram -> 257 x 1004 (MLB: no z-score).
    "mlb_ave": {"frames": 4, "fps": 1.0, "frame_size": 224, "segment": True, "sample_rate": 16000, "seconds": 10.0,
                "audio_features": "psd", "n_fft": 512, "hop_length": 159},
    # MLB on UCF101-51: 4 frames at 1 fps, clips with fewer are dropped; 3 s of 16 kHz audio,
    # stft(512, hop 353) -> 257 x 136.
    "mlb_ucf101": {"frames": 4, "fps": 1.0, "frame_size": 224, "short_clips": "skip", "sample_rate": 16000, "seconds": 3.0,
                   "audio_features": "stft", "n_fft": 512, "hop_length": 353},
    # GeWu-Lab Kinetics-Sounds (recipe D): 3 frames spread over the 10 s clip (one every 10/3 s),
    # kaldi fbank, 128 mel bins, 1024 frames of 10 ms -> 1024 x 128.
    "gewu_kinetics_sounds": {"frames": 3, "fps": 0.3, "frame_size": 224, "sample_rate": 16000, "seconds": 10.0,
                             "audio_features": "fbank", "mel_bins": 128, "fbank_frames": 1024},
    # OGM-GE on VGGSound: 3 frames spread over the clip; 5 s of 16 kHz audio (the centre
    # here, a random window in the reference code), stft(256, hop 128) -> 129 x 626.
    "ogm_ge_vggsound": {"frames": 3, "fps": 0.3, "frame_size": 224, "sample_rate": 16000, "seconds": 5.0, "crop": "centre",
                        "audio_features": "stft", "n_fft": 256, "hop_length": 128},
}

NEEDS = {"stft": ["n_fft", "hop_length"], "psd": ["n_fft", "hop_length"], "fbank": ["mel_bins", "fbank_frames"]}


def resolve(preprocessing: dict, where: str = "preprocessing") -> dict:
    """The full recipe of a config's `preprocessing` entry: preset, then
    overrides, then defaults; a missing key is an error naming it."""
    preset = preprocessing.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"{where}.preset: {preset!r} is not one of {sorted(PRESETS)}")
    recipe = DEFAULTS | PRESETS.get(preset, {}) | {k: v for k, v in preprocessing.items() if k != "preset"}
    recipe["preset"] = preset or "custom"
    recipe.setdefault("store_size", recipe.get("frame_size"))
    needed = REQUIRED + NEEDS.get(recipe["audio_features"], [])
    missing = [key for key in needed if key not in recipe]
    if missing:
        raise ValueError(f"{where}: recipe lacks {missing} (set them, or name a preset: {sorted(PRESETS)})")
    return recipe


def store_recipe(recipe: dict) -> dict:
    """What the feature store is built from: the recipe without the training-only keys."""
    return {k: v for k, v in recipe.items() if k not in TRAINING_KEYS}
