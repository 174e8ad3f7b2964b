"""Bottleneck fusions over the encoders' tokens (mmbalance.models.fusion.MBT and
IRFB, OLM's "OLM-T-MBT" and "OLM-T-IRFB"): shapes, where information may flow,
MBT's bottleneck average and IRFB's gating and pooling (Eqs. 2-4) on hand cases,
their parameters, what they offer, and one training step under Joint and OLM."""

import math

import pytest
import torch
from conftest import default_config

from mmbalance.balancers import build_balancer
from mmbalance.compatibility import incompatibility
from mmbalance.figures import FUSION_ORDER
from mmbalance.models.fusion import FUSIONS, IRFB, MBT, IRFBLayer, build_fusion, offers
from mmbalance.models.multimodal import build_model
from mmbalance.step import training_step

AV = {"audio": 8, "video": 8}


def tokens(batch=3, lengths=(4, 2), dim=8, modalities=("audio", "video"), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, n, dim, generator=generator) for m, n in zip(modalities, lengths)}


@pytest.mark.parametrize("cls", [MBT, IRFB])
@pytest.mark.parametrize("modalities", [("audio", "video"), ("a", "b", "c")])
@pytest.mark.parametrize("layers, bottleneck", [(1, 1), (2, 4)])
def test_shapes(cls, modalities, layers, bottleneck):
    fusion = cls({m: 8 for m in modalities}, 5, layers=layers, bottleneck_tokens=bottleneck).eval()
    inputs = tokens(lengths=(4, 2, 3)[: len(modalities)], modalities=modalities)
    assert fusion(inputs).shape == (3, 5)
    streams, z_b = fusion.streams(inputs)
    assert z_b.shape == (3, bottleneck, 8)
    assert {m: s.shape for m, s in streams.items()} == {m: (3, t.shape[1] + 1, 8) for m, t in inputs.items()}  # CLS + tokens


def test_registered_with_the_defaults():
    for name, cls in [("mbt", MBT), ("irfb", IRFB)]:
        fusion = build_fusion(name, {"audio": 128, "video": 128}, 6)
        assert type(fusion) is cls and fusion.needs_tokens and not fusion.decomposable
        assert fusion.bottleneck.shape == (1, 4, 128) and fusion.heads == 2 and len(fusion.layers["audio"]) == 2
        assert name in FUSION_ORDER


# --- MBT: modality A reaches modality B only through the bottleneck ----------------------------------


def test_mbt_one_layer_is_the_bottleneck_average_by_hand():
    """L = 1: [z_m^1; zhat_m] = Transformer_m([CLS_m; x_m; z_fsn]); z_fsn^1 = (zhat_audio + zhat_video) / 2;
    f = W (CLS_audio^1 + CLS_video^1) / 2 + c."""
    torch.manual_seed(0)
    fusion = MBT(AV, 5, layers=1, bottleneck_tokens=2).eval()
    x = tokens()
    z_fsn = fusion.bottleneck.expand(3, -1, -1)
    by_hand = {}
    for m in ("audio", "video"):
        sequence = torch.cat([fusion.cls[m].expand(3, -1, -1), x[m], z_fsn], dim=1)
        by_hand[m] = fusion.layers[m][0](sequence)  # modality m's layer alone, on its tokens and the bottleneck
    streams, bottleneck = fusion.streams(x)
    assert torch.allclose(bottleneck, (by_hand["audio"][:, -2:] + by_hand["video"][:, -2:]) / 2, atol=1e-6)
    for m, n in (("audio", 4), ("video", 2)):
        assert torch.allclose(streams[m], by_hand[m][:, : n + 1], atol=1e-6)
    cls_mean = (by_hand["audio"][:, 0] + by_hand["video"][:, 0]) / 2
    assert torch.allclose(fusion(x), fusion.out(cls_mean), atol=1e-6)
    # The same as MBT's form: one shared linear layer on each CLS token, logits averaged.
    assert torch.allclose(fusion(x), (fusion.out(by_hand["audio"][:, 0]) + fusion.out(by_hand["video"][:, 0])) / 2, atol=1e-6)


def test_mbt_second_layer_reads_the_other_modality_only_through_the_averaged_bottleneck():
    torch.manual_seed(1)
    fusion = MBT(AV, 5, layers=2, bottleneck_tokens=3).eval()
    x = tokens()
    one_layer = MBT(AV, 5, layers=1, bottleneck_tokens=3).eval()
    one_layer.load_state_dict({k: v for k, v in fusion.state_dict().items() if ".1." not in k})  # layer 0 only
    first_streams, first_bottleneck = one_layer.streams(x)
    second = fusion.layers["video"][1](torch.cat([first_streams["video"], first_bottleneck], dim=1))
    streams, _ = fusion.streams(x)
    assert torch.allclose(streams["video"], second[:, :3], atol=1e-6)  # video's own tokens + z_fsn^1: nothing else


def video_cls_gradient_wrt_audio(fusion: MBT) -> torch.Tensor:
    x = tokens()
    x["audio"].requires_grad_(True)
    streams, _ = fusion.streams(x)
    # A weighted sum: a plain sum of a LayerNorm's output (unit weights) is constant.
    (streams["video"][:, 0] * torch.arange(1.0, 9.0)).sum().backward()
    return torch.zeros(1) if x["audio"].grad is None else x["audio"].grad


@pytest.mark.parametrize("layers, bottleneck, reaches", [(1, 4, False), (2, 0, False), (2, 4, True)])
def test_mbt_audio_reaches_video_only_with_bottleneck_tokens_and_a_later_layer(layers, bottleneck, reaches):
    torch.manual_seed(2)
    fusion = MBT(AV, 5, layers=layers, bottleneck_tokens=bottleneck).eval()
    assert (video_cls_gradient_wrt_audio(fusion).abs().sum() > 0) == reaches


def test_mbt_without_bottleneck_tokens_is_late_fusion_of_separate_transformers():
    torch.manual_seed(3)
    fusion = MBT(AV, 5, layers=2, bottleneck_tokens=0).eval()
    x = tokens()
    cls = {}
    for m in ("audio", "video"):
        z = torch.cat([fusion.cls[m].expand(3, -1, -1), x[m]], dim=1)
        for layer in fusion.layers[m]:
            z = layer(z)
        cls[m] = z[:, 0]
    assert torch.allclose(fusion(x), fusion.out((cls["audio"] + cls["video"]) / 2), atol=1e-6)


# --- IRFB: Eqs. 2-4 by hand -------------------------------------------------------------------------


def layer_norm(values: list[float], eps: float = 1e-5) -> list[float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return [(v - mean) / math.sqrt(var + eps) for v in values]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def hand_layer() -> IRFBLayer:
    """d = 4, one head, T_b = 1. The cross-attention's output projection is zero, so
    Eq. 2 gives z_{m->b} = LN(z_b). Gates (Eq. 3, input [CLS_audio; CLS_video]):
    g_audio = sigmoid(CLS_audio + [0, 0, 0, -1]), g_video = sigmoid(2 CLS_video).
    Eq. 4: W = I, w = 0, v = e_1, so token i scores tanh(z_g,i[0])."""
    layer = IRFBLayer(["audio", "video"], 4, 1, dropout=0.0).eval()
    with torch.no_grad():
        for m in ("audio", "video"):
            layer.attend[m].out_proj.weight.zero_()
            layer.attend[m].out_proj.bias.zero_()
            layer.gate[m].weight.zero_()
        layer.gate["audio"].weight[:, :4] = torch.eye(4)
        layer.gate["audio"].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0]))
        layer.gate["video"].weight[:, 4:] = 2 * torch.eye(4)
        layer.gate["video"].bias.zero_()
        layer.pool.weight.copy_(torch.eye(4))
        layer.pool.bias.zero_()
        layer.score.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    return layer


Z_B = [1.0, 2.0, 3.0, 6.0]
CLS_AUDIO, CLS_VIDEO = [0.0, 1.0, -1.0, 2.0], [0.5, -0.5, 0.0, 1.0]
STREAMS = {  # CLS first, then two (audio) or one (video) other tokens, which the hand case never reads
    "audio": torch.tensor([[CLS_AUDIO, [9.0, 9.0, 9.0, 9.0], [-3.0, 1.0, 0.0, 2.0]]]),
    "video": torch.tensor([[CLS_VIDEO, [4.0, -4.0, 1.0, 0.0]]]),
}


def test_irfb_gates_by_hand():
    gates = hand_layer().gates(STREAMS)
    expected_audio = [sigmoid(c + b) for c, b in zip(CLS_AUDIO, [0.0, 0.0, 0.0, -1.0])]  # [1/2, s(1), s(-1), s(1)]
    expected_video = [sigmoid(2 * c) for c in CLS_VIDEO]  # [s(1), s(-1), 1/2, s(2)]
    assert gates["audio"][0].tolist() == pytest.approx(expected_audio, abs=1e-6)
    assert gates["video"][0].tolist() == pytest.approx(expected_video, abs=1e-6)
    assert expected_audio[0] == 0.5 and expected_video[2] == 0.5


def hand_reads() -> dict[str, list[float]]:
    """Eq. 2 (zero attention output): LN(z_b); Eq. 3: LN(r + g * r) = LN((1 + g) * r)."""
    read = layer_norm(Z_B)
    gates = {"audio": [sigmoid(c + b) for c, b in zip(CLS_AUDIO, [0.0, 0.0, 0.0, -1.0])],
             "video": [sigmoid(2 * c) for c in CLS_VIDEO]}
    return {m: layer_norm([(1 + g) * r for g, r in zip(gates[m], read)]) for m in gates}


def test_irfb_gated_reads_by_hand():
    reads = hand_layer().reads(STREAMS, torch.tensor([[Z_B]]))
    for m, expected in hand_reads().items():
        assert reads[m][0, 0].tolist() == pytest.approx(expected, abs=1e-5)


def test_irfb_bottleneck_update_by_hand():
    """Eq. 4: z_b' = z_b + sum_i alpha_i z_g,i, alpha = softmax_i(tanh(z_g,i[0])) over the 2 tokens of z_g."""
    reads = hand_reads()
    scores = [math.tanh(reads[m][0]) for m in ("audio", "video")]
    alpha = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
    expected = [z + alpha[0] * a + alpha[1] * v for z, a, v in zip(Z_B, reads["audio"], reads["video"])]
    layer = hand_layer()
    updated = layer(STREAMS, torch.tensor([[Z_B]]))
    assert updated[0, 0].tolist() == pytest.approx(expected, abs=1e-5)
    gathered = torch.cat([torch.tensor([[r]]) for r in reads.values()], dim=1)
    assert layer.pooling_weights(gathered)[0].tolist() == pytest.approx(alpha, abs=1e-6)


def test_irfb_pooled_vector_is_added_to_every_bottleneck_token():
    torch.manual_seed(4)
    layer = IRFBLayer(["audio", "video"], 8, 2, dropout=0.0).eval()
    streams, z_b = tokens(batch=2), torch.randn(2, 3, 8)
    change = layer(streams, z_b) - z_b
    assert torch.allclose(change, change[:, :1].expand_as(change), atol=1e-6)


def test_irfb_modality_streams_never_read_the_bottleneck_or_each_other():
    """The decoupling: each modality's stream is its own transformer alone; only z_b mixes them."""
    torch.manual_seed(5)
    fusion = IRFB(AV, 5, layers=2, bottleneck_tokens=3).eval()
    x = tokens()
    x["audio"].requires_grad_(True)
    streams, _ = fusion.streams(x)
    streams["video"].sum().backward()
    assert x["audio"].grad is None and fusion.bottleneck.grad is None
    z = torch.cat([fusion.cls["video"].expand(3, -1, -1), x["video"]], dim=1)
    for layer in fusion.layers["video"]:
        z = layer(z)
    assert torch.allclose(streams["video"], z, atol=1e-6)
    fusion.zero_grad()
    fusion(x).sum().backward()  # the fused logits read both modalities, through z_b
    assert x["audio"].grad.abs().sum() > 0 and fusion.bottleneck.grad.abs().sum() > 0


def test_irfb_fused_logits_come_from_the_bottleneck_alone():
    torch.manual_seed(6)
    fusion = IRFB(AV, 5, layers=1, bottleneck_tokens=2).eval()
    x = tokens()
    _, z_b = fusion.streams(x)
    assert torch.allclose(fusion(x), fusion.out(fusion.norm(z_b).mean(dim=1)), atol=1e-6)


def test_irfb_needs_a_bottleneck_token_and_both_need_equal_sizes():
    with pytest.raises(ValueError, match="bottleneck token"):
        IRFB(AV, 5, bottleneck_tokens=0)
    for cls in (MBT, IRFB):
        with pytest.raises(ValueError, match="equal feature sizes"):
            cls({"audio": 8, "video": 4}, 5)


# --- what they offer the balancers ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MBT, IRFB])
def test_modality_parameters_are_disjoint_and_leave_the_shared_parts_out(cls):
    fusion = cls(AV, 5)
    own = {m: {id(p) for p in fusion.modality_parameters(m)} for m in ("audio", "video")}
    assert own["audio"] and own["video"] and not own["audio"] & own["video"]
    shared = {id(p) for p in [fusion.bottleneck, *fusion.out.parameters()]}
    assert not shared & (own["audio"] | own["video"])
    assert {id(p) for p in fusion.layers["audio"].parameters()} <= own["audio"]
    assert id(fusion.cls["video"]) in own["video"]
    if cls is IRFB:  # the audio -> bottleneck path of Eqs. 2-3, not the pooling of Eq. 4
        layer = fusion.fusion_layers[0]
        assert {id(p) for p in [*layer.attend["audio"].parameters(), *layer.gate["audio"].parameters()]} <= own["audio"]
        assert not {id(p) for p in [*layer.pool.parameters(), *layer.score.parameters()]} & own["audio"]


@pytest.mark.parametrize("name", ["mbt", "irfb"])
def test_offers_and_compatibility(name):
    assert name in FUSIONS and offers(name) == set()
    assert incompatibility("olm", {}, name) is None and incompatibility("joint", {}, name) is None
    assert incompatibility("ogm", {"score_source": "decomposition"}, name) is not None
    assert incompatibility("ogm", {"score_source": "heads"}, name) is None
    assert incompatibility("mmcosine", {}, name) is not None


# --- one training step ------------------------------------------------------------------------------

METHOD_SETTINGS = default_config()["methods"]
SHAPES = {"audio": (33, 17), "video": (2, 3, 32, 32)}  # tiny ResNet18 inputs (as tests/test_fusions.py)


class _Context:
    def __init__(self, model, batch):
        self.epoch, self.model, self.metrics, self._batch = 0, model, {}, batch

    def batches(self, split, fraction):
        return iter([self._batch])


@pytest.mark.parametrize("method", ["joint", "olm"])
@pytest.mark.parametrize("fusion", ["mbt", "irfb"])
def test_one_training_step(method, fusion):
    torch.manual_seed(0)
    balancer = build_balancer(method, METHOD_SETTINGS[method])
    model = build_model(["audio", "video"], {"name": "resnet18", "width": 4}, fusion, 3, not balancer.trains_unimodal_heads)
    balancer.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = {m: torch.randn(4, *shape) for m, shape in SHAPES.items()}
    labels = torch.tensor([0, 1, 2, 0])
    balancer.on_epoch_start(_Context(model, (inputs, labels)))
    before = {name: p.detach().clone() for name, p in model.fusion.named_parameters()}
    result = training_step(model, balancer, optimizer, inputs, labels, 0)
    assert math.isfinite(result.loss)
    assert result.out.fused.shape == (4, 3) and set(result.out.unimodal) == {"audio", "video"}
    after = dict(model.fusion.named_parameters())
    assert not torch.equal(before["bottleneck"], after["bottleneck"]) and not torch.equal(before["out.weight"], after["out.weight"])
    if method == "olm":  # OLM's three classifiers: the two heads and this fusion's output, each with its coefficient
        assert set(balancer.names) == {"audio", "video", "fused"} and "olm_w_fused" in result.logs
