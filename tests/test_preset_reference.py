"""Differential tests: every paper preset against its reference loader, recomputed here.

Media are written by the real `ffmpeg` command-line tool (not by the project):
stereo audio whose left and right channels differ, a CREMA-D FLV whose video
stream starts 0.05 s late, 29.97 fps streams, and each dataset's container
(FLV + WAV for CREMA-D, MP4 for AVE, Kinetics-Sounds and VGGSound, AVI with
MPEG-4 video and MP3 audio for UCF101). The project's arrays come from
`media.ClipDecoder` and `media.frames_to_input`; the reference's from the
reference recipe written out here with the reference's own libraries: librosa
(`load`, `stft`), scipy (`signal.spectrogram`), torchaudio's
`compliance.kaldi.fbank`, OpenCV (`cv2.VideoCapture` frame counting), torchvision
(`Resize`, `Normalize`), and the ffmpeg command lines that moviepy 1.0.3 and
the reference scripts run. The references (repository, file, commit):

* OGM-GE: GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d, data/CREMAD/video_preprocessing.py,
  dataset/CramedDataset.py, data/VGGSound/{mp4_to_wav,video_preprocessing}.py,
  dataset/VGGSoundDataset.py, data/KineticSound/process_audio.py, and
  pre-processing/obtain_frames.py @ 7bc8c89 (deleted later).
* PMR: fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48, dataset/CramedDataset.py;
  MMCosine: GeWu-Lab/MMCosine_ICASSP23 @ 00ba0a9, dataset/dataset.py (AVDataset_CD).
* MLB: kkontras/MLB @ 357b5ce, datasets/CREMAD/{Video_Preprocessing,CREMAD_Dataset}.py,
  datasets/AVE/{Video_Preprocessesing,mp4_to_wav,AVE_Dataset}.py,
  datasets/UCF101/{Preprocessing,UCF101_Dataset}.py.
* BalanceBenchmark: GeWu-Lab/BalanceBenchmark @ 4c1482f, balancemm/datasets/KS_dataset.py.
* moviepy 1.0.3 (PyPI): audio/io/readers.py, audio/AudioClip.py, video/io/ffmpeg_reader.py.

Departures the comparison leaves out on purpose (each is documented on the
dataset's page): the references' JPEG round trip of every frame, their random
choices (VGGSound's 5 s window: the test gives the reference the project's
start, after checking the reference could draw it), and torchaudio.load,
which needs torchcodec in this torchaudio and is replaced by soundfile's read
of the same 16-bit WAV (the same samples / 32768).

Tolerances. Frames: the same decoded picture scaled to 224 x 224 by
libswscale (project) or by PIL / torchvision (references) differs by the
scalers alone, a mean of about 1 grey level; neighbouring frames of the test
video differ by 6 levels everywhere, so a wrong frame fails. Audio: where both
sides run the same resampler (ffmpeg's, or none) the features agree to float
rounding and 16-bit quantisation; where the reference resamples with librosa
(soxr) and the project with libswresample, bins below 80 % of the lower
Nyquist frequency are compared (both resamplers pass them flat); above that
each resampler's transition band is its own. A 3 dB downmix error shifts every
log bin by 0.35 and fails all of them.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbalance.data import augment, media, recipes

# The test extra (pyproject.toml) brings librosa, OpenCV and soundfile; CI installs them and ffmpeg,
# so there a missing one is an error, elsewhere the module is skipped with the reason.
IN_CI = bool(os.environ.get("CI"))
_import = importlib.import_module if IN_CI else pytest.importorskip
cv2 = _import("cv2")
librosa = _import("librosa")
soundfile = _import("soundfile")
scipy_signal = _import("scipy.signal")
torchaudio = _import("torchaudio")
transforms = _import("torchvision.transforms")
from PIL import Image  # noqa: E402  (torchvision's dependency)

FFMPEG = shutil.which("ffmpeg")
if FFMPEG is None and IN_CI:
    raise RuntimeError("the differential tests need the ffmpeg command-line tool (the Debian package ffmpeg)")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg command-line tool is not installed (apt-get install ffmpeg)")

WIDTH, HEIGHT = 160, 120
LEVEL_STEP = 6  # grey levels between consecutive frames of the test video


# --- media written by the ffmpeg command-line tool


def ffmpeg(*args: str) -> bytes:
    result = subprocess.run([FFMPEG, "-nostdin", "-y", "-loglevel", "error", *args], capture_output=True, check=True)
    return result.stdout


def picture(k: int) -> np.ndarray:
    """Frame k: smooth ramps (scalers agree on them) whose level steps by LEVEL_STEP per frame,
    with unequal channels so that a BGR/RGB swap shows."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = 40 + LEVEL_STEP * (k % 25)
    rgb = np.stack([base + 30 * x / WIDTH, base + 15 + 20 * y / HEIGHT, 200 - base / 2 + 10 * x / WIDTH], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def stereo(seconds: float, rate: int, seed: int) -> np.ndarray:
    """(samples, 2) float32: left broadband noise, right other noise plus a 440 Hz tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    left = 0.2 * rng.standard_normal(len(t))
    right = 0.08 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.clip(np.stack([left, right], axis=1), -0.99, 0.99).astype(np.float32)


def write_media(path: Path, *, seconds: float, fps: str, video_codec: list[str], audio_codec: list[str] | None,
                audio_rate: int = 44100, channels: int = 2, video_delay: float = 0.0, seed: int = 0) -> Path:
    """One container written by ffmpeg from raw frames and raw float audio."""
    rate = eval(fps)  # "30000/1001" -> 29.97
    frames = np.stack([picture(k) for k in range(int(round(seconds * rate)))])
    raw_video = path.with_suffix(".rgb")
    raw_video.write_bytes(frames.tobytes())
    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}", "-r", fps, "-i", str(raw_video)]
    if audio_codec is not None:
        sound = stereo(seconds, audio_rate, seed)
        sound = sound[:, :1] if channels == 1 else sound
        raw_audio = path.with_suffix(".f32")
        raw_audio.write_bytes(sound.tobytes())
        args += ["-f", "f32le", "-ar", str(audio_rate), "-ac", str(channels), "-i", str(raw_audio)]
    args += ["-map", "0:v"] + (["-map", "1:a"] + audio_codec if audio_codec is not None else [])
    if video_delay:  # every video timestamp later by video_delay seconds: the stream starts late
        args += ["-vf", f"setpts=PTS+{video_delay}/TB"]
    ffmpeg(*args, *video_codec, str(path))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reference_media")
    mp4_video = ["-c:v", "libx264", "-crf", "8", "-pix_fmt", "yuv420p"]
    aac = ["-c:a", "aac", "-b:a", "256k"]
    out = {
        # CREMA-D: FLV1 video at 30 fps starting 0.05 s late, MP3 track; the audio the papers use is the WAV.
        "cremad_flv": write_media(d / "1001_DFA_ANG_XX.flv", seconds=3.2, fps="30", video_delay=0.05,
                                  video_codec=["-c:v", "flv1", "-q:v", "2"], audio_codec=["-c:a", "libmp3lame", "-ar", "44100"]),
        # AVE: H.264 at 29.97 fps, AAC at 48 kHz stereo.
        "ave_mp4": write_media(d / "ave.mp4", seconds=8.0, fps="30000/1001", video_codec=mp4_video, audio_codec=aac, audio_rate=48000, seed=1),
        # UCF101: AVI, MPEG-4 part 2 at 29.97 fps, MP3 44.1 kHz stereo; and a mono one at 25 fps.
        "ucf_avi": write_media(d / "v_Drumming_g01_c01.avi", seconds=4.5, fps="30000/1001",
                               video_codec=["-c:v", "mpeg4", "-q:v", "2"], audio_codec=["-c:a", "libmp3lame", "-b:a", "256k"], seed=2),
        "ucf_avi_mono": write_media(d / "v_Drumming_g01_c02.avi", seconds=4.2, fps="25", channels=1,
                                    video_codec=["-c:v", "mpeg4", "-q:v", "2"], audio_codec=["-c:a", "libmp3lame", "-b:a", "192k"], seed=3),
        # Kinetics-Sounds: 10 s H.264 at 29.97 fps, AAC 44.1 kHz stereo.
        "ks_mp4": write_media(d / "ks.mp4", seconds=10.0, fps="30000/1001", video_codec=mp4_video, audio_codec=aac, seed=4),
        # VGGSound: 10 s H.264 at 25 fps, AAC 48 kHz stereo.
        "vgg_mp4": write_media(d / "vgg.mp4", seconds=10.0, fps="25", video_codec=mp4_video, audio_codec=aac,
                               audio_rate=48000, seed=5),
    }
    # CREMA-D's AudioWAV: 16-bit PCM at 16 kHz, 2.6 s (tiled to 3 s); stereo here so that the downmix is exercised.
    wav = d / "1001_DFA_ANG_XX.wav"
    (d / "wav.f32").write_bytes(stereo(2.6, 16000, 6).tobytes())
    ffmpeg("-f", "f32le", "-ar", "16000", "-ac", "2", "-i", str(d / "wav.f32"), "-c:a", "pcm_s16le", str(wav))
    out["cremad_wav"] = wav
    return out


# --- the reference recipes, each with its reference's libraries


def opencv_frames(path: Path, seconds: list[int]) -> list[np.ndarray]:
    """OGM-GE / PMR / MLB `video2frame_update` (and MLB's UCF101 Preprocessing.py): read every
    frame with OpenCV and keep frame `count` when count % int(CAP_PROP_FPS) == 0; the kept
    frames are named by count, so the sorted list holds second s at position s. BGR, full size."""
    capture = cv2.VideoCapture(str(path))
    fps = int(capture.get(cv2.CAP_PROP_FPS))
    total = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    kept, count = [], 0
    while count < total:
        ok, image = capture.read()
        if not ok:
            break
        if count % fps == 0:
            kept.append(image)
        count += 1
    capture.release()
    return [kept[s] for s in seconds]


def moviepy_fps(path: Path) -> float:
    """moviepy 1.0.3 ffmpeg_parse_infos(fps_source='tbr'): the `tbr` figure of `ffmpeg -i`, snapped to x*1000/1001."""
    info = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    line = next(line for line in info.splitlines() if re.search(r"Stream.*Video", line))
    fps = float(re.search(r" (\d+\.?\d*k?) tbr", line).group(1))
    for x in (23, 24, 25, 30, 50):
        if fps != x and abs(fps - x * 1000 / 1001) < 0.01:
            fps = x * 1000 / 1001
    return fps


def moviepy_frames(path: Path) -> np.ndarray:
    """moviepy 1.0.3's FFMPEG_VideoReader pipe: every frame as ffmpeg sends rgb24 raw video."""
    raw = ffmpeg("-i", str(path), "-f", "image2pipe", "-vf", f"scale={WIDTH}:{HEIGHT}", "-sws_flags", "bicubic",
                 "-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-")
    return np.frombuffer(raw, np.uint8).reshape(-1, HEIGHT, WIDTH, 3)


def moviepy_stereo_44k(path: Path) -> np.ndarray:
    """moviepy 1.0.3's FFMPEG_AudioReader (VideoFileClip's audio: fps 44100, nbytes 2, nchannels 2)."""
    raw = ffmpeg("-i", str(path), "-vn", "-f", "s16le", "-acodec", "pcm_s16le", "-ar", "44100", "-ac", "2", "-")
    return np.frombuffer(raw, np.int16).reshape(-1, 2) / 2**15


def pil_resize(bgr: np.ndarray) -> np.ndarray:
    """The GeWu-Lab / PMR / MLB-AVE test transform on a frame: PIL RGB image, Resize((224, 224)); uint8."""
    image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.asarray(transforms.Resize(size=(224, 224))(image))


def tensor_resize(rgb: np.ndarray) -> np.ndarray:
    """MLB CREMA-D's test transform: ToTensor, then Resize((224, 224), antialias=True); back to 0-255."""
    x = transforms.Resize(size=(224, 224), antialias=True)(transforms.ToTensor()(rgb))
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.float32)


def log_stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    return np.log(np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop)) + 1e-7)


def log_psd(x: np.ndarray, rate: int) -> np.ndarray:
    _, _, spectrogram = scipy_signal.spectrogram(x, rate, nperseg=512, noverlap=353)
    return np.log(np.abs(spectrogram) + 1e-7)


def clip_unit(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x[x > 1.0] = 1.0
    x[x < -1.0] = -1.0
    return x


def reference_cremad(clips, preset: str) -> tuple[np.ndarray, np.ndarray]:
    wav, flv = clips["cremad_wav"], clips["cremad_flv"]
    if preset == "pmr_cremad":
        # PMR's Audio-299 / MMCosine's on-the-fly recipe B: 16 kHz, tiled 3x, first 48,000, scipy PSD, log, z-score.
        samples, rate = librosa.load(wav, sr=16000)
        spec = log_psd(clip_unit(np.tile(samples, 3)[:48000]), rate)
        audio = (spec - spec.mean()) / (spec.std() + 1e-9)
    else:
        # OGM-GE CramedDataset / MLB CREMAD_Dataset._get_spectrogram: recipe A.
        samples, _ = librosa.load(wav, sr=22050)
        audio = log_stft(clip_unit(np.tile(samples, 3)[: 22050 * 3]), 512, 353)
    count = {"ogm_ge_cremad": 1, "mlb_cremad": 3, "pmr_cremad": 3}[preset]
    bgr = opencv_frames(flv, list(range(count)))
    if preset == "mlb_cremad":
        frames = np.stack([tensor_resize(cv2.cvtColor(b, cv2.COLOR_BGR2RGB)) for b in bgr])
    else:
        frames = np.stack([pil_resize(b) for b in bgr]).astype(np.float32)
    return audio, frames


def reference_ave(clips, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """MLB AVE: moviepy write_audiofile (44.1 kHz 16-bit stereo WAV), librosa.load(sr=16000),
    the segment [16000*start : 16000*end], tiled to 160,000, clipped, scipy PSD, log; frames of
    seconds start..end (OpenCV counting), the first 4 sorted, PIL Resize((224, 224))."""
    path = clips["ave_mp4"]
    wav = path.with_name("ave_moviepy.wav")
    soundfile.write(wav, moviepy_stereo_44k(path), 44100, subtype="PCM_16")
    samples, _ = librosa.load(wav, sr=16000)
    samples = samples[16000 * start : 16000 * end]
    tiled = np.tile(samples, 10)
    tiled = np.tile(tiled, 10)[:160000] if tiled.shape[0] < 160000 else tiled[:160000]
    audio = log_psd(clip_unit(tiled), 16000)
    frames = np.stack([pil_resize(b) for b in opencv_frames(path, [start + j for j in range(4)])]).astype(np.float32)
    return audio, frames


def reference_ucf101(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """MLB UCF101: moviepy to_soundarray(fps=16000)[:, 0] (the 44.1 kHz sample nearest to each
    16 kHz time), clipped, the first (4 - 1) * 16000 samples, librosa STFT 512/353, log;
    OpenCV BGR frames at 1 fps, the first 4, as float without /255, Resize((224, 224),
    antialias=True), Normalize(ImageNet)."""
    sound = moviepy_stereo_44k(path)
    duration = len(sound) / 44100
    tt = np.arange(0, duration, 1 / 16000)
    picked = sound[np.round(44100 * tt).astype(int)[np.round(44100 * tt).astype(int) < len(sound)], 0]
    audio = log_stft(clip_unit(picked)[: 3 * 16000], 512, 353)
    bgr = np.stack(opencv_frames(path, [0, 1, 2, 3]))
    x = torch.from_numpy(bgr).permute(0, 3, 1, 2).float()
    x = transforms.Resize(size=(224, 224), antialias=True)(x)
    x = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(x)
    return audio, x


def reference_kinetics(clips) -> tuple[np.ndarray, np.ndarray]:
    """GeWu-Lab Kinetics-Sounds: `ffmpeg -i x.mp4 -acodec pcm_s16le -ar 16000 x.wav` (channels kept),
    loaded as floats, its mean removed, kaldi fbank (channel 0) of the whole clip, padded or
    cut to 1024 frames, (x + 4.503877) / (2 * 5.141276); frames: obtain_frames.py's 1-based
    frame round((0.5 + i) * fps) of moviepy's reader for i = 0..9, BalanceBenchmark's test pick
    of files 1, 4, 7, PIL Resize((224, 224))."""
    path = clips["ks_mp4"]
    wav = path.with_suffix(".wav")
    ffmpeg("-i", str(path), "-acodec", "pcm_s16le", "-ar", "16000", str(wav))
    data, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    waveform = torch.from_numpy(data.T.copy())
    waveform = waveform - waveform.mean()
    fbank = torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=rate, use_energy=False,
                                              window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    p = 1024 - fbank.shape[0]
    fbank = torch.nn.ZeroPad2d((0, 0, 0, p))(fbank) if p > 0 else fbank[:1024]
    audio = ((fbank - -4.503877) / (5.141276 * 2)).numpy()
    fps, every = moviepy_fps(path), moviepy_frames(path)
    positions = [round((1 / 2 + i) * fps) for i in range(10)]
    assert positions[-1] <= len(every)  # a 10 s clip: no wrap into the last second
    seg = int(10 / 3)
    files = [i * seg + max(int(seg / 2), 1) for i in range(3)]  # frame_00001, 00004, 00007
    frames = [every[positions[f - 1] - 1] for f in files]  # moviepy's position p is the p-th frame
    return audio, np.stack([np.asarray(transforms.Resize(size=(224, 224))(Image.fromarray(f))) for f in frames]).astype(np.float32)


def reference_vggsound(clips, window_start: int) -> tuple[np.ndarray, np.ndarray]:
    """OGM-GE VGGSound: `ffmpeg -i x.mp4 -acodec pcm_s16le -ar 16000 x.wav`, librosa.load(sr=16000,
    mono=True), tiled x2 until 10 s, a 5 s window from randint(0, 5 * rate) (given here),
    clipped, librosa STFT 256/128, log; frames: OpenCV 1 fps, the first three."""
    path = clips["vgg_mp4"]
    wav = path.with_suffix(".wav")
    ffmpeg("-i", str(path), "-acodec", "pcm_s16le", "-ar", "16000", str(wav))
    sample, rate = librosa.load(wav, sr=16000, mono=True)
    while len(sample) / rate < 10.0:
        sample = np.tile(sample, 2)
    assert 0 <= window_start <= rate * 5  # a start the reference's randint could draw
    audio = log_stft(clip_unit(sample[window_start : window_start + rate * 5]), 256, 128)
    frames = np.stack([pil_resize(b) for b in opencv_frames(path, [0, 1, 2])]).astype(np.float32)
    return audio, frames


# --- comparisons


def eval_frames(frames: np.ndarray, frame_size: int = 224) -> np.ndarray:
    """What the model sees at validation and test: the stored frames (store_size) resized to
    frame_size (every paper preset's 224) as the feature store does; float grey levels."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # uint8, as stored
    return augment.resize_frames(x, frame_size).permute(0, 2, 3, 1).numpy().astype(np.float32)


def frame_error(project: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference in grey levels, per frame; the largest over frames."""
    assert project.shape == reference.shape, (project.shape, reference.shape)
    return float(np.abs(project.astype(np.float32) - reference.astype(np.float32)).reshape(len(project), -1).mean(axis=1).max())


def in_band(rate: int, n_fft: int, low_rate: int | None = None) -> int:
    """Frequency bins below 80 % of the Nyquist frequency of the lowest rate the audio went through."""
    return int(0.8 * (low_rate or rate) / 2 / (rate / n_fft))


def interior_frames(n_frames: int, hop: int, n_fft: int, boundaries: list[int]) -> np.ndarray:
    """STFT frames (centred) whose window holds no clip boundary: the decoded clip's start and end
    and the joints of its tiling, where two resamplers' start-up and tail transients differ."""
    centres = np.arange(n_frames) * hop
    return np.array([all(abs(c - b) >= n_fft // 2 for b in boundaries) for c in centres])


def audio_error(project: np.ndarray, reference: np.ndarray, bins: int | None = None, frames: np.ndarray | None = None) -> float:
    """Largest absolute difference over the compared bins (rows; all when None) and frames (columns)."""
    assert project.shape == reference.shape, (project.shape, reference.shape)
    diff = np.abs(project.astype(np.float64) - reference)[slice(None) if bins is None else slice(0, bins)]
    return float((diff if frames is None else diff[:, frames]).max())


FRAME_TOLERANCE = 2.0  # grey levels, mean over a frame; neighbouring frames differ by LEVEL_STEP = 6
SAME_SAMPLES = 0.02  # log units: the same samples on both sides, float32 vs float64 arithmetic
WAV_ROUNDING = 0.1  # log units: same resampler, but the reference rounds to a 16-bit WAV first (0.5 LSB = 1.5e-5,
# about 1e-4 in a 256-point STFT bin: 0.1 in a bin whose magnitude is 1e-3, a deep null of the test noise)
OTHER_RESAMPLER = 0.05  # log units, in-band bins: librosa's soxr vs libswresample


def report(preset: str, audio: float, audio_tol: float, frames: float, frame_tol: float = FRAME_TOLERANCE) -> None:
    """Prints the errors (pytest -s shows them) and checks them."""
    print(f"\n{preset}: audio max |diff| {audio:.4g} (tolerance {audio_tol}), frames mean |diff| {frames:.3g} levels (tolerance {frame_tol})")
    assert audio <= audio_tol, f"{preset}: audio differs from the reference by {audio:.4g} > {audio_tol}"
    assert frames <= frame_tol, f"{preset}: frames differ from the reference by {frames:.3g} levels > {frame_tol}"


def decoder(preset: str, overrides: dict | None = None) -> media.ClipDecoder:
    return media.ClipDecoder(recipes.resolve({"preset": preset, **(overrides or {})}))


# Each comparison returns (audio error, its tolerance, frame error in grey levels).


def compare_cremad(clips, preset: str, overrides: dict | None = None) -> tuple[float, float, float]:
    spectrogram, frames, padded = decoder(preset, overrides)(clips["cremad_wav"], clips["cremad_flv"])
    audio, expected = reference_cremad(clips, preset)
    assert padded == 0
    if preset == "pmr_cremad":  # 16 kHz read at 16 kHz: no resampler on either side
        error, tolerance = audio_error(spectrogram, audio), SAME_SAMPLES
    else:  # 16 kHz -> 22.05 kHz: librosa's soxr against libswresample; the 2.6 s clip is tiled to 3 s
        length = int(round(2.6 * 22050))
        frames_kept = interior_frames(spectrogram.shape[1], 353, 512, [0, length, 66150])
        error, tolerance = audio_error(spectrogram, audio, in_band(22050, 512, 16000), frames_kept), OTHER_RESAMPLER
    return error, tolerance, frame_error(eval_frames(frames), expected)


def compare_ave(clips, overrides: dict | None = None) -> tuple[float, float, float]:
    spectrogram, frames, padded = decoder("mlb_ave", overrides)(clips["ave_mp4"], clips["ave_mp4"], 2.0, 7.0)
    audio, expected = reference_ave(clips, 2, 7)
    assert padded == 0
    # 48 kHz -> 44.1 kHz (ffmpeg, both sides) -> 16 kHz: soxr (librosa) against libswresample. The segment is
    # cut after resampling and tiled the same on both sides, so no frame holds a resampler's edge.
    return audio_error(spectrogram, audio, in_band(16000, 512)), OTHER_RESAMPLER, frame_error(eval_frames(frames), expected)


def compare_ucf101(clips, clip: str, overrides: dict | None = None) -> tuple[float, float, float]:
    recipe = recipes.resolve({"preset": "mlb_ucf101", **(overrides or {})})
    spectrogram, frames, padded = media.ClipDecoder(recipe)(clips[clip], clips[clip])
    audio, expected = reference_ucf101(clips[clip])
    project = media.frames_to_input(torch.from_numpy(eval_frames(frames)), recipe["pixels"])
    # Back to grey levels: both inputs are (x - mean) / std of 0-255 values.
    levels = (project - expected).abs() * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert padded == 0
    return audio_error(spectrogram, audio), SAME_SAMPLES, float(levels.flatten(1).mean(1).max())


def compare_kinetics(clips, overrides: dict | None = None) -> tuple[float, float, float]:
    spectrogram, frames, _ = decoder("gewu_kinetics_sounds", overrides)(clips["ks_mp4"], clips["ks_mp4"])
    audio, expected = reference_kinetics(clips)
    assert spectrogram.shape == (1024, 128)
    return audio_error(spectrogram, audio), SAME_SAMPLES, frame_error(eval_frames(frames), expected)


def compare_vggsound(clips, overrides: dict | None = None) -> tuple[float, float, float]:
    spectrogram, frames, _ = decoder("ogm_ge_vggsound", overrides)(clips["vgg_mp4"], clips["vgg_mp4"])
    decoded = media.decode_audio(clips["vgg_mp4"], 16000)
    need = 5 * 16000
    start = (len(decoded) * -(-need // len(decoded)) - need) // 2  # fit_length's centre of the tiled clip
    audio, expected = reference_vggsound(clips, start)
    # 48 kHz -> 16 kHz by libswresample on both sides (ffmpeg's command line, PyAV); above 0.8 x Nyquist the
    # resampler's stop band leaves so little that the reference WAV's 16-bit rounding dominates those bins.
    return audio_error(spectrogram, audio, in_band(16000, 256)), WAV_ROUNDING, frame_error(eval_frames(frames), expected)


@pytest.mark.parametrize("preset", ["ogm_ge_cremad", "mlb_cremad", "pmr_cremad"])
def test_cremad_presets_match_their_reference(clips, preset):
    """Stereo 16 kHz WAV (tiled to 3 s) and an FLV whose video starts at 0.05 s: the references count
    frames (0, 30, 60), so must the preset."""
    report(preset, *compare_cremad(clips, preset))


def test_mlb_ave_matches_its_reference(clips):
    """Event segment 2-7 s of an 8 s MP4 (29.97 fps, so second s is frame 29 s; AAC 48 kHz stereo)."""
    report("mlb_ave", *compare_ave(clips))


@pytest.mark.parametrize("clip", ["ucf_avi", "ucf_avi_mono"])
def test_mlb_ucf101_matches_its_reference(clips, clip):
    """AVI (MPEG-4, MP3): moviepy's nearest-sample audio, left channel (a mono source at 1/sqrt(2)),
    and OpenCV's BGR 0-255 frames, compared as the model input both feed the network."""
    report(f"mlb_ucf101 ({clip})", *compare_ucf101(clips, clip))


def test_gewu_kinetics_sounds_matches_its_reference(clips):
    """10 s MP4 at 29.97 fps: fbank of the raw clip's first channel, zero-padded to 1024 frames;
    the frames in the middle of seconds 0, 3 and 6."""
    report("gewu_kinetics_sounds", *compare_kinetics(clips))


def test_ogm_ge_vggsound_matches_its_reference(clips):
    """10 s MP4 at 25 fps, AAC 48 kHz stereo: channel mean, the first three 1 fps frames."""
    report("ogm_ge_vggsound", *compare_vggsound(clips))


@pytest.mark.parametrize("compare, overrides, fails", [
    # The presets' values before the reference behaviour was matched, one at a time.
    (lambda c, o: compare_cremad(c, "mlb_cremad", o), {"frame_select": "time"}, "frames"),
    (lambda c, o: compare_ucf101(c, "ucf_avi", o), {"audio_reader": "direct", "resample": "sinc", "downmix": "mean"}, "audio"),
    (lambda c, o: compare_ucf101(c, "ucf_avi", o), {"resample": "sinc"}, "audio"),
    (lambda c, o: compare_ucf101(c, "ucf_avi", o), {"downmix": "mean"}, "audio"),
    (lambda c, o: compare_ucf101(c, "ucf_avi_mono", o), {"audio_reader": "direct", "resample": "sinc"}, "audio"),
    (lambda c, o: compare_ucf101(c, "ucf_avi", o), {"pixels": "rgb"}, "frames"),
    (compare_kinetics, {"fps": 0.3, "frame_select": "time"}, "frames"),
    (compare_kinetics, {"frame_select": "count"}, "frames"),
    (compare_kinetics, {"downmix": "mean"}, "audio"),
    (compare_vggsound, {"fps": 0.3, "frame_select": "time"}, "frames"),
], ids=["mlb_cremad-time", "ucf101-direct", "ucf101-sinc", "ucf101-mean", "ucf101-mono-direct", "ucf101-rgb",
        "ks-old-frames", "ks-count", "ks-mean", "vggsound-old-frames"])
def test_the_departures_fail_the_comparison(clips, compare, overrides, fails):
    """Each departure this module's comparisons guard against is caught: the recipe with it is beyond tolerance."""
    audio, audio_tol, frames = compare(clips, overrides)
    assert (audio > audio_tol) if fails == "audio" else (frames > FRAME_TOLERANCE), (audio, audio_tol, frames)


# --- the causes, one by one: each old behaviour fails against its reference


def test_pyav_mono_layout_is_3_db_louder_than_the_channel_mean(clips):
    """PyAV's AudioResampler(layout="mono") gives 0.7071 (L + R); the references average."""
    import av

    with av.open(str(clips["cremad_wav"])) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        pyav = np.concatenate([f.to_ndarray() for frame in container.decode(audio=0) for f in resampler.resample(frame)], axis=1)[0]
    mean = media.decode_audio(clips["cremad_wav"], 16000)
    samples, _ = librosa.load(clips["cremad_wav"], sr=16000)
    assert np.allclose(mean, samples, atol=1e-6)
    assert np.allclose(pyav[: len(mean)], np.sqrt(2) * mean, atol=1e-4)


def test_frames_by_time_are_one_frame_early_on_a_late_stream(clips):
    """The FLV's video starts at 0.05 s: by time from t = 0 the frames of seconds 1 and 2 are
    frames 29 and 59; counted (the references, and the presets) they are 30 and 60."""
    import av

    with av.open(str(clips["cremad_flv"])) as container:
        first = next(container.decode(video=0)).time
    assert first > 1 / 30  # the late start this test is about
    by_time, _ = media.decode_frames(clips["cremad_flv"], 3, 1.0, 224, select="time")
    counted, _ = media.decode_frames(clips["cremad_flv"], 3, 1.0, 224)
    reference = np.stack([pil_resize(b) for b in opencv_frames(clips["cremad_flv"], [0, 1, 2])])
    assert frame_error(counted, reference) <= FRAME_TOLERANCE
    assert frame_error(by_time[1:], reference[1:]) >= LEVEL_STEP - FRAME_TOLERANCE


def test_rgb_over_255_is_not_mlbs_ucf101_input(clips):
    """MLB's UCF101 input is BGR 0-255 normalised: the usual RGB / 255 input is far from it."""
    _, frames, _ = decoder("mlb_ucf101")(clips["ucf_avi"], clips["ucf_avi"])
    _, expected = reference_ucf101(clips["ucf_avi"])
    usual = media.frames_to_input(torch.from_numpy(eval_frames(frames)), "rgb")
    assert (usual - expected).abs().mean() > 100


def test_tiling_before_the_fbank_is_not_the_reference(clips):
    """GeWu-Lab's fbank runs on the raw clip and zero-pads its frames; tiling a short clip to 10 s first
    gives other features after the clip's end."""
    short = clips["cremad_wav"]  # 2.6 s
    recipe = recipes.resolve({"preset": "gewu_kinetics_sounds"})
    raw = media.ClipDecoder(recipe).audio(short)
    tiled = media.ClipDecoder(recipe | {"crop": "start"}).audio(short)
    assert np.allclose(raw[300:], 4.503877 / (2 * 5.141276))  # zero padding after 2.6 s, scaled
    assert np.abs(tiled[300:] - raw[300:]).mean() > 0.1
