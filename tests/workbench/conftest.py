"""Shared by the workbench tests that run real tasks."""

import os
import shutil

import pytest

from workbench.tasks.sources import cache_root


@pytest.fixture(scope="session")
def task_cache(tmp_path_factory):
    """One cache for the session (fixtures, reference outputs, seed), apart from the user's; the
    downloaded sglang/transformers releases are reused from the user's cache when present."""
    cache = tmp_path_factory.mktemp("wb-cache")
    if (cache_root() / "pip").is_dir():
        shutil.copytree(cache_root() / "pip", cache / "pip")
    old = os.environ.get("WB_CACHE_DIR")
    os.environ["WB_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("WB_CACHE_DIR")
    else:
        os.environ["WB_CACHE_DIR"] = old
