"""Mixture-of-experts building blocks: routers and stacked experts."""

from diffulex.layers.moe.experts import StackedExperts
from diffulex.layers.moe.router import GroupLimitedSigmoidRouter, SoftmaxTopKRouter

__all__ = ["GroupLimitedSigmoidRouter", "SoftmaxTopKRouter", "StackedExperts"]
