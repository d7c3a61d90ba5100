"""Where a launch config comes from (kernels/autotune.py): the user cache, the configs shipped per
GPU and their nearest shape, and that every shipped config is still a candidate of its kernel.
CPU only: a ConfigCache reads files and compares dicts; tests/kernels/test_gpu.py times them."""

import json

import pytest

from adapters.tune import ship
from kernels import autotune
from kernels.w4a8_gemm import candidate_configs

A = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, SPLIT_K=4, GROUP_N=1, num_warps=4, num_stages=3)
B = dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=256, SPLIT_K=2, GROUP_N=1, num_warps=4, num_stages=3)
C = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=512, SPLIT_K=1, GROUP_N=1, num_warps=4, num_stages=3)
BF16 = "torch.bfloat16"


def key(n: int, k: int, m: int, group: int = 128, dtype: str = BF16, kernel: str = "w4a8") -> str:
    return f"{kernel}|N{n}|K{k}|g{group}|M{m}|{dtype}"


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A shipped dir with two 'GPU X' entries, and an empty user cache."""
    monkeypatch.setenv("WB_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.delenv("WB_SHIPPED_CONFIGS", raising=False)
    ship({key(6144, 4096, 1): A, key(4096, 12288, 16): B}, "GPU X", tmp_path / "tuned")
    return tmp_path / "tuned"


def test_a_shipped_key_answers_without_timing(shipped):
    cache = autotune.ConfigCache("GPU X", shipped)
    assert cache.get(key(6144, 4096, 1), [C, B, A]) == A
    assert key(6144, 4096, 1) in cache.entries and not cache.tuned  # resolved once, nothing timed


def test_a_shape_not_shipped_borrows_the_nearest_shipped_one(shipped):
    cache = autotune.ConfigCache("GPU X", shipped)
    assert cache.get(key(8192, 4096, 2), [C, B, A]) == A  # N x2, M x2 from the first entry
    assert cache.get(key(5120, 25600, 16), [C, B, A]) == B  # a 32B down_proj: nearest the 8B one
    fresh = autotune.ConfigCache("GPU X", shipped)
    assert fresh.get(key(5120, 25600, 16), [C]) is None  # only entries that are candidates here


def test_other_kernels_and_dtypes_and_gpus_borrow_nothing(shipped):
    cache = autotune.ConfigCache("GPU X", shipped)
    assert cache.get(key(6144, 4096, 1, dtype="torch.float16"), [A, B]) is None
    assert cache.get("w8a8|N6144|K4096|M1|torch.bfloat16", [A, B]) is None
    assert autotune.ConfigCache("GPU Y", shipped).get(key(6144, 4096, 1), [A, B]) is None


def test_the_user_cache_wins_and_shipping_can_be_switched_off(shipped, monkeypatch):
    user = autotune.ConfigCache("GPU X", shipped)
    user.put(key(6144, 4096, 1), C)
    assert json.loads(user.path.read_text()) == {key(6144, 4096, 1): C}  # only what it timed
    assert autotune.ConfigCache("GPU X", shipped).get(key(6144, 4096, 1), [A, C]) == C
    monkeypatch.setenv("WB_SHIPPED_CONFIGS", "0")
    assert autotune.ConfigCache("GPU X", shipped).get(key(4096, 12288, 16), [A, B]) is None


def test_ship_merges_into_the_gpu_file(shipped):
    path = ship({key(6144, 4096, 1): C, key(1024, 1024, 4): A}, "GPU X", shipped)
    assert path.name == "GPU_X.json"
    assert json.loads(path.read_text()) == {key(6144, 4096, 1): C, key(1024, 1024, 4): A, key(4096, 12288, 16): B}


SHIPPED_FILES = sorted(autotune.SHIPPED_DIR.glob("*.json"))
SMS = {"NVIDIA_H200.json": 132, "NVIDIA_H100_80GB_HBM3.json": 132}


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=[p.name for p in SHIPPED_FILES])
def test_every_shipped_config_is_still_a_candidate(path):
    """A shipped entry that is no longer among its kernel's candidates is ignored at run time
    (tuning again on that GPU): the candidate lists and the shipped files must change together."""
    configs = json.loads(path.read_text())
    assert configs, f"{path} ships nothing"
    assert path.name in SMS, f"{path.name}: add that GPU's SM count to SMS"
    for k, config in configs.items():
        kernel, _, f = autotune.key_fields(k)
        assert kernel == "w4a8", f"{path}: {k}: the tune command ships W4A8 GEMM keys only"
        assert config in candidate_configs(f["M"], f["N"], f["K"], f["g"], SMS[path.name]), f"{path}: {k}"


def test_a_shipped_file_exists_for_the_gpus_measured():
    assert "NVIDIA_H200.json" in {p.name for p in SHIPPED_FILES}
