"""UMT, Uni-Modal Teacher (Du et al., "On Uni-Modal Feature Learning in Supervised
Multi-Modal Learning", ICML 2023; first as arXiv 2106.11059, "Improving Multi-Modal
Learning with Uni-Modal Teachers"). The MLB paper (Kontras et al., BMVC 2024, Sec. 2)
discusses it as the distillation alternative to a multi-loss objective.

Two stages. First every modality m is trained alone (our methods `audio_only` and
`video_only`, see `UMT.TEACHERS`); its encoder, frozen, is modality m's *teacher*
phi~_m. Then the multimodal model is trained from scratch with the fused
cross-entropy plus, per modality, the mean squared distance between its encoder's
pooled features z_m = phi_m(x_m) and the teacher's z~_m = phi~_m(x_m) on the same
input, inside the window [start_epoch, end_epoch]:

    L = CE(f(x), y) + lambda * sum_m MSE(z_m, z~_m),
    MSE(z, z~) = 1/(B d) sum_b sum_j (z_bj - z~_bj)^2       (mean over batch and feature)

with lambda = `distill_weight`. Outside the window L is the fused cross-entropy
alone. The teachers run in eval mode under no_grad; only z_m carries a gradient,
so the distillation term trains the multimodal encoders and nothing else. The
unimodal heads stay probes (UMT's loss does not use them). Logged:
`balance/loss_fused`, `balance/distill_<m>` (each MSE before the weight).

Reference code: GeWu-Lab/BalanceBenchmark at commit
4c1482fca5aaa8d4278af8e26020daa039e3ccf3, `balancemm/trainer/UMT_trainer.py`
(`UMTTrainer`: loads the newest `unimodalTrainer_<m>` checkpoint per modality;
`training_step`: CE on the fused output + `scaling` * `nn.MSELoss()` between the
teacher's and the student's `encoder_result[m]`, the pooled encoder features of
`balancemm/models/avclassify_model.py`, inside `modulation_starts..ends`), and
`configs/trainer_config.yaml` (UMT: `scaling: 10`, `modulation_starts: 0`,
`modulation_ends: 80`, with `base.max_epochs: 30`, i.e. always; its `alpha: 1` is
not read by the UMT trainer). Its unimodal trainer saves a checkpoint whenever
validation accuracy improves, so the teacher is the best-validation model, as our
`model.pt` is. The authors' own code was not found (searched the code and docs
indexes); the loss form and weight are BalanceBenchmark's.

Teachers are inputs, not state: `teacher_models` ({modality: path to the model.pt
of that modality's `<m>_only` cell of the same dataset, backbone and fold}) is filled
by the workflow. `setup` copies each modality's encoder from the freshly built model
(so the architecture is the cell's own), loads the `encoders.<m>.*` weights of the
teacher file into it with `torch.load(weights_only=True)`, and freezes it (eval
mode, requires_grad False). The teachers are kept on the balancer, outside the
model: not in its parameters, the optimizer or any state dict; a resumed run reloads
the same files.

Departures from BalanceBenchmark:
* teachers in eval mode: BalanceBenchmark never calls eval() on its loaded teachers,
  so their BatchNorm layers normalise with batch statistics and keep updating their
  running statistics during the multimodal training. Ours stay exactly the model
  selected on validation, and, having no state that changes, a resumed run reloads
  them identically from the files (a drifting teacher would have to be checkpointed);
* only the teacher's encoder weights are read (its unimodal classifier is not used by
  UMT's loss either way), and the student starts from the usual random initialisation;
* any number of modalities: one teacher per modality of the model, all required;
* the default window end is 1500, i.e. always, the effect of BalanceBenchmark's
  0-80 window over its 30 epochs (our recipes train up to 100 epochs).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmbalance.balancers.base import Balancer, epoch_window
from mmbalance.models.output import ModelOutput


def distillation_losses(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MSE(z_m, z~_m) per modality: the mean over batch and feature dimensions
    (BalanceBenchmark's `nn.MSELoss()`). Gradient flows into `student` only."""
    return {m: F.mse_loss(student[m], teacher[m].detach()) for m in teacher}


def umt_objective(fused: torch.Tensor, labels: torch.Tensor, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                  weight: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(L, CE(fused, y), {m: MSE(z_m, z~_m)}) with L = CE + weight * sum_m MSE."""
    cross_entropy = F.cross_entropy(fused, labels)
    distances = distillation_losses(student, teacher)
    return cross_entropy + weight * sum(distances.values()), cross_entropy, distances


def load_teacher_encoder(encoder: nn.Module, path: str | Path, modality: str) -> nn.Module:
    """A frozen copy of `encoder` holding the `encoders.<modality>.*` weights of the
    model.pt at `path` (as `train.write_outputs` writes it: the model's state dict).
    Raises ValueError naming the path and the modality when the file is missing,
    does not load safely, or its encoder does not fit `encoder`."""
    path = Path(path)
    where = f"UMT teacher for modality {modality!r} ({path})"
    if not path.is_file():
        raise ValueError(f"{where}: no such file; it is the model.pt of the {UMT.TEACHERS.get(modality, f'{modality}_only')} "
                         "cell of the same dataset, backbone and fold, which must be trained first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, a pickle with code in it, ...
        raise ValueError(f"{where}: does not load safely as weights ({type(error).__name__}: {str(error).strip()[:200]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{where}: holds a {type(state).__name__}, not a model state dict")
    prefix = f"encoders.{modality}."
    weights = {key[len(prefix):]: value for key, value in state.items() if isinstance(key, str) and key.startswith(prefix)}
    if not weights:
        raise ValueError(f"{where}: holds no {prefix}* weights (is it a model.pt written by training the {modality} model?)")
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [f"{key}: file {tuple(weights[key].shape)}, model {tuple(expected[key].shape)}"
                  for key in expected if key in weights and tuple(weights[key].shape) != tuple(expected[key].shape)]
    if missing or unexpected or mismatched:
        problems = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                    f"shapes differ: {'; '.join(mismatched[:3])}" if mismatched else ""]
        raise ValueError(f"{where}: its encoder does not match this model's {modality} encoder "
                         f"(another backbone or width?): {', '.join(p for p in problems if p)}")
    teacher = copy.deepcopy(encoder)
    teacher.load_state_dict(weights)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class UMT(Balancer):
    DESCRIPTION = "Uni-Modal Teacher: fused CE + distillation of each encoder's features towards its frozen unimodal teacher's."
    #: modality -> the method whose trained model (of the same dataset, backbone and fold) is its teacher.
    TEACHERS = {"audio": "audio_only", "video": "video_only"}
    SETTINGS = {
        "distill_weight": {"description": "lambda, weight of each modality's feature MSE (BalanceBenchmark configs/trainer_config.yaml, UMT: scaling 10).",
                           "type": "number", "minimum": 0, "default": 10.0},
        **epoch_window(0, 1500, "distillation", "BalanceBenchmark: 0-80 over its 30 epochs, i.e. always; 1500 = always"),
        "teacher_models": {"description": "Filled by the workflow, not by hand: modality -> path of the model.pt of its teacher cell "
                           "(UMT.TEACHERS: audio_only, video_only) of the same dataset, backbone and fold. Default: none "
                           "(setup then stops, naming the missing teacher).",
                           "type": "object", "additionalProperties": {"type": "string"}, "default": {}},
    }
    SEARCH_SPACE = {
        "distill_weight": {"low": 0.1, "high": 100.0, "log": True,
                           "source": "our range around BalanceBenchmark's 10 (trainer_config.yaml), the only published value found: "
                           "two decades below, one above"},
    }

    def __init__(self, settings):
        super().__init__(settings)
        self.teachers: dict[str, nn.Module] = {}
        self._pending: tuple[ModelOutput, dict[str, torch.Tensor]] | None = None

    def setup(self, model):
        paths = dict(self.settings.get("teacher_models") or {})
        for m in model.modalities:
            if m not in paths:
                raise ValueError(f"UMT needs a teacher for modality {m!r}: settings teacher_models has no entry for it "
                                 f"(the workflow fills it with the model.pt of the {self.TEACHERS.get(m, f'{m}_only')} cell "
                                 "of the same dataset, backbone and fold)")
        extra = sorted(set(paths) - set(model.modalities))
        if extra:
            raise ValueError(f"UMT teacher_models names modalities the model does not have: {extra} (model: {model.modalities})")
        self.teachers = {m: load_teacher_encoder(model.encoders[m], paths[m], m) for m in model.modalities}

    @torch.no_grad()
    def teacher_features(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """z~_m = phi~_m(x_m): the frozen teachers' pooled features, no gradient."""
        for teacher in self.teachers.values():
            teacher.eval()  # nothing should have switched them to training, but never let BatchNorm drift
        return {m: teacher(inputs[m]) for m, teacher in self.teachers.items()}

    def forward(self, model, inputs, labels, epoch):
        out = model(inputs)
        # The teachers see the same inputs; computed only when the term is used.
        self._pending = (out, self.teacher_features(inputs)) if self.in_window(epoch) else None
        return out

    def loss(self, out, labels, epoch):
        if not self.in_window(epoch):
            fused = F.cross_entropy(out.fused, labels)
            return fused, {"loss_fused": fused.item()}
        if not self.teachers:
            raise RuntimeError("UMT.loss before setup loaded the teachers")
        if self._pending is None or self._pending[0] is not out:
            raise RuntimeError("UMT.loss needs the teacher features of this output: call UMT.forward on the batch first")
        teacher = self._pending[1]
        self._pending = None
        total, cross_entropy, distances = umt_objective(out.fused, labels, out.features, teacher, self.settings["distill_weight"])
        return total, {"loss_fused": cross_entropy.item()} | {f"distill_{m}": d.item() for m, d in distances.items()}
