"""The one table that maps the seed's flat keyword names onto the config tree.

``Diffulex(model, decoding_strategy="d2f", block_size=32, tensor_parallel_size=2)`` is
the seed's flat style; each flat name lands on exactly one ``group.field``. Two names are
special: ``decoding_strategy`` and ``sampling_mode`` choose the *class* of their group.
"""

from __future__ import annotations

FLAT_ALIASES: dict[str, str] = {
    # model
    "model_name": "model.name",
    "mask_token_id": "model.mask_token_id",
    "dtype": "model.dtype",
    "tiny": "model.tiny",
    "trained": "model.trained",
    "trust_remote_code": "model.trust_remote_code",
    # strategy (decoding_strategy picks the strategy class)
    "decoding_strategy": "strategy.name",
    "block_size": "strategy.block_size",
    "buffer_size": "strategy.buffer_size",
    "multi_block_prefix_full": "strategy.multi_block_prefix_full",
    "accept_threshold": "strategy.accept_threshold",
    "add_block_threshold": "strategy.add_block_threshold",
    "semi_complete_threshold": "strategy.semi_complete_threshold",
    "token_stability_threshold": "strategy.token_stability_threshold",
    "commit_confidence": "strategy.commit_confidence",
    "token_merge_top_k": "strategy.token_merge_top_k",
    "token_merge_renormalize": "strategy.token_merge_renormalize",
    "token_merge_weight": "strategy.token_merge_weight",
    "use_dual_cache": "strategy.use_dual_cache",
    "steps_per_block": "strategy.steps_per_block",
    "remasking": "strategy.remasking",
    "diffusion_gemma_max_denoising_steps": "strategy.max_denoising_steps",
    "diffusion_gemma_stability_threshold": "strategy.stability_threshold",
    "diffusion_gemma_t_min": "strategy.t_min",
    "diffusion_gemma_t_max": "strategy.t_max",
    "diffusion_gemma_confidence_threshold": "strategy.confidence_threshold",
    "diffusion_gemma_entropy_bound": "strategy.entropy_bound",
    # sampling (sampling_mode picks the sampling class)
    "sampling_mode": "sampling.mode",
    "confidence": "sampling.confidence",
    "edit_threshold": "sampling.edit_threshold",
    "remask_threshold": "sampling.remask_threshold",
    "max_post_edit_steps": "sampling.max_post_edit_steps",
    "penalty_lambda": "sampling.penalty_lambda",
    # parallel
    "tensor_parallel_size": "parallel.tensor_parallel_size",
    "data_parallel_size": "parallel.data_parallel_size",
    "expert_parallel_size": "parallel.expert_parallel_size",
    "device": "parallel.device",
    "device_ids": "parallel.device_ids",
    "distributed_backend": "parallel.backend",
    "master_addr": "parallel.master_addr",
    "master_port": "parallel.master_port",
    "distributed_timeout_seconds": "parallel.timeout_s",
    "launcher": "parallel.launcher",
    # lora
    "lora_path": "lora.path",
    "use_lora": "lora.enabled",
    "pre_merge_lora": "lora.merge",
    # cache
    "page_size": "cache.page_size",
    "enable_prefix_caching": "cache.enable_prefix_caching",
    "num_pages": "cache.num_pages",
    "gpu_memory_utilization": "cache.gpu_memory_utilization",
    "cpu_kv_cache_gib": "cache.cpu_kv_cache_gib",
    "kv_cache_dtype": "cache.kv_cache_dtype",
    # runtime
    "max_model_len": "runtime.max_model_len",
    "max_num_batched_tokens": "runtime.max_num_batched_tokens",
    "max_num_seqs": "runtime.max_num_seqs",
    "max_num_reqs": "runtime.max_num_seqs",
    "enforce_eager": "runtime.enforce_eager",
    "cuda_graph_batch_sizes": "runtime.cuda_graph_batch_sizes",
    "kernels": "runtime.kernels",
    "record_trajectory": "runtime.record_trajectory",
    "overlap": "runtime.overlap",
    "seed": "runtime.seed",
    # quantization (the group itself also takes a string: quantization="fp8")
    "weight_block_size": "quantization.weight_block_size",
}

GROUPS = ("model", "strategy", "sampling", "parallel", "lora", "cache", "runtime", "quantization")


def is_config_key(name: str) -> bool:
    """True when ``name`` is a Config field (a group or model_root) or a flat alias."""
    return name in FLAT_ALIASES or name in GROUPS or name == "model_root"


def near_miss(name: str, extra: tuple[str, ...] = ()) -> str | None:
    """The config keyword (or one of ``extra``) that ``name`` is a likely misspelling of, or None.

    Likely: at most 2 edits away (a transposition counts as one) for names of 6+ characters,
    1 for shorter ones; an unrelated keyword (the seed ignores those) is no near miss.
    """
    limit = 2 if len(name) >= 6 else 1
    best, best_d = None, limit + 1
    for known in (*FLAT_ALIASES, *GROUPS, "model_root", *extra):
        d = _edit_distance(name.lower(), known, limit)
        if 0 < d < best_d:
            best, best_d = known, d
    return best


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance of ``a`` and ``b`` (``limit + 1`` once it exceeds ``limit``)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)
