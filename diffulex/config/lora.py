"""The ``lora`` config group: a PEFT-format adapter applied to the base weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class LoRAConfig:
    """A LoRA adapter directory (adapter_config.json + adapter_model.safetensors)."""

    # Adapter directory; empty: no adapter.
    path: str = ""
    # None: enabled exactly when `path` is set. True without a path is an error.
    enabled: Optional[bool] = None
    # True: fold scale*B@A into the base weights at load; False: apply unmerged per step.
    merge: bool = True
