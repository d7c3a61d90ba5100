"""Apply a task's gold solution to a tree: copy its overlay folder, then vendor the repository's
`adapters` and `kernels` packages into the port (absolute `kernels` / `adapters` imports
rewritten to the vendored location), so the gold port imports nothing of the harness and passes
the forbidden-import check like any port, while their source exists once, in this repository.
"""

import re
import shutil
from pathlib import Path, PurePosixPath

from .sources import SourceError, materialize_dir
from .spec import DirSource, TaskSpec

VENDORED = ("kernels", "adapters")


def rewrite_imports(source: str, package: str, what: str = "source") -> str:
    """`from kernels.x import y` -> `from <package>.kernels.x import y` (and adapters alike)."""
    names = "|".join(VENDORED)
    plain = re.search(rf"^\s*import ({names})\b", source, flags=re.M)
    if plain:  # `import kernels.x` binds the top-level name; the repository uses `from` imports only
        raise ValueError(f"{what}: cannot vendor `{plain.group(0).strip()}`; write it as a `from` import")
    return re.sub(rf"^(\s*)from ({names})(\.|\s)", rf"\1from {package}.\2\3", source, flags=re.M)


def apply_solution(spec: TaskSpec, tree: Path) -> list[Path]:
    """Write the gold solution of `spec` into `tree`; return the files written."""
    if spec.solution is None:
        raise ValueError(f"{spec.path}: task {spec.id} has no solution: field")
    written = materialize_dir(DirSource(dir=spec.solution.dir), tree, spec.repo_root)
    if spec.solution.vendor:
        vendor = PurePosixPath(spec.solution.vendor)
        if vendor.is_absolute() or ".." in vendor.parts:
            raise SourceError(f"{spec.path}: solution.vendor {vendor} must stay inside the workspace")
        package = ".".join(vendor.parts)
        for name in VENDORED:
            src = spec.repo_root / name
            dest = tree / vendor / name
            shutil.rmtree(dest, ignore_errors=True)
            for path in sorted(src.glob("*.py")):
                (dest / path.name).parent.mkdir(parents=True, exist_ok=True)
                (dest / path.name).write_text(rewrite_imports(path.read_text(), package, str(path)))
                written.append(dest / path.name)
        init = tree / vendor / "__init__.py"
        if not init.exists():
            init.write_text('"""Vendored from the workbench repository (adapters/, kernels/) by workbench.tasks.gold."""\n')
            written.append(init)
    return written
