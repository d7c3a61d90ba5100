"""An interpreter on which the project is not installed: a fresh virtual environment whose
site-packages links every package of this one except the project's own install (its dist-info
and the editable finder), optionally with other releases laid over it (a `pip install --target`
folder: transformers 5.17 with its dependencies, a hub `kernels` distribution). It is what a user
has who puts a checkout on PYTHONPATH, as on a GPU host with the packages preinstalled."""

import re
import venv
from pathlib import Path

import torch

SITE = Path(torch.__file__).resolve().parents[1]  # this environment's site-packages
OWN_INSTALL = re.compile(r"porting_workbench.*|__editable__.*porting_workbench.*")
SKIPPED = {"bin", "__pycache__"}


def _key(entry: str) -> str:
    """What an entry provides: a distribution (its dist-info) or an importable name."""
    if entry.endswith((".dist-info", ".egg-info")):
        return "dist:" + re.sub(r"[-_.]+", "_", entry.rsplit(".", 1)[0].split("-")[0]).lower()
    return entry.removesuffix(".py")


def plain_python(root: Path, overlays: tuple[Path, ...] = ()) -> Path:
    """A Python at `root` seeing this environment's packages minus the project, `overlays` first."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    site = next(root.glob("lib/python*/site-packages"))
    taken = set()
    for folder in (*overlays, SITE):
        for entry in sorted(folder.iterdir()):
            key = _key(entry.name)
            if entry.name in SKIPPED or OWN_INSTALL.fullmatch(entry.name) or key in taken:
                continue
            taken.add(key)
            (site / entry.name).symlink_to(entry)
    return root / "bin" / "python"

