"""The pretrained networks of the Conformer backbone, built from torchaudio's and
torchvision's own definitions, with weights from a file the user provides.

These machines (and many clusters' compute nodes) cannot download weights, so
nothing here fetches anything. A `weights` setting is one of:

* `torch_hub`: the file torchaudio/torchvision would have downloaded, in torch's
  hub cache (`$TORCH_HOME/hub/checkpoints/<file>`, as `torch.hub.get_dir()` says);
* a path to a state dict in the same (torchaudio / torchvision) layout;
* `random`: the same architecture, untrained (tests, CPU smoke runs).

A missing file is an error that names every place looked at and where the file
comes from.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchaudio
import torchvision
from torch import nn

EFFICIENTNET_B2_FEATURES = 1408


class MissingWeightsError(FileNotFoundError):
    pass


def resolve_weights(setting: str, url: str, what: str, config_key: str) -> Path | None:
    """The weights file for `setting`, or None for `random`."""
    if setting == "random":
        return None
    filename = url.rsplit("/", 1)[-1]
    if setting == "torch_hub":
        candidates = [Path(torch.hub.get_dir()) / "checkpoints" / filename]
    else:
        path = Path(os.path.expanduser(setting))
        candidates = [path / filename, path] if path.is_dir() else [path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise MissingWeightsError(
        f"{what} weights not found; looked at: {looked}. Download {url} on a machine with internet and put it "
        f"there (or set {config_key} to its path), or set {config_key}: random to train the same "
        "architecture from random weights."
    )


def _load(path: Path | None) -> dict | None:
    return None if path is None else torch.load(path, map_location="cpu", weights_only=True)


# --- wav2vec2 (audio) ---------------------------------------------------------


def wav2vec2_bundle(name: str):
    bundle = getattr(torchaudio.pipelines, name, None)
    if not isinstance(bundle, torchaudio.pipelines.Wav2Vec2Bundle):
        raise ValueError(f"backbones.conformer.audio.bundle: {name!r} is not a torchaudio wav2vec2 pipeline bundle")
    return bundle


def wav2vec2_url(bundle) -> str:
    # The URL torchaudio's bundle downloads from (torchaudio.pipelines._wav2vec2.utils).
    path = bundle._path
    return path if path.startswith("https") else f"https://download.pytorch.org/torchaudio/models/{path}"


def build_wav2vec2(settings: dict) -> nn.Module:
    """torchaudio's Wav2Vec2Model from a pipeline bundle's architecture, truncated
    to `layers` transformer layers (the MLB Conformer keeps 12 of 24), with the
    bundle's pretrained weights for the layers kept, or random weights.

    `architecture` overrides the bundle's parameters (a smaller model for tests
    and CPU runs); with pretrained weights the shapes must still match.
    """
    bundle = wav2vec2_bundle(settings["bundle"])
    params = {**bundle._params, **settings.get("architecture", {}), "encoder_num_layers": settings["layers"]}
    model = torchaudio.models.wav2vec2_model(**params)
    path = resolve_weights(settings["weights"], wav2vec2_url(bundle), "wav2vec2", "backbones.conformer.audio.weights")
    state = _load(path)
    if state is not None:
        kept = {k: v for k, v in state.items() if not _beyond_layer(k, settings["layers"])}
        _load_into(model, kept, path)
    return model


def _load_into(model: nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit the configured architecture: {error}") from error


def _beyond_layer(key: str, layers: int) -> bool:
    prefix = "encoder.transformer.layers."
    return key.startswith(prefix) and int(key[len(prefix):].split(".")[0]) >= layers


def wav2vec2_feature_dim(settings: dict) -> int:
    """Channels of the CNN feature encoder's output (what extraction stores)."""
    bundle = wav2vec2_bundle(settings["bundle"])
    conv_layers = settings.get("architecture", {}).get("extractor_conv_layer_config") or bundle._params["extractor_conv_layer_config"]
    return conv_layers[-1][0]


# --- EfficientNet-B2 (video frames) ------------------------------------------


def build_efficientnet_b2(weights: str) -> nn.Module:
    """torchvision's EfficientNet-B2 without its classifier: image -> 1408-d."""
    url = torchvision.models.EfficientNet_B2_Weights.IMAGENET1K_V1.url
    model = torchvision.models.efficientnet_b2(weights=None)
    path = resolve_weights(weights, url, "EfficientNet-B2", "backbones.conformer.video.weights")
    state = _load(path)
    if state is not None:
        _load_into(model, state, path)
    model.classifier = nn.Identity()
    return model
