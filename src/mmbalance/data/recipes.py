"""Preprocessing recipes: the papers' recipes as named presets, any key of which a config may override.

The presets follow the reference code's loaders, each preset's comment says whose:
OGM-GE's data/*/video_preprocessing.py, dataset/CramedDataset.py and dataset/VGGSoundDataset.py
(GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d), PMR's and MMCosine's CREMA-D spectrograms
(fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48, GeWu-Lab/MMCosine_ICASSP23 @ 00ba0a9), MLB's
CREMA-D, AVE and UCF101 extractors and datasets (kkontras/MLB @ 357b5ce) and GeWu-Lab's
Kinetics-Sounds cache (OGM-GE's data/KineticSound/process_audio.py, pre-processing/obtain_frames.py
@ 7bc8c89, GeWu-Lab/BalanceBenchmark @ 4c1482f balancemm/datasets/KS_dataset.py). Departures
kept on purpose (no JPEG round trip, no random frames or windows, padding by the last frame) are
listed on each dataset's documentation page.

A dataset's `preprocessing` is `{preset: <name>, <key>: <override>, ...}` or a
full recipe without a preset. The resolved recipe (preset name included) is a
param of the preprocess rule, is written into the feature store's meta.json
and is logged as MLflow tags of every run that trains on the store.

Keys:
  frames, fps, frame_size   frames for the seconds start + k/fps; the model sees frame_size squares
  store_scale               frames are kept in the store as squares of store_size =
                            round(frame_size x store_scale) pixels (default 1); training
                            crops come from them, validation and test frames are
                            resized from them to frame_size
  augment                   reference (every reference loader's RandomResizedCrop + flip
                            of each training frame, mmbalance.data.augment) or none
  frame_select              count (decoded frames counted as OpenCV does: second s
                            is frame s * int(rate)), mid_second (moviepy's frame in
                            the middle of each second, GeWu-Lab's obtain_frames.py)
                            or time (the frame shown at each time from t = 0)
  short_clips               pad (repeat the last frame) or skip (MLB's UCF101 rule)
  segment                   use the catalog's start/end (AVE's event segment)
  sample_rate, seconds      audio resampled, then tiled or cut to this length
  crop                      start, centre or none: which part of a longer clip is
                            kept (none: the raw clip, fbank only)
  downmix                   mean (librosa mono=True) or left (first channel)
  audio_reader, resample    direct + sinc (ffmpeg-style band-limited resampling of
                            the source's channels) or moviepy (16-bit stereo at
                            44.1 kHz, a mono source at 1/sqrt(2) per channel) with
                            sinc or nearest (moviepy's to_soundarray: no low-pass)
  audio_features            stft (log|STFT|, librosa-like), psd (scipy
                            spectrogram) or fbank (kaldi log-mel)
  n_fft, hop_length         stft / psd window and hop (psd: noverlap = n_fft - hop)
  normalise                 none or per_clip (PMR's z-score per spectrogram)
  mel_bins, fbank_frames    fbank only
  pixels                    rgb (RGB / 255, then ImageNet mean/std) or bgr_255
                            (MLB's UCF101 loader: BGR, 0-255, then the same mean/std)
augment and pixels are read by the training job (TRAINING_KEYS): changing them retrains
the cells but never decodes the media again.

tests/test_preset_reference.py checks every preset's arrays against the
reference recipe computed with the reference's own libraries.
"""

from __future__ import annotations

DEFAULTS = {"short_clips": "pad", "segment": False, "crop": "start", "audio_features": "stft", "normalise": "none", "augment": "none", "store_scale": 1.0,
            "frame_select": "count", "downmix": "mean", "audio_reader": "direct", "resample": "sinc", "pixels": "rgb"}
# The values each decoding key may take (see Keys above).
CHOICES = {"frame_select": ("count", "mid_second", "time"), "short_clips": ("pad", "skip"), "crop": ("start", "centre", "none"),
           "downmix": ("mean", "left"), "audio_reader": ("direct", "moviepy"), "resample": ("sinc", "nearest"),
           "normalise": ("none", "per_clip"), "pixels": ("rgb", "bgr_255"), "audio_features": ("stft", "psd", "fbank"),
           "augment": ("reference", "none")}
# Keys the training job reads; the store is built from the others, so changing these retrains
# the cells but never decodes the media again.
TRAINING_KEYS = ("augment", "pixels")
# What every paper preset trains with: each reference loader's RandomResizedCrop + flip, cut from
# frames stored at 256 px (the crops keep more detail than at 224, for 1.3x the memory).
REFERENCE_TRAINING = {"augment": "reference", "store_scale": 8 / 7}  # 224 px -> 256 px
REQUIRED = ["frames", "fps", "frame_size", "sample_rate", "seconds"]

# Recipe A: librosa.load(sr=22050), tile to 3 s, stft(512, hop 353), log -> 257 x 188.
_RECIPE_A = {"sample_rate": 22050, "seconds": 3.0, "audio_features": "stft", "n_fft": 512, "hop_length": 353}

# Every preset counts frames as the reference extractors do (frame_select count, the default),
# takes its audio from AudioWAV (CREMA-D) or the video's track and downmixes as the reference does.
PRESETS: dict[str, dict] = {
    # The embedded default on a laptop CPU: 2 frames of 64 px, 8 kHz, STFT 256/250 -> 129 x 65 (about a second per epoch).
    "synthetic_cpu": {"frames": 2, "fps": 1.0, "frame_size": 64, "sample_rate": 8000, "seconds": 2.0, "n_fft": 256, "hop_length": 250},
    # OGM-GE on CREMA-D: one frame (1 fps), recipe A.
    "ogm_ge_cremad": {**REFERENCE_TRAINING, "frames": 1, "fps": 1.0, "frame_size": 224, **_RECIPE_A},
    # MLB ResNet on CREMA-D: three consecutive frames at 1 fps (0, 1, 2 s), recipe A.
    "mlb_cremad": {**REFERENCE_TRAINING, "frames": 3, "fps": 1.0, "frame_size": 224, **_RECIPE_A},
    # PMR / MMCosine on CREMA-D: recipe B, scipy spectrogram of 3 s at 16 kHz, z-scored -> 257 x 299.
    "pmr_cremad": {**REFERENCE_TRAINING, "frames": 3, "fps": 1.0, "frame_size": 224, "sample_rate": 16000, "seconds": 3.0,
                   "audio_features": "psd", "n_fft": 512, "hop_length": 159, "normalise": "per_clip"},
    # MLB / PMR on AVE ("SE"): the event segment, 4 frames at 1 fps from its start; audio as moviepy
    # writes it (44.1 kHz stereo), averaged and resampled to 16 kHz as librosa.load does, the segment
    # tiled to 10 s, scipy spectrogram -> 257 x 1004 (MLB: no z-score).
    "mlb_ave": {**REFERENCE_TRAINING, "frames": 4, "fps": 1.0, "frame_size": 224, "segment": True, "sample_rate": 16000, "seconds": 10.0,
                "audio_reader": "moviepy", "audio_features": "psd", "n_fft": 512, "hop_length": 159},
    # MLB on UCF101-51: 4 frames at 1 fps, clips with fewer are dropped; the left channel of moviepy's
    # to_soundarray(fps=16000) (nearest 44.1 kHz sample, no low-pass), 3 s, stft(512, hop 353) -> 257 x 136;
    # frames fed as OpenCV's BGR 0-255 (pixels bgr_255), as MLB's loader does.
    "mlb_ucf101": {**REFERENCE_TRAINING, "frames": 4, "fps": 1.0, "frame_size": 224, "short_clips": "skip", "sample_rate": 16000, "seconds": 3.0,
                   "audio_reader": "moviepy", "resample": "nearest", "downmix": "left", "pixels": "bgr_255",
                   "audio_features": "stft", "n_fft": 512, "hop_length": 353},
    # GeWu-Lab Kinetics-Sounds (recipe D): the frames in the middle of seconds 0, 3 and 6 (BalanceBenchmark's
    # test-time pick of obtain_frames.py's 10 frames); kaldi fbank of the raw clip's first channel, 128 mel
    # bins, padded or cut to 1024 frames of 10 ms -> 1024 x 128.
    "gewu_kinetics_sounds": {**REFERENCE_TRAINING, "frames": 3, "fps": 1 / 3, "frame_select": "mid_second", "frame_size": 224, "sample_rate": 16000,
                             "seconds": 10.0, "crop": "none", "downmix": "left",
                             "audio_features": "fbank", "mel_bins": 128, "fbank_frames": 1024},
    # OGM-GE on VGGSound: the first three 1 fps frames; 5 s of 16 kHz audio (the centre here, a random
    # window in the reference code), stft(256, hop 128) -> 129 x 626.
    "ogm_ge_vggsound": {**REFERENCE_TRAINING, "frames": 3, "fps": 1.0, "frame_size": 224, "sample_rate": 16000, "seconds": 5.0, "crop": "centre",
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
    check_choices(recipe, where)
    if recipe["crop"] == "none" and recipe["audio_features"] != "fbank":
        raise ValueError(f"{where}.crop: 'none' keeps clips of any length, which only fbank (padded to fbank_frames) turns into one shape")
    needed = REQUIRED + NEEDS.get(recipe["audio_features"], [])
    missing = [key for key in needed if key not in recipe]
    if missing:
        raise ValueError(f"{where}: recipe lacks {missing} (set them, or name a preset: {sorted(PRESETS)})")
    recipe["store_size"] = int(round(recipe["frame_size"] * recipe["store_scale"]))
    return recipe


def check_choices(values: dict, where: str) -> None:
    """Each of `values`' keys that CHOICES lists takes one of its values, and `resample: nearest`
    (moviepy's to_soundarray) comes with `audio_reader: moviepy`; the error names the key.
    Called on every resolved recipe, and by the decoders on the arguments they are given."""
    for key, value in values.items():
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"{where}.{key}: {value!r} is not one of {list(CHOICES[key])}")
    if values.get("resample") == "nearest" and values.get("audio_reader", "moviepy") != "moviepy":
        raise ValueError(f"{where}.resample: 'nearest' is moviepy's to_soundarray, it needs audio_reader: moviepy")


def store_recipe(recipe: dict) -> dict:
    """What the feature store is built from: the recipe without the training-only keys."""
    return {k: v for k, v in recipe.items() if k not in TRAINING_KEYS}
