"""The overlapped decoding loop: step n+1 is queued on the device before the host reads step n.

In the synchronous loop the GPU idles while the host reads a step's decisions, applies them
(commits, EOS, stop strings, records, observers) and schedules and packs the next step. Here,
right after step n is queued (forward + sampler), the host *guesses* step n+1 and queues it
too, so the GPU runs n+1 while the host works on n:

1. **Guess.** The host assumes step n fills exactly what it surely fills (the sampler's
   :meth:`~diffulex.sampling.base.Sampler.sure_fills`: a block whose masks it surely all fills
   completes; nothing else changes), applies that to each request with a placeholder token
   (on a :meth:`~diffulex.engine.request.Request.snapshot`, restored afterwards), commits
   blocks, mirrors the scheduler's pass over the running requests and packs the guessed batch.
   KV pages the guess needs are *reserved* from the free list (given back before the real
   scheduling, which then takes the same pages again).
2. **Device inputs.** The guessed batch's token ids (and the sampler's row tokens) at the
   positions step n decides are written on the device from step n's sampler output
   (``take`` / ``tokens``), through index maps built on the host: no host sync.
3. **Check.** The next ``step()`` schedules and packs step n+1 exactly as the synchronous
   loop would (after step n's results and any aborts) and compares: the same requests, equal
   plans, and every host input of the batch equal to the guessed one with step n's fills
   written in. Equal: the queued step *is* step n+1 (a hit). Otherwise it is discarded and
   the real step n+1 queued (a miss: the GPU ran one forward for nothing).

So outputs are the synchronous loop's token for token whenever the forward is a function of
its inputs. KV that a discarded guess wrote is harmless only where every position at or
above a request's cached length is rewritten before it is read (``reads_below_cached``);
guesses that write KV for other requests are not made, nor guesses after steps with sampled
tokens (random draws), decisions that are not plain fills (edits, remasks, soft inputs: the
samplers without a device-side :meth:`~diffulex.sampling.base.Sampler.launch`), strategy
inputs (``extras``), pending admissions or aborts, nor where a wrong guess is likely (see
:class:`Speculator`). ``runtime.overlap=false`` is the synchronous loop. docs/overlap.md.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from .batch import StepBatch, host_to_device, pack_batch, rows_on
from .faults import NonFiniteLogits, non_finite_error


@dataclass
class Launched:
    """One step queued on the device: its requests, plans, host batch and pending decisions."""

    reqs: list[Any]
    plans: list[Any]
    batch: StepBatch
    pending: Any  # a PendingDecisions
    t0: float  # when it was queued


@dataclass
class Speculation:
    """A guessed step queued after ``after`` (whose fills its inputs take on the device)."""

    step: Launched
    after: Launched
    reserved: list  # KV pages held for it, as KVCacheManager.reserve took them (given back by release)
    src: np.ndarray  # [N + 2M] int64: per token id, row token, row previous token: the row of ``after``, or -1


@dataclass
class OverlapStats:
    """Counts of the overlapped loop: guesses used, guesses discarded, steps not guessed (by reason)."""

    hits: int = 0
    misses: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Count a step not guessed; returns None (the guess that was not made)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def source_rows(prev: StepBatch, prev_reqs: list[Any], nxt: StepBatch, nxt_reqs: list[Any]) -> np.ndarray:
    """[N' + M' + M'] int64: for each token of ``nxt``, then each of its rows (row token), then each
    row's previous position: the row of ``prev`` that decides that (request, position), or -1."""
    index = {id(r): i for i, r in enumerate(prev_reqs)}
    qmap = np.array([index.get(id(r), -1) for r in nxt_reqs], dtype=np.int64)  # [R']
    k = np.int64(1 << 32)
    keys = prev.row_request.numpy() * k + prev.row_position.numpy()  # [M]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]

    def lookup(req: np.ndarray, pos: np.ndarray) -> np.ndarray:
        q = qmap[req]
        key = q * k + pos
        i = np.clip(np.searchsorted(sorted_keys, key), 0, max(len(keys) - 1, 0))
        found = (q >= 0) & (pos >= 0) & (sorted_keys[i] == key)
        return np.where(found, order[i], -1)

    counts = np.diff(nxt.meta.cu_seqlens_q.numpy())  # [R']
    tok_req = np.repeat(np.arange(len(nxt_reqs)), counts)  # [N']
    row_req, row_pos = nxt.row_request.numpy(), nxt.row_position.numpy()
    return np.concatenate([lookup(tok_req, nxt.positions.numpy()), lookup(row_req, row_pos),
                           lookup(row_req, row_pos - 1)])


def write_fills(src: torch.Tensor, take: torch.Tensor, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` with ``tokens[r]`` wherever ``src`` names a row r that ``take`` fills (new tensor).

    src, target: [L]; take, tokens: [M] of the step that decided (same device as ``src``)."""
    sel = src.clamp_min(0)  # [L]
    hit = (src >= 0) & take[sel]
    return torch.where(hit, tokens[sel].to(target.dtype), target)


class DevicePatch:
    """Step n's fills written into the guessed step's inputs on the device (no host sync)."""

    def __init__(self, src: np.ndarray, take: torch.Tensor, tokens: torch.Tensor, num_tokens: int,
                 num_rows: int) -> None:
        dev = take.device
        flat = host_to_device(torch.from_numpy(src), dev)  # [N + 2M]
        self.ids_src, self.row_src, self.prev_src = flat.split([num_tokens, num_rows, num_rows])
        self.take, self.tokens = take, tokens

    def ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[N] (or a padded [N_b]: the real tokens come first) token ids with the fills."""
        n = self.ids_src.shape[0]
        head = write_fills(self.ids_src, self.take, self.tokens, input_ids[:n])
        return torch.cat([head, input_ids[n:]]) if input_ids.shape[0] > n else head

    def sampler_batch(self, batch: StepBatch) -> Any:
        """``batch`` for the sampler: its device rows (``rows_on``) with the fills in the row tokens."""
        moved = rows_on(dataclasses.replace(batch), self.take.device)
        moved.row_token = write_fills(self.row_src, self.take, self.tokens, moved.row_token)
        moved.row_prev_token = write_fills(self.prev_src, self.take, self.tokens, moved.row_prev_token)
        moved._rows_on = (self.take.device, moved)  # a sampler's own rows_on(batch) returns it as it is
        return moved


def batches_equal(a: StepBatch, b: StepBatch) -> bool:
    """Every host input of two packed batches equal (tensors by value, metadata field by field)."""
    for f in dataclasses.fields(StepBatch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "meta":
            if vars(x).keys() != vars(y).keys() or not all(_equal(vars(x)[k], vars(y)[k]) for k in vars(x)):
                return False
        elif f.name == "extras":
            if x or y:
                return False
        elif not _equal(x, y):
            return False
    return True


def _equal(x: Any, y: Any) -> bool:
    if torch.is_tensor(x) or torch.is_tensor(y):
        return torch.is_tensor(x) and torch.is_tensor(y) and x.shape == y.shape and x.dtype == y.dtype \
            and torch.equal(x, y)
    return x == y


class Speculator:
    """Guesses, queues, checks and releases the next step of one engine (see the module doc).

    A wrong guess costs the GPU one forward F, a right one saves the host's part H of a step, so
    guessing pays when P(right) > 1 - H/F (about 0.85-0.9 at batch 1 on an H200). Blocks that may
    complete through their threshold make a guess wrong: the probability that a block with m
    masks left completes in one step (beyond its sure fills) is counted online from the real
    steps (``observe``), and a step is guessed only when the product over its uncertain blocks of
    P(not completing) is at least ``min_hit_probability``. Guesses also go wrong for reasons this
    does not model (a block added or forced by more fills than the sure ones, stops): when more
    than ``1 - min_hit_probability`` of the last ``window`` guesses were wrong, only every
    ``probe_every``-th step that would be guessed is (``backoff``), until the window recovers.
    """

    min_hit_probability = 0.9
    prior_completion = 0.05  # P(a block completes) with no step seen
    own_counts_after = 4  # weight (pseudo-trials) of the pooled rate in a masks-left count's estimate
    window = 32  # recent guesses whose outcomes decide the back-off
    probe_every = 8

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.stats = OverlapStats()
        self.inflight: Optional[Speculation] = None  # the guess queued during the last step
        self.recent: collections.deque[bool] = collections.deque(maxlen=self.window)  # hit or miss
        self._held = 0  # steps not guessed since the last probe, while backing off
        cap = engine.config.strategy.block_size + 1
        self.trials = np.zeros(cap, dtype=np.int64)  # per masks left: uncertain blocks seen
        self.completions = np.zeros(cap, dtype=np.int64)  # ... of which completed in that step
        cfg = engine.config
        taken = set(cfg.eos_token_ids) | {cfg.model.mask_token_id}
        # A stand-in for a token the guess assumes decided: neither a mask nor an end of sequence.
        self.placeholder = next(t for t in range(len(taken) + 1) if t not in taken)

    # -- the loop ----------------------------------------------------------------------------
    def step(self) -> list[Any]:
        """One engine step: the guess queued during the last step if it is exactly what the
        scheduler plans now (else the real step, queued now); the next step is guessed and queued
        before this one's decisions are read. Returns the finished requests."""
        eng = self.engine
        spec, self.inflight = self.inflight, None
        if spec is not None:
            self.release(spec)  # before the scheduler takes pages
        scheduled = eng.scheduler.schedule()
        if not scheduled:
            if spec is not None:
                self.record(hit=False)
            return []
        reqs = [r for r, _ in scheduled]
        plans = [p for _, p in scheduled]
        batch = pack_batch(reqs, plans, eng.config.cache.page_size, eng.kv_cache_manager)
        hit = spec is not None and self.matches(spec, reqs, plans, batch)
        if spec is not None:
            self.record(hit)
        if hit:
            cur = dataclasses.replace(spec.step, plans=plans, batch=batch)
        else:
            t0 = time.perf_counter()
            logits = eng._forward(reqs, batch)
            cur = Launched(reqs, plans, batch, eng.sampler.launch(batch, logits, reqs, eng._forbidden_for(logits)), t0)
        prefill = any(req.nfe == 0 for req in reqs)
        for req, plan in zip(reqs, plans):
            req.after_forward(plan)  # independent of the decisions: before the next step is guessed
        self.inflight = self.propose(cur, eng._forward)
        try:
            decisions = cur.pending.result()  # the host waits for this step (the next one is queued)
        except NonFiniteLogits as e:
            raise non_finite_error(reqs, e) from None
        self.observe(cur)  # how often blocks complete: whether to guess next time
        return eng._complete(reqs, plans, decisions, cur.t0, prefill)

    def drop(self) -> None:
        """Discard the guess in flight (its outputs are never read) and give back its pages."""
        spec, self.inflight = self.inflight, None
        if spec is not None:
            self.release(spec)
            self.record(hit=False)

    # -- 1 + 2: guess and queue ------------------------------------------------------------
    def propose(self, cur: Launched, forward: Callable[..., torch.Tensor]) -> Optional[Speculation]:
        """Queue a guess of the step after ``cur`` (before ``cur``'s results are read), or None."""
        eng, stats = self.engine, self.stats
        pending, batch = cur.pending, cur.batch
        if pending.take is None:
            return stats.skip("sampler")
        if batch.row_request.numel() == 0 or any(r.sampling_params.temperature > 0 for r in cur.reqs):
            return stats.skip("sampled")
        if eng._pending_aborts:
            return stats.skip("abort")
        sched, kv, cfg = eng.scheduler, eng.kv_cache_manager, eng.config
        if not hasattr(sched, "window_bound"):
            return stats.skip("scheduler")
        masks, sure = self._block_masks(batch)
        if self.hit_probability(masks, sure) < self.min_hit_probability:
            return stats.skip("unlikely")
        if self.backing_off():
            self._held += 1
            if self._held < self.probe_every:
                return stats.skip("backoff")
        self._held = 0
        running = list(sched.running)
        states = [(req, req.snapshot()) for req in running]
        reserved: list = []
        spec = None
        try:
            self._guess_fills(cur)
            eos = set(cfg.eos_token_ids)
            for req in cur.reqs:
                req.commit_ready_blocks(eos)
                sp = req.sampling_params
                if not req.stopped and sp.max_nfe is not None and req.nfe >= sp.max_nfe:
                    req.stopped = True  # the engine stops it after this step
            live = [r for r in running if not r.stopped]
            rt = cfg.runtime
            if sched.waiting and len(live) < rt.max_num_seqs:
                return stats.skip("admission")
            budget = rt.max_num_batched_tokens
            reqs, plans = [], []
            for req in live:  # BlockScheduler.schedule's pass over the running requests
                if sched.window_bound(req) > budget:
                    continue
                plan = req.plan(cfg)
                pages = kv.reserve(req.page_table, plan.write_end)
                if pages is None:
                    return stats.skip("pages")
                reserved += pages
                if plan.write_end > max(plan.write_start, plan.start) and not req.reads_below_cached:
                    return stats.skip("writes")
                budget -= plan.end - plan.start
                reqs.append(req)
                plans.append(plan)
            if not reqs:
                return stats.skip("empty")
            nxt = pack_batch(reqs, plans, cfg.cache.page_size, kv)
            if nxt.extras:
                return stats.skip("extras")
            src = source_rows(batch, cur.reqs, nxt, reqs)
            t0 = time.perf_counter()
            patch = DevicePatch(src, pending.take, pending.tokens, nxt.input_ids.shape[0], nxt.row_request.shape[0])
            logits = forward(reqs, nxt, patch=patch.ids)
            # The sampler runs on the guessed state (it may read request fields the plan set).
            step_pending = eng.sampler.launch(patch.sampler_batch(nxt), logits, reqs, eng._forbidden)
            spec = Speculation(Launched(reqs, plans, nxt, step_pending, t0), cur, reserved, src)
            return spec
        finally:
            for req, state in states:
                req.restore(state)  # page tables lose the reserved pages: nobody holds them
            if spec is None and reserved:
                kv.unreserve(reserved)

    def _block_masks(self, b: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """([NB] masks in each block of the step, [NB] masks it surely fills), host tensors."""
        mask = b.row_token == self.engine.config.model.mask_token_id  # [M]
        masks = torch.bincount(b.row_block[mask], minlength=b.block_forced.shape[0])  # [NB]
        return masks, self.engine.sampler.sure_fills(b)

    def hit_probability(self, masks: torch.Tensor, sure: torch.Tensor) -> float:
        """P(no block of the step completes beyond its sure fills), from the counts so far.

        Per masks-left count m: its completions and trials, shrunk towards the pooled rate of every
        count >= m (``own_counts_after`` pseudo-trials; blocks with more masks complete less often,
        so counts not seen yet borrow from those above), whose own prior is ``prior_completion``."""
        m = masks[(masks > 0) & (sure < masks)].clamp_max(len(self.trials) - 1).numpy()  # uncertain blocks
        c_up = np.cumsum(self.completions[::-1])[::-1]  # completions at counts >= m
        t_up = np.cumsum(self.trials[::-1])[::-1]
        pooled = (c_up[m] + self.prior_completion) / (t_up[m] + 1.0)
        w = self.own_counts_after
        p = (self.completions[m] + w * pooled) / (self.trials[m] + w)
        return float(np.prod(1.0 - p))

    def observe(self, cur: Launched) -> None:
        """Count, for the step's uncertain blocks, which completed (after its results were read)."""
        if cur.pending.take is None:
            return
        take, _ = cur.pending.host_rows()
        b = cur.batch
        masks, sure = self._block_masks(b)
        mask = b.row_token == self.engine.config.model.mask_token_id
        filled = torch.bincount(b.row_block[mask & take], minlength=masks.shape[0])  # [NB]
        uncertain = (masks > 0) & (sure < masks)
        m = masks[uncertain].clamp_max(len(self.trials) - 1).numpy()
        np.add.at(self.trials, m, 1)
        np.add.at(self.completions, m, (filled[uncertain] == masks[uncertain]).numpy().astype(np.int64))

    def _guess_fills(self, cur: Launched) -> None:
        """Write the placeholder into every mask of the blocks ``cur`` surely completes."""
        b = cur.batch
        mask = b.row_token == self.engine.config.model.mask_token_id  # [M]
        masks, sure = self._block_masks(b)
        complete = (masks > 0) & (sure >= masks)
        rows = (mask & complete[b.row_block]).nonzero().squeeze(1).tolist()
        req_of, pos_of = b.row_request.tolist(), b.row_position.tolist()
        for r in rows:
            cur.reqs[req_of[r]].canvas[pos_of[r]] = self.placeholder

    def record(self, hit: bool) -> None:
        """A queued guess was used (hit) or discarded."""
        if hit:
            self.stats.hits += 1
        else:
            self.stats.misses += 1
        self.recent.append(hit)

    def backing_off(self) -> bool:
        """More than ``1 - min_hit_probability`` of the recent guesses (at least half a window) missed."""
        n = len(self.recent)
        return n >= self.window // 2 and (n - sum(self.recent)) / n > 1.0 - self.min_hit_probability

    # -- 3: check ---------------------------------------------------------------------------
    def release(self, spec: Speculation) -> None:
        """Give the guess's reserved pages back (before the real scheduling takes pages)."""
        if spec.reserved:
            self.engine.kv_cache_manager.unreserve(spec.reserved)
            spec.reserved = []

    def matches(self, spec: Speculation, reqs: list[Any], plans: list[Any], batch: StepBatch) -> bool:
        """Is the queued guess exactly the step the synchronous loop schedules now?"""
        s = spec.step
        if len(reqs) != len(s.reqs) or any(a is not b for a, b in zip(reqs, s.reqs)) or plans != s.plans:
            return False
        take, tokens = spec.after.pending.host_rows()  # read already (the previous step's results)
        src = torch.from_numpy(spec.src)
        n, m = s.batch.input_ids.shape[0], s.batch.row_request.shape[0]
        if batch.input_ids.shape[0] != n or batch.row_request.shape[0] != m:
            return False
        ids_src, row_src, prev_src = src.split([n, m, m])
        guessed = dataclasses.replace(
            s.batch, input_ids=write_fills(ids_src, take, tokens, s.batch.input_ids),
            row_token=write_fills(row_src, take, tokens, s.batch.row_token),
            row_prev_token=write_fills(prev_src, take, tokens, s.batch.row_prev_token))
        return batches_equal(guessed, batch)
