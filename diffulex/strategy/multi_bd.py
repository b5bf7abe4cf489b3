"""Strategy `multi_bd`: registers its engine components."""

from .base import register_strategy

register_strategy("multi_bd")
