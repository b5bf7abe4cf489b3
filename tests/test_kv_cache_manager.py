"""KVCacheManager: all-or-nothing allocation, refcounts, block-aware prefix caching, LRU."""

from __future__ import annotations

import random

import pytest

from diffulex.engine.kv_cache_manager import KVCacheManager


def make(num_pages: int = 8, page_size: int = 4, block_size: int = 4, prefix: bool = True):
    return KVCacheManager(num_pages, page_size, block_size, enable_prefix_caching=prefix)


def run_request(mgr: KVCacheManager, tokens: list[int], committed: int | None = None) -> list[int]:
    """Match, allocate the rest, commit ``committed`` tokens (default: all); keeps pages."""
    pages, _ = mgr.match_prefix(tokens, len(tokens))
    assert mgr.allocate(pages, len(tokens))
    mgr.commit(pages, tokens, len(tokens) if committed is None else committed)
    mgr.check_invariants()
    return pages


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="page_size"):
        KVCacheManager(4, 3, 4, True)
    with pytest.raises(ValueError, match="num_pages"):
        KVCacheManager(0, 4, 4, True)


def test_allocate_is_all_or_nothing():
    mgr = make(num_pages=4)
    table: list[int] = []
    assert mgr.num_pages_needed(table, 9) == 3
    assert mgr.allocate(table, 9) and len(table) == 3
    other: list[int] = []
    assert not mgr.can_allocate(other, 8)
    assert not mgr.allocate(other, 8)
    assert other == [] and mgr.num_free_pages == 1
    assert mgr.allocate(table, 12) and len(table) == 3  # already covered: no new page
    mgr.check_invariants()


def test_free_returns_pages():
    mgr = make(num_pages=4, prefix=False)
    table: list[int] = []
    mgr.allocate(table, 16)
    assert mgr.num_free_pages == 0
    mgr.free(table)
    assert table == [] and mgr.num_free_pages == 4
    mgr.check_invariants()
    with pytest.raises(ValueError, match="double free"):
        mgr.free([0])


def test_prefix_caching_off_never_matches():
    mgr = make(prefix=False)
    run_request(mgr, list(range(8)))
    assert mgr.match_prefix(list(range(8)), 8) == ([], 0)


def test_same_prompt_shares_pages():
    mgr = make()
    prompt = list(range(10))
    first = run_request(mgr, prompt)
    pages, n = mgr.match_prefix(prompt, len(prompt))
    assert n == 8 and pages == first[:2]  # the partial third page is never matched
    assert all(mgr.refcount(p) == 2 for p in pages)
    mgr.check_invariants()


def test_match_stops_at_first_differing_page():
    mgr = make()
    run_request(mgr, list(range(16)))
    probe = list(range(16))
    probe[9] = 99  # differs inside the third page
    pages, n = mgr.match_prefix(probe, 16)
    assert n == 8 and len(pages) == 2
    # A difference in the first page kills the chain even if later pages agree.
    probe = list(range(16))
    probe[0] = 99
    assert mgr.match_prefix(probe, 16) == ([], 0)


def test_block_larger_than_page_keys_cover_whole_block():
    # block 8 spans two pages of 4: page 0's KV depends on tokens 4..7 too.
    mgr = make(page_size=4, block_size=8)
    run_request(mgr, [1, 2, 3, 4, 5, 6, 7, 8])
    assert mgr.match_prefix([1, 2, 3, 4, 9, 9, 9, 9], 8) == ([], 0)
    pages, n = mgr.match_prefix([1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0], 12)
    assert n == 8 and len(pages) == 2  # rounded down to the block boundary


def test_block_larger_than_page_commit_waits_for_whole_block():
    mgr = make(page_size=4, block_size=8)
    tokens = list(range(8))
    table: list[int] = []
    mgr.allocate(table, 8)
    mgr.commit(table, tokens, 4)  # page 0 is full but its block is not final
    assert mgr.match_prefix(tokens, 8) == ([], 0)
    mgr.commit(table, tokens, 8)
    assert mgr.match_prefix(tokens, 8)[1] == 8


def test_block_smaller_than_page():
    mgr = make(page_size=8, block_size=2)
    tokens = list(range(20))
    table: list[int] = []
    mgr.allocate(table, 20)
    mgr.commit(table, tokens, 14)  # blocks 0..6 final: only page 0 is full
    pages, n = mgr.match_prefix(tokens, 20)
    assert n == 8 and pages == table[:1]
    mgr.commit(table, tokens, 20)  # page 2 (positions 16..19) stays partial
    pages, n = mgr.match_prefix(tokens, 20)
    assert n == 16 and pages == table[:2]
    # max_tokens 15 rounds down to the page boundary 8, though 14 is a block boundary.
    assert mgr.match_prefix(tokens, 15)[1] == 8


def test_max_tokens_cap_and_block_rounding():
    mgr = make(num_pages=16, page_size=4, block_size=8)
    tokens = list(range(32))
    run_request(mgr, tokens)
    assert mgr.match_prefix(tokens, 32)[1] == 32
    assert mgr.match_prefix(tokens, 31)[1] == 24  # cap, then down to a block boundary
    assert mgr.match_prefix(tokens, 20)[1] == 16  # 20 is a page boundary, not a block one
    assert mgr.match_prefix(tokens, 7) == ([], 0)
    assert mgr.match_prefix(tokens[:13], 100)[1] == 8  # capped by len(token_ids)


def test_lru_eviction_drops_keys():
    mgr = make(num_pages=4, page_size=4, block_size=4)
    a, b = run_request(mgr, [1] * 8), run_request(mgr, [2] * 8)
    a_pages = list(a)
    mgr.free(a)  # a released first: least recently released
    mgr.free(b)
    assert mgr.num_free_pages == 4
    table: list[int] = []
    assert mgr.allocate(table, 8)  # must recycle two cached pages: a's
    assert sorted(table) == sorted(a_pages)
    assert mgr.match_prefix([2] * 8, 8)[1] == 8
    assert mgr.match_prefix([1] * 8, 8) == ([], 0)
    mgr.check_invariants()


def test_free_releases_tail_first_so_prefix_survives():
    mgr = make(num_pages=4)
    table = run_request(mgr, list(range(16)))
    mgr.free(table)
    other: list[int] = []
    assert mgr.allocate(other, 4)  # evicts exactly one page: the chain's last
    assert mgr.match_prefix(list(range(16)), 16)[1] == 12


def test_chain_broken_inside_a_block_rounds_down_to_the_block_start():
    mgr = make(num_pages=2, page_size=4, block_size=8)
    table = run_request(mgr, list(range(8)))
    mgr.free(table)
    assert mgr.allocate([], 4)  # evicts the block's second page; its first is still cached
    assert mgr.match_prefix(list(range(8)), 8) == ([], 0)
    mgr.check_invariants()


def test_matched_page_is_not_evicted_while_in_use():
    mgr = make(num_pages=3)
    first = run_request(mgr, [5] * 8)
    mgr.free(first)
    pages, n = mgr.match_prefix([5] * 8, 8)
    assert n == 8 and mgr.num_free_pages == 1
    table: list[int] = []
    assert not mgr.allocate(table, 8)  # only one page is allocatable
    assert mgr.allocate(table, 4) and set(table).isdisjoint(pages)
    mgr.check_invariants()


def test_generated_pages_reusable_by_later_prompt():
    mgr = make(num_pages=8, page_size=4, block_size=8)
    prompt = list(range(8))
    table = run_request(mgr, prompt)
    generated = prompt + [40, 41, 42, 43, 44, 45, 46, 47]
    assert mgr.allocate(table, 16)
    mgr.commit(table, generated, 16)  # the decoded block is now final
    mgr.free(table)
    pages, n = mgr.match_prefix(generated + [7, 7], 18)
    assert n == 16 and len(pages) == 4


def test_commit_is_idempotent_and_keeps_existing_mapping():
    mgr = make()
    tokens = list(range(8))
    table = run_request(mgr, tokens)
    snapshot = (dict(mgr._key_to_page), dict(mgr._page_to_key))
    mgr.commit(table, tokens, 8)
    assert (mgr._key_to_page, mgr._page_to_key) == snapshot
    # Same tokens decoded independently into other pages: the first mapping stays.
    twin: list[int] = []
    mgr.allocate(twin, 8)
    mgr.commit(twin, tokens, 8)
    assert mgr.match_prefix(tokens, 8)[0] == table
    twin_pages = list(twin)
    mgr.free(twin)  # anonymous duplicates go straight back to the free list
    assert all(p in mgr._free for p in twin_pages)
    mgr.check_invariants()


def test_commit_resumes_the_chain_after_anonymous_duplicates():
    """A table whose first pages duplicate another table's (so they stay anonymous) keys its own
    later pages under the content's chain, step after step (commit resumes after the table's last
    keyed page): a later prompt matches the first table's pages, then this one's."""
    mgr = make(num_pages=8, page_size=4, block_size=4)
    tokens = list(range(8))
    table = run_request(mgr, tokens)
    longer = tokens + [50, 51, 52, 53, 60, 61, 62, 63]
    twin: list[int] = []
    assert mgr.allocate(twin, 16)
    mgr.commit(twin, longer, 8)  # same content as table's pages: no new keys
    assert all(p not in mgr._page_to_key for p in twin)
    mgr.commit(twin, longer, 12)  # page 2: new content, chained on the duplicates' keys
    mgr.commit(twin, longer, 16)  # page 3: resumes after page 2
    pages, n = mgr.match_prefix(longer, 16)
    assert n == 16 and pages == table + twin[2:4]
    mgr.check_invariants()


def test_slots():
    mgr = make(page_size=4)
    table = [3, 0, 2]
    assert mgr.slot(table, 5) == 1
    assert mgr.slots(table, 2, 10) == [14, 15, 0, 1, 2, 3, 8, 9]
    assert mgr.slots(table, 6, 6) == []
    with pytest.raises(IndexError):
        mgr.slot(table, 12)
    with pytest.raises(IndexError):
        mgr.slots(table, 0, 13)


def test_commit_rejects_missing_pages():
    mgr = make()
    with pytest.raises(ValueError, match="allocate"):
        mgr.commit([], list(range(8)), 8)


@pytest.mark.parametrize("page_size,block_size", [(4, 4), (2, 8), (8, 2)])
def test_randomized_operations_keep_invariants(page_size, block_size):
    rng = random.Random(1234 + page_size * 10 + block_size)
    mgr = make(num_pages=24, page_size=page_size, block_size=block_size)
    live: list[tuple[list[int], list[int], int]] = []  # (table, tokens, committed)
    # What each page's KV was computed from; a match must hand out pages whose KV equals
    # what the matching request would have computed itself.
    written: dict[int, tuple[int, ...]] = {}
    hits = 0
    bases = [[rng.randrange(2) for _ in range(32)] for _ in range(3)]

    def write(table: list[int], tokens: list[int], committed: int) -> None:
        for i in range(committed // page_size):
            end = mgr._key_end(i)
            if end <= committed:
                written[table[i]] = tuple(tokens[:end])
    for _ in range(600):
        op = rng.random()
        if op < 0.35:  # new request: a shared base prompt's prefix plus a random tail
            tokens = rng.choice(bases)[: rng.randrange(0, 33)]
            tokens = tokens + [rng.randrange(2) for _ in range(rng.randrange(1, 9))]
            pages, n = mgr.match_prefix(tokens, rng.randrange(0, len(tokens) + 1))
            assert n % max(page_size, block_size) == 0 and len(pages) * page_size == n
            for i, page in enumerate(pages):
                assert written[page] == tuple(tokens[: mgr._key_end(i)])
            hits += n > 0
            if mgr.allocate(pages, len(tokens)):
                committed = len(tokens) // block_size * block_size  # prefill's full blocks
                mgr.commit(pages, tokens, committed)
                write(pages, tokens, committed)
                live.append((pages, tokens, committed))
            else:
                mgr.free(pages)
        elif op < 0.6 and live:  # decode: extend by a block and commit it
            i = rng.randrange(len(live))
            table, tokens, committed = live[i]
            tokens = tokens + [rng.randrange(2) for _ in range(block_size)]
            if mgr.allocate(table, len(tokens)):
                committed = len(tokens) // block_size * block_size
                mgr.commit(table, tokens, committed)
                write(table, tokens, committed)
                live[i] = (table, tokens, committed)
        elif op < 0.7 and live:  # recommit: must be a no-op
            table, tokens, committed = rng.choice(live)
            mgr.commit(table, tokens, committed)
        elif live:
            table, _, _ = live.pop(rng.randrange(len(live)))
            mgr.free(table)
        mgr.check_invariants()
        held = sum(len(t) for t, _, _ in live)
        assert sum(mgr.refcount(p) for p in range(mgr.num_pages)) == held
    assert hits > 20  # the workload really exercises sharing
    for table, _, _ in live:
        mgr.free(table)
    mgr.check_invariants()
    assert mgr.num_free_pages == mgr.num_pages
