"""The training loop: seeded batches of the configured objectives, AdamW, a logged loss curve,
and the weights written in the family's real checkpoint layout."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from diffulex.tiny.recipes import TOKENIZERS, config_json
from diffulex.tiny.tokenizer import WORD_MERGES, TokenizerSpec, build_tokenizer
from diffulex.tiny.weights import tensor_specs
from diffulex.tiny.writer import write_checkpoint
from diffulex.train import objectives as obj
from diffulex.train.attention import TrainingMetadata
from diffulex.train.config import TrainConfig
from diffulex.train.data import BatchMaker, batch_stream
from diffulex.train.model import build_trainable, export_tensors


def trained_tokenizer(family: str) -> TokenizerSpec:
    """The family's tokenizer (real special tokens) without digit merges: one token per digit."""
    return dataclasses.replace(TOKENIZERS[family], merges=WORD_MERGES)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """One run of :class:`TrainConfig`: ``step()`` trains one batch, ``save(dir)`` writes the checkpoint."""

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.device = _device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.tok_spec = trained_tokenizer(cfg.family)
        tokenizer = build_tokenizer(self.tok_spec)
        self.hf_config = config_json(cfg.family, cfg.size, self.tok_spec)
        mask_id, eos_id = self._mask_id(), self.tok_spec.role_id("eos_token")
        # Ids a corrupted answer token is drawn from (LLaDA2.1 editing): the answer alphabet and EOS.
        edit_ids = sorted({i for ch in "0123456789- " for i in tokenizer.encode(ch, add_special_tokens=False).ids}
                          | {eos_id})
        self.batches = BatchMaker(cfg, self.tok_spec, mask_id, eos_id, edit_ids)
        self.mask_id = mask_id
        self.model = build_trainable(cfg.family, self.hf_config, torch.Generator().manual_seed(cfg.seed), self.device)
        decay = [p for n, p in self.model.named_parameters() if p.dim() > 1]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() <= 1]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
        self.routers = [m for m in self.model.modules() if hasattr(m, "expert_bias")]
        self._loads: dict[int, torch.Tensor] = {}
        for r in self.routers:
            r.register_forward_hook(self._count_load)
        self.step_index = 0

    def _mask_id(self) -> int:
        spec = self.tok_spec
        if "mask_token" in spec.roles:
            return spec.role_id("mask_token")
        return self.hf_config["mask_token_id"]  # LLaDA: <|mdm_mask|>, named by config.json

    # -- one step ---------------------------------------------------------------------------
    def _count_load(self, module, inputs, output) -> None:
        ids = output[0]  # [T, k]
        self._loads[id(module)] = torch.bincount(ids.flatten(), minlength=module.num_experts)[:module.num_experts]

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def loss(self, batch: obj.Batch) -> torch.Tensor:
        """Weighted cross-entropy over the batch, normalised by the positions that carry loss."""
        s, n = batch.input_ids.shape
        meta = TrainingMetadata.build(batch.positions, batch.mask)
        ids = batch.input_ids.reshape(-1)
        embeds = None
        if batch.soft is not None:  # a E[token] + (1 - a) E[mask] where soft < 1
            a = batch.soft.reshape(-1, 1)
            embeds = a * self.model.embed(ids) + (1 - a) * self.model.embed(torch.full_like(ids, self.mask_id))
        hidden = self.model(None if embeds is not None else ids, meta.positions, meta, inputs_embeds=embeds)
        w = batch.weights.reshape(-1)
        rows = w > 0
        logits = self.model.compute_logits(hidden[rows])  # [M, V]
        ce = F.cross_entropy(logits, batch.targets.reshape(-1)[rows], reduction="none")
        return (ce * w[rows]).sum() / rows.sum().clamp(min=1)

    def step(self, name: str, batch: obj.Batch) -> dict:
        """Train one batch of objective ``name``; returns the step's log record."""
        lr = self.lr_at(self.step_index)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = self.loss(batch.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self._balance_routers()
        self.step_index += 1
        return {"step": self.step_index, "objective": name, "loss": float(loss.detach()), "lr": lr,
                "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def _balance_routers(self) -> None:
        """Aux-loss-free balancing (LLaDA2 / DeepSeek-V3): raise the bias of under-used experts."""
        step = self.cfg.router_bias_step
        if not step:
            return
        for r in self.routers:
            load = self._loads.get(id(r))
            if load is not None:
                r.expert_bias += step * torch.sign(load.float().mean() - load.float())

    # -- output -----------------------------------------------------------------------------
    def save(self, out_dir) -> Path:
        """Write the checkpoint (the family's real layout) and the run's config next to it."""
        specs = tensor_specs(self.cfg.family, self.hf_config["vocab_size"], self.cfg.size)
        tensors = export_tensors(self.model, specs)
        out = write_checkpoint(self.cfg.family, out_dir, tensors, self.cfg.size, self.tok_spec)
        (out / "train_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        return out


def train(cfg: TrainConfig, out_dir, log: Optional[Callable[[dict], None]] = None,
          workers: Optional[int] = None) -> Path:
    """Run ``cfg`` to the end (or ``max_minutes``), write the checkpoint to ``out_dir`` with
    ``train_config.json`` and the loss curve ``train_log.jsonl``; returns the directory.
    ``workers``: batch-building processes (default: 1 on CUDA, 0 on the CPU)."""
    trainer = Trainer(cfg)
    if workers is None:
        workers = 1 if trainer.device.type == "cuda" else 0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    window: list[float] = []
    stopped_early = False
    with open(out / "train_log.jsonl", "w") as f:
        for name, batch in batch_stream(trainer.batches, cfg.steps, workers):
            rec = trainer.step(name, batch)
            window.append(rec["loss"])
            if trainer.step_index % cfg.log_every == 0 or trainer.step_index == cfg.steps:
                rec.update(mean_loss=sum(window) / len(window), elapsed_s=round(time.perf_counter() - t0, 2))
                window = []
                f.write(json.dumps(rec) + "\n")
                f.flush()
                if log is not None:
                    log(rec)
            if cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes:
                stopped_early = True
                break
    trainer.save(out)
    summary = {"steps_done": trainer.step_index, "stopped_early": stopped_early,
               "train_seconds": round(time.perf_counter() - t0, 1), "device": str(trainer.device),
               "parameters": sum(p.numel() for p in trainer.model.parameters())}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out
