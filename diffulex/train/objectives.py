"""Training batches of the diffusion objectives, as (inputs, positions, mask, targets, weights).

Every objective starts from the same clean rows: prompt, completion, then EOS up to the row's
length (LLaDA SFT's EOS padding, so the models learn where an answer ends). Positions from the
prompt's end on are the *generated region*; the prompt is never noised.

* ``mdm`` — masked diffusion with full attention (LLaDA SFT): ``t ~ U(0, 1)`` per row, each
  generated token masked with probability ``t``, loss on masked tokens weighted ``1 / t``.
* ``bd`` — block diffusion (SDAR / LLaDA2 training): the row twice, noisy copy then clean copy,
  blocks of ``B`` aligned at position 0; a noisy query of block ``i`` sees the noisy block ``i``
  and the clean blocks before it, a clean query the clean blocks up to its own. Each block has
  its own ``t``; loss on the noisy copy's masks, weighted ``1 / t``.
* ``bd`` with ``edit`` (LLaDA2.1 token-to-token editing): besides the masks, a fraction of the
  noisy copy's *visible* generated tokens is replaced by other tokens, and the loss asks for the
  original at every generated position of the noisy copy (masks ``1 / t``, visible ones ``1``);
  with ``soft`` some visible tokens enter as the mix ``a E[token] + (1 - a) E[mask]`` that DMax
  feeds back.
* ``d2f`` — discrete diffusion forcing: one copy, block-causal over the generated region with a
  bidirectional prompt (the engine's ``d2f`` attention), mask ratios increasing block by block
  (later blocks noisier, as in a pipeline of blocks in flight).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Rows:
    """Clean rows: ``ids [S, L]``, ``prompt_len [S]`` (both long, on the CPU)."""

    ids: torch.Tensor
    prompt_len: torch.Tensor

    @property
    def generated(self) -> torch.Tensor:
        """``[S, L]`` bool: positions at or after the prompt's end."""
        return torch.arange(self.ids.shape[1])[None, :] >= self.prompt_len[:, None]


@dataclass
class Batch:
    """One objective's batch. ``weights`` is 0 where no loss is taken."""

    input_ids: torch.Tensor  # [S, N] long
    positions: torch.Tensor  # [S, N] long
    mask: torch.Tensor  # [S or 1, N, N] bool
    targets: torch.Tensor  # [S, N] long
    weights: torch.Tensor  # [S, N] float
    soft: torch.Tensor | None = None  # [S, N] float in [0, 1]: weight of the token embedding (1: hard)

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) if t is not None else None for t in
                       (self.input_ids, self.positions, self.mask, self.targets, self.weights, self.soft)))


def make_rows(prompts: list[list[int]], completions: list[list[int]], eos_id: int, length: int) -> Rows:
    """Prompt + completion + EOS padding to ``length`` per row; ValueError if a row does not fit."""
    ids = np.full((len(prompts), length), eos_id, dtype=np.int64)
    plen = np.empty(len(prompts), dtype=np.int64)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        if n > length:
            raise ValueError(f"a training row of {n} tokens does not fit seq length {length}")
        ids[i, :len(p)] = p
        ids[i, len(p):n] = c
        plen[i] = len(p)
    return Rows(torch.from_numpy(ids), torch.from_numpy(plen))


def _noise_level(shape, gen: torch.Generator, eps: float = 1e-3) -> torch.Tensor:
    return eps + (1 - eps) * torch.rand(shape, generator=gen)


def mdm(rows: Rows, mask_id: int, gen: torch.Generator) -> Batch:
    """Masked diffusion over the whole row, full attention."""
    s, n = rows.ids.shape
    t = _noise_level((s, 1), gen)  # [S, 1]
    masked = rows.generated & (torch.rand(s, n, generator=gen) < t)  # [S, N]
    inputs = torch.where(masked, mask_id, rows.ids)
    weights = masked.float() / t
    return Batch(inputs, torch.arange(n).expand(s, n), torch.ones(1, n, n, dtype=torch.bool), rows.ids, weights)


def _block_t(rows: Rows, block: int, gen: torch.Generator, increasing: bool) -> torch.Tensor:
    """``[S, L]``: each position's noise level, one level per block (sorted up when ``increasing``)."""
    s, n = rows.ids.shape
    t = _noise_level((s, -(-n // block)), gen)  # [S, blocks]
    if increasing:
        t = t.sort(dim=1).values
    return t.repeat_interleave(block, dim=1)[:, :n]


def bd(rows: Rows, mask_id: int, block: int, gen: torch.Generator, edit: float = 0.0,
       soft: float = 0.0, edit_tokens: torch.Tensor | None = None) -> Batch:
    """Block diffusion over a noisy + clean copy (``[S, 2L]``); see the module docstring.

    ``edit``: the largest fraction of visible generated tokens replaced (per row ``U(0, edit)``),
    by ids drawn uniformly from ``edit_tokens``. ``soft``: the fraction of rows whose visible
    generated tokens enter as soft embeddings (token weight ``U(0.3, 1)`` each).
    """
    s, n = rows.ids.shape
    if n % block:
        raise ValueError(f"bd: seq length {n} is not a multiple of block size {block}")
    gen_region = rows.generated
    t = _block_t(rows, block, gen, increasing=False)  # [S, L]
    masked = gen_region & (torch.rand(s, n, generator=gen) < t)
    noisy = torch.where(masked, mask_id, rows.ids)
    weights = masked.float() / t
    soft_w = None
    if edit > 0:
        if edit_tokens is None:
            raise ValueError("bd: edit > 0 needs edit_tokens (the ids corrupted tokens are drawn from)")
        visible = gen_region & ~masked
        rate = edit * torch.rand(s, 1, generator=gen)
        corrupt = visible & (torch.rand(s, n, generator=gen) < rate)
        draws = edit_tokens[torch.randint(len(edit_tokens), (s, n), generator=gen)]
        noisy = torch.where(corrupt, draws, noisy)
        weights = weights + visible.float()  # predict the original at every visible position too
        if soft > 0:
            rows_soft = torch.rand(s, 1, generator=gen) < soft
            a = 0.3 + 0.7 * torch.rand(s, n, generator=gen)
            soft_w = torch.where(visible & rows_soft, a, torch.ones(s, n))
    blk = torch.arange(n) // block  # [L]
    same = blk[:, None] == blk[None, :]
    before = blk[None, :] < blk[:, None]
    upto = blk[None, :] <= blk[:, None]
    zeros = torch.zeros(n, n, dtype=torch.bool)
    mask = torch.cat([torch.cat([same, before], 1), torch.cat([zeros, upto], 1)], 0)  # [2L, 2L]
    pos = torch.arange(n)
    inputs = torch.cat([noisy, rows.ids], 1)
    targets = torch.cat([rows.ids, rows.ids], 1)
    full_w = torch.cat([weights, torch.zeros(s, n)], 1)
    soft_full = None if soft_w is None else torch.cat([soft_w, torch.ones(s, n)], 1)
    return Batch(inputs, torch.cat([pos, pos]).expand(s, 2 * n), mask[None], targets, full_w, soft_full)


def d2f(rows: Rows, mask_id: int, block: int, gen: torch.Generator) -> Batch:
    """Discrete diffusion forcing: one copy, block-causal generated region, bidirectional prompt."""
    s, n = rows.ids.shape
    t = _block_t(rows, block, gen, increasing=True)
    masked = rows.generated & (torch.rand(s, n, generator=gen) < t)
    pos = torch.arange(n)
    key_hi = (pos // block + 1) * block  # [L]
    key_hi = torch.where(pos[None, :] < rows.prompt_len[:, None], rows.prompt_len[:, None], key_hi[None, :])  # [S, L]
    mask = pos[None, None, :] < key_hi[:, :, None]  # [S, L, L]
    return Batch(torch.where(masked, mask_id, rows.ids), pos.expand(s, n), mask, rows.ids, masked.float() / t)
