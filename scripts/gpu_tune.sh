#!/usr/bin/env bash
# On a GPU host: tune the W4A8 GEMM configs of the Qwen3 presets from nothing and ship them
# (`python -m adapters.tune --ship` writes kernels/tuned/<gpu>.json), then measure what shipping
# saves: the first token of `adapters.infer` on a tiny W4A8 Qwen3, each run from an empty user
# cache, without and with the shipped configs, from a cold and a warm Triton cache; then the GPU
# tests of the config cache. Writes $OUT_DIR/tune.log, the shipped file and the tuned user cache.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT_DIR:-/tmp/gpu-tune}
mkdir -p "$out"
{
nvidia-smi --query-gpu=name --format=csv,noheader
user_cache=$(mktemp -d)
start=$(date +%s)
WB_CACHE_DIR=$user_cache timeout "${TUNE_LIMIT_S:-360}" python3 -m adapters.tune --ship ${TUNE_ARGS:-} 2>&1 | tail -4
rc=${PIPESTATUS[0]}
echo "tune: exit $rc after $(( $(date +%s) - start )) s$([ $rc = 124 ] && echo ": over TUNE_LIMIT_S")"
cp "$user_cache"/autotune/*.json "$out/tuned-user-cache.json"
cp kernels/tuned/*.json "$out/" 2>/dev/null
tiny=$(mktemp -d)
python3 -m adapters.tiny qwen3 "$tiny/bf16" --tier triton > /dev/null
python3 -m adapters.quantize --model-dir "$tiny/bf16" --out "$tiny/w4a8" --group-size 128 > /dev/null 2>&1
first_token() {  # $1: a label; stderr of one run, from an empty user cache
    WB_CACHE_DIR=$(mktemp -d) python3 -m adapters.infer --model-dir "$tiny/w4a8" --prompt "Hello there" \
        --max-new-tokens 16 2> "$tiny/infer.err" > /dev/null
    echo "  $1: $(grep -cE '^autotune \[' "$tiny/infer.err") GEMM keys timed; $(grep 'first token' "$tiny/infer.err")"
}
for shipped in 0 1; do
    export TRITON_CACHE_DIR=$(mktemp -d) WB_SHIPPED_CONFIGS=$shipped
    first_token "shipped configs $shipped, Triton cache cold"
    first_token "shipped configs $shipped, Triton cache warm"
done
unset TRITON_CACHE_DIR WB_SHIPPED_CONFIGS
python3 -m pytest -n0 -q -p no:cacheprovider tests/kernels/test_gpu.py tests/kernels/test_autotune.py 2>&1 | tail -4
} > "$out/tune.log" 2>&1
cat "$out/tune.log"
