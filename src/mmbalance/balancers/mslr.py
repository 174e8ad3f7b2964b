"""MSLR, Modality-Specific Learning Rates (Yao & Mihalcea, Findings of ACL 2022).

The "dynamic" strategy of the two public re-implementations (no author code
was found): modality m starts from a relative rate c_m^0. After each epoch's
validation, with a_m the modality's unimodal validation accuracy and a memory
of its last K accuracies,

    ratio_m = a_m / mean(memory_m)   (1 until the memory holds K values)
    c_m     = c_m^0 * ratio_m        (not cumulative)

and the memory is updated after the ratio is computed (every epoch). Inside the
window [start_epoch, end_epoch] every gradient of modality m's parameters is
multiplied by c_m after backward (outside it the gradients are left alone, as in
the AGM repository's `run/CREMAD_main.py`, whose default window is epochs 0-20;
the default here, 0-1500, is the MLB repository's: always), which is a
per-modality learning rate under SGD (under Adam the scaling mostly cancels out in the normalised update). The loss is
the fused cross-entropy only.

Deviations, stated: a_m comes from the validation split (the AGM repository
uses test accuracy) and from each modality's probe head (the reference reads
its own unimodal classifier); training starts from scratch (the paper starts
from fine-tuned unimodal models, as both re-implementations also do not).
"""

from __future__ import annotations

from mmbalance.balancers.base import Balancer, epoch_window, parameter_policy, scale_gradients


def mslr_ratio(memory: list[float], accuracy: float, size: int) -> float:
    """Current accuracy over the mean of the remembered ones, once `size` are remembered."""
    if len(memory) < size:
        return 1.0
    return accuracy / max(sum(memory) / len(memory), 1e-8)


class MSLR(Balancer):
    DESCRIPTION = "Modality-specific learning rates, dynamic strategy (the AGM and MLB repositories' re-implementations)."
    SETTINGS = {
        "initial_rates": {
            "description": "Relative rate c_m^0 per modality (AGM repository, CREMA-D 0.9 / 1.1; MLB run.sh 0.7 / 1.3).",
            "type": "object", "additionalProperties": False, "default": {},
            "properties": {"audio": {"type": "number", "exclusiveMinimum": 0, "default": 0.9},
                           "video": {"type": "number", "exclusiveMinimum": 0, "default": 1.1}},
        },
        "memory": {"description": "Number K of past validation accuracies the ratio compares with (AGM repository: 5; MLB run.sh: 20).",
                   "type": "integer", "minimum": 1, "default": 5},
        "parameter_policy": parameter_policy("encoder_fusion_block"),
        **epoch_window(0, 1500, "the rate scaling", "MLB repository: no window, i.e. always; AGM repository: 20"),
    }
    SEARCH_SPACE = {
        "initial_rates.audio": {"low": 0.5, "high": 1.5, "source": "0.7 (MLB run.sh) to 0.9 (AGM repository) around 1"},
        "initial_rates.video": {"low": 0.5, "high": 1.5, "source": "1.1 (AGM repository) to 1.3 (MLB run.sh) around 1"},
        "memory": {"low": 2, "high": 20, "type": "int", "source": "5 (AGM repository) to 20 (MLB run.sh)"},
    }

    def setup(self, model):
        self.groups = model.parameter_groups(self.settings["parameter_policy"])
        self.memory = {m: [] for m in model.modalities}
        self.factors = {m: self.settings["initial_rates"][m] for m in model.modalities}

    def after_backward(self, model, out, labels, epoch):
        if not self.in_window(epoch):
            return {}
        for m, factor in self.factors.items():
            scale_gradients(self.groups[m], factor)
        return {f"coeff_{m}": factor for m, factor in self.factors.items()}

    def on_epoch_end(self, context):
        size = self.settings["memory"]
        logs = {}
        for m in self.factors:
            accuracy = context.metrics[f"val_acc_{m}"]
            ratio = mslr_ratio(self.memory[m], accuracy, size)
            self.factors[m] = self.settings["initial_rates"][m] * ratio
            self.memory[m] = (self.memory[m] + [accuracy])[-size:]
            logs[f"mslr_ratio_{m}"] = ratio
        return logs

    def state_dict(self):
        return {"memory": self.memory, "factors": self.factors}

    def load_state_dict(self, state):
        self.memory, self.factors = state["memory"], state["factors"]
