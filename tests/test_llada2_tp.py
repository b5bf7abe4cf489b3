"""Tensor parallelism (2 CPU ranks over gloo) reproduces the single-rank logits."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.parallel import TPGroup
from diffulex.models.llada2 import LLaDA2MoeForDiffusion
from test_llada2_model import CONFIG, random_weights


def logits_of(rank: int, size: int, path: str) -> torch.Tensor:
    model = LLaDA2MoeForDiffusion(CONFIG, tp=TPGroup(rank, size), dtype=torch.float32)
    model.load_weights(path)
    ids = torch.randint(0, CONFIG["vocab_size"], (11,), generator=torch.Generator().manual_seed(0))
    meta = AttentionMetadata.for_dense([11], block_size=4)
    with torch.no_grad():
        return model.compute_logits(model(ids, meta.positions, meta))


def worker(rank: int, size: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.save(logits_of(rank, size, path), f"{path}/logits_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tp2_matches_tp1(tmp_path):
    save_file(random_weights(CONFIG), str(tmp_path / "model.safetensors"))
    expected = logits_of(0, 1, str(tmp_path))
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"logits_rank{rank}.pt")
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
