"""Weight quantization: the FP8 (e4m3) block-scaled format and its PyTorch reference."""

from .fp8 import FP8_DTYPE, FP8_MAX, dequantize_fp8, quantize_fp8, scale_shape

__all__ = ["FP8_DTYPE", "FP8_MAX", "dequantize_fp8", "quantize_fp8", "scale_shape"]
