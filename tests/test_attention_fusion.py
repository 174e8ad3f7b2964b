"""Attention fusion (mmbalance.models.fusion.Attention, OLM Table 1 "Attention"):
shapes, the scores, a hand-worked case, its parameters and what it offers."""

import math

import pytest
import torch

from mmbalance.compatibility import incompatibility
from mmbalance.models.fusion import FUSIONS, Attention, build_fusion, offers


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("modalities", [("audio", "video"), ("a", "b", "c")])
def test_shapes(modalities, normalize):
    fusion = Attention({m: 8 for m in modalities}, 5, normalize=normalize)
    features = {m: torch.randn(4, 8) for m in modalities}
    assert fusion(features).shape == (4, 5)
    assert fusion.scores(features).shape == (4, len(modalities))


def test_softmax_scores_are_weights_that_sum_to_one():
    torch.manual_seed(0)
    fusion = Attention({"a": 8, "b": 8, "c": 8}, 5, normalize=True)
    scores = fusion.scores({m: 3 * torch.randn(6, 8) for m in ("a", "b", "c")})
    assert torch.allclose(scores.sum(dim=1), torch.ones(6)) and (scores > 0).all()


def test_the_registered_fusion_keeps_the_reference_raw_scores():
    torch.manual_seed(0)
    fusion = build_fusion("attention", {"audio": 8, "video": 8}, 5)
    assert isinstance(fusion, Attention) and not fusion.normalize
    scores = fusion.scores({"audio": torch.randn(6, 8), "video": torch.randn(6, 8)})
    assert not torch.allclose(scores.sum(dim=1), torch.ones(6))  # no softmax, as in the OLM code


def hand_fusion(normalize: bool) -> Attention:
    """d = 2, C = 2: A_audio = I, A_video = 0, a = 0 (so h = z_audio); B = I, b = 0
    (so s = z_audio); W = I, c = [0.5, 0]."""
    fusion = Attention({"audio": 2, "video": 2}, 2, normalize=normalize)
    with torch.no_grad():
        fusion.score_blocks["audio"].weight.copy_(torch.eye(2))
        fusion.score_blocks["video"].weight.zero_()
        fusion.score_bias.zero_()
        fusion.score.weight.copy_(torch.eye(2))
        fusion.score.bias.zero_()
        fusion.out.weight.copy_(torch.eye(2))
        fusion.out.bias.copy_(torch.tensor([0.5, 0.0]))
    return fusion


FEATURES = {"audio": torch.tensor([[1.0, 2.0]]), "video": torch.tensor([[3.0, -1.0]])}


def test_hand_case_reference_scores():
    # s = z_audio = [1, 2]; z = 1 * [1, 2] + 2 * [3, -1] = [7, 0]; f = z + [0.5, 0].
    fusion = hand_fusion(normalize=False)
    assert fusion.scores(FEATURES).tolist() == [[1.0, 2.0]]
    assert fusion(FEATURES).tolist() == [[7.5, 0.0]]


def test_hand_case_softmax_scores():
    # s = softmax([1, 2]) = [1, e] / (1 + e); z = s_a [1, 2] + s_v [3, -1].
    s_a, s_v = 1 / (1 + math.e), math.e / (1 + math.e)
    assert (s_a, s_v) == pytest.approx((0.268941, 0.731059), abs=1e-6)
    fusion = hand_fusion(normalize=True)
    assert fusion.scores(FEATURES)[0].tolist() == pytest.approx([s_a, s_v], abs=1e-6)
    assert fusion(FEATURES)[0].tolist() == pytest.approx([s_a + 3 * s_v + 0.5, 2 * s_a - s_v], abs=1e-6)


def test_blocks_are_one_linear_over_the_concatenation_with_its_init():
    torch.manual_seed(0)
    fusion = Attention({"audio": 16, "video": 16}, 3)
    bound = 1 / math.sqrt(32)  # nn.Linear(32, 16)'s init
    blocks = [fusion.score_blocks[m].weight for m in ("audio", "video")]
    assert all(p.abs().max() <= bound for p in [*blocks, fusion.score_bias])
    concat = torch.nn.Linear(32, 16)
    with torch.no_grad():
        concat.weight.copy_(torch.cat(blocks, dim=1))
        concat.bias.copy_(fusion.score_bias)
    features = {"audio": torch.randn(4, 16), "video": torch.randn(4, 16)}
    expected = fusion.score(concat(torch.cat([features["audio"], features["video"]], dim=1)))
    assert torch.allclose(fusion.scores(features), expected, atol=1e-6)


def test_modality_parameters_and_offers():
    fusion = Attention({"audio": 8, "video": 8}, 5)
    assert fusion.modality_parameters("audio") == [fusion.score_blocks["audio"].weight]
    assert not fusion.decomposable and offers("attention") == set()
    assert "attention" in FUSIONS
    assert incompatibility("ogm", {"score_source": "decomposition"}, "attention") is not None
    assert incompatibility("ogm", {"score_source": "heads"}, "attention") is None


def test_needs_equal_feature_sizes():
    with pytest.raises(ValueError, match="equal feature sizes"):
        Attention({"audio": 8, "video": 4}, 5)
