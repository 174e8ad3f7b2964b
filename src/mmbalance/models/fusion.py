"""Fusions: pooled per-modality features -> fused logits.

Each fusion says what it offers the balancers (see `mmbalance.compatibility`): fused logits
always; `decompose()` per-modality logits only where the fusion is linear; and
`modality_parameters(m)`, the fusion parameters that belong to modality m alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmbalance.models.mmtm import MMTMFusion


class LateLinear(nn.Module):
    """Late-Linear (concat) fusion: f = W [z_1; ...; z_M] + b.

    Written as one bias-free block W_m per modality plus a shared bias, which is
    the same function as one Linear over the concatenation (MLB splits it the
    same way) and lets a balancer scale modality m's block alone.
    """

    decomposable = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        self.blocks = nn.ModuleDict({m: nn.Linear(d, num_classes, bias=False) for m, d in feature_dims.items()})
        self.bias = nn.Parameter(torch.zeros(num_classes))
        # Xavier-normal of the whole concat layer (the reference init), block by block.
        std = math.sqrt(2.0 / (sum(feature_dims.values()) + num_classes))
        for block in self.blocks.values():
            nn.init.normal_(block.weight, 0.0, std)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.blocks[m](z) for m, z in features.items()) + self.bias

    def decompose(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W_m z_m + b/M: the unimodal logits OGM-GE reads off a concat layer."""
        share = self.bias / len(features)
        return {m: self.blocks[m](z) + share for m, z in features.items()}

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.blocks[modality].parameters())


class Sum(nn.Module):
    """Sum fusion: f = sum_m (W_m z_m + b_m), one classifier per modality."""

    decomposable = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        self.blocks = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def decompose(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W_m z_m + b_m (the training-time form of the official code)."""
        return {m: self.blocks[m](z) for m, z in features.items()}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.decompose(features).values())

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.blocks[modality].parameters())


class MidMLP(nn.Module):
    """Mid-MLP (MLB `cls_type: nonlinear`): h = sum_m W_m z_m + b in R^hidden, then
    Lin(hidden->hidden), ReLU, dropout and Lin(hidden->C) on ReLU(h). The W_m
    blocks are modality m's; the rest is shared. Not decomposable."""

    decomposable = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleDict({m: nn.Linear(d, hidden, bias=False) for m, d in feature_dims.items()})
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Sequential(
            nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(sum(self.blocks[m](z) for m, z in features.items()) + self.bias)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.blocks[modality].parameters())


class FiLM(nn.Module):
    """FiLM (MLB `x_film`): the first modality conditions the others,
    (gamma_m, beta_m) = split(Lin(z_0)), f = Lin(sum_{m>0} gamma_m * z_m + beta_m).
    For audio-video this is the reference: audio conditions video. The FiLM
    layers are shared fusion parameters (MLB does not scale them)."""

    decomposable = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        first, *others = feature_dims
        self.conditioning, self.targets = first, others
        dim = feature_dims[first]
        if any(feature_dims[m] != dim for m in others):
            raise ValueError(f"FiLM needs equal feature sizes, got {feature_dims}")
        self.film = nn.ModuleDict({m: nn.Linear(dim, 2 * dim) for m in others})
        self.out = nn.Linear(dim, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        condition = features[self.conditioning]
        mixed = 0
        for m in self.targets:
            gamma, beta = self.film[m](condition).chunk(2, dim=1)
            mixed = mixed + gamma * features[m] + beta
        return self.out(mixed)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return []


class Gated(nn.Module):
    """Gated (MLB `x_gate`): g = sigmoid(Lin_0(z_0)) gates each other modality's
    projection, f = Lin(sum_{m>0} g * Lin_m(z_m)). Lin_0 and Lin_m are modality
    specific (MLB scales them with their modality); the output layer is shared.

    This is also OGM-GE's "Baseline" fusion (Peng et al., CVPR 2022, Table 1: "a
    vanilla fusion method that uses activation function to mark out the related
    feature component of one modality compared with another"). The official code
    (GeWu-Lab/OGM-GE_CVPR2022 at 343dc1d, `models/fusion_modules.py`) offers four
    fusions, sum, concat, film and gated, and Table 1 has four fused rows, Summation,
    Concatenation, FiLM and Baseline; the one left, `GatedFusion` with
    `x_gate=True` (the only setting `models/basic_model.py` builds; the class cites
    Kiela et al., "Efficient Large-Scale Multi-Modal Classification", AAAI 2018),
    is the Baseline: out_x = fc_x(x), out_y = fc_y(y), f = fc_out(sigmoid(out_x) * out_y),
    x = audio, y = video, all layers 512 -> 512 except fc_out (512 -> C), PyTorch's
    default init. For audio-video (audio first) this class computes the same
    function with the same parameters and init. The official training loop
    (`main.py`) reads OGM-GE's unimodal logits off fc_out by splitting its input
    columns into halves, as for concat; with GatedFusion (fc_out: 512 -> C, the
    returned out_x and out_y 512-d) the halves do not fit, so OGM-GE on this
    fusion needs unimodal scores from elsewhere (here `score_source: heads`)."""

    decomposable = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        first, *others = feature_dims
        self.gate, self.targets = first, others
        dim = feature_dims[first]
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in feature_dims.items()})
        self.out = nn.Linear(dim, num_classes)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        gate = torch.sigmoid(self.projections[self.gate](features[self.gate]))
        return self.out(sum(gate * self.projections[m](features[m]) for m in self.targets))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.projections[modality].parameters())


class Attention(nn.Module):
    """Attention (OLM, Zong et al., IJCAI 2024, Table 1 row "Attention"; the paper
    names no source for it, its released code does: anonymous-gitlab/OLM at
    c4a4244, `models/fusion_modules.py` class `Attention`, built by
    `--fusion_method attention` in `models/basic_model.py`). Per sample, one
    score per modality from all the modalities' features, then the features
    weighted by their scores and one linear classifier:

        h = sum_m A_m z_m + a      in R^d   (one Linear over [z_1; ...; z_M])
        s = B h + b                in R^M   (the modalities' scores)
        z = sum_m s_m z_m          in R^d
        f = W z + c

    As in the reference the scores are raw: no softmax and no nonlinearity
    between the two score layers, so they need not sum to 1 and may be negative.
    `normalize=True` takes s = softmax_m(B h + b) instead (weights that sum to 1,
    the usual attention pooling); the registry's "attention" is the reference.
    The reference is written for two modalities; with M it scores the
    concatenation of all M features into M scores, as the same repository's
    three-modality attention does (`models/concat_attention.py`, on pre-extracted
    features, with MLPs in front). The hidden size d is the common feature size
    (the reference: 512 -> 512).

    A is written as one bias-free block A_m per modality plus the shared bias a,
    the same function as one Linear over the concatenation and initialised as
    PyTorch initialises that Linear (uniform in +-1/sqrt(M d), bias too), so that
    A_m is modality m's own (`modality_parameters`). Everything after it mixes
    the modalities and is shared. Not decomposable: f multiplies the scores,
    functions of every feature, with the features.
    """

    decomposable = False

    def __init__(self, feature_dims: dict[str, int], num_classes: int, normalize: bool = False):
        super().__init__()
        dim = next(iter(feature_dims.values()))
        if any(d != dim for d in feature_dims.values()):
            raise ValueError(f"Attention fusion needs equal feature sizes, got {feature_dims}")
        self.modalities, self.normalize = list(feature_dims), normalize
        self.score_blocks = nn.ModuleDict({m: nn.Linear(dim, dim, bias=False) for m in feature_dims})
        self.score_bias = nn.Parameter(torch.empty(dim))
        bound = 1 / math.sqrt(dim * len(feature_dims))  # nn.Linear's init over the concatenation
        for parameter in [self.score_bias, *(block.weight for block in self.score_blocks.values())]:
            nn.init.uniform_(parameter, -bound, bound)
        self.score = nn.Linear(dim, len(feature_dims))
        self.out = nn.Linear(dim, num_classes)

    def scores(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, M) per-sample scores s, in `self.modalities` order."""
        s = self.score(sum(self.score_blocks[m](features[m]) for m in self.modalities) + self.score_bias)
        return s.softmax(dim=1) if self.normalize else s

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.scores(features)
        return self.out(sum(s[:, i, None] * features[m] for i, m in enumerate(self.modalities)))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return list(self.score_blocks[modality].parameters())


class TransformerFusion(nn.Module):
    """Transformer fusion (MLB `tf`): each modality's token sequence (ResNet:
    the positions of its last feature map) plus a learned modality-type
    embedding, concatenated after a learned CLS token, through a 2-layer
    Conformer (torchaudio); the CLS output -> Lin(d->C). All of it is shared
    fusion (MLB does not scale it). Heads are d/64 (8 at the papers' d = 512);
    the Conformer's convolution kernel (31) is torchaudio's usual choice, the
    reference's is not in the code we read."""

    decomposable = False
    needs_tokens = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int, layers: int = 2, kernel: int = 31):
        super().__init__()
        dim = next(iter(feature_dims.values()))
        if any(d != dim for d in feature_dims.values()):
            raise ValueError(f"Transformer fusion needs equal feature sizes, got {feature_dims}")
        self.type_embedding = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in feature_dims})
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        for parameter in [self.cls, *self.type_embedding.values()]:
            nn.init.normal_(parameter, std=0.02)
        import torchaudio  # here, not at the top: only this fusion needs it

        self.conformer = torchaudio.models.Conformer(
            input_dim=dim, num_heads=max(1, dim // 64), ffn_dim=4 * dim, num_layers=layers, depthwise_conv_kernel_size=kernel
        )
        self.out = nn.Linear(dim, num_classes)

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        sequences = [t + self.type_embedding[m] for m, t in tokens.items()]
        batch = sequences[0].shape[0]
        sequence = torch.cat([self.cls.expand(batch, -1, -1), *sequences], dim=1)
        lengths = torch.full((batch,), sequence.shape[1], device=sequence.device)
        return self.out(self.conformer(sequence, lengths)[0][:, 0])

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return []


def _common_dim(name: str, feature_dims: dict[str, int]) -> int:
    dim = next(iter(feature_dims.values()))
    if any(d != dim for d in feature_dims.values()):
        raise ValueError(f"{name} fusion needs equal feature sizes, got {feature_dims}")
    return dim


class _TokenStreams(nn.Module):
    """What the two bottleneck fusions share: per modality a learned CLS token put
    in front of the encoder's tokens and L modality-specific transformer layers
    (PyTorch's post-norm `TransformerEncoderLayer`, ReLU, FFN 4d, heads d/64 as in
    `TransformerFusion`), and B learned bottleneck tokens shared by the modalities.
    CLS and bottleneck tokens are drawn from N(0, 0.02^2) (ViT's and MBT's usual
    init; the OLM paper initialises them at random)."""

    def __init__(self, name: str, feature_dims: dict[str, int], layers: int, bottleneck_tokens: int,
                 heads: int | None, dropout: float):
        super().__init__()
        dim = _common_dim(name, feature_dims)
        self.modalities, self.dim = list(feature_dims), dim
        self.heads = heads or max(1, dim // 64)
        self.cls = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, dim)) for m in feature_dims})
        self.bottleneck = nn.Parameter(torch.zeros(1, bottleneck_tokens, dim))
        for parameter in [self.bottleneck, *self.cls.values()]:
            nn.init.normal_(parameter, std=0.02)
        self.layers = nn.ModuleDict({
            m: nn.ModuleList(nn.TransformerEncoderLayer(dim, self.heads, 4 * dim, dropout, batch_first=True) for _ in range(layers))
            for m in feature_dims
        })

    def start(self, tokens: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """[CLS_m; tokens_m] per modality, and the bottleneck tokens, batched."""
        batch = next(iter(tokens.values())).shape[0]
        streams = {m: torch.cat([self.cls[m].expand(batch, -1, -1), tokens[m]], dim=1) for m in self.modalities}
        return streams, self.bottleneck.expand(batch, -1, -1)


class MBT(_TokenStreams):
    """MBT-style bottleneck fusion (Nagrani et al., "Attention Bottlenecks for
    Multimodal Fusion", NeurIPS 2021, Sec. 3.2, fusion via attention bottlenecks;
    OLM's "OLM-T-MBT", Zong et al., IJCAI 2024, Table 3, the non-decoupled
    bottleneck). Per layer l, modality m's tokens and the B shared bottleneck
    tokens z_fsn pass through modality m's own transformer layer, and the
    bottleneck tokens each modality returns are averaged:

        [z_m^{l+1} ; zhat_fsn,m^{l+1}] = Transformer_m([z_m^l ; z_fsn^l])
        z_fsn^{l+1} = mean_m zhat_fsn,m^{l+1}
        f = W mean_m(z_m^L[CLS]) + c

    so modality m's tokens reach another modality only through z_fsn (and, with
    one layer, not at all: the bottleneck they update is read by no later layer).
    The fused logits are one linear classifier on the mean of the modalities'
    final CLS tokens, the same function as MBT's shared linear layer on each CLS
    token with the logits averaged. Defaults: L = 2 layers (as `TransformerFusion`),
    B = 4 bottleneck tokens (MBT's choice), heads d/64, dropout 0.1. B = 0 leaves
    M separate transformers joined only by the classifier (MBT's late fusion).

    Departures. Here the encoders are separate modules shared by every fusion, so
    the fusion runs after them on their token sequences (ResNet: the positions of
    the last feature map) with L layers of its own: the encoders play MBT's
    unfused layers below the fusion layer L_f, and every layer of this block is a
    fusion layer. No positional embeddings are added to the encoders' tokens (as
    in `TransformerFusion`); layers are post-norm (PyTorch's default; MBT's ViT
    is pre-norm with a final LayerNorm). The OLM release builds its MBT
    (`MultimodalBottleneckTransformer`, `--model_type mbt` in
    `main_trans_logits_com.py`, anonymous-gitlab/OLM at 8557b39) from a module
    that is not in the stored snapshot, so it could not be compared.

    Modality m's own parameters are its CLS token and its layers; the bottleneck
    tokens and the classifier are shared. Not decomposable: every modality's CLS
    output depends on the other modalities through the bottleneck.
    """

    decomposable = False
    needs_tokens = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int, layers: int = 2, bottleneck_tokens: int = 4,
                 heads: int | None = None, dropout: float = 0.1):
        super().__init__("MBT", feature_dims, layers, bottleneck_tokens, heads, dropout)
        self.out = nn.Linear(self.dim, num_classes)

    def streams(self, tokens: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """-> (each modality's final tokens, CLS first; the final bottleneck tokens)."""
        streams, bottleneck = self.start(tokens)
        for depth in range(len(self.layers[self.modalities[0]])):
            returned = []
            for m in self.modalities:
                length = streams[m].shape[1]
                both = self.layers[m][depth](torch.cat([streams[m], bottleneck], dim=1))
                streams[m], own = both[:, :length], both[:, length:]
                returned.append(own)
            bottleneck = torch.stack(returned).mean(dim=0)
        return streams, bottleneck

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        streams, _ = self.streams(tokens)
        return self.out(torch.stack([streams[m][:, 0] for m in self.modalities]).mean(dim=0))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        return [self.cls[modality], *self.layers[modality].parameters()]


class IRFBLayer(nn.Module):
    """One layer of OLM's intermediate representation fusion block (Zong et al.,
    IJCAI 2024, Sec. 3.1, Eqs. 2-4): the bottleneck tokens z_b (T_b x d) read each
    modality by cross-attention, each read is gated by the modalities' CLS tokens,
    and z_b takes an attention-pooled sum of the gated reads:

        z_{m->b} = LN(z_b + Att(z_b W^Q_bm, z_m W^K_m, z_m W^V_m))                (2)
        g_{m->b} = sigmoid(W_mb [z_1[CLS]; ...; z_M[CLS]] + b_mb)   in R^d       (3)
        z_{m->b} = LN(z_{m->b} + g_{m->b} * z_{m->b})     (g broadcast over T_b)
        z_g      = [z_{1->b}; ...; z_{M->b}]        (M T_b x d, along the tokens)
        alpha    = softmax over the M T_b tokens of v^T tanh(W^T z_g,i + w)      (4)
        z_b'     = z_b + sum_i alpha_i z_g,i        (one d-vector, added to every token)

    Eq. 3 as printed concatenates [z_v, z_a, z_b] but sizes W_mb as (d_v + d_a) x d
    and calls the inputs utterance-level; the release (anonymous-gitlab/OLM at
    c4a4244, `models/efficient_multimodal_transformer.py`, `InterRepFusionBlock`)
    gates on the two CLS tokens, so z_b is left out here too. The modalities are
    concatenated in one fixed order for every gate (the paper's; the release puts
    modality m first in its own gate, the same function up to a permutation of
    W_mb's columns). Eq. 4 as printed gives one pooled vector per sample, added to
    all T_b tokens; that is what this computes. The release does not compute Eq. 4:
    it updates z_b = LN(s + FFN(s)), s = sum_m z_{m->b} (a self-attention it builds
    is unused); not implemented here. Dropout acts on the attention weights (the
    release, 0.1, also drops the attention output before each residual sum)."""

    def __init__(self, modalities: list[str], dim: int, heads: int, dropout: float):
        super().__init__()
        self.modalities = list(modalities)
        self.attend = nn.ModuleDict({m: nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) for m in modalities})
        self.attend_norm = nn.ModuleDict({m: nn.LayerNorm(dim) for m in modalities})
        self.gate = nn.ModuleDict({m: nn.Linear(len(modalities) * dim, dim) for m in modalities})
        self.gate_norm = nn.ModuleDict({m: nn.LayerNorm(dim) for m in modalities})
        self.pool = nn.Linear(dim, dim)  # W, w of Eq. 4
        self.score = nn.Linear(dim, 1, bias=False)  # v of Eq. 4

    def gates(self, streams: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Eq. 3's g_{m->b}, (batch, d) each, from the streams' CLS tokens (position 0)."""
        utterances = torch.cat([streams[m][:, 0] for m in self.modalities], dim=-1)
        return {m: torch.sigmoid(self.gate[m](utterances)) for m in self.modalities}

    def reads(self, streams: dict[str, torch.Tensor], bottleneck: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eqs. 2-3: the gated cross-attended reads z_{m->b}, (batch, T_b, d) each."""
        gates, reads = self.gates(streams), {}
        for m in self.modalities:
            attended = self.attend[m](bottleneck, streams[m], streams[m], need_weights=False)[0]
            read = self.attend_norm[m](bottleneck + attended)
            reads[m] = self.gate_norm[m](read + gates[m][:, None] * read)
        return reads

    def pooling_weights(self, gathered: torch.Tensor) -> torch.Tensor:
        """Eq. 4's alpha over z_g's tokens: (batch, M T_b)."""
        return self.score(torch.tanh(self.pool(gathered))).squeeze(-1).softmax(dim=1)

    def forward(self, streams: dict[str, torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        reads = self.reads(streams, bottleneck)
        gathered = torch.cat([reads[m] for m in self.modalities], dim=1)  # z_g
        alpha = self.pooling_weights(gathered)
        return bottleneck + (alpha[..., None] * gathered).sum(dim=1, keepdim=True)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """The m -> b path of Eqs. 2-3: W^Q_bm, W^K_m, W^V_m, its gate W_mb, b_mb, its LayerNorms."""
        return [p for part in (self.attend, self.attend_norm, self.gate, self.gate_norm) for p in part[modality].parameters()]


class IRFB(_TokenStreams):
    """IRFB, OLM's intermediate representation fusion block (Zong et al., IJCAI
    2024, Sec. 3.1, Eqs. 1-5, Fig. 3; "OLM-Trans" in Table 1, "OLM-T-IRFB" in
    Table 3). Each modality runs through its own transformer layers, untouched by
    the other modalities (Eq. 1: [CLS_m; tokens_m] -> Tf_m, layer by layer); after
    each layer l an `IRFBLayer` lets the bottleneck tokens read every modality's
    layer-l tokens (cross-attention, Eq. 2), gates the reads with the modalities'
    layer-l CLS tokens (Eq. 3) and adds their attention-pooled sum (Eq. 4). The
    fused logits come from the bottleneck alone, as the release computes them:
    a final LayerNorm on z_b^L, the mean over its T_b tokens (SeqPooling, Eq. 5)
    and a linear classifier, f = W_b mean_t LN(z_b^L)_t + c.

    OLM's three classifiers (Eq. 5) are the model's unimodal heads (video, audio)
    and this fused output; OLM modulates all three (`olm` runs on any fusion).
    Unlike MBT, information flows one way: the modality streams never read the
    bottleneck, so (the paper's point) unimodal learning is decoupled from the
    interaction.

    Defaults: L = 2 layers (as `TransformerFusion`; OLM-Trans stacks 6, Sec. 4.2),
    T_b = 4 bottleneck tokens (as MBT; the release's default is 12), heads d/64,
    dropout 0.1 (the release's). Bottleneck tokens drawn from N(0, 0.02^2), the
    paper's random init (the release starts them at zero, and zero
    tokens stay identical to one another through every layer).

    Departures. In OLM the IRFB runs beside the unimodal encoders, layer by layer,
    and the unimodal classifiers read the same streams (mean over tokens). Here the
    encoders are separate modules shared by every fusion, so the fusion runs after
    them on their token sequences and carries L modality-specific layers of its
    own for IRFB to read; the model's unimodal heads read the encoders' pooled
    tokens, not these streams, which the fused loss alone trains. No positional
    embeddings; post-norm layers with FFN 4d (the release: 2d). The release's
    update of z_b differs from the paper's Eq. 4 (see `IRFBLayer`); this follows
    the paper.

    Modality m's own parameters: its CLS token, its transformer layers and its
    m -> b path in every IRFB layer (Eqs. 2-3). The bottleneck tokens, the pooling
    of Eq. 4, the final LayerNorm and the classifier are shared. Not decomposable.
    """

    decomposable = False
    needs_tokens = True

    def __init__(self, feature_dims: dict[str, int], num_classes: int, layers: int = 2, bottleneck_tokens: int = 4,
                 heads: int | None = None, dropout: float = 0.1):
        super().__init__("IRFB", feature_dims, layers, bottleneck_tokens, heads, dropout)
        if bottleneck_tokens < 1:
            raise ValueError("IRFB needs at least one bottleneck token")
        self.fusion_layers = nn.ModuleList(IRFBLayer(self.modalities, self.dim, self.heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(self.dim)
        self.out = nn.Linear(self.dim, num_classes)

    def streams(self, tokens: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """-> (each modality's final tokens, CLS first; the final bottleneck tokens z_b^L)."""
        streams, bottleneck = self.start(tokens)
        for depth, fusion_layer in enumerate(self.fusion_layers):
            streams = {m: self.layers[m][depth](streams[m]) for m in self.modalities}
            bottleneck = fusion_layer(streams, bottleneck)
        return streams, bottleneck

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        _, bottleneck = self.streams(tokens)
        return self.out(self.norm(bottleneck).mean(dim=1))

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        own = [p for layer in self.fusion_layers for p in layer.modality_parameters(modality)]
        return [self.cls[modality], *self.layers[modality].parameters(), *own]


# The fusion registry: config name -> class. A fusion offers "decomposition"
# when its class is `decomposable`, plus what its class lists in `OFFERS`
# (mmbalance.compatibility reads it).
FUSIONS = {"late_linear": LateLinear, "sum": Sum, "mid_mlp": MidMLP, "film": FiLM, "gated": Gated, "attention": Attention,
           "transformer": TransformerFusion,
           "mbt": MBT,
           "irfb": IRFB,
           "mmtm": MMTMFusion}


def offers(name: str) -> set[str]:
    """What fusion `name` offers the balancers."""
    cls = FUSIONS[name]
    return ({"decomposition"} if cls.decomposable else set()) | set(getattr(cls, "OFFERS", ()))


def build_fusion(name: str, feature_dims: dict[str, int], num_classes: int) -> nn.Module:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; known: {sorted(FUSIONS)}")
    return FUSIONS[name](feature_dims, num_classes)
