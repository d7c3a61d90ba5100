"""int4 packing: the two on-disk layouts the loaders read, and the kernel's own layout.

All functions take or return signed int4 values `q` as int8 tensors shaped like an
`nn.Linear` weight, [N, K] (out_features, in_features), with values in [-8, 7].

On-disk layouts (byte layouts in ../shared/REFERENCE.md, "Formats"):
- AutoAWQ GEMM: qweight int32 [K, N/8], packed along N. Nibble i (bits 4i..4i+3) of word c
  holds column 8c + AWQ_ORDER[i]. Values stored unsigned (q + 8, or q + zero for asymmetric).
- compressed-tensors pack-quantized: weight_packed int32 [N, ceil(K/8)], packed along K,
  element k at bits 4*(k % 8) of word k // 8, stored as q + 8.

Kernel layout (`pack_w4a8`): int8 [N, K_pad/2], K contiguous, two's complement nibbles. The
low nibble of byte r holds k = r and the high nibble k = r + K_pad/2: the first half of K in
the low nibbles, the second half in the high ones. One [BLOCK_N, BLOCK_K/2] byte tile gives two
int8 tiles of 16 * q in two word-wise ops (`(b << 4) & 0xF0F0F0F0`, `b & 0xF0F0F0F0`), and the activations they
meet are two contiguous runs of x, so every load is a plain vectorizable tile (an interleaved
order would make x gathers). K contiguous makes the unpacked tile K-major, as int8 wgmma wants
for its register operand. K_pad rounds K up to a multiple of 64, or of 2 * group_size, so the
second half starts on a group boundary; padded rows meet zero activations.
"""

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column 8c + AWQ_ORDER[i]
KERNEL_ALIGN_K = 64  # K_pad granularity: halves of K_pad/2 keep the 32-deep int8 MMA whole


def _to_int32_words(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _check_int4(q: torch.Tensor) -> None:
    if q.dim() != 2:
        raise ValueError(f"int4 weight must be 2-D [N, K], got shape {tuple(q.shape)}")
    if q.dtype.is_floating_point:
        raise ValueError(f"int4 weight must be an integer tensor, got {q.dtype}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7], got [{q.min()}, {q.max()}]")


# ---- AutoAWQ GEMM order: [R, C] unsigned nibbles <-> int32 [R, C/8], packed along C ----


def pack_nibbles_awq(u4: torch.Tensor) -> torch.Tensor:
    """Unsigned nibbles [R, C] (0..15) -> int32 [R, C/8] in AWQ order (also used for qzeros)."""
    rows, cols = u4.shape
    if cols % 8:
        raise ValueError(f"AWQ packing needs a column count divisible by 8, got {cols}")
    u = u4.to(torch.int64).reshape(rows, cols // 8, 8)
    words = torch.zeros(rows, cols // 8, dtype=torch.int64, device=u4.device)
    for i, col in enumerate(AWQ_ORDER):
        words |= u[:, :, col] << (4 * i)
    return _to_int32_words(words)


def unpack_nibbles_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C/8] in AWQ order -> unsigned nibbles uint8 [R, C]."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    rows, n_words = words.shape
    out = torch.empty(rows, n_words, 8, dtype=torch.uint8, device=packed.device)
    for i, col in enumerate(AWQ_ORDER):
        out[:, :, col] = ((words >> (4 * i)) & 0xF).to(torch.uint8)
    return out.reshape(rows, n_words * 8)


def pack_awq(q: torch.Tensor) -> torch.Tensor:
    """Signed int4 [N, K] -> AWQ `qweight` int32 [K, N/8] (symmetric: stored q + 8)."""
    _check_int4(q)
    return pack_nibbles_awq((q.to(torch.int16) + 8).t())


def unpack_awq(qweight: torch.Tensor, zeros: int | torch.Tensor = 8) -> torch.Tensor:
    """AWQ `qweight` int32 [K, N/8] -> int [N, K] holding stored value minus `zeros`.

    `zeros` is 8 for the symmetric format, or a [K, N] tensor of unpacked qzeros expanded
    over each group for the asymmetric one (the result then lies in [-15, 15], int16).
    """
    stored = unpack_nibbles_awq(qweight).to(torch.int16)  # [K, N]
    q = (stored - zeros).t().contiguous()
    return q.to(torch.int8) if isinstance(zeros, int) else q


# ---- compressed-tensors order: int32 [N, ceil(K/8)], packed along K, sequential, +8 ----


def pack_ct(q: torch.Tensor) -> torch.Tensor:
    """Signed int4 [N, K] -> compressed-tensors `weight_packed` int32 [N, ceil(K/8)]."""
    _check_int4(q)
    n, k = q.shape
    u = torch.zeros(n, -(-k // 8) * 8, dtype=torch.int64, device=q.device)
    u[:, :k] = q.to(torch.int64) + 8
    u[:, k:] = 0  # padding nibbles are written as 0, as llm-compressor does
    u = u.reshape(n, -1, 8)
    words = torch.zeros(u.shape[:2], dtype=torch.int64, device=q.device)
    for i in range(8):
        words |= u[:, :, i] << (4 * i)
    return _to_int32_words(words)


def unpack_ct(weight_packed: torch.Tensor, k: int) -> torch.Tensor:
    """compressed-tensors `weight_packed` int32 [N, ceil(K/8)] -> signed int4 int8 [N, K]."""
    n, n_words = weight_packed.shape
    if n_words * 8 < k or n_words != -(-k // 8):
        raise ValueError(f"weight_packed has {n_words} words per row, K={k} needs {-(-k // 8)}")
    words = weight_packed.to(torch.int64) & 0xFFFFFFFF
    nibbles = torch.stack([(words >> (4 * i)) & 0xF for i in range(8)], dim=-1)
    return (nibbles.reshape(n, n_words * 8)[:, :k] - 8).to(torch.int8)


# ---- kernel layout: int8 [N, K_pad/2], low nibbles hold k < K_pad/2, high nibbles the rest ----


def padded_k(k: int, group_size: int = -1) -> int:
    """K rounded up so that K_pad/2 is a multiple of 32 and of the group size."""
    align = max(KERNEL_ALIGN_K, 2 * group_size)
    return -(-k // align) * align


def pack_w4a8(q: torch.Tensor, group_size: int = -1) -> torch.Tensor:
    """Signed int4 [N, K] -> kernel layout int8 [N, K_pad/2] (see module docstring)."""
    _check_int4(q)
    n, k = q.shape
    half = padded_k(k, group_size) // 2
    qp = torch.zeros(n, 2 * half, dtype=torch.int16, device=q.device)
    qp[:, :k] = q.to(torch.int16)
    byte = (qp[:, :half] & 0xF) | ((qp[:, half:] & 0xF) << 4)  # [N, K_pad/2], 0..255
    return byte.to(torch.uint8).view(torch.int8).contiguous()


def unpack_w4a8(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Kernel layout int8 [N, K_pad/2] -> signed int4 int8 [N, K]."""
    n, half = packed.shape
    if 2 * half < k or (2 * half) % KERNEL_ALIGN_K:
        raise ValueError(f"packed weight has {half} bytes per row, which cannot hold K={k}")
    b = packed.to(torch.int16)
    lo = (b << 12) >> 12  # sign-extend the low nibble
    return torch.cat([lo, b >> 4], dim=1)[:, :k].to(torch.int8).contiguous()


# ---- repack on-disk formats into the kernel layout (done once, at load time) ----


def scales_to_kernel(scales_nk: torch.Tensor) -> torch.Tensor:
    """Scales [N, G] (per channel: G = 1) -> kernel layout fp32 [G, N], contiguous along N."""
    if scales_nk.dim() == 1:
        scales_nk = scales_nk[:, None]
    return scales_nk.t().to(torch.float32).contiguous()


def repack_awq(qweight: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ symmetric (qweight [K, N/8], scales [K/G, N]) -> kernel (packed, scales [G, N])."""
    q = unpack_awq(qweight)
    n, k = q.shape
    if scales.dim() != 2 or scales.shape[1] != n or k % scales.shape[0]:
        raise ValueError(f"AWQ scales {tuple(scales.shape)} do not match qweight for N={n}, K={k}")
    group_size = -1 if scales.shape[0] == 1 else k // scales.shape[0]
    return pack_w4a8(q, group_size), scales.to(torch.float32).contiguous()


def repack_ct(weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """compressed-tensors (weight_packed [N, K/8], weight_scale [N, G], weight_shape (N, K))
    -> kernel (packed, scales [G, N])."""
    n, k = (int(v) for v in weight_shape)
    q = unpack_ct(weight_packed, k)
    if q.shape[0] != n or weight_scale.shape[0] != n:
        raise ValueError(f"weight_packed {tuple(weight_packed.shape)} / weight_scale "
                         f"{tuple(weight_scale.shape)} do not match weight_shape ({n}, {k})")
    n_groups = 1 if weight_scale.dim() == 1 else weight_scale.shape[1]
    return pack_w4a8(q, -1 if n_groups == 1 else k // n_groups), scales_to_kernel(weight_scale)
