"""What a step decides: token choice and confidence, then which masks to accept."""

from .accept import accept_masks
from .select import SelectionParams, select_tokens

__all__ = ["SelectionParams", "accept_masks", "select_tokens"]
