"""The papers' preprocessing recipes as presets: the shapes the reference loaders produce,
the three audio front-ends, and errors that name the key."""

import numpy as np
import pytest
import torch
import torchaudio

from mmbalance.data import media, recipes


@pytest.mark.parametrize("preset, shape", [
    ("ogm_ge_cremad", (257, 188)),   # recipe A: 22.05 kHz, 3 s, STFT 512/353
    ("mlb_cremad", (257, 188)),
    ("pmr_cremad", (257, 299)),      # recipe B: scipy on 48,000 samples
    ("mlb_ave", (257, 1004)),        # scipy on 160,000 samples
    ("mlb_ucf101", (257, 136)),      # 16 kHz, 3 s, STFT 512/353
    ("gewu_kinetics_sounds", (1024, 128)),  # recipe D: kaldi fbank
    ("ogm_ge_vggsound", (129, 626)),  # 16 kHz, 5 s, STFT 256/128
])
def test_each_preset_gives_the_papers_audio_shape(preset, shape):
    recipe = recipes.resolve({"preset": preset})
    samples = int(round(recipe["seconds"] * recipe["sample_rate"]))
    wave = media.fit_length(np.sin(np.arange(40_000) / 7.0).astype(np.float32), samples, recipe["crop"])
    assert media.audio_transform(recipe)(wave).shape == shape


def test_psd_is_scipy_spectrogram_in_log_and_per_clip_z_score():
    """Recipe B by hand: PSD of a Tukey-windowed, detrended frame, then log and z-score."""
    import scipy.signal

    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.5, 0.5, 4000).astype(np.float32)
    out = media.ScipyLogSpectrogram(512, 159, 16000, per_clip=True)(wave)
    # Column 0 computed without scipy.signal.spectrogram: one segment, its mean removed.
    segment = wave[:512].astype(np.float64)
    window = scipy.signal.get_window(("tukey", 0.25), 512)
    spectrum = np.abs(np.fft.rfft((segment - segment.mean()) * window)) ** 2 / (16000 * (window**2).sum())
    spectrum[1:-1] *= 2  # one-sided density
    _, _, full = scipy.signal.spectrogram(wave, 16000, nperseg=512, noverlap=353)
    assert np.allclose(full[:, 0], spectrum, rtol=1e-5)
    logs = np.log(full + 1e-7)
    assert np.allclose(out, (logs - logs.mean()) / logs.std(), atol=1e-4)
    assert out.shape == (257, 1 + (4000 - 512) // 159)


def test_fbank_pads_and_scales_like_the_gewu_cache():
    wave = np.sin(np.arange(16000) / 3.0).astype(np.float32)  # 1 s -> 98 frames, padded to 200
    out = media.KaldiFbank(16000, 64, 200)(wave)
    reference = torchaudio.compliance.kaldi.fbank(torch.from_numpy(wave - wave.mean())[None], htk_compat=True,
                                                  sample_frequency=16000, use_energy=False, window_type="hanning",
                                                  num_mel_bins=64, dither=0.0, frame_shift=10)
    assert out.shape == (200, 64) and len(reference) == 98
    assert np.allclose(out[:98], (reference.numpy() + 4.503877) / (2 * 5.141276), atol=1e-4)
    assert np.allclose(out[98:], 4.503877 / (2 * 5.141276))  # zero padding, scaled


def test_centre_crop_keeps_the_middle():
    assert media.fit_length(np.arange(10.0), 4, "centre").tolist() == [3, 4, 5, 6]
    assert media.fit_length(np.arange(3.0), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_overrides_win_over_the_preset_and_are_recorded():
    recipe = recipes.resolve({"preset": "mlb_cremad", "frame_size": 112})
    assert recipe["frame_size"] == 112 and recipe["frames"] == 3 and recipe["preset"] == "mlb_cremad"
    # The paper presets keep frames at 8/7 of the model's size, for the training crops: 128 px for 112.
    assert recipe["augment"] == "reference" and recipe["store_size"] == 128
    assert recipes.resolve({"preset": "mlb_cremad"})["store_size"] == 256
    assert recipes.resolve({"preset": "synthetic_cpu"})["store_size"] == 64  # no augmentation, no margin
    assert recipes.resolve({"frames": 1, "fps": 1, "frame_size": 8, "sample_rate": 8000, "seconds": 1, "n_fft": 64, "hop_length": 32})["preset"] == "custom"


@pytest.mark.parametrize("preprocessing, message", [
    ({"preset": "mlb_cremd"}, "datasets.x.preprocessing.preset: 'mlb_cremd' is not one of"),
    ({"frames": 1, "fps": 1.0}, "datasets.x.preprocessing: recipe lacks ['frame_size', 'sample_rate', 'seconds', 'n_fft', 'hop_length']"),
    ({"preset": "mlb_ucf101", "audio_features": "fbank"}, "recipe lacks ['mel_bins', 'fbank_frames']"),
    ({"preset": "mlb_ave", "downmix": "both"}, "datasets.x.preprocessing.downmix: 'both' is not one of ['mean', 'left']"),
    ({"preset": "mlb_ave", "frame_select": "nearest"}, "datasets.x.preprocessing.frame_select: 'nearest' is not one of"),
    ({"preset": "ogm_ge_vggsound", "resample": "nearest"}, "resample: 'nearest' is moviepy's to_soundarray, it needs audio_reader: moviepy"),
    ({"preset": "ogm_ge_vggsound", "crop": "none"}, "crop: 'none' keeps clips of any length"),
])
def test_a_bad_recipe_names_the_key(preprocessing, message):
    with pytest.raises(ValueError) as error:
        recipes.resolve(preprocessing, "datasets.x.preprocessing")
    assert message in str(error.value)


@pytest.mark.parametrize("select, rate, expected", [
    ("count", 30.0, [0, 30, 60]),
    ("count", 30000 / 1001, [0, 29, 58]),  # OpenCV's int(29.97) = 29: the reference drifts, and so do we
    ("mid_second", 30000 / 1001, [14, 104, 194]),  # 1-based round((s + 0.5) * fps) for s = 0, 3, 6
    ("mid_second", 25.0, [11, 87, 161]),  # Python's round to even: 12.5 -> 12, 87.5 -> 88, as in obtain_frames.py
])
def test_frame_indices_count_as_the_reference_extractors(select, rate, expected):
    fps = 1.0 if select == "count" else 1 / 3
    assert media.frame_indices(select, 3, fps, 0.0, rate) == expected


def test_frame_indices_of_a_segment_count_from_the_files_first_frame():
    """MLB's AVE extractor keeps second s of the file as frame s * int(fps), whatever the segment."""
    assert media.frame_indices("count", 4, 1.0, 2.0, 30000 / 1001) == [58, 87, 116, 145]


def test_pixels_rgb_is_totensor_and_bgr_255_is_mlbs_ucf101_input():
    frame = torch.tensor([[[[10, 20, 30]]]], dtype=torch.uint8)  # (T=1, H=1, W=1, RGB)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    rgb = media.frames_to_input(frame, "rgb")[0, :, 0, 0]
    bgr = media.frames_to_input(frame, "bgr_255")[0, :, 0, 0]
    assert torch.allclose(rgb, (torch.tensor([10.0, 20.0, 30.0]) / 255 - mean) / std)
    assert torch.allclose(bgr, (torch.tensor([30.0, 20.0, 10.0]) - mean) / std)
    with pytest.raises(ValueError, match="pixels: 'yuv' is not one of"):
        media.frames_to_input(frame, "yuv")


def test_raw_crop_keeps_the_clip_and_the_fbank_pads_it():
    wave = np.sin(np.arange(8000) / 5.0).astype(np.float32)  # 0.5 s
    assert media.fit_length(wave, 160000, "none") is wave
    recipe = recipes.resolve({"preset": "gewu_kinetics_sounds"})
    out = media.audio_transform(recipe)(media.fit_length(wave, 160000, recipe["crop"]))
    assert out.shape == (1024, 128) and np.allclose(out[48:], 4.503877 / (2 * 5.141276))  # 48 frames of 25 ms / 10 ms
