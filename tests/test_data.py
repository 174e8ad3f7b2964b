"""The generated default in CREMA-D's real formats, media decoding and the
feature store."""

import csv
import shutil

import av
import numpy as np
import pytest
from conftest import TINY_RECIPE

from mmbalance.data import media, synthetic
from mmbalance.data.catalog import read_folds
from mmbalance.data.datasets import cremad
from mmbalance.data.store.features import FeatureStore
from mmbalance.io import file_sha256


def test_clip_names_are_cremad_names(tiny_raw):
    clips = cremad.list_clips(tiny_raw)
    assert len(clips) == 6 * 1 * 6
    assert {c.label for c in clips} == set(range(6))
    assert all(cremad.CLIP_NAME.match(c.name) for c in clips)
    # The IEO sentence carries an intensity level, the others XX, as in CREMA-D.
    assert {c.name.split("_")[3] for c in clips if "_IEO_" in c.name and "_NEU_" not in c.name} <= {"LO", "MD", "HI"}


def test_wav_is_16khz_mono_pcm(tiny_raw):
    with av.open(str(next((tiny_raw / "AudioWAV").glob("*.wav")))) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) == ("pcm_s16le", 16000, 1)


def test_flv_is_flv1_video_with_mp3_audio(tiny_raw):
    path = sorted((tiny_raw / "VideoFlash").glob("*.flv"))[0]
    with av.open(str(path)) as container:
        assert container.format.name == "flv"
        assert container.streams.video[0].codec_context.name == "flv"  # Sorenson H.263 (FLV1)
        assert container.streams.video[0].average_rate == 30
        assert container.streams.audio[0].codec_context.name.startswith("mp3")  # FFmpeg's decoder: mp3float


def test_defects_are_the_real_pitfalls(tiny_raw):
    names = synthetic.clip_names({"actors": 6, "sentences": 1})
    stub = tiny_raw / "VideoFlash" / f"{names[-1]}.flv"
    assert stub.read_text().startswith("version https://git-lfs.github.com/spec/v1")
    with av.open(str(tiny_raw / "VideoFlash" / f"{names[-2]}.flv")) as container:
        assert not container.streams.audio and container.streams.video


def test_folds_are_actor_disjoint(tiny_raw):
    folds = read_folds(tiny_raw / "data_splits.json")
    assert sorted(folds) == [1, 2, 3]
    tests = []
    for splits in folds.values():
        actors = {s: {name[:4] for name in splits[s]} for s in cremad.SPLITS}
        assert all(actors[s] for s in cremad.SPLITS)
        assert not (actors["train"] & actors["val"] or actors["train"] & actors["test"] or actors["val"] & actors["test"])
        tests.append(actors["test"])
    assert not (tests[0] & tests[1] or tests[0] & tests[2] or tests[1] & tests[2])


def test_manifest_has_every_file_with_its_checksum(tiny_raw):
    rows = list(csv.DictReader(open(tiny_raw / "manifest.csv")))
    on_disk = {str(p.relative_to(tiny_raw)) for p in tiny_raw.rglob("*") if p.is_file() and p.name != "manifest.csv"}
    assert {r["path"] for r in rows} == on_disk
    row = rows[0]
    assert file_sha256(tiny_raw / row["path"]) == row["sha256"]
    assert (tiny_raw / row["path"]).stat().st_size == int(row["size"])


def test_generation_is_deterministic(tmp_path, tiny_generator_settings, tiny_raw):
    """A clip depends on (seed, name) only, not on the order or the process that wrote it."""
    settings = tiny_generator_settings
    (tmp_path / "AudioWAV").mkdir()
    (tmp_path / "VideoFlash").mkdir()
    name = cremad.list_clips(tiny_raw)[3].name
    synthetic.write_clip((tmp_path, name, settings, False))
    assert file_sha256(tmp_path / "AudioWAV" / f"{name}.wav") == file_sha256(tiny_raw / "AudioWAV" / f"{name}.wav")


def test_recipe_a_spectrogram_shape(tiny_raw):
    """Recipe A (OGM-GE dataset/CramedDataset.py): 22.05 kHz, tiled to 3 s, STFT 512/353 -> 257 x 188."""
    wav = next((tiny_raw / "AudioWAV").glob("*.wav"))
    waveform = media.fit_length(media.decode_audio(wav, 22050), 66150)
    assert media.LogSpectrogram(512, 353)(waveform).shape == (257, 188)


def test_frames_are_taken_by_timestamp(tmp_path):
    """A 2.5 s, 30 fps clip whose frame i has grey level 2*i: frames at 1 fps
    are frames 0, 30, 60, and a 4th time is past the end, so it repeats."""
    images = np.stack([np.full((48, 64, 3), 2 * i, dtype=np.uint8) for i in range(75)])
    path = tmp_path / "ramp.flv"
    synthetic.write_flv(path, images, None)
    frames, padded = media.decode_frames(path, 4, 1.0, 32)
    assert frames.shape == (4, 32, 32, 3) and padded == 1
    assert frames.reshape(4, -1).mean(axis=1) == pytest.approx([0, 60, 120, 120], abs=4)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 10\n", "git-lfs pointer stub"),
        (b"<!DOCTYPE html><html><body>Quota exceeded</body></html>", "HTML page"),
        (b"", "empty file"),
        (b"\x00\x01garbage that is no container at all" * 10, "cannot decode"),
    ],
)
def test_bad_media_is_named_with_the_reason(tmp_path, content, message):
    path = tmp_path / "1001_IEO_ANG_HI.flv"
    path.write_bytes(content)
    with pytest.raises(media.MediaError, match=message) as error:
        media.decode_frames(path, 1, 1.0, 32)
    assert str(path) in str(error.value)


def test_feature_store(tiny_store):
    store = FeatureStore.load(tiny_store)
    assert store.frames.shape == (36, 2, 32, 32, 3) and store.frames.dtype == np.uint8
    assert isinstance(store.frames, np.memmap)  # memory-mapped until placed on a device
    assert tuple(store.spectrograms.shape) == (36, 65, 65)
    index = store.index
    skipped = index[index["skipped"]]
    assert len(skipped) == 1 and "git-lfs pointer stub" in skipped["reason"].iloc[0] and skipped["skip_kind"].iloc[0] == "stub"
    assert store.meta["recipe"] == TINY_RECIPE and len(store.meta["data_hash"]) == 16
    rows = {s: set(store.split_rows(1, s).tolist()) for s in ("train", "val", "test")}
    assert not rows["train"] & rows["test"] and index.loc[list(rows["test"]), "fold1"].eq("test").all()
    assert skipped.index[0] not in set().union(*rows.values()) | set(store.split_rows(2, "test").tolist()) | set(store.split_rows(3, "train").tolist())
    batch = store.inputs(store.split_rows(1, "train")[:3], ["audio", "video"])
    assert batch["video"].shape == (3, 2, 3, 32, 32) and batch["audio"].shape == (3, 65, 65)


def test_missing_store_says_which_file(tmp_path, tiny_store):
    with pytest.raises(FileNotFoundError, match="lacks meta.json"):
        FeatureStore.load(tmp_path)
    shutil.copy(tiny_store / "meta.json", tmp_path / "meta.json")
    with pytest.raises(FileNotFoundError, match="lacks spectrograms.npy"):
        FeatureStore.load(tmp_path)


def test_unknown_fold_is_named(tiny_store):
    with pytest.raises(KeyError, match="fold 7"):
        FeatureStore.load(tiny_store).split_rows(7, "train")


def test_bad_clip_name_is_named():
    with pytest.raises(ValueError, match="1001_XYZ_ANG_XX"):
        cremad.parse_clip_name("1001_XYZ_ANG_XX")


def test_audio_groups_must_cover_every_emotion_once(tmp_path, tiny_generator_settings):
    bad = tiny_generator_settings | {"audio_groups": [["NEU", "HAP"], ["SAD"], ["DIS", "ANG"]]}
    with pytest.raises(ValueError, match="audio_groups"):
        synthetic.generate(tmp_path, bad)
