"""Tiny checkpoints for the adapter tests, built once per session (seed never shown to ports)."""

import pytest

from adapters import tiny
from adapters.quantize import quantize_checkpoint

GROUP_SIZE = 32  # divides every K of the cpu tier (64, 128, 32)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = tiny.make(family, tmp_path_factory.mktemp(f"tiny-{family}"), "cpu", seed=1234)
        return made[family]
    return get


@pytest.fixture(scope="session")
def quant_dir(tiny_dir, tmp_path_factory):
    made = {}

    def get(family: str, fmt: str = "awq-sym", group_size: int = GROUP_SIZE):
        key = (family, fmt, group_size)
        if key not in made:
            out = tmp_path_factory.mktemp(f"q-{family}-{fmt}-{group_size}")
            made[key] = quantize_checkpoint(tiny_dir(family), out, group_size, fmt, show_progress=False)
        return made[key]
    return get
