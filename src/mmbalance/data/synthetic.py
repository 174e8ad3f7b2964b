"""The embedded default: a generated dataset in CREMA-D's raw format.

It is built so the modality imbalance the papers study shows up in a few CPU
minutes:

* audio is a harmonic tone whose pitch depends on a *group* of emotions
  (`audio_groups`): easy and fast to learn, but emotions in one group sound
  the same, so audio alone cannot separate every class;
* video shows a face-like blob carrying a faint stripe pattern whose
  orientation encodes the emotion, under per-frame noise: every class is
  separable, but it takes longer to learn.

Files are written like the real ones (mmbalance/data/datasets/cremad.py reads both): `AudioWAV/*.wav`
16 kHz mono s16, `VideoFlash/*.flv` FLV1 video + MP3 audio at 30 fps, clip names
`<actor>_<sentence>_<EMOTION>_<level>`, `processedResults/summaryTable.csv`, and
actor-disjoint train/val/test folds in MLB's json format. Every clip is drawn
from a generator seeded by (seed, clip name), so the data does not depend on
generation order.
"""

from __future__ import annotations

import csv
import hashlib
import multiprocessing
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mmbalance.data.datasets import cremad
from mmbalance.io import file_sha256, write_text_atomic

WAV_RATE = 16_000
FLV_AUDIO_RATE = 11_025  # FLV carries MP3 at 44.1/22.05/11.025 kHz; the lowest is cheapest
FPS = 30
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:{oid}\n"
    "size {size}\n"
)


def clip_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def clip_names(settings: dict) -> list[str]:
    """Actors 1001.. x sentences x emotions; sentence IEO carries an intensity level."""
    names = []
    for actor in range(1001, 1001 + settings["actors"]):
        for sentence in cremad.SENTENCES[: settings["sentences"]]:
            for emotion in cremad.EMOTIONS:
                level = "XX"
                if sentence == "IEO" and emotion != "NEU":
                    level = ("LO", "MD", "HI")[zlib.crc32(f"{actor}{emotion}".encode()) % 3]
                names.append(f"{actor}_{sentence}_{emotion}_{level}")
    return names


def make_folds(settings: dict) -> dict[str, dict[str, list[str]]]:
    """Actor-disjoint folds: actors are shuffled into 2*folds blocks; fold k tests
    on block 2k and validates on block 2k+1, and trains on every other actor."""
    actors = np.arange(1001, 1001 + settings["actors"])
    np.random.default_rng(settings["seed"]).shuffle(actors)
    blocks = np.array_split(actors, 2 * settings["folds"])
    names = clip_names(settings)
    folds = {}
    for k in range(settings["folds"]):
        test, val = set(blocks[2 * k].tolist()), set(blocks[2 * k + 1].tolist())
        split_of = lambda name: "test" if int(name[:4]) in test else "val" if int(name[:4]) in val else "train"
        folds[str(k + 1)] = {split: [n for n in names if split_of(n) == split] for split in cremad.SPLITS}
    return folds


def audio_signal(rng: np.random.Generator, label: int, seconds: float, rate: int, settings: dict) -> np.ndarray:
    groups = settings["audio_groups"]
    group = next(i for i, members in enumerate(groups) if cremad.EMOTIONS[label] in members)
    # Pitches an octave apart, so actor jitter (+-8%) never makes two groups overlap.
    pitch = 220.0 * 2.0**group * rng.uniform(0.92, 1.08)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * pitch * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3))
    # Syllable-like bursts: a slow random on/off envelope.
    envelope = np.repeat(rng.uniform(0.3, 1.0, size=int(seconds * 8) + 1), rate // 8)[: len(t)]
    noise = rng.normal(0.0, settings["audio_noise"], size=len(t))
    return np.clip(0.25 * tone * envelope + noise, -1.0, 1.0)


def video_frames(rng: np.random.Generator, label: int, actor: int, n_frames: int, settings: dict) -> np.ndarray:
    """(n_frames, H, W, 3) uint8: actor background + face blob + emotion stripes + noise."""
    height, width = settings["video_height"], settings["video_width"]
    actor_rng = np.random.default_rng([settings["seed"], actor])
    background = actor_rng.uniform(40, 200, size=3).astype(np.float32)
    skin = actor_rng.uniform(150, 230, size=3).astype(np.float32)
    centre = np.array([height / 2, width / 2]) + actor_rng.uniform(-0.1, 0.1, size=2) * [height, width]
    radius = actor_rng.uniform(0.28, 0.36) * height

    # Small head motion: each frame's centre moves by up to a couple of pixels.
    cy, cx = (centre[:, None] + rng.normal(0, 1.0, size=(2, n_frames))).astype(np.float32)[:, :, None, None]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    face = ((yy - cy) ** 2 + ((xx - cx) / 0.8) ** 2) < radius**2
    angle = np.float32(np.pi * label / len(cremad.EMOTIONS))
    period = settings["stripe_period"] * width / 160
    phase = 2 * np.pi * ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / period
    stripes = settings["stripe_contrast"] * np.sin(phase + rng.uniform(0, 2 * np.pi))
    image = np.where(face[..., None], skin + stripes[..., None], background)
    image += settings["video_noise"] * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_wav(path: Path, signal: np.ndarray, rate: int) -> None:
    samples = (signal * 32767).astype(np.int16)[None, :]
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_flv(path: Path, frames: np.ndarray, audio: np.ndarray | None) -> None:
    """FLV1 (Sorenson H.263) video at 30 fps, with MP3 audio unless `audio` is None."""
    with av.open(str(path), "w", format="flv") as container:
        video = container.add_stream("flv", rate=FPS)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        video.bit_rate = 2_000_000  # high enough that the faint stripes survive coding
        sound = None
        if audio is not None:
            sound = container.add_stream("libmp3lame", rate=FLV_AUDIO_RATE, layout="mono")
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            mux_audio(container, sound, audio[None, :], FLV_AUDIO_RATE, "s32p")


def mux_audio(container, stream, samples: np.ndarray, rate: int, sample_format: str) -> None:
    """Encode (channels, samples) floats in [-1, 1] as one frame and flush the
    encoder. MP3 wants int32 planar (s32p), AAC float planar (fltp)."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    data = (samples * (2**31 - 1)).astype(np.int32) if sample_format == "s32p" else samples.astype(np.float32)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_format, layout=layout)
    frame.sample_rate = rate
    frame.time_base = Fraction(1, rate)
    frame.pts = 0
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_clip(job: tuple[Path, str, dict, bool]) -> None:
    raw_dir, name, settings, without_audio_track = job
    fields = cremad.parse_clip_name(name)
    label = cremad.EMOTIONS.index(fields["emotion"])
    rng = clip_rng(settings["seed"], name)
    seconds = round(rng.uniform(*settings["seconds"]), 2)
    write_wav(raw_dir / "AudioWAV" / f"{name}.wav", audio_signal(rng, label, seconds, WAV_RATE, settings), WAV_RATE)
    frames = video_frames(rng, label, int(fields["actor"]), int(seconds * FPS), settings)
    track = None
    if not without_audio_track:
        track = audio_signal(clip_rng(settings["seed"] + 1, name), label, seconds, FLV_AUDIO_RATE, settings)
    write_flv(raw_dir / "VideoFlash" / f"{name}.flv", frames, track)


def generate(raw_dir: Path, settings: dict, workers: int = 1) -> list[str]:
    """Write the whole tree; returns the clip names. Existing files are overwritten.

    With `defects`, two clips carry the real dataset's pitfalls (the CREMA-D README lists
    FLV files that lacked an audio track; issue #15 there, LFS pointer stubs):
    the second-to-last video has no audio track (harmless: audio comes from
    AudioWAV) and the last video is a git-lfs pointer stub, which is what a zip
    download or an exhausted LFS budget gives instead of media.
    """
    grouped = sorted(e for group in settings["audio_groups"] for e in group)
    if grouped != sorted(cremad.EMOTIONS):
        raise ValueError(
            f"generator setting audio_groups must list each of {list(cremad.EMOTIONS)} exactly once, got {settings['audio_groups']}"
        )
    raw_dir = Path(raw_dir)
    for sub in ("AudioWAV", "VideoFlash", "processedResults"):
        (raw_dir / sub).mkdir(parents=True, exist_ok=True)
    names = clip_names(settings)
    jobs = [(raw_dir, name, settings, settings["defects"] and name == names[-2]) for name in names]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(write_clip, jobs, chunksize=8)
    else:
        for job in jobs:
            write_clip(job)
    if settings["defects"]:
        video = raw_dir / "VideoFlash" / f"{names[-1]}.flv"
        data = video.read_bytes()
        video.write_text(LFS_POINTER.format(oid=hashlib.sha256(data).hexdigest(), size=len(data)))
    with open(raw_dir / "processedResults" / "summaryTable.csv", "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["", "FileName", "VoiceVote", "FaceVote", "MultiModalVote"])
        for i, name in enumerate(names, start=1):
            emotion = cremad.parse_clip_name(name)["emotion"][0]
            writer.writerow([str(i), name, emotion, emotion, emotion])
    cremad.write_folds(raw_dir / "data_splits.json", make_folds(settings))
    write_manifest(raw_dir)
    return names


def write_manifest(raw_dir: Path) -> None:
    """`manifest.csv` (path, sha256, size), like the real repo's LFS pointers; written
    last, so its presence means the tree is complete."""
    rows = [
        (str(path.relative_to(raw_dir)), file_sha256(path), path.stat().st_size)
        for path in sorted(raw_dir.rglob("*"))
        if path.is_file() and path.name != "manifest.csv"
    ]
    text = "path,sha256,size\n" + "".join(f"{p},{h},{n}\n" for p, h, n in rows)
    write_text_atomic(raw_dir / "manifest.csv", text)
