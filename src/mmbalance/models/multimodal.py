"""The multimodal classifier the training loop and the balancers see.

It exposes its parts by modality: encoders, pooled features, fused logits,
unimodal logits from one linear head per modality, and per-modality logits by
decomposition where the fusion is linear. The heads are either trained into the
encoders (Multi-Loss, MLB) or are probes on detached features, so that every
method, Joint included, reports unimodal accuracies.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbalance.models.fusion import build_fusion
from mmbalance.models.output import ModelOutput
from mmbalance.models.resnet import AudioResNet18, VideoResNet18

def _conformer(modality: str):
    def build(settings: dict) -> nn.Module:
        # Imported when used: torchaudio and torchvision take seconds to import, and a
        # ResNet job needs neither.
        from mmbalance.models.conformer import AudioConformer, VideoConformer

        return {"audio": AudioConformer, "video": VideoConformer}[modality](settings)

    return build


# backbone -> modality -> encoder builder, called with the backbone's settings.
ENCODERS = {
    "resnet18": {"audio": lambda s: AudioResNet18(width=s["width"]), "video": lambda s: VideoResNet18(width=s["width"])},
    "conformer": {"audio": _conformer("audio"), "video": _conformer("video")},
}


class MultimodalModel(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], fusion: str, num_classes: int, heads_are_probes: bool):
        super().__init__()
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        dims = {m: encoder.feature_dim for m, encoder in encoders.items()}
        # One modality (a unimodal baseline): there is nothing to fuse, so every
        # fusion reduces to the linear classifier of the reference baselines.
        self.fusion = build_fusion(fusion if len(dims) > 1 else "late_linear", dims, num_classes)
        if getattr(self.fusion, "couples_encoders", False):  # MMTM: modules between the encoders' stages
            self.fusion.couple(self.encoders)
        # One modality: the fused output *is* that modality's output, no head needed.
        self.heads = nn.ModuleDict(
            {m: nn.Linear(d, num_classes) for m, d in dims.items()} if len(dims) > 1 else {}
        )
        for head in self.heads.values():
            nn.init.xavier_normal_(head.weight)
            nn.init.zeros_(head.bias)
        self.heads_are_probes = heads_are_probes

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        if getattr(self.fusion, "couples_encoders", False):
            # The encoders run stage by stage through the fusion's coupling; the fused
            # logits come from a second, ordinary call, as for every other fusion.
            features = self.fusion.encode(self.encoders, inputs)
            fused = self.fusion(features)
        elif getattr(self.fusion, "needs_tokens", False):
            # Token-level fusion: pool the same tokens for the heads (= the encoder's mean pooling).
            tokens = {m: self.encoders[m].tokens(inputs[m]) for m in self.modalities}
            features = {m: t.mean(dim=1) for m, t in tokens.items()}
            fused = self.fusion(tokens)
        else:
            features = {m: self.encoders[m](inputs[m]) for m in self.modalities}
            fused = self.fusion(features)
        head_inputs = {m: z.detach() for m, z in features.items()} if self.heads_are_probes else features
        unimodal = {m: head(head_inputs[m]) for m, head in self.heads.items()} or {self.modalities[0]: fused}
        decomposed = self.fusion.decompose(features) if getattr(self.fusion, "decomposable", False) else None
        return ModelOutput(fused, unimodal, features, decomposed, self.heads_are_probes and bool(self.heads))

    def parameter_groups(self, policy: str) -> dict[str, list[nn.Parameter]]:
        """Which parameters count as modality m's, by a named policy (the reference codes group them differently):

        * `encoder_conv_weights`: the encoder's kernels only, i.e. its weights with
          two or more dimensions (official OGM-GE modulates the 4-d conv kernels;
          on the Conformer backbone these are the conv and linear weights);
        * `encoder`: every encoder parameter, BatchNorm included;
        * `encoder_fusion_block`: the encoder and its block of the fusion layer,
          i.e. everything behind modality m's additive term (MSLR in the AGM repo);
        * `encoder_head_fusion_block`: the encoder, its unimodal head and its block
          of the fusion layer (official MLB).
        """
        groups = {}
        for m in self.modalities:
            encoder = self.encoders[m]
            if policy == "encoder_conv_weights":
                params = [p for p in encoder.parameters() if p.dim() >= 2]
            elif policy == "encoder":
                params = list(encoder.parameters())
            elif policy == "encoder_fusion_block":
                params = list(encoder.parameters()) + self.fusion.modality_parameters(m)
            elif policy == "encoder_head_fusion_block":
                head = list(self.heads[m].parameters()) if m in self.heads else []
                params = list(encoder.parameters()) + head + self.fusion.modality_parameters(m)
            else:
                raise ValueError(f"unknown parameter-group policy {policy!r}")
            groups[m] = params
        return groups


def build_model(modalities: list[str], backbone: dict, fusion: str, num_classes: int, heads_are_probes: bool) -> MultimodalModel:
    if backbone["name"] not in ENCODERS:
        raise ValueError(f"unknown backbone {backbone['name']!r}; known: {sorted(ENCODERS)}")
    encoders = {m: ENCODERS[backbone["name"]][m](backbone) for m in modalities}
    return MultimodalModel(encoders, fusion, num_classes, heads_are_probes)
