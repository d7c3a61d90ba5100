"""Shared by the workbench tests that run real tasks."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from workbench.tasks.sources import cache_root


@pytest.fixture(scope="session")
def task_cache(tmp_path_factory):
    """One cache for the test run (fixtures, reference outputs, the run's check seed), apart from
    the user's; the downloaded sglang/transformers releases are reused from the user's cache."""
    # Under pytest-xdist, one for all workers of the run (the caches are safe side by side: atomic
    # renames), so a fixture or reference run one worker made is not made again by the other.
    run_dir = tmp_path_factory.getbasetemp()
    cache = (run_dir.parent if os.environ.get("PYTEST_XDIST_WORKER") else run_dir) / "wb-cache"
    cache.mkdir(exist_ok=True)
    seed = cache / "check_seed"  # the run's seed (tests/conftest.py), where fixtures.check_seed reads it
    if not seed.exists():
        staged = seed.with_suffix(f".{os.getpid()}")
        staged.write_text(os.environ["WB_TEST_CHECK_SEED"])
        staged.replace(seed)
    if (cache_root() / "pip").is_dir() and not (cache / "pip").exists():
        staging = Path(tempfile.mkdtemp(dir=cache))
        shutil.copytree(cache_root() / "pip", staging / "pip")
        with contextlib.suppress(OSError):  # the other worker's copy landed first
            (staging / "pip").rename(cache / "pip")
    old = os.environ.get("WB_CACHE_DIR")
    os.environ["WB_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("WB_CACHE_DIR")
    else:
        os.environ["WB_CACHE_DIR"] = old
