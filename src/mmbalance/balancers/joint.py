"""Joint training: cross-entropy on the fused logits only (the baseline of every paper).

Everything is inherited: the base balancer is the Joint baseline. Its unimodal
accuracies come from probe heads on detached features.
"""

from mmbalance.balancers.base import Balancer


class Joint(Balancer):
    DESCRIPTION = "Cross-entropy on the fused logits; unimodal accuracy from probes."
