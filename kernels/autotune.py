"""Launch-config selection for the GEMM kernels: tuned per GPU, keyed on bucketed M.

A config is picked once per (kernel, N, K, group, M bucket) by timing every candidate on the
GPU (CUDA-graph replays, so Python launch overhead does not decide), then kept in memory and in a JSON file per GPU name under the user
cache dir (`$WB_CACHE_DIR` or `~/.cache/porting-workbench/autotune/<gpu>.json`), so a second
process on the same GPU never tunes again. M is bucketed to the next power of two (1, 2, 4, ...,
4096 and above), so decode steps that grow M by one reuse one entry.

Without a GPU (TRITON_INTERPRET=1) or with WB_AUTOTUNE=0 the first candidate is used as is:
the candidate lists put a sensible default first.
"""

import json
import os
import re
from pathlib import Path
from typing import Callable

import torch
from triton.runtime.errors import OutOfResources

M_BUCKET_MAX = 4096


def m_bucket(m: int) -> int:
    """Next power of two >= m, capped at M_BUCKET_MAX."""
    b = 1
    while b < m and b < M_BUCKET_MAX:
        b *= 2
    return b


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(x) -> bool:
    """Whether a Triton kernel can take tensor x: on a GPU, or anywhere under the interpreter."""
    return x.is_cuda or interpreting()


def _cache_path(gpu_name: str) -> Path:
    root = os.environ.get("WB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "porting-workbench")
    return Path(root) / "autotune" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", gpu_name) + ".json")


class ConfigCache:
    """Best config per key, for one GPU, mirrored to a JSON file."""

    def __init__(self, gpu_name: str):
        self.path = _cache_path(gpu_name)
        self.entries: dict[str, dict] = {}  # chosen or checked in this process: returned as is
        self.on_disk: dict[str, dict] = {}  # read from the file: checked against the candidates once
        try:
            self.on_disk = json.loads(self.path.read_text())
        except (OSError, ValueError):
            pass  # no file yet, or a torn write from a killed process: tune again

    def get(self, key: str, candidates: list[dict]) -> dict | None:
        """The config for `key`; a file entry counts only if it is still a candidate (the lists
        change between versions). A hit costs one dict lookup: this runs on every GEMM call."""
        hit = self.entries.get(key)
        if hit is None and self.on_disk.get(key) in candidates:
            hit = self.entries[key] = self.on_disk[key]
        return hit

    def put(self, key: str, config: dict) -> None:
        self.entries[key] = config
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**self.on_disk, **self.entries}, indent=1, sort_keys=True))
            os.replace(tmp, self.path)  # atomic: concurrent processes never read half a file
        except OSError:
            pass  # a read-only cache dir costs a re-tune next process, nothing else


_caches: dict[int, ConfigCache] = {}  # by device index


def _cache_for(device: torch.device) -> ConfigCache:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _caches:
        _caches[index] = ConfigCache(torch.cuda.get_device_name(index))
    return _caches[index]


GRAPH_CALLS = 10  # launches per timed CUDA graph


def graph_ms(fns: list[Callable[[], object]], calls: int = GRAPH_CALLS, warmup_ms: float = 5,
             rep_ms: float = 25) -> float:
    """Median GPU milliseconds per call, from replays of a CUDA graph of `calls` calls that go
    round `fns` in turn (several fns over copies of the weights keep them out of L2).

    Timing eager calls would measure Python launch overhead for small layers (a decode GEMM
    runs in 5-20 us, its Python launch path takes about as long) and pick configs at random.
    """
    from triton.testing import do_bench

    for fn in fns:
        fn()  # compile, autotune and allocate outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    return do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median") / calls


def pick_config(key: str, candidates: list[dict], launch: Callable[[dict], None],
                device: torch.device) -> dict:
    """Return the fastest candidate for `key`, timing each with `launch(config)` on first use."""
    if device.type != "cuda" or interpreting() or os.environ.get("WB_AUTOTUNE", "1") == "0":
        return candidates[0]
    cache = _cache_for(device)
    hit = cache.get(key, candidates)
    if hit is not None:
        return hit
    if torch.cuda.is_current_stream_capturing():  # first call inside a graph capture: no timing
        return candidates[0]
    best, best_ms = candidates[0], float("inf")
    for config in candidates:
        try:
            ms = graph_ms([lambda: launch(config)])
        except OutOfResources:  # this tile needs more shared memory than the GPU has
            continue
        if ms < best_ms:
            best, best_ms = config, ms
    cache.put(key, best)
    return best
