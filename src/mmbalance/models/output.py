"""What a multimodal model returns for a batch: the one object every balancer reads.

Kept apart from the model so that the balancers (imported when the workflow
checks its grid) need only torch, not the encoders' libraries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ModelOutput:
    fused: torch.Tensor  # (B, C) fused logits
    unimodal: dict[str, torch.Tensor]  # modality -> (B, C) head logits
    features: dict[str, torch.Tensor]  # modality -> (B, d) pooled features
    decomposed: dict[str, torch.Tensor] | None  # modality -> (B, C), linear fusions only
    heads_are_probes: bool

    def probe_loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy that trains probe heads; zero when the heads are the
        method's own (its loss already trains them)."""
        if not self.heads_are_probes:
            return self.fused.new_zeros(())
        return sum(F.cross_entropy(logits, labels) for logits in self.unimodal.values())
