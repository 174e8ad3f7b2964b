"""Which method can run on which fusion, from what each side declares.

A fusion offers `decomposition` when its logits split into per-modality parts
(W_m z_m + b/M for Late-Linear, W_m z_m + b_m for Sum): its class is
`decomposable` (mmbalance.models.fusion). A fusion class also offers what its
`OFFERS` lists (MMTM's `mmtm_bypass`, which CUR needs). A method says what it needs through
`needs(settings)` (OGM and OGM-GE read unimodal logits off the fusion unless
their `score_source` is `heads`; MMCosine replaces the linear blocks). This
module names no method and no fusion.
"""

from __future__ import annotations

from mmbalance.balancers import method_class
from mmbalance.models.fusion import FUSIONS, offers


def incompatibility(method: str, settings: dict, fusion: str) -> str | None:
    """Why `method` with `settings` cannot run on `fusion`, or None when it can."""
    cls = method_class(method)
    missing = cls.needs(settings) - offers(fusion)
    if not missing:
        return None
    hint = f" ({cls.NEEDS_HINT})" if cls.NEEDS_HINT else ""
    return f"method {method!r} needs {', '.join(sorted(missing))}, which fusion {fusion!r} does not offer{hint}"


def matrix_markdown(methods: list[str], settings: dict[str, dict]) -> str:
    """The method x fusion table for the docs: 'yes' or 'no'."""
    fusions = list(FUSIONS)
    lines = ["| method | " + " | ".join(fusions) + " |", "|---" * (len(fusions) + 1) + "|"]
    for method in methods:
        cells = ["yes" if incompatibility(method, settings.get(method, {}), f) is None else "no" for f in fusions]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
