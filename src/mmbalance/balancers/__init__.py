"""The registry: method name (as used in configs and result paths) -> balancer.

A new method is one module in this package plus one line here.
"""

from mmbalance.balancers.agm import AGM
from mmbalance.balancers.base import Balancer
from mmbalance.balancers.joint import Joint
from mmbalance.balancers.mlb import MLB
from mmbalance.balancers.mmcosine import MMCosine
from mmbalance.balancers.mslr import MSLR
from mmbalance.balancers.multi_loss import MultiLoss
from mmbalance.balancers.ogm import OGM, OGMGE
from mmbalance.balancers.olm import OLM
from mmbalance.balancers.pmr import PMR
from mmbalance.balancers.unimodal import AudioOnly, VideoOnly

BALANCERS: dict[str, type[Balancer]] = {
    "audio_only": AudioOnly,
    "video_only": VideoOnly,
    "joint": Joint,
    "multi_loss": MultiLoss,
    "mlb": MLB,
    "ogm": OGM,
    "ogm_ge": OGMGE,
    "mslr": MSLR,
    "mmcosine": MMCosine,
    "pmr": PMR,
    "olm": OLM,
    "agm": AGM,
}


def build_balancer(name: str, settings: dict) -> Balancer:
    if name not in BALANCERS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(BALANCERS)}")
    return BALANCERS[name](settings)
