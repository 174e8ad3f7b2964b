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

from mmbalance.data.recipes import check_choices
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


# Audio as moviepy 1.x reads it (FFMPEG_AudioReader: `ffmpeg ... -f s16le -ar 44100 -ac 2`):
# 16-bit stereo at 44.1 kHz, a mono source upmixed by ffmpeg into both channels at 1/sqrt(2).
MOVIEPY_RATE = 44100


def decode_audio(path: Path, sample_rate: int, start: float = 0.0, end: float | None = None, *,
                 downmix: str = "mean", reader: str = "direct", resample: str = "sinc") -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at `sample_rate`, from `start` to `end`
    seconds (AVE's event segment; end None = to the end). Works on audio files
    and on the audio track of video containers.

    `reader` "direct" decodes the source's own channels and resamples each with
    libswresample (band-limited), as `ffmpeg -ar` does before librosa, scipy or
    torchaudio read a WAV; "moviepy" decodes as moviepy 1.x's audio reader does
    (16-bit stereo at 44.1 kHz; a mono source comes out at 1/sqrt(2) in each
    channel, ffmpeg's upmix), then `resample` "sinc" resamples it band-limited
    (MLB's AVE: moviepy writes that WAV, librosa resamples it) or "nearest" picks
    the 44.1 kHz sample nearest to each output time, with no low-pass filter
    (moviepy's `to_soundarray(fps=...)`, MLB's UCF101). `downmix` "mean"
    averages the channels (librosa `mono=True`); "left" keeps the first one
    (torchaudio's kaldi fbank on a stereo WAV, MLB's `[:, 0]`). Averaging
    after decoding, not PyAV's mono layout, whose downmix is 0.7071 (L + R)."""
    check_is_media(path)
    check_choices({"audio_reader": reader, "resample": resample, "downmix": downmix}, "decode_audio")
    if shortfall := wav_data_shortfall(path):
        raise MediaError(f"{path}: the WAV header declares {shortfall[0]} bytes of audio, the file holds {shortfall[1]} (truncated)", "truncated")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream", "no_audio")
            declared = declared_seconds(container, container.streams.audio[0])
            if reader == "moviepy":
                stages = [av.AudioResampler(format="s16p", layout="stereo", rate=MOVIEPY_RATE)]
                if resample == "sinc" and sample_rate != MOVIEPY_RATE:
                    stages.append(av.AudioResampler(format="fltp", layout="stereo", rate=sample_rate))
            else:
                stages = [av.AudioResampler(format="fltp", rate=sample_rate)]  # the source's own channels
            chunks = []
            for frame in container.decode(audio=0):
                chunks += _resample_through(stages, frame)
            chunks += _resample_through(stages, None)
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode audio ({error})") from error
    if not chunks:
        raise MediaError(f"{path}: audio stream has no samples", "no_audio")
    channels = np.concatenate(chunks, axis=1)
    if channels.dtype == np.int16:
        channels = channels.astype(np.float32) / 32768.0
    rate = sample_rate
    if reader == "moviepy" and resample == "nearest":
        rate = MOVIEPY_RATE
        if sample_rate != MOVIEPY_RATE:
            # moviepy: frames = np.round(44100 * tt) with tt = (1.0 / fps) * k (iter_chunks; np.arange(0, d, 1/fps)
            # gives the same floats), no anti-aliasing; computed the same way, so ties round alike.
            tt = (1.0 / sample_rate) * np.arange(int(channels.shape[1] * sample_rate / MOVIEPY_RATE))
            wanted = np.round(MOVIEPY_RATE * tt).astype(np.int64)
            channels, rate = channels[:, wanted[wanted < channels.shape[1]]], sample_rate
    waveform = (channels.mean(axis=0) if downmix == "mean" else channels[0]).astype(np.float32)
    decoded = len(waveform) / rate
    if declared is not None and decoded < declared - DURATION_TOLERANCE:
        # A WAV whose data is shorter than its header says: kept, it would be silently shorter.
        raise MediaError(f"{path}: audio ends at {decoded:.2f} s but the file declares {declared:.2f} s (truncated)", "truncated")
    segment = waveform[int(round(start * rate)) : None if end is None else int(round(end * rate))]
    if len(segment) < 2:
        raise MediaError(f"{path}: no audio between {start:g} s and {end} s (the file has {len(waveform) / rate:.2f} s)", "too_short")
    return segment


def _resample_through(stages: list, frame) -> list[np.ndarray]:
    """Pass one decoded frame (None: flush) through a chain of resamplers; planar arrays (channels, samples)."""
    frames = [frame]
    for stage in stages:
        frames = [out for f in frames for out in stage.resample(f)] + ([out for out in stage.resample(None)] if frame is None else [])
    return [f.to_ndarray() for f in frames]


def opencv_rate(stream) -> float:
    """The frame rate OpenCV's FFmpeg backend reports (CAP_PROP_FPS: the stream's
    average frame rate, else its guessed rate)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    raise MediaError(f"{stream.container.name}: the video stream declares no frame rate")


def moviepy_rate(stream) -> float:
    """The frame rate moviepy 1.x reads from ffmpeg's `tbr` (the stream's real
    base rate), snapped to the NTSC rate x * 1000/1001 when within 0.01 of it."""
    rate = float(stream.base_rate or stream.guessed_rate or stream.average_rate or 0)
    if not rate:
        raise MediaError(f"{stream.container.name}: the video stream declares no frame rate")
    for x in (23, 24, 25, 30, 50):
        if rate != x and abs(rate - x * 1000 / 1001) < 0.01:
            return x * 1000 / 1001
    return rate


def frame_indices(select: str, num_frames: int, fps: float, start: float, rate: float) -> list[int]:
    """Which decoded frames (0-based, in decoding order) a frame rule keeps.

    "count" (OpenCV, every reference's frame extractor: OGM-GE and MLB
    `video_preprocessing.py`, MLB `Preprocessing.py`): frame n is kept when
    n % int(rate) == 0, so second s is frame s * int(rate) (int(29.97) = 29,
    drifting as the reference does), second start + k / fps for the k-th frame.
    "mid_second" (GeWu-Lab's `obtain_frames.py` through moviepy's reader): the
    1-based frame round((t + 0.5) * rate) for t = start + k / fps, the middle
    of second t.
    """
    seconds = [start + k / fps for k in range(num_frames)]
    if select == "count":
        return [int(round(t * int(rate))) for t in seconds]
    if select == "mid_second":
        return [max(0, round((t + 0.5) * rate) - 1) for t in seconds]
    raise ValueError(f"frame_indices: select {select!r} is not one of count, mid_second")


def decode_frames(path: Path, num_frames: int, fps: float, size: int, start: float = 0.0, pad: bool = True,
                  select: str = "count") -> tuple[np.ndarray, int]:
    """`num_frames` RGB frames resized to size x size, for the seconds start + k/fps (k = 0..).

    `select` "count" and "mid_second" count decoded frames as the reference
    extractors do (see `frame_indices`), so a stream that starts late (a
    CREMA-D FLV whose video begins at 0.05 s) still yields the reference's
    frames 0, 30, 60; "time" takes the frame shown at each time measured from
    t = 0 (no drift at 29.97 fps, but one frame early on such a stream). A clip
    too short for every frame repeats its last frame (the reference codes pad
    with unseeded random frames), or, with `pad=False`, is refused as too short
    (MLB's UCF101 rule); returns (frames uint8 (T, size, size, 3), number of padded frames).
    """
    check_is_media(path)
    check_choices({"frame_select": select}, "decode_frames")
    chosen: list[np.ndarray] = []
    last_time = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            declared = declared_seconds(container, stream)
            if select == "time":
                targets = [start + k / fps for k in range(num_frames)]
            else:
                rate = opencv_rate(stream) if select == "count" else moviepy_rate(stream)
                wanted = frame_indices(select, num_frames, fps, start, rate)
                targets = [n / rate for n in wanted]  # seconds from the stream's first frame
            for index, frame in enumerate(container.decode(stream)):
                last_time = frame.time if frame.time is not None else last_time
                # A frame is kept for every target it covers.
                while len(chosen) < num_frames and (
                    wanted[len(chosen)] <= index if select != "time"
                    else frame.time is not None and frame.time + 1e-6 >= targets[len(chosen)]
                ):
                    chosen.append(frame.reformat(width=size, height=size, format="rgb24").to_ndarray())
                if len(chosen) == num_frames:
                    break
    except av.error.FFmpegError as error:
        raise MediaError(f"{path}: cannot decode video ({error})") from error
    if not chosen:
        raise MediaError(f"{path}: no decodable video frames" + (f" after {start:g} s" if start else ""))
    padded = num_frames - len(chosen)
    if padded and declared is not None and targets[len(chosen)] < declared - DURATION_TOLERANCE:
        # A frame the container says exists was never decoded: a cut file, not a short clip (never padded silently).
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
    the reference code also at test time, made deterministic here); "none"
    keeps the clip as decoded (GeWu-Lab's fbank runs on the raw clip and pads
    or cuts its frames instead)."""
    if crop == "none":
        return waveform
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


# --- from a clip's media to the stored arrays, and from stored frames to model input


class ClipDecoder:
    """A resolved recipe (mmbalance.data.recipes.resolve) applied to one clip:
    `decoder(audio_path, video_path, start, end)` -> (spectrogram, frames uint8
    (T, size, size, 3) RGB, padded frames), with every decoding key of the
    recipe (downmix, audio_reader, resample, crop, frame_select, ...) passed
    on. `start`/`end` are the catalog's segment, used when the recipe's
    `segment` is on. This is the one place the feature store should call."""

    def __init__(self, recipe: dict):
        self.recipe = recipe
        self.to_features = audio_transform(recipe)
        self.num_samples = int(round(recipe["seconds"] * recipe["sample_rate"]))
        self.spectrogram_shape = self.to_features(np.zeros(self.num_samples, dtype=np.float32)).shape
        self.size = recipe["store_size"]  # round(frame_size x store_scale), set by recipes.resolve
        self.frames_shape = (recipe["frames"], self.size, self.size, 3)

    def waveform(self, path: Path, start: float = 0.0, end: float | None = None) -> np.ndarray:
        """The mono waveform at the recipe's rate, cut or tiled to its `seconds` (not with crop none)."""
        r = self.recipe
        start, end = (start, end) if r["segment"] else (0.0, None)
        waveform = decode_audio(path, r["sample_rate"], start, end, downmix=r["downmix"], reader=r["audio_reader"], resample=r["resample"])
        return fit_length(waveform, self.num_samples, r["crop"])

    def audio(self, path: Path, start: float = 0.0, end: float | None = None) -> np.ndarray:
        return self.to_features(self.waveform(path, start, end))

    def frames(self, path: Path, start: float = 0.0) -> tuple[np.ndarray, int]:
        r = self.recipe
        return decode_frames(path, r["frames"], r["fps"], self.size, start if r["segment"] else 0.0,
                             pad=r["short_clips"] == "pad", select=r["frame_select"])

    def __call__(self, audio_path: Path, video_path: Path, start: float = 0.0, end: float | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        spectrogram = self.audio(audio_path, start, end)
        frames, padded = self.frames(video_path, start)
        return spectrogram, frames, padded


def frames_to_input(frames: torch.Tensor, pixels: str = "rgb") -> torch.Tensor:
    """Stored frames uint8 (..., H, W, 3) RGB -> float (..., 3, H, W) as the reference
    loaders feed them (mmbalance.data.augment.normalise_pixels, which the store calls)."""
    from mmbalance.data.augment import normalise_pixels

    return normalise_pixels(frames.movedim(-1, -3), pixels)
