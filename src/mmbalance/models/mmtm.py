"""MMTM: the two encoders coupled by multimodal transfer modules between their
stages, the architecture of CUR (Wu, Jastrzebski, Cho, Geras, "Characterizing
and overcoming the greedy nature of learning in multi-modal deep neural
networks", ICML 2022; method `cur`, mmbalance.balancers.cur). The module is
Joze et al.'s MMTM (CVPR 2020) as the CUR code writes it.

Reference code: the authors' release, nyukat/greedy_multimodal_learning at
a190e03 (`model.py`, class `MMTM_MVCNN`, and `balanced_mmtm.py`, class
`MMTM_mitigate`, both in its `src` folder), and BalanceBenchmark,
GeWu-Lab/BalanceBenchmark at 4c1482f (`balancemm/models/avclassify_model.py`,
classes `BaseClassifierGreedyModel` and `MMTM`). Read, not copied.

One MMTM after stage s, for activations A_m of modality m (C_m channels):

    S_m   = mean of A_m over every position (time, frequency, frames, space)   in R^{C_m}
    Z     = ReLU(W_s [S_1; ...; S_M] + b_s)          in R^{floor(2 sum_m C_m / r)}, r = 4
    G_m   = sigmoid(W_m Z + b_m)                    in R^{C_m}
    A_m  <- A_m * G_m                                (broadcast over the positions)

The coupled network runs every encoder stage by stage, applies the MMTM after
the coupled stages, pools each modality's last activations as its encoder does,
and classifies each branch with its own linear layer; the fused logits are
their mean, as in the release (`(x_0 + x_1) / 2`):

    y_m = V_m z_m + c_m,        f = (1/M) sum_m y_m

Paths. The *main* path of modality m is its encoder and its classifier
(V_m, c_m); its *bypass* is what carries the other modalities into it: W_m, b_m
of every MMTM and the shared squeeze W_s, b_s (the release's grouping of
parameter names, `callbacks.py` `Bias_Mitigation_Strong.compute_BDR`). Each MMTM
keeps the running mean of every gate over training steps,
Gbar_m <- (mean_batch G_m + t Gbar_m) / (t + 1), t = 0, 1, ...

Two modes that the CUR balancer switches on (plain attributes, never saved):

* `isolated = m` (a re-balancing step that cares for m): G_m is replaced by
  Gbar_m, a constant for autograd, so no gradient reaches the bypass into m and
  branch m sees the other modalities only through the current batch's share of
  Gbar_m (in training the release adds the batch's mean gate to Gbar_m first,
  and so does this; in evaluation Gbar_m stays put) (the release's
  `curation_mode` with `caring_modality`);
* `fixed_squeezes` (the derived unimodal models behind the conditional
  utilisation rate): G_m is computed from [S_m; Sbar_k for k != m], the other
  modalities' squeezes replaced by their means over the training split, so
  branch m depends on modality m alone (the release's `turnoff_cross_modal_flow`
  with `average_squeezemaps`).

Encoders. ResNet18 (`mmbalance.models.resnet`): MMTMs after stages 2, 3 and 4
of the four, as `MMTM_MVCNN` (BalanceBenchmark adds one after stage 1); for
video the squeeze averages over the frames as well, and one gate scales every
frame of a clip. Conformer (`mmbalance.models.conformer`; no reference couples
it): an MMTM after every Conformer layer, the squeeze a mean over time.

Departures:
* The running means are updated in training mode only; the release also
  updates them in evaluation passes (validation and test batches).
* Each modality's running mean is its own gate's; the release updates the
  second modality's with the first modality's gate (`running_avg_weight_skeleton`
  from `vis_out`), which BalanceBenchmark corrects as here.
* BalanceBenchmark resets its running means at every forward pass, so they
  are read before being set; not followed.
* Not decomposable for the balancers, although f is a sum of per-modality
  terms: a method that swaps a linear fusion's blocks (MMCosine) would drop the
  coupling with them. It offers `mmtm_bypass` instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbalance.models.resnet import AudioResNet18, VideoResNet18

RATIO = 4  # both reference codes build MMTM(..., 4)
RESNET_STAGES = (2, 3, 4)  # 1-based, after which stages an MMTM sits (MMTM_MVCNN: mmtm2, mmtm3, mmtm4)


class MMTM(nn.Module):
    """One multimodal transfer module: squeeze every modality, excite each."""

    def __init__(self, channels: dict[str, int], ratio: int = RATIO):
        super().__init__()
        self.modalities = list(channels)
        hidden = int(2 * sum(channels.values()) / ratio)
        self.squeeze = nn.Linear(sum(channels.values()), hidden)
        self.excite = nn.ModuleDict({m: nn.Linear(hidden, c) for m, c in channels.items()})
        for m, c in channels.items():
            self.register_buffer(f"running_{m}", torch.zeros(c))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def gates(self, squeezed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """G_m = sigmoid(W_m ReLU(W_s [S_1; ...; S_M] + b_s) + b_m), (B, C_m) each."""
        hidden = F.relu(self.squeeze(torch.cat([squeezed[m] for m in self.modalities], dim=1)))
        return {m: torch.sigmoid(self.excite[m](hidden)) for m in self.modalities}

    def running(self, modality: str) -> torch.Tensor:
        return getattr(self, f"running_{modality}")

    @torch.no_grad()
    def update_running(self, gates: dict[str, torch.Tensor]) -> None:
        """Gbar_m <- (mean_batch G_m + t Gbar_m) / (t + 1): the mean over every update so far."""
        t = self.updates.to(torch.float32)
        for m in self.modalities:
            running = self.running(m)
            running.copy_((gates[m].detach().float().mean(0) + t * running) / (t + 1))
        self.updates += 1

    def bypass_parameters(self, modality: str) -> list[nn.Parameter]:
        """What carries the other modalities into m: its excitation and the shared squeeze."""
        return [*self.excite[modality].parameters(), *self.squeeze.parameters()]


class _Stream:
    """One modality's encoder run stage by stage: `stages` (callables on the activations),
    `squeeze` (B, C), `scale` by a (B, C) gate, `pool` (the encoder's own pooling)."""

    def __init__(self, encoder: nn.Module, inputs: torch.Tensor | None = None):
        self.encoder = encoder
        if isinstance(encoder, (AudioResNet18, VideoResNet18)):
            blocks = list(encoder.trunk.stages)
            self.kind = "video" if isinstance(encoder, VideoResNet18) else "audio"
            self.stages = [nn.Sequential(*blocks[i : i + 2]) for i in range(0, len(blocks), 2)]  # 2 BasicBlocks a stage
            self.channels = [stage[-1].conv2.out_channels for stage in self.stages]
            self.coupled = [s - 1 for s in RESNET_STAGES]
        elif _is_conformer(encoder):
            self.kind = "sequence"
            layers = list(encoder.sequence.conformer.conformer_layers)
            self.stages = [lambda x, layer=layer: layer(x, self.mask) for layer in layers]
            self.channels = [encoder.feature_dim] * len(layers)
            self.coupled = list(range(len(layers)))
        else:
            raise ValueError(f"fusion mmtm couples the stages of ResNet18 or Conformer encoders; {type(encoder).__name__} has none")
        if inputs is not None:
            self.x = self._start(inputs)

    def _start(self, inputs: torch.Tensor) -> torch.Tensor:
        encoder = self.encoder
        if self.kind == "audio":  # what AudioResNet18.forward feeds its trunk
            return encoder.trunk.stem(inputs.unsqueeze(1))
        if self.kind == "video":  # every frame through the same 2D trunk
            self.batch, self.time = inputs.shape[:2]
            return encoder.trunk.stem(inputs.flatten(0, 1))
        # Conformer: SequenceConformer.tokens up to its layers, then torchaudio's (T, B, C) layout;
        # the clips have no padding, so the key padding mask is all False (as full lengths give).
        if hasattr(encoder, "wav2vec2_encoder"):
            inputs = encoder.wav2vec2_encoder(inputs)
        sequence = encoder.sequence
        x = sequence.embed(sequence.project(inputs.transpose(1, 2)).transpose(1, 2))
        self.mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        return x.transpose(0, 1)

    def squeeze(self) -> torch.Tensor:
        if self.kind == "audio":
            return self.x.mean(dim=(2, 3))
        if self.kind == "video":
            return self.x.unflatten(0, (self.batch, self.time)).mean(dim=(1, 3, 4))
        return self.x.mean(dim=0)

    def scale(self, gate: torch.Tensor) -> None:
        if self.kind == "audio":
            self.x = self.x * gate[:, :, None, None]
        elif self.kind == "video":
            self.x = (self.x.unflatten(0, (self.batch, self.time)) * gate[:, None, :, None, None]).flatten(0, 1)
        else:
            self.x = self.x * gate[None]

    def pool(self) -> torch.Tensor:
        return self.squeeze()  # every encoder here pools by the same global mean the squeeze takes


def _is_conformer(encoder: nn.Module) -> bool:
    from mmbalance.models.conformer import AudioConformer, VideoConformer  # torchaudio: only when asked

    return isinstance(encoder, (AudioConformer, VideoConformer))


class MMTMFusion(nn.Module):
    """MMTM (registry `mmtm`): the encoders coupled by MMTMs between their stages
    (ResNet18: after stages 2-4; Conformer: after every layer), one linear classifier
    per branch, the fused logits their mean. CUR's architecture (Wu et al., ICML 2022)."""

    decomposable = False  # see the module docstring: it offers `mmtm_bypass` instead
    couples_encoders = True
    OFFERS = frozenset({"mmtm_bypass"})

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        self.modalities = list(feature_dims)
        self.blocks = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})
        self.mmtm = nn.ModuleList()  # built by couple(), sized by the encoders' stages
        self.coupled: list[int] = []
        self.isolated: str | None = None
        self.fixed_squeezes: list[dict[str, torch.Tensor]] | None = None
        self.last_squeezes: list[dict[str, torch.Tensor]] = []

    def couple(self, encoders: nn.ModuleDict) -> None:
        """Build one MMTM per coupled stage, from the encoders' channel counts."""
        streams = {m: _Stream(encoders[m]) for m in self.modalities}
        coupled = {tuple(s.coupled) for s in streams.values()}
        if len(coupled) != 1 or len({len(s.stages) for s in streams.values()}) != 1:
            raise ValueError(f"fusion mmtm needs encoders with the same stages, got {[type(encoders[m]).__name__ for m in self.modalities]}")
        self.coupled = list(coupled.pop())
        self.mmtm = nn.ModuleList(MMTM({m: streams[m].channels[s] for m in self.modalities}) for s in self.coupled)

    def encode(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pooled features z_m of the coupled encoders."""
        if not self.mmtm:
            raise RuntimeError("fusion mmtm has no MMTM modules: MultimodalModel couples them to its encoders")
        streams = {m: _Stream(encoders[m], inputs[m]) for m in self.modalities}
        modules = dict(zip(self.coupled, self.mmtm))
        self.last_squeezes = []
        for stage in range(len(streams[self.modalities[0]].stages)):
            for stream in streams.values():
                stream.x = stream.stages[stage](stream.x)
            if stage not in modules:
                continue
            mmtm = modules[stage]
            squeezed = {m: s.squeeze() for m, s in streams.items()}
            self.last_squeezes.append({m: v.detach() for m, v in squeezed.items()})
            gates = mmtm.gates(squeezed)
            if self.training:
                mmtm.update_running(gates)  # before any replacement, as the release does
            if self.fixed_squeezes is not None:
                gates = self._derived_gates(mmtm, squeezed, self.fixed_squeezes[len(self.last_squeezes) - 1])
            if self.isolated is not None:
                batch = gates[self.isolated].shape[0]
                # The running mean is an fp32 buffer: keep the gate in the activations' dtype (bf16 autocast).
                gates[self.isolated] = mmtm.running(self.isolated).expand(batch, -1).to(gates[self.isolated].dtype)
            for m, stream in streams.items():
                stream.scale(gates[m])
        return {m: s.pool() for m, s in streams.items()}

    def _derived_gates(self, mmtm: MMTM, squeezed: dict, means: dict) -> dict[str, torch.Tensor]:
        """G_m from [S_m; Sbar_k, k != m]: each branch sees its own modality only."""
        gates = {}
        for m in self.modalities:
            alone = {k: v if k == m else means[k].expand_as(v) for k, v in squeezed.items()}
            gates[m] = mmtm.gates(alone)[m]
        return gates

    def branch_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """y_m = V_m z_m + c_m, each branch's own classifier."""
        return {m: self.blocks[m](features[m]) for m in self.modalities}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(self.branch_logits(features).values())).mean(dim=0)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """Modality m's own: its classifier and its excitation in every MMTM (the squeeze is shared)."""
        return [*self.blocks[modality].parameters(), *(p for mmtm in self.mmtm for p in mmtm.excite[modality].parameters())]

    def bypass_parameters(self, modality: str) -> list[nn.Parameter]:
        """The bypass into branch m: W_m, b_m and the shared squeeze W_s, b_s of every MMTM."""
        return [p for mmtm in self.mmtm for p in mmtm.bypass_parameters(modality)]
