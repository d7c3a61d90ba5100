"""Launch-config selection for the GEMM kernels: tuned per GPU, keyed on bucketed M.

Where a config comes from, first hit wins (one dict lookup once resolved: this runs on every call):
1. this process's choices;
2. the user cache, one JSON file per GPU name (`$WB_CACHE_DIR` or
   `~/.cache/porting-workbench/autotune/<gpu>.json`): what earlier processes tuned;
3. the configs shipped for that GPU in `kernels/tuned/<gpu>.json` (written by
   `python -m adapters.tune --ship`), and for a shape not shipped, the shipped entry of the
   nearest shape (same kernel and dtype; N, K and M closest in log2): no cold-start tuning on a
   known GPU (the 32B first warm-up tuned for 54 s on an H100 before there were any);
4. on a GPU with no shipped file, timing every candidate (CUDA-graph replays, so Python launch
   overhead does not decide), once per key; the result joins the user cache.
M is bucketed to the next power of two (1, 2, 4, ..., 4096 and above), so decode steps that grow
M by one reuse one entry.

WB_AUTOTUNE=force times every key once per process whatever is cached or shipped (what
`adapters.tune` runs); WB_AUTOTUNE=0, or no GPU (TRITON_INTERPRET=1), takes the first candidate
as is: the candidate lists put a sensible default first. WB_SHIPPED_CONFIGS=0 ignores step 3.
"""

import json
import math
import os
import re
import sys
import time
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


SHIPPED_DIR = Path(__file__).parent / "tuned"


def gpu_file_name(gpu_name: str) -> str:
    """'NVIDIA H200' -> 'NVIDIA_H200.json'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", gpu_name) + ".json"


def _cache_path(gpu_name: str) -> Path:
    root = os.environ.get("WB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "porting-workbench")
    return Path(root) / "autotune" / gpu_file_name(gpu_name)


def read_configs(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no file yet, or a torn write from a killed process: tune again


def key_fields(key: str) -> tuple[str, str, dict[str, int]]:
    """'w4a8|N4096|K12288|g128|M16|torch.bfloat16' -> ('w4a8', 'torch.bfloat16', {N, K, g, M})."""
    kernel, *middle, dtype = key.split("|")
    return kernel, dtype, {f[0]: int(f[1:]) for f in middle}


def _shape_distance(a: dict[str, int], b: dict[str, int]) -> float:
    """log2 distance over N, K and M; another group size counts as 2 (its K steps differ)."""
    if a.keys() != b.keys():
        return math.inf
    return sum(2.0 if f == "g" else abs(math.log2(max(a[f], 1) / max(b[f], 1)))
               for f in a if a[f] != b[f])


class ConfigCache:
    """Best config per key, for one GPU, mirrored to a JSON file."""

    def __init__(self, gpu_name: str, shipped_dir: Path = SHIPPED_DIR):
        self.gpu_name = gpu_name
        self.path = _cache_path(gpu_name)
        self.entries: dict[str, dict] = {}  # chosen or checked in this process: returned as is
        self.on_disk = read_configs(self.path)  # checked against the candidates once per key
        self.shipped = ({} if os.environ.get("WB_SHIPPED_CONFIGS", "1") == "0"
                        else read_configs(shipped_dir / gpu_file_name(gpu_name)))
        self.tuned: dict[str, dict] = {}  # timed in this process: what put() writes and tune ships

    def get(self, key: str, candidates: list[dict]) -> dict | None:
        """The config for `key`; a cached or shipped entry counts only if it is still a
        candidate (the lists change between versions)."""
        hit = self.entries.get(key)
        if hit is None:
            if self.on_disk.get(key) in candidates:
                hit = self.on_disk[key]
            elif self.shipped:
                hit = self.nearest_shipped(key, candidates)
            if hit is not None:
                self.entries[key] = hit
        return hit

    def nearest_shipped(self, key: str, candidates: list[dict]) -> dict | None:
        """The shipped config of `key`, else of the nearest shipped shape of the same kernel and
        dtype whose config is a candidate here."""
        if self.shipped.get(key) in candidates:
            return self.shipped[key]
        kernel, dtype, fields = key_fields(key)
        best, best_distance = None, math.inf
        for other, config in self.shipped.items():
            o_kernel, o_dtype, o_fields = key_fields(other)
            if o_kernel == kernel and o_dtype == dtype and config in candidates:
                distance = _shape_distance(fields, o_fields)
                if distance < best_distance:
                    best, best_distance = config, distance
        return best

    def put(self, key: str, config: dict) -> None:
        self.entries[key] = self.tuned[key] = config
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**self.on_disk, **self.tuned}, indent=1, sort_keys=True))
            os.replace(tmp, self.path)  # atomic: concurrent processes never read half a file
        except OSError:
            pass  # a read-only cache dir costs a re-tune next process, nothing else


_caches: dict[int, ConfigCache] = {}  # by device index


def config_cache(device: torch.device) -> ConfigCache:
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
    """The config for `key` (see the module docstring), timing each candidate with
    `launch(config)` when nothing cached or shipped answers."""
    mode = os.environ.get("WB_AUTOTUNE", "1")
    if device.type != "cuda" or interpreting() or mode == "0":
        return candidates[0]
    cache = config_cache(device)
    hit = cache.entries.get(key) if mode == "force" else cache.get(key, candidates)
    if hit is not None:
        return hit
    if torch.cuda.is_current_stream_capturing():  # first call inside a graph capture: no timing
        return candidates[0]
    start = time.perf_counter()
    best, best_ms = candidates[0], float("inf")
    for config in candidates:
        try:
            ms = graph_ms([lambda: launch(config)])
        except OutOfResources:  # this tile needs more shared memory than the GPU has
            continue
        if ms < best_ms:
            best, best_ms = config, ms
    cache.put(key, best)
    if mode != "force":  # adapters.tune draws its own progress bar
        if len(cache.tuned) == 1:
            print(f"autotune: no shipped configs answer for {cache.gpu_name}; timing each new GEMM shape once "
                  f"(kept in {cache.path}; `python -m adapters.tune` tunes a model's shapes up front)",
                  file=sys.stderr)
        print(f"autotune [{len(cache.tuned)}] {key}: {len(candidates)} configs in "
              f"{time.perf_counter() - start:.1f} s, best {best_ms * 1e3:.1f} us", file=sys.stderr)
    return best
