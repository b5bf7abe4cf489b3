"""get_ops picks Triton only on CUDA under 'auto'/'triton' and fails loudly otherwise."""

from __future__ import annotations

import pytest

from diffulex.config.enums import KernelBackend
from diffulex.kernels import REFERENCE_OPS, KernelOps, get_ops


def test_cpu_gets_reference_ops_under_torch_and_auto():
    assert get_ops("cpu") is REFERENCE_OPS
    assert get_ops("cpu", "auto") is REFERENCE_OPS
    assert get_ops("cpu", KernelBackend.TORCH) is REFERENCE_OPS


def test_triton_off_cuda_and_unknown_backends_are_errors():
    with pytest.raises(ValueError, match="CUDA"):
        get_ops("cpu", "triton")
    with pytest.raises(ValueError, match="backend"):
        get_ops("cpu", "cutlass")


def test_reference_bundle_has_every_op():
    for name in KernelOps.__dataclass_fields__:
        assert getattr(REFERENCE_OPS, name) is not None, name
