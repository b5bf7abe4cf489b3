"""Strategy `d2f`: registers its engine components."""

from .base import register_strategy

register_strategy("d2f")
