"""The batch stream of a training run: seeded, in a background process on the GPU machine.

:class:`BatchMaker` draws each step's objective, block size and problems from its own seeded
generators, so the stream is the same whether it runs in the trainer's process or in one
worker process (``workers=1``: the next batches are built while the GPU runs this one).
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import random
from typing import Iterator

import torch

from diffulex.tasks import sample_train
from diffulex.train import objectives as obj
from diffulex.tiny.tokenizer import TokenizerSpec, build_tokenizer
from diffulex.train.config import TrainConfig


class BatchMaker:
    """Builds ``(objective name, Batch)`` pairs for ``cfg`` from its seed."""

    def __init__(self, cfg: TrainConfig, tok_spec: TokenizerSpec, mask_id: int, eos_id: int,
                 edit_ids: list[int]) -> None:
        # Plain arguments only: a worker process is started with them (no tensors to pickle).
        self.args = (cfg, tok_spec, mask_id, eos_id, list(edit_ids))
        self.cfg = cfg
        self.tokenizer = build_tokenizer(tok_spec)
        self.mask_id, self.eos_id, self.edit_tokens = mask_id, eos_id, torch.tensor(edit_ids)
        self.rng = random.Random(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.names = list(cfg.objectives)
        self.weights = [cfg.objectives[n] for n in self.names]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def next(self) -> tuple[str, obj.Batch]:
        cfg = self.cfg
        name = self.rng.choices(self.names, self.weights)[0]
        problems = [sample_train(self.rng, cfg.task_mix) for _ in range(cfg.batch_size)]
        prompts = self._encode([p.prompt for p in problems])
        completions = [c + [self.eos_id] for c in self._encode([p.completion for p in problems])]
        block = self.rng.choice(cfg.block_sizes)
        if name == "mdm":  # full attention: the canvas length varies like a user's max_tokens
            need = max(len(p) + len(c) for p, c in zip(prompts, completions))
            rows = obj.make_rows(prompts, completions, self.eos_id, self.rng.randint(need, max(need, cfg.seq_len)))
            return name, obj.mdm(rows, self.mask_id, self.gen)
        rows = obj.make_rows(prompts, completions, self.eos_id, cfg.seq_len)
        if name == "d2f":
            return name, obj.d2f(rows, self.mask_id, block, self.gen)
        return name, obj.bd(rows, self.mask_id, block, self.gen, edit=cfg.edit, soft=cfg.soft,
                            edit_tokens=self.edit_tokens)


def _worker(args: tuple, queue, count: int) -> None:
    torch.set_num_threads(1)
    maker = BatchMaker(*args)
    for _ in range(count):
        name, batch = maker.next()
        # As numpy arrays: torch tensors would travel through shared memory, which sandboxes limit.
        queue.put((name, {k: None if v is None else v.numpy() for k, v in vars(batch).items()}))


def batch_stream(maker: BatchMaker, count: int, workers: int = 0) -> Iterator[tuple[str, obj.Batch]]:
    """``count`` batches of ``maker``: in this process (``workers=0``) or built ahead by one worker."""
    if workers == 0:
        for _ in range(count):
            yield maker.next()
        return
    ctx = mp.get_context("spawn")  # the trainer may hold CUDA already: no fork
    queue = ctx.Queue(maxsize=16)
    proc = ctx.Process(target=_worker, args=(maker.args, queue, count), daemon=True)
    proc.start()
    try:
        for _ in range(count):
            while True:
                try:
                    item = queue.get(timeout=2)
                    break
                except queue_mod.Empty:
                    if not proc.is_alive():
                        raise RuntimeError(f"the batch worker process died (exit code {proc.exitcode})") from None
            name, arrays = item
            yield name, obj.Batch(**{k: None if v is None else torch.from_numpy(v) for k, v in arrays.items()})
    finally:
        proc.terminate()
        proc.join(timeout=10)
