"""Tiny W4A8 checkpoints for model tasks, built once per (family, tier, format, group, seed) and
cached: the workspace gets one made with the public seed 0, the checks one made with a seed
drawn once per cache and never written into a workspace, so a port cannot special-case the
weights it is checked on.

They are made by the adapters' own command lines in a subprocess (`python -m adapters.tiny`,
`python -m adapters.quantize`): the harness imports neither `adapters` nor `kernels`.
"""

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .sources import cache_root, installed_release
from .spec import Fixture

SAMPLE_SEED = 0
BUILDER_SOURCES = ("adapters/tiny.py", "adapters/quantize.py", "adapters/formats.py", "kernels/reference.py",
                   "kernels/packing.py")
BUILD_TIMEOUT_S = 300
# Trained on adapters.tiny's successor corpus (~3 s a model): confident greedy decoding, so that
# deterministic_output compares every generated token instead of stopping at a near-tie.
TRAIN_STEPS = 200


class FixtureError(RuntimeError):
    """A fixture checkpoint that could not be built; the message has the command's output."""


def check_seed(cache: Path | None = None) -> int:
    """The seed of the checks' checkpoints: random, drawn once per cache dir."""
    path = (cache or cache_root()) / "check_seed"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_text(str(1 + secrets.randbelow(2**31 - 2)))
        tmp.replace(path)
    return int(path.read_text())


def _run(cmd: list[str], repo_root: Path) -> None:
    # One CPU thread: the tiny models gain nothing from more, and builds run side by side. On a
    # 16-core GPU host, four fixture builds at torch's default 16 threads each ran past 300 s
    # (thread oversubscription on tiny ops) where one build takes ~3 s.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise FixtureError(f"`{' '.join(cmd[1:])}` took over {BUILD_TIMEOUT_S} s") from err
    if done.returncode != 0:
        raise FixtureError(f"`{' '.join(cmd[1:])}` failed:\n{done.stderr.strip()[-2000:]}")


def builder_digest(repo_root: Path) -> str:
    """What the checkpoint bytes depend on besides the fixture's fields: the builders' sources and
    the compressed-tensors release (it writes that format's config and packs its weights)."""
    digest = hashlib.sha256()
    for name in BUILDER_SOURCES:
        digest.update(name.encode() + (repo_root / name).read_bytes())
    digest.update((installed_release("compressed-tensors") or "").encode())
    return digest.hexdigest()[:12]


def fixture_checkpoint(fixture: Fixture, seed: int, repo_root: Path, cache: Path | None = None) -> Path:
    """The quantized checkpoint folder for `fixture` made with `seed` (built on first use)."""
    name = (f"{fixture.family}-{fixture.tier}-{fixture.format}-g{fixture.group_size}-s{seed}-t{TRAIN_STEPS}"
            f"-{builder_digest(repo_root)}")
    path = (cache or cache_root()) / "fixtures" / name
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        hf, out = Path(tmp) / "hf", Path(tmp) / "quantized"
        _run([sys.executable, "-m", "adapters.tiny", fixture.family, str(hf), "--tier", fixture.tier,
              "--seed", str(seed), "--train-steps", str(TRAIN_STEPS)], repo_root)
        _run([sys.executable, "-m", "adapters.quantize", "--model-dir", str(hf), "--out", str(out),
              "--group-size", str(fixture.group_size), "--format", fixture.format], repo_root)
        try:
            out.rename(path)
        except OSError:  # built meanwhile by another process: keep theirs
            if not (path / "config.json").exists():
                raise
    return path


def copy_sample(fixture: Fixture, dest: Path, repo_root: Path, cache: Path | None = None) -> Path:
    """Write the public-seed sample checkpoint into a workspace being built."""
    target = dest / fixture.sample
    shutil.copytree(fixture_checkpoint(fixture, SAMPLE_SEED, repo_root, cache), target)
    return target
