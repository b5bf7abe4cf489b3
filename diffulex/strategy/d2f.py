"""Strategy `d2f`: block diffusion with a buffer of blocks in flight (see pipelined.py)."""

from ..engine.block_scheduler import BlockScheduler
from .base import register_strategy
from .pipelined import BlockRequest

register_strategy("d2f", request=BlockRequest, scheduler=BlockScheduler)
