"""Page bookkeeping for the paged KV cache: refcounts, a free pool and prefix caching.

The KV tensors live in the model runner; this module only decides which page holds
which positions of which request. A request owns a ``page_table`` (a plain list of
page ids); position ``j`` lives in slot ``page_table[j // page_size] * page_size +
j % page_size``.

Prefix caching hashes *chains* of full pages. Attention is block-causal, so the KV of
a position depends on every token before the end of its block, not only on the tokens
before it. The key of page ``i`` therefore covers ``tokens[i*P : round_up((i+1)*P, B)]``
(``P`` = page_size, ``B`` = block_size) chained onto the key of page ``i - 1``: when a
block is longer than a page, a page's key includes the rest of its block. Two prompts
that agree on a page but differ later in the same block get different keys, because
the KV of that page differs.

Pages whose refcount drops to zero keep their key and wait in an LRU *evictable* pool:
they can be revived by ``match_prefix`` or recycled by ``allocate`` (oldest first).
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections import OrderedDict, deque

import numpy as np


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _chain_hash(prev_key: bytes, tokens: list[int]) -> bytes:
    """Deterministic key of one page: ``blake2b(prev_key || int64 tokens)``.

    Python's ``hash()`` is salted per process, so it would break sharing across ranks
    and runs; blake2b is stable and collision-resistant enough to trust a match.
    """
    data = array("q", tokens)
    if sys.byteorder == "big":  # keep keys identical across hosts
        data.byteswap()
    return hashlib.blake2b(prev_key + data.tobytes(), digest_size=16).digest()


class KVCacheManager:
    """Refcounted pages of ``page_size`` slots with optional prefix caching.

    Every page is in exactly one state: *free* (no key, refcount 0), *evictable*
    (registered key, refcount 0, reusable until recycled) or *in use* (refcount > 0).
    """

    def __init__(
        self, num_pages: int, page_size: int, block_size: int, enable_prefix_caching: bool
    ) -> None:
        if num_pages <= 0:
            raise ValueError(f"num_pages={num_pages} must be positive; give the cache memory")
        for name, value in (("page_size", page_size), ("block_size", block_size)):
            if not _is_power_of_two(value):
                raise ValueError(f"{name}={value} must be a power of two (e.g. 16, 32, 64)")
        self.num_pages = num_pages
        self.page_size = page_size
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._refcount = [0] * num_pages
        self._free: deque[int] = deque(range(num_pages))
        # Insertion order = release order, so the first entry is the least recently released.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._key_to_page: dict[bytes, int] = {}
        # Only pages that own their key's entry appear here; duplicates stay anonymous.
        self._page_to_key: dict[int, bytes] = {}

    # ----------------------------------------------------------------- sizes
    @property
    def num_free_pages(self) -> int:
        """Pages ``allocate`` can hand out now: free ones plus evictable cached ones."""
        return len(self._free) + len(self._evictable)

    def num_pages_needed(self, page_table: list[int], num_tokens: int) -> int:
        """Fresh pages ``page_table`` needs to cover positions ``[0, num_tokens)``."""
        return max(0, -(-num_tokens // self.page_size) - len(page_table))

    def can_allocate(self, page_table: list[int], num_tokens: int) -> bool:
        """Whether ``allocate(page_table, num_tokens)`` would succeed."""
        return self.num_pages_needed(page_table, num_tokens) <= self.num_free_pages

    def refcount(self, page: int) -> int:
        """Number of page tables holding ``page`` (for schedulers and tests)."""
        return self._refcount[page]

    # ------------------------------------------------------------ allocation
    def allocate(self, page_table: list[int], num_tokens: int) -> bool:
        """Append fresh pages to ``page_table`` so it covers ``num_tokens`` positions.

        All-or-nothing: returns False and changes nothing when too few pages are
        allocatable. Truly free pages go first so cached prefixes survive longer;
        then evictable pages are recycled least-recently-released first.
        """
        needed = self.num_pages_needed(page_table, num_tokens)
        if needed > self.num_free_pages:
            return False
        for _ in range(needed):
            if self._free:
                page = self._free.popleft()
            else:
                page, _ = self._evictable.popitem(last=False)
                del self._key_to_page[self._page_to_key.pop(page)]
            self._refcount[page] = 1
            page_table.append(page)
        return True

    def reserve(self, page_table: list[int], num_tokens: int) -> list[tuple[int, bytes | None]] | None:
        """:meth:`allocate`, undone exactly by :meth:`unreserve`: the pages taken, each with the
        prefix key it was evicted from (None: a free page), or None (too few pages, nothing changed)."""
        needed = self.num_pages_needed(page_table, num_tokens)
        if needed > self.num_free_pages:
            return None
        taken: list[tuple[int, bytes | None]] = []
        for _ in range(needed):
            if self._free:
                page, key = self._free.popleft(), None
            else:
                page, _ = self._evictable.popitem(last=False)
                key = self._page_to_key.pop(page)
                del self._key_to_page[key]
            self._refcount[page] = 1
            page_table.append(page)
            taken.append((page, key))
        return taken

    def unreserve(self, taken: list[tuple[int, bytes | None]]) -> None:
        """Give back pages of :meth:`reserve` (no longer in any page table) where they came from: the
        front of the free list, or the front of the evictable ones with their prefix key again, so the
        cache is as before and the next allocation takes the same pages in the same order."""
        for page, key in reversed(taken):
            if self._refcount[page] != 1:
                raise ValueError(f"page {page} unreserved with refcount {self._refcount[page]}")
            self._refcount[page] = 0
            if key is None:
                self._free.appendleft(page)
            else:
                other = self._key_to_page.get(key)
                if other is not None:  # registered again meanwhile: that page would have stayed anonymous
                    del self._page_to_key[other]
                    if other in self._evictable:
                        del self._evictable[other]
                        self._free.append(other)
                self._evictable[page] = None
                self._evictable.move_to_end(page, last=False)
                self._page_to_key[page], self._key_to_page[key] = key, page

    def free(self, page_table: list[int]) -> None:
        """Drop this table's reference to each of its pages and clear it in place.

        Pages are released last-to-first so that, within one request, the tail of a
        prefix is evicted before its head: a chain is only useful from its start.
        """
        for page in reversed(page_table):
            if self._refcount[page] <= 0:
                raise ValueError(
                    f"page {page} freed with refcount {self._refcount[page]}: double free?"
                )
            self._refcount[page] -= 1
            if self._refcount[page] == 0:
                if page in self._page_to_key:
                    self._evictable[page] = None
                else:
                    self._free.append(page)
        page_table.clear()

    # --------------------------------------------------------- prefix cache
    def _key_end(self, page_index: int) -> int:
        """End (exclusive) of the tokens that determine the KV of page ``page_index``."""
        page_end = (page_index + 1) * self.page_size
        return -(-page_end // self.block_size) * self.block_size

    def match_prefix(self, token_ids: list[int], max_tokens: int, namespace: bytes = b"") -> tuple[list[int], int]:
        """Take references to the longest cached page chain matching ``token_ids``.

        The match covers at most ``max_tokens`` tokens and ends at a block *and* page
        boundary (rounded down), so the caller resumes decoding at a block start with
        a page-aligned table. Returns ``(pages, num_matched_tokens)``; the caller uses
        ``pages`` as the start of its page table and must ``free`` it later. ``namespace``
        seeds the hash chain: only pages committed under the same namespace match (data
        parallelism gives each replica its own, as a page's KV lives on one replica).
        """
        if not self.enable_prefix_caching:
            return [], 0
        unit = max(self.page_size, self.block_size)  # lcm of two powers of two
        limit = min(max_tokens, len(token_ids)) // unit * unit
        pages: list[int] = []
        key = namespace
        for i in range(limit // self.page_size):
            # limit is block-aligned, so _key_end(i) <= limit: the key is computable.
            key = _chain_hash(key, token_ids[i * self.page_size : self._key_end(i)])
            page = self._key_to_page.get(key)
            if page is None:
                break
            pages.append(page)
        # A chain can break mid-block (a page of it evicted or never registered); the
        # caller must resume at a block start, so drop the pages of the partial block.
        pages_per_unit = unit // self.page_size
        del pages[len(pages) // pages_per_unit * pages_per_unit :]
        for page in pages:
            if self._refcount[page] == 0:
                del self._evictable[page]
            self._refcount[page] += 1
        return pages, len(pages) * self.page_size

    def commit(
        self, page_table: list[int], token_ids: list[int], num_committed_tokens: int, namespace: bytes = b""
    ) -> None:
        """Register the keys of full pages whose KV is final in ``[0, num_committed_tokens)``.

        A page is registered only when every token that determines its KV is committed.
        Idempotent; a key already owned by another page keeps that mapping (this page
        then stays anonymous and returns to the free list when released).
        """
        if num_committed_tokens > len(token_ids):
            raise ValueError(
                f"num_committed_tokens={num_committed_tokens} exceeds len(token_ids)="
                f"{len(token_ids)}; pass the request's full token list"
            )
        if not self.enable_prefix_caching:
            return
        num_full = num_committed_tokens // self.page_size
        if num_full > len(page_table):
            raise ValueError(
                f"commit of {num_committed_tokens} tokens needs {num_full} pages but the "
                f"page table has {len(page_table)}; allocate before writing KV"
            )
        # Resume after the last page of this table that already has a key: a keyed page in this
        # table was hashed from these same tokens, so its key is the chain up to it (a step
        # usually adds at most one page; walking the table from 0 costs O(pages) per step).
        start, key = 0, namespace  # see match_prefix
        for i in range(num_full - 1, -1, -1):
            known = self._page_to_key.get(page_table[i])
            if known is not None:
                start, key = i + 1, known
                break
        for i in range(start, num_full):
            end = self._key_end(i)
            if end > num_committed_tokens:
                break  # the rest of this page's block is not final yet
            page = page_table[i]
            key = _chain_hash(key, token_ids[i * self.page_size : end])
            if key not in self._key_to_page:
                self._key_to_page[key] = page
                self._page_to_key[page] = key

    # ----------------------------------------------------------------- slots
    def slot(self, page_table: list[int], position: int) -> int:
        """Cache slot of ``position`` in the request owning ``page_table``."""
        page_index, offset = divmod(position, self.page_size)
        if position < 0 or page_index >= len(page_table):
            raise IndexError(
                f"position {position} is outside the {len(page_table)} pages of this table"
            )
        return page_table[page_index] * self.page_size + offset

    def slots(self, page_table: list[int], start: int, end: int) -> list[int]:
        """Cache slots of positions ``[start, end)``, built page by page."""
        if start < 0 or end > len(page_table) * self.page_size or start > end:
            raise IndexError(
                f"positions [{start}, {end}) are outside the {len(page_table)} pages of this table"
            )
        out: list[int] = []
        pos = start
        while pos < end:
            page_index, offset = divmod(pos, self.page_size)
            run = min(end - pos, self.page_size - offset)
            base = page_table[page_index] * self.page_size + offset
            out.extend(range(base, base + run))
            pos += run
        return out

    def slot_mapping(self, page_tables: np.ndarray, table_offset: np.ndarray, positions: np.ndarray,
                     written: np.ndarray) -> np.ndarray:
        """``slots`` of a whole packed batch at once (int64 numpy arrays; one gather, no walk per request).

        page_tables: [R * P] the step's page tables, flattened with -1 padding; table_offset,
        positions, written: [N], token ``i`` at ``positions[i]`` of the table starting at
        ``table_offset[i]``. Returns [N]: the cache slot, -1 where ``written`` is False. The
        caller checks that written positions lie inside their tables.
        """
        shift = self.page_size.bit_length() - 1  # page_size is a power of two: shifts, not divisions
        page = np.minimum(positions >> shift, page_tables.shape[0] - 1 - table_offset)  # [N], inside the array
        slot = (page_tables[table_offset + page] << shift) | (positions & (self.page_size - 1))  # [N]
        return np.where(written, slot, -1)

    # ------------------------------------------------------------ invariants
    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (used by tests)."""

        def require(cond: bool, msg: str) -> None:
            if not cond:  # explicit raise so the check survives ``python -O``
                raise AssertionError(msg)

        free, evictable = list(self._free), set(self._evictable)
        in_use = {p for p, rc in enumerate(self._refcount) if rc > 0}
        require(all(rc >= 0 for rc in self._refcount), "negative refcount")
        require(len(free) == len(set(free)), "page listed twice in the free pool")
        free_set = set(free)
        require(not (free_set & evictable or free_set & in_use or evictable & in_use),
                "a page is in two of free / evictable / in use")
        require(len(free_set) + len(evictable) + len(in_use) == self.num_pages,
                "free / evictable / in use do not cover every page")
        require(all(p not in self._page_to_key for p in free_set), "free page has a key")
        require(all(p in self._page_to_key for p in evictable), "evictable page has no key")
        require(len(self._key_to_page) == len(self._page_to_key), "key maps out of sync")
        for key, page in self._key_to_page.items():
            require(self._page_to_key.get(page) == key, f"key of page {page} out of sync")
            require(page in in_use or page in evictable, f"hashed page {page} is free")
