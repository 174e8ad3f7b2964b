"""Modality-Drop (OGM-GE Table 2; AVSlowFast's DropPathway): the drop mask, what the fusion sees, gradients, determinism."""

import pytest
import torch
import torch.nn.functional as F

from mmbalance.balancers import build_balancer
from mmbalance.balancers.modality_drop import ModalityDrop, drop, keep_mask
from mmbalance.models.fusion import FUSIONS
from mmbalance.models.multimodal import build_model
from mmbalance.step import training_step

SETTINGS = {"modality": "audio", "probability": 0.5, "unit": "sample", "level": "features"}


def tiny(fusion="late_linear"):
    torch.manual_seed(0)
    model = build_model(["audio", "video"], {"name": "resnet18", "width": 4}, fusion, 3, heads_are_probes=True)
    inputs = {"audio": torch.randn(6, 33, 17), "video": torch.randn(6, 2, 3, 32, 32)}
    return model, inputs, torch.tensor([0, 1, 2, 0, 1, 2])


def test_drop_zeroes_the_rows_of_one_modality_only():
    tensors = {"audio": torch.tensor([[1.0, 2], [3, 4], [5, 6]]), "video": torch.tensor([[7.0], [8], [9]])}
    dropped = drop(tensors, "audio", torch.tensor([1.0, 0, 1]))
    assert dropped["audio"].tolist() == [[1, 2], [0, 0], [5, 6]]
    assert dropped["video"] is tensors["video"]
    tokens = torch.ones(2, 3, 4)  # (B, T, d): the whole sequence of a dropped sample
    assert drop({"audio": tokens}, "audio", torch.tensor([0.0, 1]))["audio"].sum(dim=(1, 2)).tolist() == [0, 12]


def test_mask_statistics_per_sample_and_per_batch():
    torch.manual_seed(0)
    keep = keep_mask(200_000, 0.3, "sample")
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert keep.mean().item() == pytest.approx(0.7, abs=0.005)
    assert keep_mask(10, 0.0, "sample").tolist() == [1.0] * 10 and keep_mask(10, 1.0, "sample").tolist() == [0.0] * 10
    batches = torch.stack([keep_mask(4, 0.3, "batch") for _ in range(20_000)])
    assert (batches == batches[:, :1]).all()  # one draw for the whole batch
    assert batches[:, 0].mean().item() == pytest.approx(0.7, abs=0.015)


def test_mask_follows_the_global_torch_generator():
    """The run seeds torch and the checkpoint saves its state: a resumed run drops the same samples."""
    torch.manual_seed(3)
    first = keep_mask(64, 0.5, "sample")
    state = torch.get_rng_state()
    after = keep_mask(64, 0.5, "sample")
    torch.manual_seed(3)
    assert torch.equal(keep_mask(64, 0.5, "sample"), first)
    torch.set_rng_state(state)
    assert torch.equal(keep_mask(64, 0.5, "sample"), after)
    assert not torch.equal(first, after)


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_the_fusion_sees_zeros_for_dropped_samples_and_the_heads_the_real_features(fusion):
    model, inputs, labels = tiny(fusion)
    balancer = ModalityDrop(SETTINGS)
    balancer.setup(model)
    seen = []
    model.fusion.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    torch.manual_seed(5)
    keep = keep_mask(6, 0.5, "sample")
    torch.manual_seed(5)
    out = balancer.forward(model.train(), inputs, labels, 0)
    assert 0 < keep.sum() < 6  # both cases present with this seed
    fused_input = seen[0]
    audio = fused_input["audio"].flatten(1)
    assert (audio[keep == 0] == 0).all() and (audio[keep == 1].abs().sum(1) > 0).all()
    assert (fused_input["video"].flatten(1).abs().sum(1) > 0).all()
    assert (out.features["audio"].abs().sum(1) > 0).all()  # what the probes read: never dropped
    assert not model.fusion._forward_pre_hooks  # the drop lasts one forward pass


def test_fused_logits_of_dropped_samples_are_the_video_part_alone():
    model, inputs, labels = tiny()
    balancer = ModalityDrop(SETTINGS | {"probability": 1.0})
    balancer.setup(model)
    out = balancer.forward(model.train(), inputs, labels, 0)
    expected = model.fusion.blocks["video"](out.features["video"]) + model.fusion.bias  # W_a 0 + W_v z_v + b
    assert torch.allclose(out.fused, expected, atol=1e-6)


def test_a_dropped_modality_gets_no_gradient_through_its_features():
    model, inputs, labels = tiny()
    balancer = build_balancer("modality_drop", SETTINGS | {"probability": 1.0})
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    training_step(model.train(), balancer, optimizer, inputs, labels, 0)
    assert all(p.grad is None or not p.grad.any() for p in model.encoders["audio"].parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.encoders["video"].parameters())


def test_zeroed_inputs_are_not_zeroed_features():
    """Why features are zeroed by default: in a training batch (BatchNorm on batch statistics)
    an encoder maps a zero input to a non-zero feature, which still reaches the fusion."""
    model, inputs, labels = tiny()
    balancer = ModalityDrop(SETTINGS | {"level": "inputs"})
    balancer.setup(model)
    seen = []
    model.encoders["audio"].register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
    torch.manual_seed(5)
    keep = keep_mask(6, 0.5, "sample")
    torch.manual_seed(5)
    balancer.forward(model.train(), inputs, labels, 0)
    audio_input, audio_features = seen[0]
    assert not audio_input[keep == 0].any() and audio_input[keep == 1].any()
    assert (audio_features[keep == 0].abs().sum(1) > 0).all()


def test_evaluation_is_untouched_and_draws_nothing():
    model, inputs, labels = tiny()
    balancer = ModalityDrop(SETTINGS | {"probability": 1.0})
    balancer.setup(model)
    model.eval()
    state = torch.get_rng_state()
    assert torch.equal(balancer.forward(model, inputs, labels, 0).fused, model(inputs).fused)
    assert torch.equal(torch.get_rng_state(), state)


def test_loss_is_plain_cross_entropy_and_logs_the_dropped_share():
    model, inputs, labels = tiny()
    balancer = ModalityDrop(SETTINGS | {"modality": "video", "unit": "batch", "probability": 1.0})
    balancer.setup(model)
    out = balancer.forward(model.train(), inputs, labels, 0)
    loss, logs = balancer.loss(out, labels, 0)
    assert loss.item() == pytest.approx(F.cross_entropy(out.fused, labels).item())
    assert logs == {"dropped_video": 1.0}
    assert balancer.state_dict() == {}  # nothing to resume beyond the RNG state the checkpoint saves


def test_setup_refuses_a_modality_the_model_lacks():
    model, _, _ = tiny()
    with pytest.raises(ValueError, match="'depth'"):
        ModalityDrop(SETTINGS | {"modality": "depth"}).setup(model)
