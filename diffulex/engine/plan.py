"""``StepPlan``: what one request feeds into one forward, and which logits it needs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepPlan:
    """Tokens [start, end) of a request's canvas go into the forward.

    Positions [0, start) are read from the KV cache; [write_start, write_end) are final
    tokens whose KV this forward writes (write_start is the cached length, which may exceed
    ``start`` when a shift family re-feeds its last cached token for its logits). Logits
    are produced for the positions of the blocks in flight (``spans``) from ``write_end`` on;
    with ``shift`` the row predicting position p is the output at p - 1.
    """

    start: int
    end: int
    write_start: int
    write_end: int
    spans: list[tuple[int, int]]  # blocks in flight: absolute [lo, hi)
    forced: list[bool]  # per block: must take at least its best mask (threshold rule)
    quota: list[int] = field(default_factory=list)  # per block: exact masks to fill; -1: threshold rule
    blocks: list[int] = field(default_factory=list)  # block ids (records, per-block decisions)
    force_all: list[bool] = field(default_factory=list)  # per block: fill every remaining mask now
    # per block: a forced block takes its ``min_fill`` best masks or every mask above the threshold,
    # whichever is more (the official LLaDA2.0 step counts); empty: 1 each.
    min_fill: list[int] = field(default_factory=list)
    shift: bool = False
    cache_only: bool = False  # keys only from the cache (new KV written first): the dual-cache mode
    # Cached keys this forward reads: positions [0, context_len). -1: ``start`` (everything before
    # the fed tokens). A cache-only plan may read past ``start`` (its own block's rewritten KV).
    context_len: int = -1

    @property
    def cached_keys(self) -> int:
        """The attention's ``context_lens`` entry of this request."""
        return self.context_len if self.context_len >= 0 else self.start

    def query_positions(self) -> range:
        """Positions whose prediction this step needs (within the spans)."""
        lo = max(self.write_end, self.start + int(self.shift), self.spans[0][0])
        return range(lo, self.spans[-1][1])
