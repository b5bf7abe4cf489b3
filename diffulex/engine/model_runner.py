"""The model runner: one per rank; owns the model weights and the KV cache tensors.

Construction order on every rank (after the rank joined the process group, see
:func:`~diffulex.engine.distributed.join_parallel_state`): pick the device → build the
family's model (registered in ``diffulex.models``) with this rank's tensor-parallel shard
→ load the checkpoint's weights (→ quantize them to FP8 when ``quantization`` says so) → allocate
the paged KV cache. Strategies subclass this
only where their forward pass differs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..config import Config, Device, DType
from ..layers.graph_buckets import Bucket, GraphBuckets
from ..layers.staging import HostStager
from .soft_inputs import SoftInputs, embed_dense
from .distributed import ParallelState

# Static buffers a captured step may hold for strategy inputs (each captured shape has its own).
_MAX_GRAPH_EXTRAS_BYTES = 64 << 20

_DTYPES = {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16, DType.FLOAT16: torch.float16}


def resolve_dtype(value: DType, device: torch.device) -> torch.dtype:
    """auto → bfloat16 on CUDA, float32 on CPU."""
    if value == DType.AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[DType(value)]


class ModelRunner:
    """Builds and holds one rank's model and KV cache."""

    def __init__(self, config: Config, parallel: ParallelState, weight_cache: Any = None) -> None:
        self.config = config
        self.parallel = parallel
        self.device = self._pick_device()
        self.dtype = resolve_dtype(config.model.dtype, self.device)
        if weight_cache is not None and parallel.world_size == 1:
            key = weight_cache.key_for(config, self.device, self.dtype)
            self.model = weight_cache.get_or_build(key, self._build_model)
        else:
            self.model = self._build_model()
        from ..layers.backend import set_kernel_backend

        # runtime.kernels → a ``kernels`` attribute on each kernel-calling layer (no globals).
        self.kernels = set_kernel_backend(self.model, config.runtime.kernels, self.device)
        self.kv_caches = self._allocate_kv_cache()
        # CUDA graphs of the model body per step shape (decode steps): CUDA, not enforce_eager,
        # the Triton kernels (the reference MoE syncs with the host), one rank, a KV cache.
        self.graphs = None
        self.stager = HostStager(self.device)  # a step's small host inputs in one copy
        # Graphed steps are padded on the host to bucket shapes (S_b in cuda_graph_batch_sizes,
        # N_b on a ladder of block-size multiples), so few graphs serve every decode step; up to
        # S_max sequences of (buffer + 1) blocks (the just-finished block's K/V is written too)
        # within max_num_batched_tokens.
        self.buckets = GraphBuckets.for_config(config)
        if (self.device.type == "cuda" and not config.runtime.enforce_eager and self.kernels == "triton"
                and self.kv_caches and getattr(parallel, "world_size", 1) == 1):
            from ..kernels.triton.paged_attention import SHORT_CONTEXT_KEYS
            from ..layers.graphs import DecodeGraphs, segment_starts

            layers = getattr(getattr(self.model, "model", None), "layers", None) or []
            self.graphs = DecodeGraphs(
                self.graph_forward, self.device, max_tokens=self.buckets.max_tokens,
                max_pages=-(-config.runtime.max_model_len // config.cache.page_size),
                # Every bucket shape, with and without the optional strategy inputs (e.g.
                # DiffusionGemma's self-conditioning is absent on a canvas's first step).
                max_graphs=max(64, 4 * len(self.buckets.shapes())),  # x2 again: short / long page tables
                short_pages=-(-SHORT_CONTEXT_KEYS // config.cache.page_size),
                segment_starts=segment_starts(layers))

    # -- construction -----------------------------------------------------------------
    def _pick_device(self) -> torch.device:
        if self.config.parallel.device == Device.CUDA:
            # One device per rank of this node: under torchrun ranks on other nodes share the
            # same ids, so the index is the rank on the node (LOCAL_RANK), not the global rank.
            device = torch.device("cuda", self.config.parallel.device_ids[self.parallel.device_index])
            torch.cuda.set_device(device)
            return device
        return torch.device("cpu")

    def _build_model(self) -> torch.nn.Module:
        import diffulex.models  # noqa: F401  (registers the families)
        from ..layers.parallel import TPGroup
        from ..registry import AutoModel

        model_cls = AutoModel.get(self.config.family)
        tp = TPGroup(self.parallel.tp_rank, self.parallel.tp_size, self.parallel.tp_group)
        kwargs = {}
        if self.parallel.ep_size > 1:
            # Expert parallelism: MoE families take the EP group and shard whole experts over it.
            import inspect

            if "ep" not in inspect.signature(model_cls.__init__).parameters:
                raise ValueError(f"parallel.expert_parallel_size={self.parallel.ep_size}: family "
                                 f"{self.config.family!r} does not support expert parallelism; set it to 1")
            kwargs["ep"] = TPGroup(self.parallel.ep_rank, self.parallel.ep_size, self.parallel.ep_group)
        with torch.device(self.device):
            model = model_cls(self.config.hf_config, tp=tp, dtype=self.dtype, **kwargs)
        lora = self.config.lora
        if lora.enabled:
            from ..lora import load_weights_with_lora

            load_weights_with_lora(model, self.config.model.path, lora.path, merge=lora.merge)
        else:
            model.load_weights(self.config.model.path)
        from ..quantization.apply import quantize_loaded_model

        # FP8 weights (quantization.weights resolved to fp8): each rank's loaded local shard, after
        # any merged LoRA; unmerged LoRA deltas stay in model.dtype around the FP8 base product.
        quantize_loaded_model(model, self.config)
        return model.eval()

    def kv_cache_spec(self) -> list[tuple[int, int]]:
        """Per layer: (KV heads on this rank, head_dim) — layers may differ (DiffusionGemma)."""
        return self.model.kv_cache_spec()

    def num_pages(self, bytes_per_page: int) -> int:
        """Pages that fit the memory budget (or cache.num_pages when fixed)."""
        cache = self.config.cache
        if cache.num_pages > 0:
            return cache.num_pages
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - (1.0 - cache.gpu_memory_utilization) * total
        else:
            budget = cache.cpu_kv_cache_gib * (1 << 30)
        # Never more than every admissible request at full length could use.
        most = self.config.runtime.max_num_seqs * -(-self.config.runtime.max_model_len // self.config.cache.page_size)
        pages = min(int(budget // bytes_per_page), most + 1)
        if pages < 1:
            raise ValueError(f"cache: no memory left for KV pages (budget {budget / 2**30:.2f} GiB, "
                             f"{bytes_per_page} bytes per page); raise cache.gpu_memory_utilization / "
                             "cache.cpu_kv_cache_gib or set cache.num_pages")
        return pages

    def _allocate_kv_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.config.strategy.name.value == "vanilla":
            return []  # the vanilla loop recomputes everything and keeps no cache
        spec = self.kv_cache_spec()
        kv_dtype = self.dtype if self.config.cache.kv_cache_dtype == DType.AUTO else resolve_dtype(
            self.config.cache.kv_cache_dtype, self.device)
        page = self.config.cache.page_size
        elem = torch.tensor([], dtype=kv_dtype).element_size()
        self.page_count = self.num_pages(sum(2 * page * heads * dim * elem for heads, dim in spec))
        return [(torch.zeros((self.page_count, page, heads, dim), dtype=kv_dtype, device=self.device),
                 torch.zeros((self.page_count, page, heads, dim), dtype=kv_dtype, device=self.device))
                for heads, dim in spec]

    # -- one forward ----------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: Any,
            extras: dict[str, Any] | None = None, patch: Any = None) -> torch.Tensor | None:
        """Forward the flat batch; logits [M, V] (float32) on rank 0, None elsewhere.

        ``extras`` carries strategy inputs: ``soft_inputs`` (a :class:`SoftInputs`, mixed into
        the input embeddings) and any other key, passed to the model's forward as a keyword.
        ``patch``: ``[N] device ids -> [N] ids``, applied on the device once the ids are there
        (the overlapped loop writes the previous step's fills in; the host ids are stale).
        """
        dev = self.device
        if self.graphs is not None and self.kernels == "triton":
            bucket = self.buckets.choose(meta)  # from the host tensors; None: this step runs eagerly
            if bucket is not None:
                static = self.graph_extras(extras, bucket.num_tokens, bucket)
                if static is not None:
                    # Padded on the host to the bucket shape; the graphs copy it into their static
                    # inputs in one host -> device copy (no staging copy first).
                    out = self.graphs.run(*self.buckets.pad(bucket, input_ids, positions, meta), static, patch=patch)
                    if out is not None:  # None: this step runs eagerly, unpadded
                        hidden, rows = out  # [N_b, H]; rows: the real logits rows [M], on the device
                        logits = self.model.compute_logits(hidden[rows])
                        return logits if self.parallel.is_driver else None
        # Token ids, positions and every metadata tensor: one host→device copy (HostStager).
        names = [k for k, v in vars(meta).items() if torch.is_tensor(v)]
        moved = self.stager.to_device([input_ids, positions, *(getattr(meta, k) for k in names)])
        input_ids, positions = moved[0], moved[1]
        if patch is not None:
            input_ids = patch(input_ids)
        meta = replace(meta, **dict(zip(names, moved[2:])))
        kwargs = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in (extras or {}).items()}
        soft = kwargs.pop("soft_inputs", None)
        if soft is not None:
            kwargs["inputs_embeds"] = soft.to(dev).embed(self.model, input_ids)  # [N, H]
        ids = None if "inputs_embeds" in kwargs else input_ids
        hidden = self.model(ids, positions.to(dev), meta, self.kv_caches or None, **kwargs)  # [N, H]
        logits = self.model.compute_logits(hidden[meta.logits_indices])  # [M, V]
        if self.parallel.is_driver:
            return logits
        # A data-parallel replica's driver (its first rank) sends its logits to rank 0.
        replica_size = self.parallel.tp_size * self.parallel.ep_size
        return logits.cpu() if self.parallel.rank % replica_size == 0 else None

    def graph_extras(self, extras: dict[str, Any] | None, num_tokens: int,
                     bucket: Bucket | None = None) -> dict[str, Any] | None:
        """Strategy inputs in a fixed-shape form a CUDA graph can take, or None (run eagerly).

        Soft inputs become their dense per-token tensors (plus their scalars, part of the
        graph's key); tensors with one row per token (DiffusionGemma's canvas mask and
        self-conditioning rows) pass as they are, then the model's ``graph_inputs`` may shrink
        them (DiffusionGemma: probabilities -> embeddings). With a ``bucket``, per-token
        tensors get zero (False) rows for its pad tokens: ``[N, ...] -> [N_b, ...]``. Anything
        else, or more than ``_MAX_GRAPH_EXTRAS_BYTES`` of static inputs, is not graphed.
        """
        rows = bucket.padded_tokens if bucket is not None else num_tokens
        out: dict[str, Any] = {}
        for key, value in (extras or {}).items():
            if isinstance(value, SoftInputs):
                out.update(value.to(self.device).dense(rows))  # [N_b, ...]: pad rows off the mask
                out["soft_params"] = (value.mask_id, bool(value.renormalize), float(value.weight))
            elif torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == num_tokens:
                out[key] = value.to(self.device, non_blocking=True)
            else:
                return None
        out = self.model.graph_inputs(out)
        if bucket is not None and rows != num_tokens:  # after graph_inputs: pad the smaller rows
            out = {k: (GraphBuckets.pad_rows(bucket, v) if torch.is_tensor(v) and v.dim() >= 1
                       and v.shape[0] == num_tokens else v) for k, v in out.items()}
        if sum(v.numel() * v.element_size() for v in out.values() if torch.is_tensor(v)) > _MAX_GRAPH_EXTRAS_BYTES:
            return None  # every graph keeps its own static copy: large inputs run eagerly instead
        return out

    def graph_forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: Any,
                      extras: dict[str, Any]) -> torch.Tensor:
        """The captured body: hidden states [N, H] from the static inputs (see :meth:`graph_extras`)."""
        kwargs = dict(extras)
        ids: torch.Tensor | None = input_ids
        if "soft_mask" in kwargs:
            mask_id, renormalize, weight = kwargs.pop("soft_params")
            kwargs["inputs_embeds"] = embed_dense(self.model, input_ids, kwargs.pop("soft_mask"),
                                                  kwargs.pop("soft_ids"), kwargs.pop("soft_probs"),
                                                  mask_id, renormalize, weight)  # [N, H]
            ids = None
        return self.model(ids, positions, meta, self.kv_caches, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------
    def ping(self) -> int:
        """Round-trip check used by tests: this runner's rank."""
        return self.parallel.rank

    def exit(self) -> None:
        """Release the weights and the cache (the process group belongs to the caller)."""
        self.kv_caches = []
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        return {"rank": self.parallel.rank, "device": str(self.device), "dtype": str(self.dtype),
                "pages": getattr(self, "page_count", 0)}
