"""Each method's equations against values computed by hand (each method's module docstring gives its source)."""

import math

import pytest
import torch
import torch.nn.functional as F
from mmbalance.config import schema

from mmbalance.balancers import METHODS, build_balancer
from mmbalance.balancers.base import Balancer, EpochContext, true_class_confidence
from mmbalance.balancers.mlb import mlb_coefficients
from mmbalance.balancers.mmcosine import cosine_logits
from mmbalance.balancers.mslr import mslr_ratio
from mmbalance.balancers.multi_loss import multi_loss
from mmbalance.balancers.ogm import OGMGE, discrepancy_ratios, generalization_enhancement, ogm_coefficients
from mmbalance.models.multimodal import ModelOutput, build_model
from mmbalance.step import training_step


# A hand-worked example: 2 samples, 3 classes, labels [0, 2].
LABELS = torch.tensor([0, 2])
AUDIO = torch.tensor([[2.0, 0, 0], [0, 0, 2.0]])
VIDEO = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])


def test_true_class_confidence_worked_example():
    assert true_class_confidence(AUDIO, LABELS).tolist() == pytest.approx([0.786986, 0.786986], abs=1e-6)
    assert true_class_confidence(VIDEO, LABELS).tolist() == pytest.approx([1 / 3, 0.211942], abs=1e-6)


@pytest.mark.parametrize(
    "alpha, beta_max, k_audio, k_video",
    [(0.5, 2.0, 0.684372, 1.736727), (0.5, 10.0, 0.684372, 7.630543), (0.8, 2.0, 0.520100, 1.906806)],
)
def test_mlb_worked_example(alpha, beta_max, k_audio, k_video):
    scores = torch.stack([true_class_confidence(AUDIO, LABELS).mean(), true_class_confidence(VIDEO, LABELS).mean()]).double()
    ratios, k = mlb_coefficients(scores, alpha, beta_max)
    assert ratios.tolist() == pytest.approx([0.346432, 2.886566], abs=1e-6)
    assert k.tolist() == pytest.approx([k_audio, k_video], abs=1e-6)


def test_mlb_other_numbers():
    # s = [0.6, 0.3], alpha 1, beta_max 3: r_a = 0.5 -> 1 + tanh(-0.5); r_v = 2 -> 1 + 2 tanh(1).
    ratios, k = mlb_coefficients(torch.tensor([0.6, 0.3], dtype=torch.float64), 1.0, 3.0)
    assert ratios.tolist() == pytest.approx([0.5, 2.0])
    assert k.tolist() == pytest.approx([1 - 0.46211716, 1 + 2 * 0.76159416], abs=1e-7)


def test_mlb_phases_out_when_scores_are_equal():
    _, k = mlb_coefficients(torch.tensor([0.7, 0.7]), 0.5, 10.0)
    assert k.tolist() == pytest.approx([1.0, 1.0])


def test_mlb_three_modalities():
    ratios, k = mlb_coefficients(torch.tensor([0.8, 0.4, 0.2], dtype=torch.float64), 1.0, 2.0)
    assert ratios.tolist() == pytest.approx([0.375, 1.25, 3.0])
    assert k.tolist() == pytest.approx([0.445400, 1.244919, 1.964028], abs=1e-6)


@pytest.mark.parametrize("alpha, k_audio", [(0.1, 0.719102), (0.8, 0.019542)])
def test_ogm_worked_example(alpha, k_audio):
    scores = torch.stack([true_class_confidence(AUDIO, LABELS).sum(), true_class_confidence(VIDEO, LABELS).sum()]).double()
    assert scores.tolist() == pytest.approx([1.573972, 0.545275], abs=1e-6)
    ratios, k = ogm_coefficients(scores, alpha)
    assert ratios[0].item() == pytest.approx(2.886566, abs=1e-6)
    assert k.tolist() == pytest.approx([k_audio, 1.0], abs=1e-6)


def test_ogm_damps_only_the_dominant_modality_and_nobody_on_a_tie():
    _, k = ogm_coefficients(torch.tensor([1.0, 2.0], dtype=torch.float64), 0.5)
    assert k.tolist() == pytest.approx([1.0, 1 - math.tanh(1.0)])
    _, k = ogm_coefficients(torch.tensor([3.0, 3.0]), 0.8)
    assert k.tolist() == [1.0, 1.0]


def test_ogm_alpha_zero_modulates_nobody_so_ogm_ge_adds_noise_only():
    """OGM-GE Table 7's GE-only row: k = 1 - tanh(0) = 1 for every modality, the noise stays."""
    _, k = ogm_coefficients(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64), 0.0)
    assert k.tolist() == [1.0, 1.0, 1.0]
    torch.manual_seed(0)
    grad = torch.tensor([1.0, -1.0, 3.0, -3.0])
    noise = generalization_enhancement(grad, 1.0) - grad
    torch.manual_seed(0)
    assert torch.allclose(noise, torch.randn(4) * (2.581989 + 1e-8), atol=1e-5)


def test_ogm_ge_noise_std_is_the_unbiased_std_of_the_unscaled_gradient():
    assert torch.tensor([1.0, -1.0, 3.0, -3.0]).std().item() == pytest.approx(2.581989, abs=1e-6)
    torch.manual_seed(0)
    grad = 2.0 * torch.randn(200_000)
    noisy = generalization_enhancement(grad, 0.3)
    assert (noisy - 0.3 * grad).std().item() == pytest.approx(grad.std().item(), rel=0.01)
    assert (noisy - 0.3 * grad).mean().item() == pytest.approx(0.0, abs=0.02)


def test_multi_loss_value():
    # One sample, label 0: CE(fused [0, 0]) = ln 2; audio [ln 3, 0] -> -ln(3/4); video [0, ln 3] -> ln 4.
    out = ModelOutput(
        fused=torch.tensor([[0.0, 0.0]]),
        unimodal={"audio": torch.tensor([[math.log(3), 0.0]]), "video": torch.tensor([[0.0, math.log(3)]])},
        features={}, decomposed=None, heads_are_probes=False,
    )
    total, logs = multi_loss(out, torch.tensor([0]), {"audio": 1.0, "video": 0.5})
    assert total.item() == pytest.approx(math.log(2) - math.log(0.75) + 0.5 * math.log(4), abs=1e-6)
    assert logs["loss_video"] == pytest.approx(math.log(4), abs=1e-6)


def test_modulation_window_is_inclusive():
    balancer = Balancer({"start_epoch": 2, "end_epoch": 4})
    assert [balancer.in_window(e) for e in range(6)] == [False, False, True, True, True, False]


def tiny_model(heads_are_probes=True):
    torch.manual_seed(0)
    return build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "late_linear", 3, heads_are_probes)


def tiny_batch():
    torch.manual_seed(1)
    return {"audio": torch.randn(4, 33, 17), "video": torch.randn(4, 2, 3, 32, 32)}, torch.tensor([0, 1, 2, 0])


def backward(model):
    inputs, labels = tiny_batch()
    out = model(inputs)
    (F.cross_entropy(out.fused, labels) + out.probe_loss(labels)).backward()
    return out, labels


def test_ogm_ge_noises_both_modalities_conv_weights_only():
    model = tiny_model()
    balancer = OGMGE({"alpha": 0.8, "start_epoch": 0, "end_epoch": 50, "parameter_policy": "encoder_conv_weights", "coefficient": "official", "score_source": "decomposition"})
    balancer.setup(model)
    out, labels = backward(model)
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    logs = balancer.after_backward(model, out, labels, epoch=0)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.grad, before[name])}
    conv_weights = {name for name, p in model.named_parameters() if name.startswith("encoders.") and p.dim() == 4}
    assert changed == conv_weights  # both encoders, and nothing else (no BN, no fusion, no heads)
    assert min(logs["coeff_audio"], logs["coeff_video"]) < 1.0 == max(logs["coeff_audio"], logs["coeff_video"])


def test_gradient_methods_do_nothing_outside_their_window():
    for name, settings in [
        ("ogm", {"alpha": 0.8, "start_epoch": 0, "end_epoch": 0, "parameter_policy": "encoder_conv_weights", "coefficient": "official", "score_source": "decomposition"}),
        ("mlb", {"alpha": 0.5, "beta_max": 10, "start_epoch": 0, "end_epoch": 0, "parameter_policy": "encoder_head_fusion_block", "weights": {}}),
    ]:
        balancer = build_balancer(name, settings)
        model = tiny_model(heads_are_probes=not balancer.trains_unimodal_heads)
        balancer.setup(model)
        inputs, labels = tiny_batch()
        out = model(inputs)
        (balancer.loss(out, labels, 1)[0] + out.probe_loss(labels)).backward()
        before = [p.grad.clone() for p in model.parameters()]
        assert balancer.after_backward(model, out, labels, epoch=1) == {}
        assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


def test_mlb_scales_encoder_head_and_fusion_block_but_not_the_shared_bias():
    model = tiny_model(heads_are_probes=False)
    balancer = build_balancer("mlb", {"alpha": 0.5, "beta_max": 10, "start_epoch": 0, "end_epoch": 9, "parameter_policy": "encoder_head_fusion_block", "weights": {}})
    balancer.setup(model)
    inputs, labels = tiny_batch()
    out = model(inputs)
    balancer.loss(out, labels, 0)[0].backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    logs = balancer.after_backward(model, out, labels, epoch=0)
    for name, p in model.named_parameters():
        modality = next((m for m in ("audio", "video") if f".{m}." in f".{name}."), None)
        expected = before[name] * logs[f"coeff_{modality}"] if modality else before[name]
        assert torch.allclose(p.grad, expected), name
    assert torch.equal(model.fusion.bias.grad, before["fusion.bias"])


def test_registry_and_schema_list_the_same_methods():
    full = schema()
    assert full["$defs"]["method_name"]["enum"] == list(METHODS)
    assert set(full["properties"]["methods"]["properties"]) == set(METHODS)
    # Every setting of every method is typed, defaulted and described, with no other key allowed.
    for name in METHODS:
        block = full["properties"]["methods"]["properties"][name]
        assert block["additionalProperties"] is False and block["description"], name
        for key, setting in block["properties"].items():
            assert "default" in setting and "description" in setting, (name, key)


def test_mslr_ratio_worked_example():
    memory = [0.40, 0.45, 0.50, 0.55, 0.60]
    assert mslr_ratio(memory, 0.66, 5) == pytest.approx(1.32)
    assert 0.9 * mslr_ratio(memory, 0.66, 5) == pytest.approx(1.188)
    assert mslr_ratio(memory[:4], 0.66, 5) == 1.0  # memory not full yet
    # Own numbers: memory [0.2, 0.3] (mean 0.25), accuracy 0.2 -> 0.8.
    assert mslr_ratio([0.2, 0.3], 0.2, 2) == pytest.approx(0.8)


def test_mslr_updates_its_memory_after_the_ratio():
    model = tiny_model()
    balancer = build_balancer("mslr", {"initial_rates": {"audio": 0.7, "video": 1.3}, "memory": 2, "parameter_policy": "encoder_fusion_block",
                                       "start_epoch": 0, "end_epoch": 1500})
    balancer.setup(model)
    accuracies = [(0.5, 0.2), (0.5, 0.4), (0.6, 0.6), (0.3, 0.5)]
    factors = []
    for epoch, (audio, video) in enumerate(accuracies):
        balancer.on_epoch_end(EpochContext(epoch, model, None, {"val_acc_audio": audio, "val_acc_video": video}))
        factors.append(dict(balancer.factors))
    assert factors[1] == {"audio": 0.7, "video": 1.3}  # memory filled only after this epoch
    # Epoch 2: memory audio [0.5, 0.5], video [0.2, 0.4] -> 0.6/0.5 and 0.6/0.3.
    assert factors[2] == pytest.approx({"audio": 0.7 * 1.2, "video": 1.3 * 2.0})
    # Epoch 3: memory audio [0.5, 0.6], video [0.4, 0.6] -> 0.3/0.55 and 0.5/0.5.
    assert factors[3] == pytest.approx({"audio": 0.7 * 0.3 / 0.55, "video": 1.3})
    restored = build_balancer("mslr", balancer.settings)
    restored.setup(model)
    restored.load_state_dict(balancer.state_dict())
    assert restored.memory == balancer.memory and restored.factors == balancer.factors


def test_mmcosine_worked_example_and_scale_invariance():
    z = torch.tensor([[3.0, 4.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert cosine_logits(z, weight, 10.0)[0].tolist() == pytest.approx([6.0, 8.0, 9.899495], abs=1e-5)
    rescaled = cosine_logits(7 * z, weight * torch.tensor([[0.5], [3.0], [11.0]]), 10.0)
    assert torch.allclose(rescaled, cosine_logits(z, weight, 10.0))


def test_mmcosine_replaces_the_fused_logits():
    model = tiny_model()
    balancer = build_balancer("mmcosine", {"scale": 10.0})
    balancer.setup(model)
    assert "fusion.bias" not in dict(model.named_parameters())
    inputs, labels = tiny_batch()
    out = model(inputs)
    expected = sum(cosine_logits(out.features[m], model.fusion.blocks[m].weight, 10.0) for m in ("audio", "video"))
    assert torch.allclose(out.fused, expected) and out.fused.abs().max() <= 20.0 + 1e-5
    _, logs = balancer.loss(out, labels, 0)
    assert -1 <= logs["cos_audio"] <= 1


@pytest.mark.parametrize(
    "method, settings, patch, reference",
    [
        ("ogm", {"alpha": 0.8, "start_epoch": 0, "end_epoch": 9, "parameter_policy": "encoder_conv_weights", "coefficient": "official", "score_source": "decomposition"}, "mmbalance.balancers.ogm.ogm_coefficients", "joint"),
        ("mlb", {"alpha": 0.5, "beta_max": 10, "start_epoch": 0, "end_epoch": 9, "parameter_policy": "encoder_head_fusion_block", "weights": {}}, "mmbalance.balancers.mlb.mlb_coefficients", "multi_loss"),
        ("mslr", {"initial_rates": {"audio": 1.0, "video": 1.0}, "memory": 3, "parameter_policy": "encoder_fusion_block", "start_epoch": 0, "end_epoch": 9}, None, "joint"),
    ],
)
def test_coefficients_of_one_give_the_unmodulated_update(monkeypatch, method, settings, patch, reference):
    """With every coefficient forced to 1, a gradient-modulating method takes
    exactly the optimizer step of the objective it modulates."""
    if patch:
        monkeypatch.setattr(patch, lambda scores, *args: (torch.ones_like(scores), torch.ones_like(scores)))

    def one_step(name, method_settings):
        balancer = build_balancer(name, method_settings)
        model = tiny_model(heads_are_probes=not balancer.trains_unimodal_heads)
        balancer.setup(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        training_step(model, balancer, optimizer, *tiny_batch(), 0)
        return [p.detach().clone() for p in model.parameters()]

    reference_settings = {"weights": {}} if reference == "multi_loss" else {}
    for modulated, plain in zip(one_step(method, settings), one_step(reference, reference_settings)):
        assert torch.equal(modulated, plain)


def test_ogm_continuous_variant_is_one_at_balance():
    # rho_v = 2, alpha 0.5: official 1 - tanh(1.0); continuous 1 - tanh(0.5).
    _, official = ogm_coefficients(torch.tensor([1.0, 2.0], dtype=torch.float64), 0.5)
    _, continuous = ogm_coefficients(torch.tensor([1.0, 2.0], dtype=torch.float64), 0.5, continuous=True)
    assert official[1].item() == pytest.approx(1 - math.tanh(1.0))
    assert continuous[1].item() == pytest.approx(1 - math.tanh(0.5))
    _, near_balance = ogm_coefficients(torch.tensor([1.0, 1.0001], dtype=torch.float64), 0.8, continuous=True)
    assert near_balance[1].item() == pytest.approx(1.0, abs=1e-3)


class NonLinearFusion(torch.nn.Module):
    """A stand-in for a fusion that cannot be decomposed (FiLM, Gated, ...)."""

    decomposable = False

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2 * 32, 3)

    def forward(self, features):
        return self.layer(torch.relu(torch.cat(list(features.values()), dim=1)))


def test_ogm_on_a_non_linear_fusion_names_both_and_the_way_out():
    model = tiny_model()
    model.fusion = NonLinearFusion()
    settings = {"alpha": 0.8, "start_epoch": 0, "end_epoch": 9, "parameter_policy": "encoder_conv_weights", "coefficient": "official", "score_source": "decomposition"}
    with pytest.raises(ValueError, match="OGM.*NonLinearFusion.*score_source: heads"):
        build_balancer("ogm", settings).setup(model)
    balancer = build_balancer("ogm", settings | {"score_source": "heads"})
    balancer.setup(model)
    inputs, labels = tiny_batch()
    out = model(inputs)
    assert out.decomposed is None
    (torch.nn.functional.cross_entropy(out.fused, labels) + out.probe_loss(labels)).backward()
    assert {"coeff_audio", "coeff_video"} <= set(balancer.after_backward(model, out, labels, 0))


def test_ogm_logs_the_official_ratio_of_both_modalities():
    # Official main.py: ratio_v = S_v / S_a and ratio_a = 1 / ratio_v; S_a = 1.5, S_v = 0.5.
    assert discrepancy_ratios(torch.tensor([1.5, 0.5], dtype=torch.float64)).tolist() == pytest.approx([3.0, 1 / 3])
    # Three modalities: S_m over the mean of the others, 2 / ((1 + 3) / 2) = 1.
    assert discrepancy_ratios(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).tolist() == pytest.approx([0.4, 1.0, 2.0])
    model = tiny_model()
    balancer = build_balancer("ogm", {"alpha": 0.8, "start_epoch": 0, "end_epoch": 9, "parameter_policy": "encoder_conv_weights",
                                      "coefficient": "official", "score_source": "decomposition"})
    balancer.setup(model)
    out, labels = backward(model)
    logs = balancer.after_backward(model, out, labels, epoch=0)
    assert logs["ogm_rho_audio"] == pytest.approx(1 / logs["ogm_rho_video"])
    assert min(logs["ogm_rho_audio"], logs["ogm_rho_video"]) < 1


def test_mslr_scales_gradients_only_inside_its_window():
    """AGM repository run/CREMAD_main.py: rates apply for modulation_starts <= epoch <= modulation_ends."""
    settings = {"initial_rates": {"audio": 0.5, "video": 2.0}, "memory": 2, "parameter_policy": "encoder_fusion_block", "start_epoch": 1, "end_epoch": 2}
    for epoch, scaled in [(0, False), (1, True), (2, True), (3, False)]:
        model = tiny_model()
        balancer = build_balancer("mslr", settings)
        balancer.setup(model)
        out, labels = backward(model)
        before = {name: p.grad.clone() for name, p in model.named_parameters()}
        logs = balancer.after_backward(model, out, labels, epoch)
        audio = next(name for name in before if name.startswith("encoders.audio."))
        expected = before[audio] * 0.5 if scaled else before[audio]
        assert torch.equal(dict(model.named_parameters())[audio].grad, expected), epoch
        assert (logs == {}) != scaled
