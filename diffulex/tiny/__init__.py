"""Tiny, deterministic checkpoints in the real on-disk layout of each supported family.

Used by tests and demos so the toolkit runs end to end without downloading weights::

    from diffulex.tiny import ensure_tiny_checkpoint
    path = ensure_tiny_checkpoint("llada2", trained=True)   # shipped, trained on arithmetic
    path = ensure_tiny_checkpoint("llada2")                 # random weights (shape tests)
"""

from diffulex.tiny.lora import write_tiny_lora
from diffulex.tiny.recipes import TINY_FAMILIES
from diffulex.tiny.shipped import copy_trained, trained_checkpoint, trained_families
from diffulex.tiny.writer import ensure_tiny_checkpoint, write_tiny_checkpoint

__all__ = ["TINY_FAMILIES", "copy_trained", "ensure_tiny_checkpoint", "trained_checkpoint", "trained_families",
           "write_tiny_checkpoint", "write_tiny_lora"]
