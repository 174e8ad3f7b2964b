"""Models: shapes, the Late-Linear decomposition, parameter groups by policy."""

import pytest
import torch
from torch import nn

from mmbalance.models.multimodal import build_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "late_linear", 6, heads_are_probes=True)


def inputs(batch=3):
    return {"audio": torch.randn(batch, 65, 33), "video": torch.randn(batch, 2, 3, 32, 32)}


def test_shapes(model):
    out = model(inputs())
    assert out.fused.shape == (3, 6)
    assert {m: z.shape for m, z in out.features.items()} == {"audio": (3, 32), "video": (3, 32)}
    assert set(out.unimodal) == set(out.decomposed) == {"audio", "video"}


def test_late_linear_decomposition_adds_up_to_the_fused_logits(model):
    out = model(inputs())
    assert torch.allclose(out.decomposed["audio"] + out.decomposed["video"], out.fused, atol=1e-6)
    # Each part carries half the bias: W_m z_m + b/2.
    audio_only = model.fusion.blocks["audio"](out.features["audio"]) + model.fusion.bias / 2
    assert torch.allclose(out.decomposed["audio"], audio_only)


def test_probe_heads_do_not_train_the_encoders(model):
    out = model(inputs())
    out.probe_loss(torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is None for p in model.encoders.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())


def test_a_unimodal_model_reports_its_fused_output_as_its_modality():
    model = build_model(["video"], {"name": "resnet18", "width": 4}, "late_linear", 6, heads_are_probes=True)
    out = model({"video": torch.randn(2, 2, 3, 32, 32)})
    assert list(out.unimodal) == ["video"] and out.unimodal["video"] is out.fused
    assert out.probe_loss(torch.tensor([0, 1])).item() == 0.0


def test_parameter_policies_on_resnet18(model):
    convs = model.parameter_groups("encoder_conv_weights")
    # ResNet18: stem + 16 block convs + 3 downsampling convs = 20 kernels per encoder.
    assert {m: len(p) for m, p in convs.items()} == {"audio": 20, "video": 20}
    assert all(p.dim() == 4 for ps in convs.values() for p in ps)

    encoder = model.parameter_groups("encoder")
    assert len(encoder["audio"]) == len(list(model.encoders["audio"].parameters()))
    bn_weight = model.encoders["audio"].trunk.stem[1].weight
    assert any(p is bn_weight for p in encoder["audio"]) and not any(p is bn_weight for p in convs["audio"])

    mlb = model.parameter_groups("encoder_head_fusion_block")
    ids = {m: {id(p) for p in ps} for m, ps in mlb.items()}
    assert id(model.heads["audio"].weight) in ids["audio"] and id(model.heads["audio"].bias) in ids["audio"]
    assert id(model.fusion.blocks["video"].weight) in ids["video"]
    assert id(model.fusion.bias) not in ids["audio"] | ids["video"]  # shared: nobody's
    assert not ids["audio"] & ids["video"]

    additive = model.parameter_groups("encoder_fusion_block")
    additive_ids = {id(p) for p in additive["video"]}
    assert id(model.fusion.blocks["video"].weight) in additive_ids
    assert not additive_ids & {id(p) for p in model.heads["video"].parameters()}  # the head is not in the additive term
    assert len(additive["video"]) == len(encoder["video"]) + 1


def test_unknown_policy_names_itself(model):
    with pytest.raises(ValueError, match="bogus"):
        model.parameter_groups("bogus")


def test_papers_width_gives_512_features():
    model = build_model(["audio"], {"name": "resnet18", "width": 64}, "late_linear", 6, heads_are_probes=True)
    assert model.encoders["audio"].feature_dim == 512
    assert isinstance(model.encoders["audio"].trunk.stem[0], nn.Conv2d)
