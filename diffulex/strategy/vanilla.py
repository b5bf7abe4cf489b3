"""Strategy `vanilla`: registers its engine components."""

from .base import register_strategy

register_strategy("vanilla")
