"""The sizes of a tiny checkpoint (one object, so trained models can be larger than the random ones)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TinySize:
    """Widths and depths a tiny checkpoint is written with; field names are ours, the
    config.json recipes map them onto each family's real field names."""

    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    inter: int = 128
    layers: int = 2
    max_pos: int = 512
    experts: int = 8
    top_k: int = 2
    moe_inter: int = 32

    def validate(self) -> None:
        """ValueError naming the first field that cannot build a model."""
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"size.{name}={value!r}: expected a positive int")
        if self.heads % self.kv_heads:
            raise ValueError(f"size.heads={self.heads} is not a multiple of size.kv_heads={self.kv_heads}")
        if self.head_dim % 4:
            raise ValueError(f"size.head_dim={self.head_dim}: expected a multiple of 4 (partial RoPE halves it)")
        if self.experts % 4 or self.experts < 8 or self.top_k > self.experts // 2:
            raise ValueError(f"size.experts={self.experts}, size.top_k={self.top_k}: the LLaDA2 router needs "
                             "experts in 4 groups of at least 2 (a multiple of 4, >= 8) and top_k within "
                             "the 2 kept groups")


DEFAULT_SIZE = TinySize()
