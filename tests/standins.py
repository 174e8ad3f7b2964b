"""Writers for small stand-ins of the real datasets' files.

Same containers and codecs as the real media, tiny in size: MP4 (H.264 + AAC,
AVE / Kinetics / VGGSound), AVI (MPEG-4 with the XVID tag + MP3, UCF101), FLV
and WAV (CREMA-D, from the embedded default's writers), a stored-member RAR 4
archive (UCF101.rar; no free tool writes RAR) and Git LFS pointer stubs.
Every picture and sound depends on a seed, so a test can tell clips apart.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mmbalance.data.synthetic import mux_audio, write_flv, write_wav  # noqa: F401  (write_* re-exported for the tests)


def frames(seed: int, count: int, width: int = 64, height: int = 48) -> np.ndarray:
    """(count, height, width, 3) uint8: a flat colour per seed plus a moving bar."""
    rng = np.random.default_rng(seed)
    base = np.empty((count, height, width, 3), np.uint8)
    base[:] = rng.integers(30, 220, size=3, dtype=np.uint8)
    for t in range(count):
        base[t, :, (t * 3) % width] = 255
    return base


def tone(seed: int, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """(channels, samples) float32 in [-0.5, 0.5]: a sine whose pitch depends on the seed."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 200.0 + 40.0 * (seed % 20)
    wave = 0.5 * np.sin(2 * np.pi * pitch * t).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def _encode_video(container, stream, images: np.ndarray) -> None:
    for image in images:
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_mp4(path: Path, seed: int, seconds: float = 10.0, fps: int = 25, width: int = 64, height: int = 48,
              audio: bool = True, audio_rate: int = 44100, channels: int = 2) -> Path:
    """H.264 video + AAC audio (or no audio track), like AVE, Kinetics and VGGSound clips."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=audio_rate, layout="mono" if channels == 1 else "stereo") if audio else None
        _encode_video(container, video, frames(seed, int(seconds * fps), width, height))
        if sound is not None:
            mux_audio(container, sound, tone(seed, seconds, audio_rate, channels), audio_rate, "fltp")
    return path


def write_avi(path: Path, seed: int, seconds: float = 4.0, fps: float = 25, width: int = 64, height: int = 48,
              audio: bool = True, audio_rate: int = 44100, channels: int = 2) -> Path:
    """MPEG-4 Part 2 video tagged XVID + MP3 audio (or none), like UCF101 clips.
    `fps` may be 29.97 (passed as the NTSC fraction 30000/1001)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(30000, 1001) if abs(fps - 29.97) < 0.01 else Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w", format="avi") as container:
        video = container.add_stream("mpeg4", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_tag = "XVID"
        sound = container.add_stream("libmp3lame", rate=audio_rate, layout="mono" if channels == 1 else "stereo") if audio else None
        _encode_video(container, video, frames(seed, int(round(seconds * float(rate))), width, height))
        if sound is not None:
            mux_audio(container, sound, tone(seed, seconds, audio_rate, channels), audio_rate, "s32p")
    return path


def truncate(path: Path, keep: float = 0.3) -> Path:
    """Cut a media file to a fraction of its bytes: a corrupt clip (e.g. an MP4 whose moov atom is lost)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)


def lfs_pointer(data: bytes) -> str:
    """The Git LFS pointer a repository stores in place of `data`."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"


def rar4(members: list[tuple[str, bytes, int]]) -> bytes:
    """A RAR 1.5-4.x archive with stored members, written from the format description.

    Like real archives (UCF101.rar) it stores paths with backslashes.
    `members`: (name, data, st_mode) triples.
    """
    def block(kind: int, flags: int, body: bytes, data: bytes = b"") -> bytes:
        head = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head + data

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, bytes(6))
    for name, data, mode in members:
        encoded = name.replace("/", "\\").encode()
        fields = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A210000,
                             20, 0x30, len(encoded), mode)  # host Unix, version 2.0, method "store"
        out += block(0x74, 0x8000, fields + encoded, data)
    return out + block(0x7B, 0x4000, b"")
