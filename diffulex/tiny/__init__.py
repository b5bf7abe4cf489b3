"""Tiny, deterministic checkpoints in the real on-disk layout of each supported family.

Used by tests and demos so the toolkit runs end to end without downloading weights::

    from diffulex.tiny import ensure_tiny_checkpoint
    path = ensure_tiny_checkpoint("llada2")
"""

from diffulex.tiny.lora import write_tiny_lora
from diffulex.tiny.recipes import TINY_FAMILIES
from diffulex.tiny.writer import ensure_tiny_checkpoint, write_tiny_checkpoint

__all__ = ["TINY_FAMILIES", "ensure_tiny_checkpoint", "write_tiny_checkpoint", "write_tiny_lora"]
