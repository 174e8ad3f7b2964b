"""Fusions: shapes for M = 2 and 3, decompositions, and the method x fusion
compatibility matrix (every allowed pair trains one step; the others are refused)."""

import math

import pytest
import torch

from mmbalance.balancers import METHODS, build_balancer
from mmbalance.compatibility import incompatibility, matrix_markdown
from mmbalance.models.fusion import FUSIONS, build_fusion, offers
from mmbalance.models.multimodal import build_model
from mmbalance.step import training_step

from conftest import TINY_CONFORMER, default_config


@pytest.mark.parametrize("name", sorted(FUSIONS))
@pytest.mark.parametrize("modalities", [("audio", "video"), ("a", "b", "c")])
def test_fusion_output_shapes(name, modalities):
    fusion = build_fusion(name, {m: 16 for m in modalities}, 6)
    features = {m: torch.randn(5, 16) for m in modalities}
    if getattr(fusion, "needs_tokens", False):  # token sequences of different lengths per modality
        assert fusion({m: torch.randn(5, 3 + i, 16) for i, m in enumerate(modalities)}).shape == (5, 6)
        return
    assert fusion(features).shape == (5, 6)
    if fusion.decomposable:
        parts = fusion.decompose(features)
        assert set(parts) == set(modalities) and all(p.shape == (5, 6) for p in parts.values())


@pytest.mark.parametrize("name", ["late_linear", "sum"])
def test_linear_decompositions_add_up_to_the_fused_logits(name):
    torch.manual_seed(0)
    fusion = build_fusion(name, {"audio": 16, "video": 16}, 6)
    torch.nn.init.normal_(fusion.blocks["audio"].weight)
    features = {"audio": torch.randn(4, 16), "video": torch.randn(4, 16)}
    parts = fusion.decompose(features)
    assert torch.allclose(parts["audio"] + parts["video"], fusion(features), atol=1e-5)
    # Sum: each part carries its own bias b_m.
    if name == "sum":
        assert torch.allclose(parts["audio"], fusion.blocks["audio"](features["audio"]))


def test_offers_follow_the_fusion_classes():
    assert {name for name in FUSIONS if "decomposition" in offers(name)} == {"late_linear", "sum"}


METHOD_SETTINGS = default_config()["methods"]
# One step is all this checks: Gradient-Blending's estimate then trains each task's copy for 1 epoch, not 10.
METHOD_SETTINGS["gradient_blending"] = METHOD_SETTINGS["gradient_blending"] | {"super_epoch": 1}
PAIRS = [(m, f) for m in sorted(METHODS) for f in sorted(FUSIONS)]


# Each backbone at toy sizes, with inputs of the shapes its feature store holds.
BACKBONES = {
    "resnet18": ({"name": "resnet18", "width": 4}, {"audio": (33, 17), "video": (2, 3, 32, 32)}),
    "conformer": ({"name": "conformer"} | TINY_CONFORMER, {"audio": (9, 16), "video": (2, 1408)}),
}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("method, fusion", PAIRS)
def test_every_pair_trains_a_step_or_is_refused_by_name(method, fusion, backbone, tmp_path):
    torch.manual_seed(0)
    balancer = build_balancer(method, METHOD_SETTINGS[method])
    modalities = list(balancer.modalities or ("audio", "video"))
    settings, shapes = BACKBONES[backbone]
    model = build_model(modalities, settings, fusion, 3, not balancer.trains_unimodal_heads)
    if method == "umt":  # its teachers: each modality's unimodal model, as model.pt (train.write_outputs' format)
        balancer.settings = balancer.settings | {"teacher_models": unimodal_teachers(modalities, settings, tmp_path)}
    reason = incompatibility(method, METHOD_SETTINGS[method], fusion)
    if reason is not None:
        with pytest.raises(ValueError, match=type(model.fusion).__name__):
            balancer.setup(model)
        assert method in reason and fusion in reason
        return
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs = {m: torch.randn(4, *shape) for m, shape in shapes.items()}
    labels = torch.tensor([0, 1, 2, 0])
    balancer.on_epoch_start(_Context(model, inputs, labels))
    result = training_step(model, balancer, optimizer, {m: inputs[m] for m in modalities}, labels, 0)
    assert math.isfinite(result.loss)


def unimodal_teachers(modalities, backbone, folder) -> dict[str, str]:
    paths = {m: str(folder / f"{m}_only.pt") for m in modalities}
    for m in modalities:
        torch.save(build_model([m], backbone, "late_linear", 3, True).state_dict(), paths[m])
    return paths


class _Context:
    def __init__(self, model, inputs, labels):
        self.epoch, self.model, self.metrics = 0, model, {}
        self._batch = ({m: inputs[m] for m in model.modalities}, labels)

    def batches(self, split, fraction):
        return iter([self._batch])


def test_ogm_with_head_scores_runs_on_any_fusion():
    settings = METHOD_SETTINGS["ogm"] | {"score_source": "heads"}
    assert all(incompatibility("ogm", settings, f) is None for f in FUSIONS)
    assert "score_source: heads" in incompatibility("ogm", METHOD_SETTINGS["ogm"], "film")


def test_matrix_for_the_docs():
    table = matrix_markdown(["joint", "ogm", "mmcosine"], METHOD_SETTINGS)
    assert "| ogm | yes | yes | no | no | no | no |" in table
    assert "| joint | yes | yes | yes | yes | yes | yes |" in table


def test_readme_shows_the_current_matrix():
    from conftest import ROOT, load_yaml

    config = default_config(load_yaml(ROOT / "config" / "config.yaml"))
    assert matrix_markdown(config["grid"]["methods"], config["methods"]) in (ROOT / "README.md").read_text()


def test_encoder_tokens_pool_to_the_encoder_features():
    """Transformer fusion reads tokens; the heads read their mean, which must be
    exactly what the encoder gives every other fusion."""
    model = build_model(["audio", "video"], {"name": "resnet18", "width": 4}, "transformer", 6, True)
    audio, video = torch.randn(2, 65, 33), torch.randn(2, 2, 3, 32, 32)
    assert model.encoders["audio"].tokens(audio).shape == (2, 3 * 2, 32)  # 65x33 -> 3x2 positions
    assert model.encoders["video"].tokens(video).shape == (2, 2 * 1 * 1, 32)  # 2 frames of 1x1
    assert torch.allclose(model.encoders["video"].tokens(video).mean(1), model.encoders["video"](video), atol=1e-6)


def test_conformer_tokens_pool_to_the_encoder_features():
    model = build_model(["audio", "video"], BACKBONES["conformer"][0], "transformer", 6, True).eval()
    audio, video = torch.randn(2, 9, 16), torch.randn(2, 3, 1408)
    assert model.encoders["audio"].tokens(audio).shape == (2, 9, 16)
    assert model.encoders["video"].tokens(video).shape == (2, 3, 16)
    assert torch.allclose(model.encoders["audio"].tokens(audio).mean(1), model.encoders["audio"](audio), atol=1e-6)


@pytest.mark.parametrize("backbone", ["resnet18", "conformer"])
def test_benchmark_step_runs_at_paper_sizes(backbone):
    from mmbalance.bench import time_training_step

    result = time_training_step(backbone, "late_linear", batch_size=1, device="cpu", steps=1, warmup=0)
    assert result["ms_per_step"] > 0 and result["samples_per_s"] > 0
    assert 10 < result["parameters_m"] < 250  # ResNet18 x2 ~22 M; 12-layer wav2vec2-large + two Conformers ~200 M
