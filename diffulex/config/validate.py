"""Cross-group checks that need checkpoint facts: topology, LoRA, runtime flags."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from .enums import Device, KernelBackend
from .errors import Notes, config_error
from .parallel import LaunchEnv, Launcher

if TYPE_CHECKING:
    from .config import Config


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def validate_parallel(cfg: "Config", facts: Any) -> None:
    p = cfg.parallel
    launch = _resolve_launcher(p)
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
    if launch is not None and launch.world_size != p.world_size:
        raise config_error("parallel world size", p.world_size,
                           f"the launcher's WORLD_SIZE={launch.world_size} (the world size is tensor x expert x "
                           f"data parallel size, here {p.tensor_parallel_size} x {p.expert_parallel_size} x "
                           f"{p.data_parallel_size})",
                           "make torchrun's --nproc-per-node x --nnodes equal the product of the parallel sizes, "
                           "or change the sizes (or set parallel.launcher='spawn' for an independent engine "
                           "in each process)")
    if p.device == Device.CUDA:
        import torch

        visible = list(range(torch.cuda.device_count()))
        ids = p.device_ids or visible
        bad = [i for i in ids if i not in visible]
        if bad:
            raise config_error("parallel.device_ids", p.device_ids, f"ids among the visible devices {visible}",
                               "fix device_ids or CUDA_VISIBLE_DEVICES")
        # Under a launcher each node holds LOCAL_WORLD_SIZE ranks; rank LOCAL_RANK takes ids[LOCAL_RANK].
        local = launch.local_world_size if launch is not None else p.world_size
        if launch is not None and len(ids) < local:
            raise config_error("environment LOCAL_WORLD_SIZE", local,
                               f"at most {len(ids)} ranks on this node (one per device: {ids})",
                               "lower torchrun's --nproc-per-node, or expose more GPUs (CUDA_VISIBLE_DEVICES, "
                               "parallel.device_ids)")
        if len(ids) < local:
            raise config_error("parallel world size", p.world_size,
                               f"at most {len(ids)} ranks (one per device: {ids})",
                               "lower tensor/expert/data_parallel_size or expose more GPUs")
        p.device_ids = ids[:local]
    elif p.device_ids:
        raise config_error("parallel.device_ids", p.device_ids, "empty on CPU", "drop device_ids or use device='cuda'")


def _resolve_launcher(p: Any) -> Optional[LaunchEnv]:
    """Settle ``parallel.launcher`` (auto → env or spawn); the launcher's layout in env mode, else None.

    auto picks env only for a real multi-rank launch (WORLD_SIZE > 1 and RANK set), so a
    script run with a stray WORLD_SIZE=1 still spawns its own ranks as before.
    """
    launch = LaunchEnv.read(os.environ) if p.launcher != Launcher.SPAWN else None
    if p.launcher == Launcher.AUTO:
        p.launcher = Launcher.ENV if launch is not None and launch.world_size > 1 else Launcher.SPAWN
    if p.launcher == Launcher.SPAWN:
        return None
    if launch is None:
        raise config_error("parallel.launcher", "env", "'env' only in a process started by torchrun "
                           "(or a launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, "
                           "MASTER_ADDR, MASTER_PORT)",
                           "start the script with torchrun, or set parallel.launcher to 'auto' or 'spawn'")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if launch.world_size > 1 and missing:
        raise config_error("parallel.launcher", "env", f"'env' with {' and '.join(missing)} set for the rendezvous",
                           "start the script with torchrun, which sets them")
    return launch


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
