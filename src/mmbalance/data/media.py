"""Decoding media once: PyAV for containers, torchaudio for spectrograms.

Every failure names the file, so a bad clip can be found and skipped with a
reason instead of ending as a silent wrong number.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio


class MediaError(Exception):
    """A file that is not decodable media; the message names the file and why."""


def check_is_media(path: Path) -> None:
    """Catch the stand-ins that real downloads produce instead of media."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file is missing")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise MediaError(f"{path}: git-lfs pointer stub instead of media (fetch the LFS objects)")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise MediaError(f"{path}: an HTML page instead of media (a failed download?)")
    if len(head) == 0:
        raise MediaError(f"{path}: empty file")


def decode_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 waveform in [-1, 1], resampled to `sample_rate`."""
    check_is_media(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(audio=0):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode audio ({error})") from error
    if not chunks:
        raise MediaError(f"{path}: audio stream has no samples")
    return np.concatenate(chunks, axis=1)[0]


def decode_frames(path: Path, num_frames: int, fps: float, size: int) -> tuple[np.ndarray, int]:
    """`num_frames` RGB frames at times k/fps (k = 0..), resized to size x size.

    The frame shown at each time is taken by timestamp, not by counting frames,
    so 29.97 fps video does not drift. A clip too short for every time repeats
    its last frame (the reference codes pad with unseeded random frames);
    returns (frames uint8 (T, size, size, 3), number of padded frames).
    """
    check_is_media(path)
    targets = [k / fps for k in range(num_frames)]
    chosen: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            for frame in container.decode(video=0):
                # A frame is kept for every target time it covers.
                while len(chosen) < num_frames and frame.time is not None and frame.time + 1e-6 >= targets[len(chosen)]:
                    chosen.append(frame.reformat(width=size, height=size, format="rgb24").to_ndarray())
                if len(chosen) == num_frames:
                    break
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode video ({error})") from error
    if not chosen:
        raise MediaError(f"{path}: no decodable video frames")
    padded = num_frames - len(chosen)
    chosen += [chosen[-1]] * padded
    return np.stack(chosen), padded


def fit_length(waveform: np.ndarray, num_samples: int) -> np.ndarray:
    """Repeat the clip until it is long enough, then cut (recipe A tiles to 3 s)."""
    repeats = math.ceil(num_samples / len(waveform))
    return np.tile(waveform, repeats)[:num_samples]


class LogSpectrogram:
    """log(|STFT| + 1e-7) with a Hann window, centred with zero padding as
    librosa.stft does (DATASETS.md 1.4 recipe A: n_fft 512, hop 353)."""

    def __init__(self, n_fft: int, hop_length: int):
        self.transform = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, hop_length=hop_length, power=1.0, center=True, pad_mode="constant"
        )

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        magnitude = self.transform(torch.from_numpy(np.clip(waveform, -1.0, 1.0)).float())
        return torch.log(magnitude + 1e-7).numpy()
