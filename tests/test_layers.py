"""The layer contract (pyproject.toml ``[tool.importlinter]``, docs/architecture.md) holds,
and the check really catches a forbidden import, also one hidden inside a function."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("motcua", "edge", "district", "faces", "sync", "models", "proto", "core")


def _lint(where: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run([str(lint), "--no-cache", "--config", str(where / "pyproject.toml")],
                          cwd=where, env=env, capture_output=True, text=True, timeout=300)


def test_layer_contract_is_kept() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def _copy_tree(tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    dst.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "static"))
    return dst


@pytest.mark.parametrize(("module", "line"), [
    # the terminal reaching into the district server, at module level
    ("edge/service.py", "from district.log import DistrictLog  # noqa\n"),
    # the shared protocol importing the terminal, hidden inside a function
    ("sync/wire.py", "def _sneaky():  # noqa\n    from edge.config import Config  # noqa\n"
                     "    return Config\n"),
    # the ground floor importing a package above it
    ("core/net.py", "import faces.types  # noqa\n"),
], ids=["edge->district", "sync->edge-in-function", "core->faces"])
def test_a_forbidden_import_breaks_the_contract(tmp_path: Path, module: str, line: str) -> None:
    repo = _copy_tree(tmp_path)
    target = repo / module
    target.write_text(target.read_text() + "\n\n" + line)
    proc = _lint(repo)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "BROKEN" in proc.stdout
    assert "0 kept, 1 broken" in proc.stdout


def test_no_project_import_is_hidden_inside_a_function() -> None:
    """The links between packages are all at the top of each module, where a reader (and
    the contract) sees them; only ``if TYPE_CHECKING:`` blocks may import lower down."""
    import ast

    hidden = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            type_checking = {
                n.lineno for node in ast.walk(tree)
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node) if hasattr(n, "lineno")
            }
            for node in ast.walk(tree):
                if not isinstance(node, ast.Import | ast.ImportFrom) or node.col_offset == 0:
                    continue
                if node.lineno in type_checking:
                    continue
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names])
                if any(n.split(".")[0] in PACKAGES for n in names):
                    hidden.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert hidden == []


def test_docs_index_lists_every_document() -> None:
    """docs/README.md names every file of docs/ (a newcomer finds them all there)."""
    docs = ROOT / "docs"
    index = (docs / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted(docs.iterdir())
               if p.is_file() and p.name != "README.md" and f"`{p.name}`" not in index]
    assert missing == []
