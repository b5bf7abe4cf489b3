"""The ``runtime`` config group: batch limits, lengths, CUDA graphs and kernels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .enums import KernelBackend
from .errors import check_range, coerce_enum, config_error


@dataclass
class RuntimeConfig:
    """Limits of one engine step and the execution knobs of the data plane."""

    # Longest prompt + generation. None: the model's maximum; larger values are clamped.
    max_model_len: Optional[int] = None
    # Token budget of one forward pass (all requests together).
    max_num_batched_tokens: int = 4096
    # Requests decoded together at most.
    max_num_seqs: int = 128
    # True: never capture CUDA graphs (eager PyTorch only). None: graphs on CUDA, eager on
    # CPU; False on CPU is an error (CUDA graphs need CUDA).
    enforce_eager: Optional[bool] = None
    # Sequence-count buckets of the decode-step CUDA graphs: a step of S sequences is padded
    # to the smallest entry >= S (tokens to a multiple of the block size, see
    # diffulex/layers/graph_buckets.py); more sequences than the largest entry run eagerly.
    cuda_graph_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    # Attention / MoE / sampling kernels. auto: Triton on CUDA, PyTorch on CPU.
    kernels: KernelBackend = KernelBackend.AUTO
    # The overlapped decoding loop: the next step is guessed and queued on the device before the
    # host reads this one's decisions; used only when it is exactly the step the synchronous loop
    # would run (token-for-token the same outputs; see diffulex/engine/overlap.py). None: on
    # CUDA with one rank; True also on CPU (nothing overlaps there: for tests); False: the
    # synchronous loop (debugging). True with several ranks is an error.
    overlap: Optional[bool] = None
    # Keep per-step decisions (positions and confidences) in the trajectories.
    record_trajectory: bool = True
    # Seed of the engine's random generator (sampling at temperature > 0, random inits).
    seed: int = 0

    def validate(self) -> None:
        if self.max_model_len is not None:
            check_range("runtime.max_model_len", self.max_model_len, 1, None, integer=True)
        check_range("runtime.max_num_batched_tokens", self.max_num_batched_tokens, 1, None, integer=True)
        check_range("runtime.max_num_seqs", self.max_num_seqs, 1, None, integer=True)
        self.kernels = coerce_enum(KernelBackend, "runtime.kernels", self.kernels)
        if not self.cuda_graph_batch_sizes or any(
                isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.cuda_graph_batch_sizes):
            raise config_error("runtime.cuda_graph_batch_sizes", self.cuda_graph_batch_sizes,
                               "a non-empty list of positive ints", "e.g. [1, 2, 4, 8, 16]")
        self.cuda_graph_batch_sizes = sorted(set(self.cuda_graph_batch_sizes))
        check_range("runtime.seed", self.seed, 0, None, integer=True)
        if self.overlap is not None and not isinstance(self.overlap, bool):
            raise config_error("runtime.overlap", self.overlap, "null, true or false",
                               "null: overlapped on CUDA with one rank; false: the synchronous loop")
