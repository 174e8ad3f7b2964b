"""Modality-Drop: the modality-dropout baseline of OGM-GE's comparison (Peng et al.,
CVPR 2022, Table 2, rows "Modality-Drop (audio)" and "(visual)").

Where it comes from. Table 2 of OGM-GE cites [9] for these rows, which in its
reference list is SlowFast (Feichtenhofer et al., ICCV 2019), a video-only
network with no modality to drop; the text beside the table cites the
comparison as "Modality-Dropout [43]", i.e. Audiovisual SlowFast (Xiao et al.,
arXiv:2001.08740, 2020), so we read the method as AVSlowFast's DropPathway: while
training, the audio pathway is switched off with probability P_d, and the
visual pathways then receive zeros in place of its contribution, so the audio
encoder gets fewer updates and the visual side cannot lean on audio to fit the
training set. The table's caption says only that one modality is removed with
some probability; OGM-GE released no code for it and states no rate.

What we do. While training, each sample's features of the dropped modality m
are replaced by zeros before the fusion, with probability p:

    keep_i ~ Bernoulli(1 - p)  (i = 1..B, drawn from torch's global generator)
    z'_m,i = keep_i * z_m,i,   fused = fusion({z'_m, z_k for k != m})
    L = CE(fused, y)

Feature zeroing, not input zeroing, follows the source: DropPathway feeds zero
tensors from the dropped pathway into the fusion, and the encoder of a dropped
sample gets no gradient from it. (Zeroing the *input* would not: in a training
batch, BatchNorm on batch statistics maps a zero input to a non-zero feature,
which reaches the fusion and trains the encoder.) `level: inputs` zeroes the inputs instead, for comparison
with the caption's wording. Token-level fusions get the encoder's tokens
zeroed the same way. The unimodal heads are probes on the encoder's real,
undropped features, so the unimodal accuracies measure the encoders, and
evaluation (validation, test) never drops anything.

The draws use torch's global CPU generator, which the run seeds and the
checkpoint saves, so a run and its resumed copy drop the same samples.

Departures:
* per sample by default (`unit: sample`), our reading of OGM-GE's caption;
  DropPathway drops the pathway for the whole batch at once, once per training
  iteration (`unit: batch`).
* in AVSlowFast the audio pathway also feeds the visual pathways through
  lateral connections at several stages; our encoders meet only at the fusion,
  so dropping the features at the fusion input removes every path.
* no rescaling of the kept features (none is described for DropPathway; it is
  not dropout's 1/(1-p)).
"""

from __future__ import annotations

import torch

from mmbalance.balancers.base import Balancer


def keep_mask(batch: int, probability: float, unit: str) -> torch.Tensor:
    """(B,) float mask, 0 for the dropped samples, from torch's global CPU generator."""
    if unit == "batch":
        return torch.full((batch,), float(torch.rand(()) >= probability))
    return (torch.rand(batch) >= probability).float()


def drop(tensors: dict[str, torch.Tensor], modality: str, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """`tensors` with modality's rows multiplied by `keep` (broadcast over any trailing dims)."""
    x = tensors[modality]
    mask = keep.to(device=x.device, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1))
    return tensors | {modality: x * mask}


class ModalityDrop(Balancer):
    DESCRIPTION = "Modality-Drop (OGM-GE Table 2; AVSlowFast's DropPathway): one modality's features zeroed for a random share of the training samples."
    SETTINGS = {
        "modality": {"description": "The modality dropped: audio is OGM-GE Table 2's row 'Modality-Drop (audio)' and AVSlowFast's "
                     "choice; video is the row '(visual)'.", "type": "string", "minLength": 1, "default": "audio"},
        "probability": {"description": "Probability p that a training sample (or batch, unit: batch) loses the modality. OGM-GE and "
                        "AVSlowFast give no rate for CREMA-D; 0.5 is our choice, the middle of the search range.",
                        "type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
        "unit": {"description": "sample: one draw per sample (OGM-GE's caption); batch: one draw per step for the whole batch "
                 "(AVSlowFast's DropPathway, per iteration).", "type": "string", "enum": ["sample", "batch"], "default": "sample"},
        "level": {"description": "features: zero the modality's features at the fusion input (DropPathway's zero tensors); "
                  "inputs: zero its input instead.", "type": "string", "enum": ["features", "inputs"], "default": "features"},
    }
    SEARCH_SPACE = {"probability": {"low": 0.1, "high": 0.9,
                                    "source": "no paper gives a range for CREMA-D; ours, from rarely to mostly dropped"}}

    def __init__(self, settings):
        super().__init__(settings)
        self.dropped = 0.0  # share of the last training batch that lost the modality (logged)

    def setup(self, model):
        if len(model.modalities) < 2:
            raise ValueError("Modality-Drop needs at least two modalities")
        if self.settings["modality"] not in model.modalities:
            raise ValueError(f"Modality-Drop: modality {self.settings['modality']!r} is not one of the model's {model.modalities}")

    def forward(self, model, inputs, labels, epoch):
        if not model.training:
            return model(inputs)
        m = self.settings["modality"]
        keep = keep_mask(len(labels), self.settings["probability"], self.settings["unit"])
        self.dropped = 1.0 - keep.mean().item()
        if self.settings["level"] == "inputs":
            return model(drop(inputs, m, keep))
        # The fusion is the one place every fusion's per-modality features (or tokens) pass:
        # zero them there for this forward pass only; the heads read the encoder's own output.
        handle = model.fusion.register_forward_pre_hook(lambda module, args: (drop(args[0], m, keep), *args[1:]))
        try:
            return model(inputs)
        finally:
            handle.remove()

    def loss(self, out, labels, epoch):
        loss, logs = super().loss(out, labels, epoch)
        return loss, logs | {f"dropped_{self.settings['modality']}": self.dropped}
