"""The method registry: name (as used in configs and result paths) -> balancer class.

A new method is one module in this package (a `Balancer` subclass with its
`DESCRIPTION`, `SETTINGS` schema and, if it has any, its `needs` of a fusion)
plus one line here. The config schema, the compatibility check and the CLI all
read this table; nothing else names a method.
"""

from __future__ import annotations

import importlib

from mmbalance.balancers.base import Balancer

# name -> "module:Class" inside mmbalance.balancers; imported on first use.
METHODS: dict[str, str] = {
    "audio_only": "unimodal:AudioOnly",
    "video_only": "unimodal:VideoOnly",
    "joint": "joint:Joint",
    "multi_loss": "multi_loss:MultiLoss",
    "mlb": "mlb:MLB",
    "ogm": "ogm:OGM",
    "ogm_ge": "ogm:OGMGE",
    "mslr": "mslr:MSLR",
    "mmcosine": "mmcosine:MMCosine",
    "pmr": "pmr:PMR",
    "olm": "olm:OLM",
    "agm": "agm:AGM",
    "umt": "umt:UMT",
    "modality_drop": "modality_drop:ModalityDrop",
    "gradient_blending": "gradient_blending:GradientBlending",
    "gradnorm": "gradnorm:GradNorm",
    "cur": "cur:CUR",
}


def method_class(name: str) -> type[Balancer]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(f"mmbalance.balancers.{module}"), cls)


def build_balancer(name: str, settings: dict) -> Balancer:
    return method_class(name)(settings)
