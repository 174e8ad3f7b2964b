"""ResNet18 encoders trained from scratch, as in the OGM-GE backbone.

torchvision's ResNet refuses a BasicBlock width other than 64, and the embedded
default needs a narrower network to train in CPU minutes, so the ResNet18 layout
(stem, 4 stages of 2 BasicBlocks, strides 1-2-2-2) is written here with the base
width as a parameter. `width=64` is the papers' network (512-d features).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Trunk(nn.Module):
    """Conv trunk of ResNet18 without pooling or classifier: returns feature maps."""

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        self.out_channels = 8 * width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, channels = [], width
        for i, stride in enumerate([1, 2, 2, 2]):
            out = width * 2**i
            stages += [BasicBlock(channels, out, stride), BasicBlock(out, out, 1)]
            channels = out
        self.stages = nn.Sequential(*stages)
        self._init_weights()

    def _init_weights(self) -> None:
        # OGM-GE backbone init: Kaiming-normal (fan_out) convs, BN weight 1, bias 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class AudioResNet18(nn.Module):
    """Log-spectrogram (B, F, T) -> pooled feature (B, 8*width)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.trunk = ResNet18Trunk(1, width)
        self.feature_dim = self.trunk.out_channels

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(spectrogram.unsqueeze(1))
        return maps.mean(dim=(2, 3))

    def tokens(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """(B, N, C): one token per position of the final feature map."""
        return self.trunk(spectrogram.unsqueeze(1)).flatten(2).transpose(1, 2)


class VideoResNet18(nn.Module):
    """Frames (B, T, 3, H, W) -> pooled feature (B, 8*width).

    Each frame goes through the same 2D trunk; the maps are averaged over time
    and space together (the reference's 3D average pool).
    """

    def __init__(self, width: int = 64):
        super().__init__()
        self.trunk = ResNet18Trunk(3, width)
        self.feature_dim = self.trunk.out_channels

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, time = frames.shape[:2]
        maps = self.trunk(frames.flatten(0, 1))
        return maps.unflatten(0, (batch, time)).mean(dim=(1, 3, 4))

    def tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T*h*w, C): one token per frame and position of the final feature map."""
        batch, time = frames.shape[:2]
        maps = self.trunk(frames.flatten(0, 1))  # (B*T, C, h, w)
        return maps.unflatten(0, (batch, time)).permute(0, 1, 3, 4, 2).flatten(1, 3)
