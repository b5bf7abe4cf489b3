"""Launch helpers shared by the Triton kernels: programmatic dependent launch only where it exists."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from diffulex.kernels.triton._runtime import pdl_kwargs, sm_count  # noqa: E402


def test_pdl_is_off_off_cuda_and_when_disabled(monkeypatch):
    # The kernels' PDL constexpr must be False wherever launch_pdl is not passed (CPU, interpreter).
    assert pdl_kwargs(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setenv("DIFFULEX_PDL", "0")
    assert pdl_kwargs(torch.device("cuda", 0)) == {"PDL": False}  # no CUDA call when turned off
    monkeypatch.setenv("DIFFULEX_PDL", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert pdl_kwargs(torch.device("cuda", 0)) == {"PDL": False}


def test_sm_count_off_cuda_is_an_h100s():
    assert sm_count(torch.device("cpu")) == 132
