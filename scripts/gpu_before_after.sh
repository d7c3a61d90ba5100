#!/usr/bin/env bash
# On a GPU host: the same benchmarks for an older tree and this one, in one run on one GPU, so a
# kernel change is judged against a baseline measured beside it. BEFORE is a directory holding
# the older `adapters/` and `kernels/` (the device's copy of a checkout has no git history, so
# make it beforehand: `git archive <rev> adapters kernels | tar -x -C .dev/before`, and carry it).
#   BEFORE=.dev/before [MODELS=...] [BATCHES=1,16] [GEMM_M=8,16] [PREFILL_M=1024,4096] bash scripts/gpu_before_after.sh
# Writes $OUT_DIR/<what>-<before|after>.txt: kernels.benchmark at decode M (shipped configs) and at
# prefill M (both prefill paths timed), adapters.decode_benchmark; each step under its own limit.
set -uo pipefail
cd "$(dirname "$0")/.."
here=$PWD before=$(realpath "${BEFORE:?BEFORE must name the older tree (adapters/, kernels/)}")
out=${OUT_DIR:-/tmp/gpu-before-after}
models=${MODELS:-qwen3-8b,qwen3-30b-a3b,qwen3-32b}
mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
run() {  # name, limit seconds, command...
    local name=$1 limit=$2; shift 2
    for tree in before after; do
        local dir=$here; [ $tree = before ] && dir=$before
        echo "== $name, $tree"
        (cd "$dir" && PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" timeout "$limit" "$@" 2>&1 | grep -v Warning) \
            | tee "$out/$name-$tree.txt"
    done
}
run gemm-decode "${GEMM_LIMIT_S:-60}" python3 -m kernels.benchmark --m "${GEMM_M:-8,16}"
run decode "${DECODE_LIMIT_S:-170}" python3 -m adapters.decode_benchmark --models "$models" --variants w4a8-graph \
    --batches "${BATCHES:-1,16}"
[ -n "${PREFILL_M-1024,4096}" ] && run gemm-prefill "${PREFILL_LIMIT_S:-75}" python3 -m kernels.benchmark --m "${PREFILL_M-1024,4096}"
