"""Unimodal baselines (OGM-GE Table 1's "Audio-only"/"Visual-only", MLB Fig. 3): one encoder and a linear classifier,
trained with cross-entropy under the same recipe as the multimodal runs."""

from mmbalance.balancers.base import Balancer


class AudioOnly(Balancer):
    DESCRIPTION = "Audio encoder + linear classifier."
    modalities = ("audio",)


class VideoOnly(Balancer):
    DESCRIPTION = "Video encoder + linear classifier."
    modalities = ("video",)
