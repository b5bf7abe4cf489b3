"""What a training run is: one dataclass, validated, saved next to the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from diffulex.tasks import SUBTASKS, TRAIN_MIX
from diffulex.tiny.sizes import TinySize

OBJECTIVES = ("mdm", "bd", "d2f")
TRAINABLE_FAMILIES = ("llada2", "llada", "sdar")


@dataclass
class TrainConfig:
    """A tiny model's training run (defaults per family: :data:`FAMILY_DEFAULTS`)."""

    family: str = "llada2"
    size: TinySize = field(default_factory=TinySize)
    # objective name -> share of the steps (mdm, bd, d2f; see diffulex.train.objectives)
    objectives: dict = field(default_factory=lambda: {"bd": 1.0})
    # Block sizes drawn per step (bd, d2f); each must divide seq_len.
    block_sizes: tuple = (8, 16, 32)
    # Row length in tokens: prompt + completion + EOS padding (bd's two copies make 2x this).
    seq_len: int = 64
    # bd only: largest fraction of visible answer tokens corrupted (LLaDA2.1 editing), and the
    # share of rows fed as DMax-style soft embeddings. 0: off.
    edit: float = 0.0
    soft: float = 0.0
    task_mix: dict = field(default_factory=lambda: dict(TRAIN_MIX))
    steps: int = 6000
    batch_size: int = 1024
    lr: float = 2e-3
    warmup_steps: int = 300
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # LLaDA2's aux-loss-free balancing: router bias step per update (0: off).
    router_bias_step: float = 1e-3
    seed: int = 0
    device: str = "auto"
    log_every: int = 100
    # Stop early (recorded in the log and the model card) when this many minutes have passed.
    max_minutes: Optional[float] = None
    # Held-out problems per subtask scored through the engine once the weights are written (0: skip).
    eval_samples: int = 200

    def validate(self) -> None:
        """ValueError naming the first field that makes the run impossible."""
        if self.family not in TRAINABLE_FAMILIES:
            raise ValueError(f"family={self.family!r}: trainable families are {', '.join(TRAINABLE_FAMILIES)}")
        if isinstance(self.size, dict):
            self.size = TinySize(**self.size)
        self.size.validate()
        if self.family == "llada" and self.size.heads * self.size.head_dim != self.size.hidden:
            raise ValueError(f"size.head_dim={self.size.head_dim}: LLaDA's head_dim is hidden / heads = "
                             f"{self.size.hidden // self.size.heads}")
        unknown = set(self.objectives) - set(OBJECTIVES)
        if unknown or not self.objectives or any(w <= 0 for w in self.objectives.values()):
            raise ValueError(f"objectives={self.objectives!r}: expected positive shares of {OBJECTIVES}")
        self.block_sizes = tuple(self.block_sizes)
        if not self.block_sizes or any(b < 1 for b in self.block_sizes):
            raise ValueError(f"block_sizes={self.block_sizes!r}: expected positive ints")
        bad = [b for b in self.block_sizes if self.seq_len % b]
        if bad:
            raise ValueError(f"seq_len={self.seq_len} is not a multiple of block_sizes {bad}; pick a seq_len "
                             "that every block size divides")
        if self.seq_len > self.size.max_pos:
            raise ValueError(f"seq_len={self.seq_len} exceeds size.max_pos={self.size.max_pos}")
        for name in ("edit", "soft"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a fraction in [0, 1]")
        if (self.edit or self.soft) and "bd" not in self.objectives:
            raise ValueError("edit / soft apply to the bd objective: add bd to objectives or set them to 0")
        if self.soft and not self.edit:
            raise ValueError("soft > 0 needs edit > 0 (soft inputs stand for decided, editable tokens)")
        bad_tasks = set(self.task_mix) - set(SUBTASKS)
        if bad_tasks or not self.task_mix:
            raise ValueError(f"task_mix={self.task_mix!r}: unknown subtasks {sorted(bad_tasks)}; known: "
                             f"{', '.join(SUBTASKS)}")
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive int")
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"lr={self.lr}, warmup_steps={self.warmup_steps}, min_lr_ratio={self.min_lr_ratio}: "
                             "expected lr > 0, warmup_steps >= 0, min_lr_ratio in [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


# The shipped models' settings: block-causal families train block diffusion (llada2 with
# editing and soft inputs, so `sampling=edit` and `dmax` have a model that can fix tokens);
# the dense LLaDA trains full-attention masked diffusion (vanilla) and diffusion forcing (d2f).
FAMILY_DEFAULTS: dict[str, dict] = {
    "llada2": dict(size=TinySize(hidden=128, heads=4, kv_heads=2, head_dim=32, inter=256, layers=4,
                                 max_pos=256, experts=8, top_k=2, moe_inter=96),
                   objectives={"bd": 1.0}, block_sizes=(8, 16, 32), edit=0.3, soft=0.5, steps=2400),
    "llada": dict(size=TinySize(hidden=128, heads=4, kv_heads=2, head_dim=32, inter=384, layers=4, max_pos=256),
                  objectives={"mdm": 0.6, "d2f": 0.4}, block_sizes=(8, 16, 32), steps=7000),
    "sdar": dict(size=TinySize(hidden=128, heads=4, kv_heads=2, head_dim=32, inter=384, layers=4, max_pos=256),
                 objectives={"bd": 1.0}, block_sizes=(4, 8, 16, 32), steps=3800),
}


def family_config(family: str, **overrides) -> TrainConfig:
    """The shipped settings of ``family`` with ``overrides`` applied, validated."""
    if family not in FAMILY_DEFAULTS:
        raise ValueError(f"family={family!r}: trainable families are {', '.join(FAMILY_DEFAULTS)}")
    cfg = TrainConfig(family=family, **{**FAMILY_DEFAULTS[family], **overrides})
    cfg.validate()
    return cfg
