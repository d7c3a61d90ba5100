"""Every Triton kernel builds for Hopper (sm_90a) at the configs the code launches, checked
without a GPU: the interpreter runs in the rest of this suite never compile a kernel.

The sweep runs in a subprocess without TRITON_INTERPRET (conftest.py set it for this process,
and an interpreted kernel cannot be compiled). What it asserts is what a GPU run needs and the
README claims: nothing fails to build, every kernel of the package is covered, the tensor-core
kernels lower to wgmma (IGMMA) and the GEMVs to dp4a (IDP.4A), and no decode-step kernel spills
registers to local memory.
"""

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import kernels
from kernels.compile_only import compile_only, cuobjdump

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path(cuobjdump()).exists(),
                                reason="this Triton has no NVIDIA backend tools (cuobjdump, ptxas) to build with")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start(tmp_path: Path, name: str, *args: str):
    out = tmp_path / f"{name}.json"
    proc = subprocess.Popen([sys.executable, "-m", "kernels.compile_check", *args, "--json", str(out)],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


def _result(proc: subprocess.Popen, out: Path) -> dict:
    log = proc.communicate(timeout=1200)[0]
    assert out.exists(), f"compile_check wrote no JSON (exit {proc.returncode}):\n{log[-4000:]}"
    result = json.loads(out.read_text())
    assert proc.returncode == 0 and not result["failures"], \
        "kernels that do not build for sm_90a:\n" + "\n".join(f"{w}: {why}" for w, why in result["failures"])
    return result


def _package_kernels() -> set[str]:
    """Names of the @triton.jit kernels (launched from Python: `_..._kernel`) of the package."""
    names = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        names |= {name for name, obj in vars(module).items()
                  if name.startswith("_") and name.endswith("_kernel") and hasattr(obj, "fn")}
    return names


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("sm90")
    models = "--models", "qwen3-8b,qwen3-30b-a3b"
    started = {  # side by side (each compiles on one core): about 80 s each on the 2-core CI machine
        # every decode config the autotuner may pick at M = 1 (it times them all on the GPU)
        "candidates": _start(tmp, "candidates", "--models", "qwen3-8b", "--m", "1", "--candidates"),
        # what runs untuned (first candidates, fixed configs), per group and per channel
        "decode": _start(tmp, "decode", *models, "--m", "1,4,16", "--group-sizes", "128,-1"),
        "prefill": _start(tmp, "prefill", *models, "--m", "1024", "--group-sizes", "128,-1"),
    }
    return {name: _result(*started[name]) for name in started}


def test_every_kernel_of_the_package_builds(sweeps):
    built = {b["kernel"] for s in sweeps.values() for b in s["builds"]}
    missing = _package_kernels() - built
    assert not missing, f"kernels the sweep never built (add them to kernels/compile_check.py): {sorted(missing)}"


def test_kernels_take_the_instructions_they_were_written_for(sweeps):
    builds = [b for s in sweeps.values() for b in s["builds"]]
    wanted = {"_w4a8_gemm_kernel": "IGMMA", "_w4a8_moe_kernel": "IGMMA",  # wgmma, int8 (W . x^T: w is A)
              "_w8_unpacked_gemm_kernel": "IGMMA",  # wgmma, int8, both operands from shared memory
              "_w4a8_gemv_kernel": "IDP.4A", "_w4a8_moe_gemv_kernel": "IDP.4A",  # dp4a on packed words
              "_w4a8_moe_gemv_sum_kernel": "IDP.4A", "_w4a8_moe_gemv_glu_kernel": "IDP.4A"}
    for b in builds:
        op = wanted.get(b["kernel"])
        if op is not None:
            assert b["opcodes"].get(op, 0) > 0, f"{b['kernel']} ({b['where']}, {b['meta']}) has no {op}: {b['opcodes']}"


def test_the_nibbles_unpack_four_bytes_an_instruction(sweeps):
    """w4a8_tile and the prefill path's unpack kernel unpack packed words
    (`w4a8_unpacked.sixteen_nibbles`). Written as int8 shifts, each took one byte permute (PRMT) or
    more per unpacked byte: 352 in the M = 16 decode tile (a third of its ~900 instructions a K
    step) and in the unpack kernel, 176 in the MoE decode tile. What PRMT remains packs bf16 for the
    epilogue's stores: up to 16 (Triton 3.9) or 40 (Triton 3.6) in the MoE down tile."""
    unpacking = ("_w4a8_gemm_kernel", "_w4a8_moe_kernel", "_unpack_int4_kernel")
    tiles = [b for s in sweeps.values() for b in s["builds"] if b["kernel"] in unpacking]
    assert {b["kernel"] for b in tiles} == set(unpacking)
    for b in tiles:
        assert b["opcodes"].get("PRMT", 0) < 64, f"{b['kernel']} ({b['where']}, {b['meta']}): {b['opcodes']}"


def test_gemv_w_stages_pipeline_the_weight_loads(sweeps):
    gemvs = [b for b in sweeps["candidates"]["builds"] if b["kernel"] == "_w4a8_gemv_kernel"]
    for stages in (1, 3):
        assert any(b["meta"]["W_STAGES"] == stages for b in gemvs), f"no GEMV candidate with W_STAGES={stages}"
    for b in gemvs:  # cp.async (LDGSTS) exactly when pipelined
        assert (b["opcodes"].get("LDGSTS", 0) > 0) == (b["meta"]["W_STAGES"] > 1), (b["where"], b["meta"], b["opcodes"])


def test_decode_kernels_do_not_spill(sweeps):
    decode = sweeps["decode"]["builds"]
    assert decode, "the decode sweep built nothing"
    spilled = [f"{b['kernel']} ({b['where']}): {b['local']} bytes, {b['registers']} registers" for b in decode if b["local"]]
    assert not spilled, "decode kernels that spill to local memory:\n" + "\n".join(spilled)


# every kernel of a decode step (kernels/pdl.py); the routed-expert and W8A8 GEMMs never run in one
PDL_KERNELS = {"_w4a8_gemv_kernel", "_w4a8_gemm_kernel", "_split_k_reduce_kernel", "_per_token_quant_int8_kernel",
               "_rmsnorm_quant_kernel", "_silu_mul_quant_kernel", "_silu_mul_absmax_kernel",
               "_silu_mul_quant_split_kernel", "_qk_norm_rope_kernel", "_split_kernel", "_combine_kernel",
               "_router_partial_kernel", "_topk_softmax_kernel", "_w4a8_moe_gemv_kernel", "_w4a8_moe_gemv_sum_kernel",
               "_w4a8_moe_gemv_glu_kernel", "_sum_slots_kernel"}


def test_decode_kernels_wait_for_the_kernel_before_they_touch_memory(sweeps):
    """On Hopper the decode step's kernels launch with programmatic dependent launch: each must
    wait (griddepcontrol.wait, SASS ACQBULK) before its first global load or store, or it races the
    kernel before it; each releases the next (PREEXIT); all but the tensor-core GEMM are
    scheduled early (launch_pdl)."""
    builds = [b for s in sweeps.values() for b in s["builds"] if b["kernel"] in PDL_KERNELS]
    assert {b["kernel"] for b in builds} == PDL_KERNELS
    for b in builds:
        where = f"{b['kernel']} ({b['where']}, {b['meta']})"
        assert b["meta"]["USE_PDL"] and b["opcodes"].get("ACQBULK") and b["opcodes"].get("PREEXIT"), where
        assert not b["memory_before_wait"], f"{where} reads or writes global memory before griddepcontrol.wait"
        assert b["meta"]["launch_pdl"] == (b["kernel"] != "_w4a8_gemm_kernel"), where


def test_a_launch_over_the_shared_memory_limit_is_refused_as_on_the_gpu():
    script = (
        "import torch\n"
        "from triton.runtime.errors import OutOfResources\n"
        "from kernels.compile_only import compile_only\n"
        "from kernels.w8a8_gemm import w8a8_gemm\n"
        "x, w = torch.empty(256, 1024, dtype=torch.int8), torch.empty(1024, 1024, dtype=torch.int8)\n"
        "s, ws = torch.empty(256, 1, dtype=torch.float32), torch.empty(1024, dtype=torch.float32)\n"
        "cfg = dict(BLOCK_M=256, BLOCK_N=256, BLOCK_K=256, GROUP_M=8, num_warps=8, num_stages=4)\n"
        "with compile_only() as fake:\n"
        "    try:\n"
        "        w8a8_gemm(x, s, w, ws, config=cfg)\n"
        "    except OutOfResources as err:\n"
        "        print('refused', fake.builds[-1].shared, err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused = proc.stdout.split()
    assert refused[:1] == ["refused"] and int(refused[1]) > 232448, proc.stdout  # 4 stages of 256x256 x and w tiles


def test_compile_only_refuses_to_run_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        with compile_only():
            pass
