"""W4A8 building blocks: int4 packing, torch references and Triton kernels.

Imports only torch and triton. See README.md ("Kernels") for the layouts and measured speed.
"""

from .act_quant import per_token_quant_int8
from .linear import W4A8Linear, W8A8Linear, w4a8_linear_torch
from .packing import (pack_awq, pack_ct, pack_w4a8, repack_awq, repack_ct, unpack_awq, unpack_ct,
                      unpack_w4a8)
from .reference import (dequantize_weight, per_token_quant_int4_ref, per_token_quant_int8_ref,
                        quantize_weight, w4a4_linear_ref, w4a8_linear_ref, w8a8_gemm_ref)
from .w4a8_gemm import w4a8_gemm
from .w8a8_gemm import w8a8_gemm

__all__ = [
    "W4A8Linear", "W8A8Linear", "dequantize_weight", "pack_awq", "pack_ct", "pack_w4a8", "per_token_quant_int4_ref",
    "per_token_quant_int8", "per_token_quant_int8_ref", "quantize_weight", "repack_awq", "repack_ct",
    "unpack_awq", "unpack_ct", "unpack_w4a8", "w4a4_linear_ref", "w4a8_gemm", "w4a8_linear_ref",
    "w4a8_linear_torch", "w8a8_gemm", "w8a8_gemm_ref",
]
