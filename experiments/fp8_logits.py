"""Logits error of FP8 weights against full precision on a few prompts (CPU or GPU).

    python experiments/fp8_logits.py [--models llada2,llada,sdar] [--blocks 128x128,1x0] [--checkpoint DIR]

For each model (the shipped trained tiny ones by default, or ``--checkpoint DIR``) one engine
model is built in full precision and one per FP8 tile size (``quantization.weights=fp8``); each
prompt followed by one block of mask tokens runs as a block-causal prefill through both, and the
full-vocabulary logits are compared: max |diff| / max |ref| and mean |diff| / mean |ref| per
prompt (the table reports the largest over prompts), the median over all positions of each
position's max |diff| / max |ref| (MoE models: a few positions whose routing flips dominate the
max), and the top-1 agreement over all positions.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

PROMPTS = ["Solve: 12 + 30.", "Solve: 871 + 136.", "Solve: 305 - 48.", "Solve: 7 * 8.", "Solve: 4021 + 3999."]
PAGE = 16


def prefill_logits(runner, ids: list[int], block: int) -> torch.Tensor:
    """Logits ``[N, V]`` of ``ids`` in one block-causal prefill on the runner's model."""
    from diffulex.layers.attention_metadata import AttentionMetadata

    model, dev = runner.model, runner.device
    n = len(ids)
    pos = torch.arange(n, device=dev)
    pages = torch.arange(-(-n // PAGE), device=dev)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, n], device=dev), positions=pos, context_lens=torch.tensor([0], device=dev),
        page_table=pages[None], slot_mapping=pages[pos // PAGE] * PAGE + pos % PAGE,
        key_lo=torch.zeros_like(pos), key_hi=(pos // block + 1) * block, cache_only=torch.tensor([False], device=dev),
        logits_indices=pos, page_size=PAGE)
    caches = [(torch.zeros(len(pages), PAGE, h, d, dtype=runner.dtype, device=dev),
               torch.zeros(len(pages), PAGE, h, d, dtype=runner.dtype, device=dev)) for h, d in model.kv_cache_spec()]
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(ids, device=dev), pos, meta, caches)).float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llada2,llada,sdar", help="trained tiny families")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint directory instead of the tiny models")
    parser.add_argument("--blocks", default="128x128,1x0", help="FP8 tiles bn x bk (0: whole dimension)")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from diffulex.config import Config
    from diffulex.engine.distributed import ParallelState
    from diffulex.engine.model_runner import ModelRunner
    from diffulex.tiny import ensure_tiny_checkpoint

    paths = ([opts.checkpoint] if opts.checkpoint else
             [str(ensure_tiny_checkpoint(f, trained=True)) for f in opts.models.split(",")])
    blocks = [[int(v) for v in b.split("x")] for b in opts.blocks.split(",")]
    fmt = "{:<28} {:<10} {:>12} {:>13} {:>15} {:>7}"
    print(fmt.format("checkpoint", "block", "max rel err", "mean rel err", "median pos err", "top-1"))
    for path in paths:
        full = ModelRunner(Config(path, quantization="none"), ParallelState())
        cfg = full.config
        block = cfg.strategy.block_size
        prompts = [cfg.tokenizer(p)["input_ids"] + [cfg.mask_token_id] * block for p in PROMPTS]
        refs = [prefill_logits(full, ids, block) for ids in prompts]
        for tile in blocks:
            fp8 = ModelRunner(Config(path, quantization={"weights": "fp8", "weight_block_size": tile}), ParallelState())
            max_rel = mean_rel = 0.0
            agree = total = 0
            rows = []
            for ids, ref in zip(prompts, refs):
                got = prefill_logits(fp8, ids, block)
                diff = (got - ref).abs()
                rows.append(diff.amax(-1) / ref.abs().amax(-1))
                max_rel = max(max_rel, (diff.max() / ref.abs().max()).item())
                mean_rel = max(mean_rel, (diff.mean() / ref.abs().mean()).item())
                agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
                total += ref.shape[0]
            print(fmt.format(os.path.basename(path.rstrip("/")), "x".join(map(str, tile)), f"{max_rel:.2e}",
                             f"{mean_rel:.2e}", f"{torch.cat(rows).median().item():.2e}", f"{agree / total:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
