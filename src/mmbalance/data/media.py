"""Decoding media once: PyAV for containers, torchaudio for spectrograms.

Every failure names the file, so a bad clip can be found and skipped with a
reason instead of ending as a silent wrong number.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
import torchaudio

from mmbalance.io import write_text_atomic

log = logging.getLogger(__name__)


class MediaError(Exception):
    """A file that is not decodable media; the message names the file and why.

    `kind` sorts skips in the kept/skipped log: missing, stub, corrupt,
    truncated (the file ends before the duration its container declares),
    no_audio or too_short."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


def check_is_media(path: Path) -> None:
    """Catch the stand-ins that real downloads produce instead of media."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file is missing", "missing")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise MediaError(f"{path}: git-lfs pointer stub instead of media (fetch the LFS objects)", "stub")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise MediaError(f"{path}: an HTML page instead of media (a failed download?)", "stub")
    if len(head) == 0:
        raise MediaError(f"{path}: empty file")


# A stream may end this much before its declared duration (codec delay, rounding) and still be whole.
DURATION_TOLERANCE = 0.1  # seconds


def declared_seconds(container, stream) -> float | None:
    """The duration the container says `stream` has (stream header first, then the container's)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def wav_data_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes the WAV's data chunk declares, bytes present) when a RIFF/WAVE file is cut short;
    None for a whole file or another format (decoders read a short data chunk without a word)."""
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        while chunk := handle.read(8):
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                present = len(handle.read(size))
                return (size, present) if present < size and size != 0xFFFFFFFF else None  # 0xFFFFFFFF: streamed, size unknown
            handle.seek(size + (size & 1), 1)
    return None


def decode_audio(path: Path, sample_rate: int, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Mono float32 waveform in [-1, 1], resampled to `sample_rate`, from
    `start` to `end` seconds (AVE's event segment; end None = to the end).
    Works on audio files and on the audio track of video containers."""
    check_is_media(path)
    if shortfall := wav_data_shortfall(path):
        raise MediaError(f"{path}: the WAV header declares {shortfall[0]} bytes of audio, the file holds {shortfall[1]} (truncated)", "truncated")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream", "no_audio")
            declared = declared_seconds(container, container.streams.audio[0])
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(audio=0):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode audio ({error})") from error
    if not chunks:
        raise MediaError(f"{path}: audio stream has no samples", "no_audio")
    waveform = np.concatenate(chunks, axis=1)[0]
    decoded = len(waveform) / sample_rate
    if declared is not None and decoded < declared - DURATION_TOLERANCE:
        # A WAV whose data is shorter than its header says: kept, it would be silently shorter.
        raise MediaError(f"{path}: audio ends at {decoded:.2f} s but the file declares {declared:.2f} s (truncated)", "truncated")
    segment = waveform[int(round(start * sample_rate)) : None if end is None else int(round(end * sample_rate))]
    if len(segment) < 2:
        raise MediaError(f"{path}: no audio between {start:g} s and {end} s (the file has {len(waveform) / sample_rate:.2f} s)", "too_short")
    return segment


def decode_frames(path: Path, num_frames: int, fps: float, size: int, start: float = 0.0, pad: bool = True) -> tuple[np.ndarray, int]:
    """`num_frames` RGB frames at times start + k/fps (k = 0..), resized to size x size.

    The frame shown at each time is taken by timestamp, not by counting frames,
    so 29.97 fps video does not drift. A clip too short for every time repeats
    its last frame (the reference codes pad with unseeded random frames), or,
    with `pad=False`, is refused as too short (MLB's UCF101 rule);
    returns (frames uint8 (T, size, size, 3), number of padded frames).
    """
    check_is_media(path)
    targets = [start + k / fps for k in range(num_frames)]
    chosen: list[np.ndarray] = []
    last_time = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            declared = declared_seconds(container, container.streams.video[0])
            for frame in container.decode(video=0):
                last_time = frame.time if frame.time is not None else last_time
                # A frame is kept for every target time it covers.
                while len(chosen) < num_frames and frame.time is not None and frame.time + 1e-6 >= targets[len(chosen)]:
                    chosen.append(frame.reformat(width=size, height=size, format="rgb24").to_ndarray())
                if len(chosen) == num_frames:
                    break
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode video ({error})") from error
    if not chosen:
        raise MediaError(f"{path}: no decodable video frames" + (f" after {start:g} s" if start else ""))
    padded = num_frames - len(chosen)
    if padded and declared is not None and targets[len(chosen)] < declared - DURATION_TOLERANCE:
        # A frame time the container says exists was never decoded: a cut file, not a short clip (never padded silently).
        ended = f"{last_time:.2f} s" if last_time is not None else "its start"
        raise MediaError(f"{path}: video ends at {ended} but the file declares {declared:.2f} s (truncated)", "truncated")
    if padded and not pad:
        raise MediaError(f"{path}: only {len(chosen)} of {num_frames} frames at {fps:g} fps (clip too short)", "too_short")
    chosen += [chosen[-1]] * padded
    return np.stack(chosen), padded


def video_size(path: Path) -> tuple[int, int]:
    """(width, height) of the first video stream, as its decoder reports it."""
    check_is_media(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            return int(stream.codec_context.width), int(stream.codec_context.height)
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: cannot read the video stream ({error})") from error


# --- audio presence


def has_audio(path: Path) -> bool:
    """True when the file has an audio stream that decodes to more than one sample
    (MLB drops clips whose audio has fewer than 2 samples). Stops at the first
    samples, so a probe costs one packet. MediaError (kind corrupt) when undecodable."""
    check_is_media(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return False
            samples = 0
            for frame in container.decode(audio=0):
                samples += frame.samples
                if samples > 1:
                    return True
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode ({error})", "corrupt") from error
    return False


def probe_audio(raw_dir: Path, videos: list[Path], cache_name: str, workers: int = 4) -> dict[Path, str]:
    """path -> "audio", "no_audio" or "error: <why>" for every video, probed in parallel
    and cached in raw_dir/<cache_name> (a csv keyed by path and size) so it runs once
    (probing UCF101's 13,320 clips takes minutes)."""
    raw_dir = Path(raw_dir)
    cache_path = raw_dir / cache_name
    cached = {}
    if cache_path.is_file():
        table = pd.read_csv(cache_path, keep_default_na=False, dtype={"path": str, "status": str})
        cached = {(row.path, int(row.size)): row.status for row in table.itertuples()}
    keys = {path: (os.path.relpath(path, raw_dir), path.stat().st_size) for path in videos}
    todo = [path for path in videos if keys[path] not in cached]
    if todo:
        log.info("probing %d clips for an audio track (%d cached)", len(todo), len(videos) - len(todo))
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for path, status in zip(todo, pool.map(_probe_one, todo)):
                cached[keys[path]] = status
        rows = [{"path": p, "size": s, "status": status} for (p, s), status in sorted(cached.items())]
        write_text_atomic(cache_path, pd.DataFrame(rows, columns=["path", "size", "status"]).to_csv(index=False))
    return {path: cached[keys[path]] for path in videos}


def _probe_one(path: Path) -> str:
    try:
        return "audio" if has_audio(path) else "no_audio"
    except MediaError as error:
        return f"error: {error.kind}: {error}"


def fit_length(waveform: np.ndarray, num_samples: int, crop: str = "start") -> np.ndarray:
    """Repeat the clip until it is long enough, then cut (recipe A tiles to 3 s).
    `crop` "centre" cuts the middle (VGGSound's 5 s window, drawn at random in
    the reference code also at test time, made deterministic here)."""
    repeats = math.ceil(num_samples / len(waveform))
    tiled = np.tile(waveform, repeats)
    offset = (len(tiled) - num_samples) // 2 if crop == "centre" else 0
    return tiled[offset : offset + num_samples]


class LogSpectrogram:
    """log(|STFT| + 1e-7) with a Hann window, centred with zero padding as
    librosa.stft does (recipe A of OGM-GE's dataset/CramedDataset.py and MLB: n_fft 512, hop 353)."""

    def __init__(self, n_fft: int, hop_length: int):
        self.transform = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, hop_length=hop_length, power=1.0, center=True, pad_mode="constant"
        )

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        magnitude = self.transform(torch.from_numpy(np.clip(waveform, -1.0, 1.0)).float())
        return torch.log(magnitude + 1e-7).numpy()


class ScipyLogSpectrogram:
    """log(PSD + 1e-7) of `scipy.signal.spectrogram` with its defaults (Tukey 0.25
    window, constant detrend, density scaling, no centring): recipe B/C of
    PMR and MMCosine on CREMA-D (MLB's on AVE), 48,000 samples -> 257 x 299.
    `per_clip` z-scores each spectrogram as PMR does."""

    def __init__(self, n_fft: int, hop_length: int, sample_rate: int, per_clip: bool = False):
        self.n_fft, self.noverlap, self.sample_rate, self.per_clip = n_fft, n_fft - hop_length, sample_rate, per_clip

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        import scipy.signal

        _, _, power = scipy.signal.spectrogram(np.clip(waveform, -1.0, 1.0), self.sample_rate, nperseg=self.n_fft, noverlap=self.noverlap)
        log_power = np.log(power + 1e-7).astype(np.float32)
        if self.per_clip:
            log_power = (log_power - log_power.mean()) / (log_power.std() + 1e-9)
        return log_power


class KaldiFbank:
    """Log-mel filterbank of `torchaudio.compliance.kaldi.fbank` (recipe D:
    GeWu-Lab's Kinetics-Sounds cache, OGM-GE's data/KineticSound/process_audio.py): Hanning window, 10 ms
    shift, no dither, on the mean-removed waveform; padded with zeros or cut to
    `frames` frames and scaled with the AudioSet statistics those caches use.
    Output (frames, mel_bins), time first, as GeWu-Lab's loaders feed it."""

    MEAN, STD = -4.503877, 5.141276

    def __init__(self, sample_rate: int, mel_bins: int, frames: int):
        self.sample_rate, self.mel_bins, self.frames = sample_rate, mel_bins, frames

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(waveform, dtype=np.float32))
        features = torchaudio.compliance.kaldi.fbank(
            (x - x.mean())[None], htk_compat=True, sample_frequency=self.sample_rate, use_energy=False,
            window_type="hanning", num_mel_bins=self.mel_bins, dither=0.0, frame_shift=10,
        )
        features = torch.nn.functional.pad(features, (0, 0, 0, max(0, self.frames - len(features))))[: self.frames]
        return ((features - self.MEAN) / (2 * self.STD)).numpy()


def audio_transform(recipe: dict):
    """The recipe's waveform -> 2D audio features function."""
    kind = recipe.get("audio_features", "stft")
    if kind == "stft":
        return LogSpectrogram(recipe["n_fft"], recipe["hop_length"])
    if kind == "psd":
        return ScipyLogSpectrogram(recipe["n_fft"], recipe["hop_length"], recipe["sample_rate"], recipe.get("normalise") == "per_clip")
    if kind == "fbank":
        return KaldiFbank(recipe["sample_rate"], recipe["mel_bins"], recipe["fbank_frames"])
    raise ValueError(f"preprocessing recipe: audio_features {kind!r} is not one of stft, psd, fbank")
