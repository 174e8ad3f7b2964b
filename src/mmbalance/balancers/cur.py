"""CUR: balanced multi-modal learning (Wu, Jastrzebski, Cho, Geras, "Characterizing
and overcoming the greedy nature of learning in multi-modal deep neural networks",
ICML 2022, PMLR 162: 24043-24055), named after the paper's conditional utilisation
rate as OLM's Table 1 names it (Zong et al., IJCAI 2024, row "CUR"; BalanceBenchmark
calls it "Greedy"). It needs the MMTM-coupled encoders of fusion `mmtm`
(mmbalance.models.mmtm), which offers the bypass paths it reads.

Reference code: the authors' release, nyukat/greedy_multimodal_learning at a190e03
(`callbacks.py` class `Bias_Mitigation_Strong`, `balanced_mmtm.py`, `model.py`,
`framework.py` in its `src` folder; `train.py`; `configs/training_guided.gin`), and
BalanceBenchmark, GeWu-Lab/BalanceBenchmark at 4c1482f
(`balancemm/trainer/Greedy_trainer.py`, `configs/trainer_config.yaml` block
`Greedy`). Read, not copied. The paper's text was not at hand: the equations below
are the release's, under the paper's names.

Objective (the release's `blend_loss`): every branch's own classifier trained on
its own cross-entropy, L = sum_m CE(y_m, y), y_m = V_m z_m + c_m
(`objective: branches`); `objective: fused` takes CE(f, y) on the fused logits
f = mean_m y_m instead, as BalanceBenchmark's trainer does on its fusion output.

Conditional learning speed, measured after backward, before the optimizer step.
For a group of parameters P, mu(P) = sum_{p in P} ||grad p||^2 / sum_{p in P} ||p||^2.
For the branch of modality m, main_m is its encoder and classifier and bypass_m
the MMTM parameters that bring the other modality in (its excitation W_m, b_m and
the shared squeeze, in every MMTM):

    s_m(t)  = log10( sum_{tau <= t} mu(bypass_m; tau) / sum_{tau <= t} mu(main_m; tau) )
    d_speed = s_0(t) - s_1(t)                   (0 = the first modality, audio)

the sums running over every step at which it was measured (all but re-balancing
steps); the release calls s_m the BDR of branch m.

The switch rule (the curation window), once per step from epoch `start_epoch` on:

    not re-balancing:  measure d_speed; if |d_speed| > epsilon, the next `window`
                       steps re-balance, caring for modality 0 if d_speed > 0,
                       else for modality 1
    re-balancing:      no measurement; after the window's last step, back to regular

Before `start_epoch` d_speed is measured (its sums grow) and no step re-balances.
In a re-balancing step that cares for m, modality m's MMTM gates are replaced by
their running means over training (constants for autograd; see
mmbalance.models.mmtm): branch m gets no gradient through the other modality
and must learn from its own (the release's `curation_mode`, `caring_modality`). Every
parameter takes the step, as in both reference codes (`rebalance_update: all`);
`caring_branch` updates only branch m (its encoder and classifier), OLM's reading
("applied to update one of the unimodal branches intentionally", OLM Sec. 2).

Conditional utilisation rates (the paper's diagnostic; the release computes them
after training, `eval.py` with `configs/recording.gin` then `configs/eval.gin`):

    u(m_1 | m_0) = (A(m_0, m_1) - A(m_0)) / A(m_0, m_1),     d_util = u(m_1 | m_0) - u(m_0 | m_1)

A(m_0, m_1) the accuracy of the fused logits, A(m) that of branch m's classifier
in the derived unimodal model, where every MMTM sees the other modality's squeeze
replaced by its mean over the training split. Measured after every epoch
(`on_epoch_end`) when `utilisation_fraction` > 0.

Defaults: epsilon 0.01, window 5, start_epoch 1 (the release's gin config:
`epsilon=0.01`, `curation_windowsize=5`, `starting_epoch=2` with epochs counted
from 1, i.e. the second epoch; BalanceBenchmark: alpha 0.001, window_size 5, from
the first epoch).

Departures:
* The utilisation rates are measured on the validation split after every epoch
  (the release: on the test split, once, with the selected model), with the mean
  squeezes from `utilisation_fraction` of the training split (the release: all of it).
* BalanceBenchmark's Greedy runs MMTM after all four ResNet stages and a concat
  fusion with CE on its output; the release's architecture and loss are the
  defaults here (see mmbalance.models.mmtm for the module's own departures).
* Only two modalities, as in both reference codes (d_speed compares two).
* A speed whose sums are zero is NaN, and a NaN d_speed never opens a window
  (the release would divide by zero).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from mmbalance.balancers.base import Balancer


def gradient_ratio(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """mu(P) = sum ||grad p||^2 / sum ||p||^2 over the group (a missing gradient counts 0)."""
    weights = torch.stack([p.detach().float().pow(2).sum() for p in params]).sum()
    grads = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return (torch.stack(grads).sum() if grads else weights.new_zeros(())) / weights


def learning_speed(bypass_sum: float, main_sum: float) -> float:
    """s_m = log10(sum mu(bypass_m) / sum mu(main_m)); NaN while either sum is not positive."""
    if not (bypass_sum > 0 and main_sum > 0):
        return math.nan
    return math.log10(bypass_sum / main_sum)


def switch(curating: bool, window_step: int, caring: str | None, unlocked: bool, d_speed: float,
           epsilon: float, window: int, modalities: list[str]) -> tuple[bool, int, str | None]:
    """The state (curating, window_step, caring) for the next step. `d_speed` is this
    step's measurement (ignored while re-balancing, when none is taken)."""
    if not unlocked:
        return False, window_step, None
    if not curating:
        if abs(d_speed) > epsilon:  # NaN never opens a window
            return True, 0, modalities[0] if d_speed > 0 else modalities[1]
        return False, window_step, None
    window_step += 1
    return window_step != window, window_step, caring


def utilisation_rate(both: float, alone: float) -> float:
    """u(m_1 | m_0) = (A(m_0, m_1) - A(m_0)) / A(m_0, m_1)."""
    return (both - alone) / both if both > 0 else math.nan


class CUR(Balancer):
    DESCRIPTION = ("CUR / balanced multi-modal learning (Wu et al., ICML 2022) on MMTM-coupled encoders: when the conditional "
                   "learning speeds of the two branches differ by more than epsilon, the next steps cut the other modality "
                   "out of the slower branch's MMTM gates.")
    SETTINGS = {
        "epsilon": {"description": "Threshold on |d_speed| that opens a re-balancing window (release gin config: 0.01; "
                    "BalanceBenchmark: alpha 0.001).", "type": "number", "minimum": 0, "default": 0.01},
        "window": {"description": "Re-balancing steps per window (curation_windowsize 5 in the release; window_size 5 in "
                   "BalanceBenchmark).", "type": "integer", "minimum": 1, "default": 5},
        "start_epoch": {"description": "First epoch (0-based) that may re-balance; d_speed is measured from the first step "
                        "(release: starting_epoch=2, epochs counted from 1; BalanceBenchmark: 0).",
                        "type": "integer", "minimum": 0, "default": 1},
        "objective": {"description": "branches: sum of each branch classifier's cross-entropy (the release's blend_loss); "
                      "fused: cross-entropy of the fused logits (BalanceBenchmark's trainer).",
                      "type": "string", "enum": ["branches", "fused"], "default": "branches"},
        "rebalance_update": {"description": "Which parameters a re-balancing step updates: all (both reference codes) or "
                             "caring_branch, the cared-for modality's encoder and classifier only (OLM Sec. 2's reading).",
                             "type": "string", "enum": ["all", "caring_branch"], "default": "all"},
        "utilisation_fraction": {"description": "Share of the training split whose mean MMTM squeezes feed the derived "
                                 "unimodal models of the conditional utilisation rates, measured on validation after each "
                                 "epoch; 0 skips them (the release: the whole training split, once after training).",
                                 "type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
    }
    SEARCH_SPACE = {
        "epsilon": {"low": 0.001, "high": 0.1, "log": True, "source": "BalanceBenchmark's 0.001 to ten times the release's 0.01"},
        "window": {"low": 1, "high": 20, "type": "int", "source": "around 5, both reference codes' window"},
    }
    NEEDS_HINT = "it runs on fusion mmtm, the encoders coupled by MMTM modules"

    @classmethod
    def needs(cls, settings):
        return {"mmtm_bypass"}

    def setup(self, model):
        fusion = model.fusion
        if not hasattr(fusion, "bypass_parameters"):
            raise ValueError(f"CUR reads the MMTM bypass into each branch, and fusion {type(fusion).__name__} has none: "
                             "run it on fusion mmtm")
        if len(model.modalities) != 2:
            raise ValueError(f"CUR compares the learning speeds of two modalities, got {model.modalities}")
        self.modalities = list(model.modalities)
        self.fusion = fusion
        self.main = {m: [*model.encoders[m].parameters(), *fusion.blocks[m].parameters()] for m in self.modalities}
        self.bypass = {m: fusion.bypass_parameters(m) for m in self.modalities}
        self.heads = list(model.heads.parameters())  # probes: never frozen by a re-balancing step
        self.sums = {m: {"bypass": 0.0, "main": 0.0} for m in self.modalities}
        self.speeds = {m: math.nan for m in self.modalities}
        self.d_speed = math.nan
        self.curating, self.window_step, self.caring = False, 0, None
        self.isolated: str | None = None  # whom this step's forward pass cared for

    def forward(self, model, inputs, labels, epoch):
        self.isolated = self.caring if self.curating and model.training else None
        model.fusion.isolated = self.isolated
        try:
            return model(inputs)
        finally:
            model.fusion.isolated = None  # evaluation always sees the full coupling

    def loss(self, out, labels, epoch):
        branches = self.fusion.branch_logits(out.features)
        losses = {m: F.cross_entropy(logits, labels) for m, logits in branches.items()}
        objective = sum(losses.values()) if self.settings["objective"] == "branches" else F.cross_entropy(out.fused, labels)
        return objective, {f"loss_{m}": loss.item() for m, loss in losses.items()}

    def measure(self) -> float:
        """Adds this step's mu to the sums and returns d_speed (one device sync)."""
        ratios = torch.stack([gradient_ratio(self.bypass[m]) for m in self.modalities]
                             + [gradient_ratio(self.main[m]) for m in self.modalities]).tolist()
        for i, m in enumerate(self.modalities):
            self.sums[m]["bypass"] += ratios[i]
            self.sums[m]["main"] += ratios[len(self.modalities) + i]
            self.speeds[m] = learning_speed(self.sums[m]["bypass"], self.sums[m]["main"])
        first, second = self.modalities
        return self.speeds[first] - self.speeds[second]

    def after_backward(self, model, out, labels, epoch):
        if self.isolated is not None and self.settings["rebalance_update"] == "caring_branch":
            keep = {id(p) for p in self.main[self.isolated] + self.heads}
            for p in model.parameters():
                if id(p) not in keep:
                    p.grad = None  # the optimizer skips it: no step, no decay, no moment update
        unlocked = epoch >= self.settings["start_epoch"]
        if not (unlocked and self.curating):
            self.d_speed = self.measure()
        self.curating, self.window_step, self.caring = switch(
            self.curating, self.window_step, self.caring, unlocked, self.d_speed,
            self.settings["epsilon"], self.settings["window"], self.modalities)
        logs = {"rebalancing": float(self.isolated is not None), "d_speed": self.d_speed}
        logs |= {f"caring_{m}": float(self.isolated == m) for m in self.modalities}
        return logs | {f"speed_{m}": s for m, s in self.speeds.items()}

    @torch.no_grad()
    def on_epoch_end(self, context):
        fraction = self.settings["utilisation_fraction"]
        if fraction == 0:
            return {}
        model, fusion = context.model, context.model.fusion
        was_training = model.training
        model.eval()
        try:
            sums, count = None, 0
            for inputs, labels in context.batches("train", fraction):
                model(inputs)
                batch = [{m: s.double().sum(0) for m, s in position.items()} for position in fusion.last_squeezes]
                sums = batch if sums is None else [{m: a[m] + b[m] for m in a} for a, b in zip(sums, batch)]
                count += len(labels)
            means = [{m: (s / count).float() for m, s in position.items()} for position in sums]
            both, alone, total = 0, dict.fromkeys(self.modalities, 0), 0
            for inputs, labels in context.batches("val", 1.0):
                both += int((model(inputs).fused.argmax(1) == labels).sum())
                fusion.fixed_squeezes = means
                try:
                    derived = fusion.branch_logits(model(inputs).features)
                finally:
                    fusion.fixed_squeezes = None
                for m, logits in derived.items():
                    alone[m] += int((logits.argmax(1) == labels).sum())
                total += len(labels)
        finally:
            model.train(was_training)
        first, second = self.modalities
        accuracy = {m: alone[m] / total for m in self.modalities}
        u = {(second, first): utilisation_rate(both / total, accuracy[first]),
             (first, second): utilisation_rate(both / total, accuracy[second])}
        logs = {f"derived_acc_{m}": accuracy[m] for m in self.modalities}
        logs |= {f"u_{a}_given_{b}": value for (a, b), value in u.items()}
        return logs | {"d_util": u[(second, first)] - u[(first, second)]}

    def state_dict(self):
        return copy.deepcopy({"sums": self.sums, "speeds": self.speeds, "d_speed": self.d_speed, "curating": self.curating,
                              "window_step": self.window_step, "caring": self.caring})

    def load_state_dict(self, state):
        state = copy.deepcopy(state)
        self.sums, self.speeds, self.d_speed = state["sums"], state["speeds"], state["d_speed"]
        self.curating, self.window_step, self.caring = state["curating"], state["window_step"], state["caring"]
