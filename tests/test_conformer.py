"""The Conformer backbone: pretrained-weight lookup, truncation, frozen
extraction into an embeddings store, and training on it."""

import json

import numpy as np
import pytest
import torch
import torchaudio
import torchvision

from mmbalance.data.store.embeddings import FrozenExtractors
from mmbalance.data.store.features import FeatureStore
from mmbalance.models.multimodal import build_model
from mmbalance.models.pretrained import MissingWeightsError, build_efficientnet_b2, build_wav2vec2, resolve_weights
from mmbalance.train import train

from conftest import TINY_CONFORMER, default_config

TINY = {"name": "conformer"} | TINY_CONFORMER


def test_paper_size_conformer_has_the_mlb_layout():
    """Random weights, paper sizes: 12 wav2vec2-large layers (1024-d), then
    Conv1d 1024->50 / 1408->50, Linear 50->512 and a 5-layer Conformer per modality."""
    backbone = {"name": "conformer"} | default_config({"backbones": {"conformer": {"audio": {"weights": "random"}, "video": {"weights": "random"}}}})["backbones"]["conformer"]
    model = build_model(["audio", "video"], backbone, "late_linear", 6, heads_are_probes=True)
    audio, video = model.encoders["audio"], model.encoders["video"]
    assert len(audio.wav2vec2_encoder.transformer.layers) == 12
    assert audio.wav2vec2_encoder.feature_projection.projection.out_features == 1024
    for encoder, width in ((audio, 1024), (video, 1408)):
        assert tuple(encoder.sequence.project.weight.shape) == (50, width, 1)
        assert len(encoder.sequence.conformer.conformer_layers) == 5
        assert encoder.feature_dim == 512
    with torch.no_grad():
        out = model({"audio": torch.randn(2, 12, 512), "video": torch.randn(2, 3, 1408)})
    assert out.fused.shape == (2, 6) and out.features["audio"].shape == (2, 512)


def test_missing_weights_name_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = "https://download.pytorch.org/torchaudio/models/wav2vec2_fairseq_large_lv60k.pth"
    with pytest.raises(MissingWeightsError) as error:
        resolve_weights("torch_hub", url, "wav2vec2", "backbones.conformer.audio.weights")
    message = str(error.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "wav2vec2_fairseq_large_lv60k.pth") in message
    assert url in message and "backbones.conformer.audio.weights" in message and "random" in message
    # A folder holding the file, and the file itself, are both accepted.
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "wav2vec2_fairseq_large_lv60k.pth").write_bytes(b"x")
    assert resolve_weights(str(tmp_path / "weights"), url, "w", "k") == tmp_path / "weights" / "wav2vec2_fairseq_large_lv60k.pth"
    assert resolve_weights("random", url, "w", "k") is None


def test_wav2vec2_truncation_keeps_the_pretrained_first_layers(tmp_path):
    settings = TINY_CONFORMER["audio"] | {"layers": 3}
    torch.manual_seed(1)
    full = build_wav2vec2(settings)
    torch.save(full.state_dict(), tmp_path / "w.pth")
    truncated = build_wav2vec2(settings | {"layers": 2, "weights": str(tmp_path / "w.pth")})
    assert len(truncated.encoder.transformer.layers) == 2
    for name, value in truncated.state_dict().items():
        assert torch.equal(value, full.state_dict()[name]), name
    # Weights of another shape: the error names the file.
    with pytest.raises(ValueError, match="w.pth does not fit"):
        build_wav2vec2(settings | {"weights": str(tmp_path / "w.pth"), "architecture": settings["architecture"] | {"encoder_embed_dim": 48}})


def test_efficientnet_weights_load_and_give_1408_features(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.efficientnet_b2(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "b2.pth")
    model = build_efficientnet_b2(str(tmp_path / "b2.pth")).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model(image)
        assert features.shape == (1, 1408)
        # The classifier of the loaded network, applied to our features, gives its logits.
        assert torch.allclose(reference.classifier(features), reference(image), atol=1e-5)


def test_extraction_runs_the_frozen_cnn_on_the_normalised_waveform():
    extractors = FrozenExtractors(TINY_CONFORMER)
    waveform = np.random.default_rng(0).normal(3.0, 2.0, 16000).astype(np.float32)
    features = extractors.audio_features(waveform)
    normalised = torch.from_numpy((waveform - waveform.mean()) / (waveform.std() + 1e-7))
    with torch.no_grad():
        expected, _ = extractors.audio(normalised[None], None)
    assert features.shape == (49, 16)  # 20 ms steps over 1 s
    assert np.allclose(features, expected[0].numpy(), atol=1e-4)
    # Scale and offset of the recording do not matter after normalisation.
    assert np.allclose(extractors.audio_features(10 * waveform + 5), features, atol=1e-3)


def test_embeddings_store_matches_the_decoded_store(tiny_embeddings, tiny_store):
    store = FeatureStore.load(tiny_embeddings)
    decoded = FeatureStore.load(tiny_store)
    meta = json.loads((tiny_embeddings / "meta.json").read_text())
    assert store.kind == "embeddings" and meta["video_shape"] == [2, 1408] and meta["audio_shape"] == [49, 16]
    assert list(store.index["clip"]) == list(decoded.index["clip"])
    assert list(store.index["skipped"]) == list(decoded.index["skipped"])
    rows = store.split_rows(1, "train")
    batch = store.inputs(rows[:4], ["audio", "video"])
    assert batch["audio"].shape == (4, 49, 16) and batch["video"].shape == (4, 2, 1408)
    assert batch["audio"].dtype == torch.float32
    # Training standardises each channel with the fold's training statistics
    # (untrained EfficientNet-B2 features are ~1e-14: kept in float32, then rescaled).
    store.standardise(rows)
    train = store.inputs(rows, ["audio", "video"])
    for x in train.values():
        flat = x.flatten(0, 1)
        assert torch.allclose(flat.mean(0), torch.zeros(flat.shape[1]), atol=1e-4)
        assert torch.allclose(flat.std(0)[flat.std(0) > 0], torch.tensor(1.0), atol=1e-3)


def test_a_conformer_cell_trains_on_the_embeddings(tiny_embeddings, train_settings, tmp_path):
    settings = train_settings("mlb", epochs=2, backbone="conformer", fusion="transformer")
    summary = train(tiny_embeddings, settings, tmp_path / "run", tmp_path / "ckpt" / "last.pt")
    assert summary["epochs"] == 2 and (tmp_path / "run" / "predictions.npz").exists()


def test_torchaudio_bundle_is_checked_by_name():
    with pytest.raises(ValueError, match="'WAV2VEC2_TINY' is not a torchaudio wav2vec2 pipeline bundle"):
        build_wav2vec2(TINY_CONFORMER["audio"] | {"bundle": "WAV2VEC2_TINY"})
    assert isinstance(torchaudio.pipelines.WAV2VEC2_LARGE_LV60K, torchaudio.pipelines.Wav2Vec2Bundle)
