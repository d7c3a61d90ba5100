"""The tools an agent gets, as OpenAI function tools, and their implementations over one
attempt's working tree. Every path is confined to the tree (no `..`, no absolute paths, no
symlink leading out), protected paths cannot be written, and every failure comes back to the
model as an error string: a bad call never crashes the loop.

`run_checks` and `finish` are declared here and carried out by the loop (they need the task).
"""

import json
import re
import sys
from pathlib import Path
from typing import Any

from ..checks.sandbox import run_sandboxed, scrubbed_env
from ..tasks.sources import glob_regex

OUTPUT_LIMIT = 12_000  # characters of a tool result the model sees: head and tail
READ_LINES = 400
RUN_TIMEOUT_S = 300
RUN_MEMORY_MB = 16_000


class ToolError(Exception):
    """A tool call the model got wrong; the message goes back to it."""


def _fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required, "additionalProperties": False}}}


_PATH = {"type": "string", "description": "path relative to the workspace root"}
TOOL_SPECS = [
    _fn("list_dir", "List a folder of the workspace (files with sizes, folders with a slash).",
        {"path": {**_PATH, "default": "."}}, []),
    _fn("read_file", f"Read a text file, optionally a line range (1-based, inclusive); at most {READ_LINES} lines.",
        {"path": _PATH, "start": {"type": "integer"}, "end": {"type": "integer"}}, ["path"]),
    _fn("search", "Search the workspace with a Python regular expression; returns path:line: text.",
        {"pattern": {"type": "string"}, "glob": {"type": "string", "description": "only files matching this glob"}},
        ["pattern"]),
    _fn("write_file", "Create or overwrite a file.", {"path": _PATH, "content": {"type": "string"}},
        ["path", "content"]),
    _fn("edit_file", "Replace one exact, unique occurrence of `old` with `new` in a file.",
        {"path": _PATH, "old": {"type": "string"}, "new": {"type": "string"}}, ["path", "old", "new"]),
    _fn("run", f"Run a shell command in the workspace root (time limit {RUN_TIMEOUT_S} s by default; "
        "its whole process group is killed at the end; no network keys in its environment).",
        {"command": {"type": "string"}, "timeout_s": {"type": "integer"}}, ["command"]),
    _fn("run_checks", "Run the task's acceptance checks on the workspace as it is now; returns typed results.",
        {}, []),
    _fn("finish", "Declare the work done; the checks run once more and decide.",
        {"summary": {"type": "string"}}, ["summary"]),
]
TOOL_NAMES = tuple(t["function"]["name"] for t in TOOL_SPECS)
FILE_WRITING = ("write_file", "edit_file", "run")


def clip(text: str, limit: int = OUTPUT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


class Toolbox:
    def __init__(self, root: Path, protected: tuple[str, ...] = ()):
        self.root = Path(root).resolve()
        self.protected = [glob_regex(p) for p in protected]

    def resolve(self, path: str, for_write: bool = False) -> Path:
        if not isinstance(path, str) or not path:
            raise ToolError("path must be a non-empty string")
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise ToolError(f"{path}: paths are relative to the workspace root and may not use '..'")
        full = (self.root / path).resolve()
        if full != self.root and self.root not in full.parents:
            raise ToolError(f"{path}: leads outside the workspace (a symlink?)")
        rel = full.relative_to(self.root).as_posix()
        if rel == ".git" or rel.startswith(".git/"):
            raise ToolError(f"{path}: the git directory is managed by the workbench")
        if for_write and any(p.match(rel) for p in self.protected):
            raise ToolError(f"{path}: protected path (checks and fixtures cannot be changed)")
        return full

    def call(self, name: str, arguments: str | dict) -> str:
        """Run tool `name`; bad JSON, unknown tools and wrong arguments raise ToolError."""
        if name not in TOOL_NAMES or name in ("run_checks", "finish"):
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(TOOL_NAMES)}")
        try:
            args = json.loads(arguments or "{}") if isinstance(arguments, str) else dict(arguments)
        except json.JSONDecodeError as err:
            raise ToolError(f"arguments are not valid JSON ({err.msg} at position {err.pos})") from None
        if not isinstance(args, dict):
            raise ToolError("arguments must be a JSON object")
        try:
            return getattr(self, name)(**args)
        except TypeError as err:
            raise ToolError(f"wrong arguments for {name}: {err}") from None

    def list_dir(self, path: str = ".") -> str:
        folder = self.resolve(path)
        if not folder.is_dir():
            raise ToolError(f"{path}: not a folder")
        lines = [f"{p.name}/" if p.is_dir() else f"{p.name}  ({p.stat().st_size} bytes)"
                 for p in sorted(folder.iterdir()) if p.name != ".git"]
        return "\n".join(lines) or "(empty)"

    def read_file(self, path: str, start: int = 1, end: int | None = None) -> str:
        file = self.resolve(path)
        if not file.is_file():
            raise ToolError(f"{path}: no such file")
        lines = file.read_text(errors="replace").splitlines()
        end = min(end or len(lines), len(lines), start + READ_LINES - 1)
        body = "\n".join(f"{i:5d}  {lines[i - 1]}" for i in range(max(start, 1), end + 1))
        more = f"\n[{len(lines) - end} more lines: read with start={end + 1}]" if end < len(lines) else ""
        return clip(body + more)

    def search(self, pattern: str, glob: str = "**/*") -> str:
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ToolError(f"bad regular expression: {err}") from None
        only = glob_regex(glob)
        hits = []
        for file in sorted(self.root.rglob("*")):
            rel = file.relative_to(self.root).as_posix()
            if not file.is_file() or rel.startswith(".git/") or not only.match(rel):
                continue
            try:
                for i, line in enumerate(file.read_text().splitlines(), 1):
                    if regex.search(line):
                        hits.append(f"{rel}:{i}: {line.strip()[:200]}")
            except UnicodeDecodeError:
                continue
        return clip("\n".join(hits) or "no match")

    def write_file(self, path: str, content: str) -> str:
        file = self.resolve(path, for_write=True)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
        return f"wrote {path} ({len(content)} characters)"

    def edit_file(self, path: str, old: str, new: str) -> str:
        file = self.resolve(path, for_write=True)
        if not file.is_file():
            raise ToolError(f"{path}: no such file")
        text = file.read_text()
        count = text.count(old)
        if count != 1:
            raise ToolError(f"{path}: `old` occurs {count} times; it must match exactly once "
                            "(copy it from read_file, with enough context to be unique)")
        file.write_text(text.replace(old, new))
        return f"edited {path}"

    def run(self, command: str, timeout_s: int = RUN_TIMEOUT_S) -> str:
        timeout_s = max(1, min(int(timeout_s), RUN_TIMEOUT_S))
        env = scrubbed_env({"PYTHONPATH": str(self.root), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
        done = run_sandboxed(["bash", "-c", command], self.root, timeout_s, RUN_MEMORY_MB, env=env)
        status = ("killed at the time limit" if done.timed_out else
                  f"killed by {done.signal}" if done.signal else f"exit code {done.returncode}")
        return clip(f"[{status}, {done.seconds:.1f} s]\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")


def tool_message(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}
