"""Strategy `multi_bd`: block diffusion with a buffer of blocks in flight (see pipelined.py)."""

from ..engine.block_scheduler import BlockScheduler
from .base import register_strategy
from .pipelined import BlockRequest

register_strategy("multi_bd", request=BlockRequest, scheduler=BlockScheduler)
