"""Materialize a task's sources (pip release, repository folder, git ref) into a workspace.

Downloads and clones are cached under the user cache dir (`$WB_CACHE_DIR` or
`~/.cache/porting-workbench`): a source fetched once never touches the network again.
Every glob must match at least one file, so a renamed upstream file fails loudly at build
time instead of silently leaving the agent without it.
"""

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable

import git

from .spec import DirSource, GitSource, PipSource

PIP_TIMEOUT_S = 300
# What a port may import (CONTRACT.md) and the checks run it on; the reference cache is keyed by
# their releases (transformers 4.57 and 5.x build the same model differently)
RUNTIME = ("torch", "triton", "transformers", "safetensors")


class SourceError(ValueError):
    """A source that cannot be materialized; the message names the source and what failed."""


def installed_release(distribution: str) -> str | None:
    """The installed version of `distribution`, None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_root() -> Path:
    root = os.environ.get("WB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "porting-workbench")
    return Path(root)


def glob_regex(pattern: str) -> re.Pattern:
    """Shell glob over '/'-separated paths: `*` and `?` stay inside one folder, `**/` spans any."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + r"\Z")


def select(names: list[str], globs: list[str], what: str) -> list[str]:
    chosen = []
    for pattern in globs:
        regex = glob_regex(pattern)
        hits = [n for n in names if regex.match(n)]
        if not hits:
            raise SourceError(f"{what}: no file matches {pattern!r}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def _target(dest: Path, to: str, what: str) -> Path:
    rel = PurePosixPath(to)
    if rel.is_absolute() or ".." in rel.parts:
        raise SourceError(f"{what}: to: {to!r} must stay inside the workspace")
    return dest / rel


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def materialize_dir(source: DirSource, dest: Path, repo_root: Path) -> list[Path]:
    root = (repo_root / source.dir).resolve()
    what = f"source dir: {source.dir}"
    if not root.is_dir():
        raise SourceError(f"{what}: no such folder under {repo_root}")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    out = _target(dest, source.to, what)
    chosen = select(names, source.files, what)
    for name in chosen:
        _write(out / name, (root / name).read_bytes())
    return [out / n for n in chosen]


def fetch_pip(source: PipSource, cache: Path) -> Path:
    """The release's wheel or sdist, downloaded once (no dependencies) into the cache."""
    folder = cache / "pip" / re.sub(r"[^A-Za-z0-9_.=-]+", "_", source.pip)
    found = sorted(folder.glob("*")) if folder.exists() else []
    if found:
        return found[0]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, source.pip]
        if source.find_links:
            cmd += ["--no-index", "--find-links", source.find_links]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise SourceError(f"source pip: {source.pip}: download took over {PIP_TIMEOUT_S} s") from err
        files = sorted(Path(tmp).iterdir())
        if done.returncode != 0 or not files:
            raise SourceError(f"source pip: {source.pip}: pip download failed: {done.stderr.strip()[-500:]}")
        folder.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(files[0]), folder / files[0].name))


def _archive_members(dist: Path) -> dict[str, Callable[[], bytes]]:
    """Member path -> reader, for a wheel (zip) or an sdist (tar.gz, top folder stripped)."""
    if dist.suffix in (".whl", ".zip"):
        archive = zipfile.ZipFile(dist)
        return {n: (lambda n=n: archive.read(n)) for n in archive.namelist() if not n.endswith("/")}
    archive = tarfile.open(dist)
    members = {}
    for m in archive.getmembers():
        if m.isfile():
            members[m.name.split("/", 1)[1] if "/" in m.name else m.name] = (
                lambda m=m: archive.extractfile(m).read())
    return members


def materialize_pip(source: PipSource, dest: Path, cache: Path) -> list[Path]:
    what = f"source pip: {source.pip}"
    members = _archive_members(fetch_pip(source, cache))
    out = _target(dest, source.to, what)
    chosen = select(sorted(members), source.files, what)
    for name in chosen:
        _write(out / name, members[name]())
    return [out / n for n in chosen]


def fetch_git(source: GitSource, cache: Path) -> git.Commit:
    """The commit `ref` of `git`, from a bare clone kept in the cache (fetched only when the ref
    is not there yet)."""
    what = f"source git: {source.git}"
    folder = cache / "git" / hashlib.sha1(source.git.encode()).hexdigest()[:16]
    try:
        repo = git.Repo(folder) if folder.exists() else git.Repo.clone_from(source.git, folder, bare=True)
        try:
            return repo.commit(source.ref)
        except (git.BadName, ValueError):  # a ref newer than the cached clone
            repo.git.fetch("origin", "--tags", "+refs/heads/*:refs/heads/*")
            return repo.commit(source.ref)
    except (git.GitCommandError, git.BadName, ValueError) as err:
        raise SourceError(f"{what}: cannot get ref {source.ref!r}: {str(err).strip()[-300:]}") from err


def materialize_git(source: GitSource, dest: Path, cache: Path) -> list[Path]:
    what = f"source git: {source.git}@{source.ref}"
    commit = fetch_git(source, cache)
    blobs = {b.path: b for b in commit.tree.traverse() if b.type == "blob"}
    out = _target(dest, source.to, what)
    chosen = select(sorted(blobs), source.files, what)
    for name in chosen:
        _write(out / name, blobs[name].data_stream.read())
    return [out / n for n in chosen]


def materialize(source, dest: Path, repo_root: Path, cache: Path | None = None) -> list[Path]:
    """Write one source's files under `dest`; return the paths written."""
    cache = cache or cache_root()
    if isinstance(source, DirSource):
        return materialize_dir(source, dest, repo_root)
    if isinstance(source, PipSource):
        return materialize_pip(source, dest, cache)
    return materialize_git(source, dest, cache)
