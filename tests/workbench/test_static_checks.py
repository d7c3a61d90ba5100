"""Patch-level checks on a real git workspace."""

import git
import pytest

from workbench.checks.static import check_no_forbidden_imports, check_protected_paths


@pytest.fixture
def workspace(tmp_path):
    repo = git.Repo.init(tmp_path)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/test_port.py").write_text("def test_ok(): pass\n")
    (tmp_path / "port.py").write_text("X = 1\n")
    repo.index.add(["tests/test_port.py", "port.py"])
    base = repo.index.commit("base").hexsha
    return tmp_path, repo, base


def test_clean_patch_passes(workspace):
    path, repo, base = workspace
    (path / "port.py").write_text("import torch\nX = 2\n")
    (path / "new_module.py").write_text("from triton import language as tl\n")  # untracked counts too
    assert check_no_forbidden_imports(path, base).passed
    assert check_protected_paths(path, base).passed


@pytest.mark.parametrize("code", ["from adapters.qwen3 import load_model", "import kernels.w4a8_gemm as k",
                                  "import importlib\nm = importlib.import_module('adapters.qwen3')",
                                  "x = __import__('workbench')"])
def test_forbidden_imports_are_found_with_file_and_line(workspace, code):
    path, repo, base = workspace
    (path / "port.py").write_text("import torch\n" + code + "\n")
    result = check_no_forbidden_imports(path, base)
    assert result.status == "fail" and result.category == "forbidden_import"
    last_line = len(code.splitlines()) + 1
    assert result.summary.startswith(f"port.py:{last_line}: imports ")


def test_touching_or_deleting_protected_paths_is_tampering(workspace):
    path, repo, base = workspace
    (path / "tests/test_port.py").write_text("def test_ok(): assert True\n")
    repo.index.add(["tests/test_port.py"])
    repo.index.commit("weaken the test")
    (path / "conftest.py").write_text("collect_ignore = ['tests']\n")
    result = check_protected_paths(path, base)
    assert result.category == "tampering" and "tests/test_port.py" in result.summary and "conftest.py" in result.summary
    (path / "tests/test_port.py").unlink()
    assert "tests/test_port.py (deleted)" in check_protected_paths(path, base).details["touched"]
