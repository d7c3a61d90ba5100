"""probes/int8_grid.py on small torch modules: which layers it proves W4A8, which it catches, and
which it leaves out (and says why). The probe is executed as text in a checked process; here it
runs the same way, in this one."""

from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from torch import nn

from kernels.reference import per_token_quant_int8_ref
from tests.conftest import DEVICE

PROBES = Path(__file__).resolve().parents[2] / "workbench/checks/probes"
grid = {}
for helper in ("spies.py", "int8_grid.py"):  # in the order probing.HELPERS puts them ahead of a probe
    exec(compile((PROBES / helper).read_text(), str(PROBES / helper), "exec"), grid)

HIDDEN, OUT = 64, 48


def product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] times w [N, K]^T without a torch matmul op: in a checked model the quantized
    GEMMs run in Triton, and a floating torch GEMM on a module's input marks a router."""
    return (x[..., None, :] * w).sum(-1)


def codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract's per-token int8: (x_q as float, s)."""
    x_q, s = per_token_quant_int8_ref(x)
    return x_q.float(), s


class Linear4(nn.Module):
    """Packed-int4 weight (int8 storage here); `a8`: W4A8 as the contract says, else W4A16."""

    def __init__(self, a8: bool = True, seed: int = 0, out: int = OUT):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("qweight", torch.randint(-8, 8, (out, HIDDEN), dtype=torch.int8, generator=generator))
        self.register_buffer("scales", torch.rand(1, out, generator=generator) / 50)
        self.a8 = a8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.float() * self.scales.t()
        if self.a8:
            x_q, s = codes(x)
            return (product(x_q, w) * s).to(x.dtype)
        return product(x.float(), w).to(x.dtype)


class NormFirst(Linear4):
    """RMSNorm, then W4A8: a right layer whose pre-norm input says nothing of the codes."""

    def __init__(self):
        super().__init__()
        self.norm = nn.RMSNorm(HIDDEN, eps=1e-6)
        self.norm.weight.data = 1 + torch.rand(HIDDEN)

    def forward(self, x):
        return super().forward(self.norm(x.float()).to(x.dtype))


class RoutedBlock(nn.Module):
    """A MoE block owning its experts' packed weights beside its float router: right W4A8 experts
    whose routing weights still move with the input."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(HIDDEN, 4, bias=False)
        self.register_buffer("qweight", torch.randint(-8, 8, (4, OUT, HIDDEN), dtype=torch.int8))

    def forward(self, x):
        weights = self.router(x.float()).softmax(-1)  # [..., E]
        x_q, s = codes(x)
        per_expert = torch.stack([product(x_q, w.float()) for w in self.qweight], dim=-2) * s[..., None]
        return (weights[..., None] * per_expert).sum(-2).to(x.dtype)


@triton.jit
def _row_gemm(x_ptr, w_ptr, s_ptr, y_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr):
    m, n, k = tl.program_id(0), tl.arange(0, BLOCK_N), tl.arange(0, K)
    w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=n[:, None] < N, other=0).to(tl.float32)
    y = tl.sum(w * tl.load(x_ptr + m * K + k)[None, :], axis=1) * tl.load(s_ptr + n, mask=n < N, other=0.0)
    tl.store(y_ptr + m * N + n, y, mask=n < N)


@triton.jit
def _touch(w_ptr, out_ptr):
    tl.store(out_ptr, tl.load(w_ptr))


class TritonLinear4(Linear4):
    """W4A8 with its GEMM in a Triton kernel handed the packed weight."""

    def forward(self, x):
        x_q, s = codes(x)
        rows = x_q.reshape(-1, HIDDEN).contiguous()
        y = torch.empty(rows.shape[0], OUT, dtype=torch.float32, device=x.device)
        _row_gemm[(rows.shape[0],)](rows, self.qweight, self.scales, y, OUT, K=HIDDEN, BLOCK_N=64)
        return (y.reshape(*x.shape[:-1], OUT) * s).to(x.dtype)


class TokenLaunch(Linear4):
    """W4A8 in torch beside a Triton launch handed the packed weight that does none of the GEMM."""

    def forward(self, x):
        _touch[(1,)](self.qweight, torch.empty(1, dtype=torch.int8, device=x.device))
        return super().forward(x)


class Model(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.embed = nn.Embedding(32, HIDDEN)
        self.layers = nn.ModuleList(layers)

    def forward(self, ids):
        h = self.embed(ids).to(torch.bfloat16)
        return [layer(h) for layer in self.layers]


def report(*layers) -> dict:
    torch.manual_seed(0)
    return grid["int8_grid"](Model(*layers).to(DEVICE), torch.randint(0, 32, (2, 9), device=DEVICE), min_bytes=64)


def test_w4a8_layers_give_the_same_output_for_the_same_codes():
    found = report(Linear4(), Linear4(seed=1))
    assert found["moved"] == [] and found["untested"] == {}
    assert [t["apart"] for t in found["tested"]] == [0.0, 0.0]


def test_a_square_layer_is_tested():
    """Its scales [1, N] are as wide as its input: only a floating GEMM on the input marks a router."""
    found = report(Linear4(a8=False, out=HIDDEN))
    assert [m["module"] for m in found["moved"]] == ["layers.0"]


def test_w4a16_layer_moves_with_inputs_of_the_same_codes():
    found = report(Linear4(), Linear4(a8=False))
    assert [m["module"] for m in found["moved"]] == ["layers.1"]
    assert found["moved"][0]["apart"] > 5 * grid["MOVED_TOL"]


@pytest.mark.parametrize("layer, why", [(NormFirst(), "normalizes its input"), (RoutedBlock(), "router")])
def test_layers_whose_input_passes_float_ops_first_are_left_out_not_failed(layer, why):
    found = report(layer)
    assert found["moved"] == [] and why in found["untested"]["layers.0"]


def test_grid_pair_keeps_every_code_and_the_scale():
    x = torch.randn(5, HIDDEN, dtype=torch.bfloat16) * 3
    on, off = grid["grid_pair"](x, seed=0)
    (q_on, s_on), (q_off, s_off) = codes(on), codes(off)
    assert torch.equal(q_on, q_off) and torch.equal(s_on, s_off)
    assert torch.equal(s_on, x.float().abs().amax(-1, keepdim=True) / 127)
    assert (on != off).float().mean() > 0.5  # most elements off the grid


def test_skipping_the_launches_handed_the_weights_tells_where_the_gemm_runs():
    """Skipped, a Triton GEMM's output is lost; a torch GEMM's is not, whether or not a launch was
    handed the weights. A norm-first layer, left out of the code test, gets this one too."""
    found = report(TritonLinear4(), TokenLaunch())
    assert [(m["module"], m["skipped"]) for m in found["gemm_in_triton"]] == [("layers.0", 1)]
    assert [(m["module"], m["skipped"]) for m in found["gemm_in_torch"]] == [("layers.1", 1)]
    assert found["gemm_in_triton"][0]["apart"] > 0.1 and found["gemm_in_torch"][0]["apart"] == 0.0
    assert found["moved"] == [] and len(found["tested"]) == 2
    found = report(Linear4(), NormFirst())
    assert [(m["module"], m["skipped"]) for m in found["gemm_in_torch"]] == [("layers.0", 0), ("layers.1", 0)]


class GraphReplay(TritonLinear4):
    """Its Triton GEMM captured once into a CUDA graph and replayed: launches the spy cannot skip."""

    def forward(self, x):
        if not hasattr(self, "graph"):
            self.static_x = x.clone()
            super().forward(self.static_x)  # compile outside the capture
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_y = super().forward(self.static_x)
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_y.clone()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_layer_replaying_a_cuda_graph_is_left_out_of_the_launch_test():
    found = report(GraphReplay())
    assert found["gemm_in_torch"] == [] and "replays a CUDA graph" in found["untested"]["layers.0 (launches skipped)"]
