"""Strategy `diffusion_gemma`: registers its engine components."""

from .base import register_strategy

register_strategy("diffusion_gemma")
