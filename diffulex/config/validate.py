"""Cross-group checks that need checkpoint facts: topology, LoRA, runtime flags."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .enums import Device, KernelBackend
from .errors import Notes, config_error

if TYPE_CHECKING:
    from .config import Config


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def validate_parallel(cfg: "Config", facts: Any) -> None:
    p = cfg.parallel
    if p.device == Device.AUTO:
        p.device = Device.CUDA if cuda_available() else Device.CPU
    if p.device == Device.CUDA and not cuda_available():
        raise config_error("parallel.device", "cuda", "'cpu' on a machine without CUDA", "set device='cpu' (or 'auto')")
    if p.backend is None:
        p.backend = "nccl" if p.device == Device.CUDA else "gloo"
    if p.backend == "nccl" and p.device != Device.CUDA:
        raise config_error("parallel.backend", "nccl", "'gloo' on CPU", "leave parallel.backend unset")
    tp, heads, kv = p.tensor_parallel_size, facts.num_attention_heads, facts.num_key_value_heads
    if heads % tp:
        raise config_error("parallel.tensor_parallel_size", tp, f"a divisor of the model's {heads} attention heads",
                           "pick a tensor_parallel_size that divides the head count")
    if kv % tp and tp % kv:
        raise config_error("parallel.tensor_parallel_size", tp,
                           f"a divisor or multiple of the model's {kv} KV heads", "pick another tensor_parallel_size")
    ep = p.expert_parallel_size
    if ep > 1 and (facts.num_experts == 0 or facts.num_experts % ep):
        raise config_error("parallel.expert_parallel_size", ep,
                           f"1, or a divisor of num_experts={facts.num_experts} for MoE families",
                           "set expert_parallel_size=1 for dense models")
    if p.device == Device.CUDA:
        import torch

        visible = list(range(torch.cuda.device_count()))
        ids = p.device_ids or visible
        bad = [i for i in ids if i not in visible]
        if bad:
            raise config_error("parallel.device_ids", p.device_ids, f"ids among the visible devices {visible}",
                               "fix device_ids or CUDA_VISIBLE_DEVICES")
        if len(ids) < p.world_size:
            raise config_error("parallel world size", p.world_size,
                               f"at most {len(ids)} ranks (one per device: {ids})",
                               "lower tensor/expert/data_parallel_size or expose more GPUs")
        p.device_ids = ids[: p.world_size]
    elif p.device_ids:
        raise config_error("parallel.device_ids", p.device_ids, "empty on CPU", "drop device_ids or use device='cuda'")


def validate_lora(cfg: "Config") -> None:
    lora = cfg.lora
    if lora.enabled is None:
        lora.enabled = bool(lora.path)
    if not lora.enabled:
        if lora.path:
            raise config_error("lora.enabled", False, "True when lora.path is set",
                               "drop lora.path, or leave lora.enabled unset")
        return
    if not lora.path:
        raise config_error("lora.path", lora.path, "an adapter directory when LoRA is enabled",
                           "pass lora_path='/path/to/adapter' or set use_lora=False")
    path = os.path.abspath(os.path.expanduser(lora.path))
    if not os.path.isdir(path):
        raise config_error("lora.path", path, "an existing PEFT adapter directory",
                           "point lora_path at the adapter (the folder holding adapter_config.json)")
    from ..lora.adapter import check_adapter, checkpoint_tensor_names

    # Targets must name modules of this checkpoint (by module-name suffix, as PEFT matches them).
    check_adapter(path, checkpoint_tensor_names(cfg.model.path))
    lora.path = path


def validate_runtime(cfg: "Config", facts: Any, notes: Notes) -> None:
    from .enums import Device

    rt, on_cuda = cfg.runtime, cfg.parallel.device == Device.CUDA
    if rt.enforce_eager is None:
        rt.enforce_eager = not on_cuda
    elif not rt.enforce_eager and not on_cuda:
        raise config_error("runtime.enforce_eager", False, "True on CPU (CUDA graphs need CUDA)",
                           "leave enforce_eager unset or set it to True")
    if rt.kernels == KernelBackend.AUTO:
        rt.kernels = KernelBackend.TRITON if on_cuda else KernelBackend.TORCH
    if rt.kernels == KernelBackend.TRITON and not on_cuda:
        raise config_error("runtime.kernels", "triton", "'torch' or 'auto' on CPU (Triton kernels need CUDA)",
                           "use kernels='auto' (Triton on CUDA, PyTorch on CPU)")
    limit = facts.max_position_embeddings
    if rt.max_model_len is None:
        rt.max_model_len = limit
    elif rt.max_model_len > limit:
        notes.changed("runtime.max_model_len", rt.max_model_len, limit, "clamped to the model's maximum length")
        rt.max_model_len = limit
    s = cfg.strategy
    window = s.block_size * s.buffer_size
    if rt.max_num_batched_tokens < window:
        raise config_error("runtime.max_num_batched_tokens", rt.max_num_batched_tokens,
                           f">= block_size*buffer_size = {window}", "raise max_num_batched_tokens")
    if s.block_size > rt.max_model_len:
        raise config_error("strategy.block_size", s.block_size, f"<= max_model_len={rt.max_model_len}",
                           "use a smaller block")
