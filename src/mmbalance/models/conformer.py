"""The Conformer backbone of the MLB paper (after VAVL), on precomputed frozen features.

Per modality: a sequence of frozen features -> 1x1 Conv1d to 50 channels (no
bias) -> Linear to the model width -> dropout -> torchaudio Conformer -> mean
pooling over time. Audio first runs through the trainable part of a truncated
wav2vec2 (feature projection + the first 12 transformer layers); its frozen CNN
feature encoder ran once, at extraction. Video sequences are per-frame
EfficientNet-B2 embeddings, also extracted once.

Clips are cropped or tiled to a fixed length at extraction, so every position
is real signal and no padding mask is needed (MLB pads batches and masks).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from mmbalance.models.pretrained import EFFICIENTNET_B2_FEATURES, build_wav2vec2, wav2vec2_feature_dim


class SequenceConformer(nn.Module):
    """(B, T, in_dim) -> tokens (B, T, dim) -> pooled (B, dim)."""

    def __init__(self, in_dim: int, settings: dict):
        super().__init__()
        self.project = nn.Conv1d(in_dim, settings["projection_dim"], kernel_size=1, bias=False)
        self.embed = nn.Sequential(nn.Linear(settings["projection_dim"], settings["dim"]), nn.Dropout(settings["dropout"]))
        self.conformer = torchaudio.models.Conformer(
            input_dim=settings["dim"],
            num_heads=settings["heads"],
            ffn_dim=settings["ffn_dim"],
            num_layers=settings["layers"],
            depthwise_conv_kernel_size=settings["kernel_size"],
            dropout=settings["dropout"],
        )
        self.feature_dim = settings["dim"]

    def tokens(self, sequence: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.project(sequence.transpose(1, 2)).transpose(1, 2))
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return self.conformer(x, lengths)[0]

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        return self.tokens(sequence).mean(dim=1)


class AudioConformer(nn.Module):
    """wav2vec2 CNN features (B, T, 512) -> truncated wav2vec2 transformer -> Conformer."""

    def __init__(self, settings: dict):
        super().__init__()
        wav2vec2 = build_wav2vec2(settings["audio"])
        self.wav2vec2_encoder = wav2vec2.encoder  # the frozen CNN (wav2vec2.feature_extractor) ran at extraction
        width = self.wav2vec2_encoder.feature_projection.projection.out_features
        self.sequence = SequenceConformer(width, settings["conformer"])
        self.feature_dim = self.sequence.feature_dim
        self.input_dim = wav2vec2_feature_dim(settings["audio"])

    def tokens(self, cnn_features: torch.Tensor) -> torch.Tensor:
        return self.sequence.tokens(self.wav2vec2_encoder(cnn_features))

    def forward(self, cnn_features: torch.Tensor) -> torch.Tensor:
        return self.tokens(cnn_features).mean(dim=1)


class VideoConformer(nn.Module):
    """Per-frame EfficientNet-B2 embeddings (B, T, 1408) -> Conformer."""

    def __init__(self, settings: dict):
        super().__init__()
        self.sequence = SequenceConformer(EFFICIENTNET_B2_FEATURES, settings["conformer"])
        self.feature_dim = self.sequence.feature_dim
        self.input_dim = EFFICIENTNET_B2_FEATURES

    def tokens(self, frame_features: torch.Tensor) -> torch.Tensor:
        return self.sequence.tokens(frame_features)

    def forward(self, frame_features: torch.Tensor) -> torch.Tensor:
        return self.tokens(frame_features).mean(dim=1)
