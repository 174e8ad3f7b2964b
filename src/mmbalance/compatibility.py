"""Which method can run on which fusion, from what each side declares.

A fusion offers `decomposition` when its logits split into per-modality parts
(W_m z_m + b/M for Late-Linear, W_m z_m + b_m for Sum). A method needs it when
it reads unimodal logits off the fusion: OGM and OGM-GE (unless their
`score_source` is `heads`) and MMCosine (its cosine logits replace the linear
blocks). Kept free of torch so the workflow can check its grid at parse time.
The fusion classes' `decomposable` attributes must agree (a test checks it).
"""

from __future__ import annotations

FUSION_OFFERS = {
    "late_linear": {"decomposition"},
    "sum": {"decomposition"},
    "mid_mlp": set(),
    "film": set(),
    "gated": set(),
    "transformer": set(),
}


def method_needs(method: str, settings: dict) -> set[str]:
    if method in ("ogm", "ogm_ge") and settings.get("score_source", "decomposition") == "decomposition":
        return {"decomposition"}
    if method == "mmcosine":
        return {"decomposition"}
    return set()


def incompatibility(method: str, settings: dict, fusion: str) -> str | None:
    """Why `method` cannot run on `fusion`, or None when it can."""
    missing = method_needs(method, settings) - FUSION_OFFERS[fusion]
    if not missing:
        return None
    hint = " (or set methods.%s.score_source: heads)" % method if method in ("ogm", "ogm_ge") else ""
    return f"method {method!r} needs {', '.join(sorted(missing))}, which fusion {fusion!r} does not offer{hint}"


def matrix_markdown(methods: list[str], settings: dict[str, dict]) -> str:
    """The method x fusion table for the docs: 'yes' or what is missing."""
    fusions = list(FUSION_OFFERS)
    lines = ["| method | " + " | ".join(fusions) + " |", "|---" * (len(fusions) + 1) + "|"]
    for method in methods:
        cells = ["yes" if incompatibility(method, settings.get(method, {}), f) is None else "no" for f in fusions]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
