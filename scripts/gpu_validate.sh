#!/usr/bin/env bash
# `workbench validate` of every task on a GPU host, the tasks side by side (each in a cache of its
# own), from a plain checkout (MODE=plain: the repository on PYTHONPATH) or a pip install
# (MODE=pip: `pip install --no-deps --no-build-isolation -e .`, run from outside the checkout).
# Writes $OUT_DIR/<mode>-<task>.json per task and one $OUT_DIR/<mode>.log with every task's output
# in turn (six files in all: a device that returns at most 8 gets every one). Pip sources may be
# pre-seeded in $SEED_CACHE/pip.
set -uo pipefail
cd "$(dirname "$0")/.."
export repo=$PWD mode=${MODE:-plain} out=${OUT_DIR:-/tmp/gpu-validate}
limit=${LIMIT_S:-600}
mkdir -p "$out"
if [ "$mode" = pip ]; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
    run() { (cd /tmp && workbench validate "$repo/tasks/$1.yaml" --device cuda --json "$out/$mode-$1.json"); }
else
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
    run() { python3 -m workbench.cli validate "tasks/$1.yaml" --device cuda --json "$out/$mode-$1.json"; }
fi
tasks=${TASKS:-$(ls tasks/*.yaml | xargs -n1 basename | sed "s/\.yaml$//")}
for task in $tasks; do
    cache="/tmp/wb-$mode-$task"
    mkdir -p "$cache" && { [ -d "${SEED_CACHE:-}/pip" ] && cp -r "$SEED_CACHE/pip" "$cache/"; }
    (export -f run; WB_CACHE_DIR="$cache" timeout "$limit" bash -c "run $task" > "$cache/validate.log" 2>&1
     rc=$?; echo "exit $rc$([ $rc = 124 ] && echo ": over LIMIT_S=$limit s")" >> "$cache/validate.log") &
done
wait
for task in $tasks; do
    echo "===== $task"
    cat "/tmp/wb-$mode-$task/validate.log"
done > "$out/$mode.log"
grep -E "^=====|valid|NOT|^exit" "$out/$mode.log"
