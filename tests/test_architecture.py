"""The rooms' import contracts (pyproject's ``[tool.importlinter]``) hold, and can fail.

``make lint`` runs ``lint-imports``; these tests run it too, on the tree as it is and on
a copy of the tree with one forbidden import planted, so a contract that had quietly
stopped checking anything (a renamed room, a typo in a module name) turns this red.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedscore", "platform_node", "bank_node", "coordinator")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> list[dict[str, object]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["importlinter"]["contracts"])


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and pyproject.toml, for planting forbidden imports in."""
    dst = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def _planted(tree: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with ``line`` appended to ``module``, then take it out again."""
    path = tree / (module.replace(".", "/") + ".py")
    original = path.read_text()
    path.write_text(original + "\n" + line + "\n")
    try:
        return _lint(tree)
    finally:
        path.write_text(original)


def test_the_contracts_hold_on_the_tree_as_it_is(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in result.stdout


def test_every_room_of_fedscore_is_in_a_layer() -> None:
    """A new room must be placed in the layers, or nothing would check what it imports."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in str(layer).split("|")}  # type: ignore[attr-defined]
    rooms = {f"fedscore.{p.stem if p.suffix == '.py' else p.name}"
             for p in (ROOT / "fedscore").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__")
             or (p.is_dir() and (p / "__init__.py").exists())}
    assert rooms <= named, f"rooms in no layer: {sorted(rooms - named)}"
    assert set(PACKAGES) - {"fedscore"} <= named


@pytest.mark.parametrize(("module", "line", "contract", "expected"), [
    # The shared package imports a party: the library would depend on its own apps.
    ("fedscore.ml.metrics", "import bank_node.policy", "Layers",
     "fedscore.ml is not allowed to import bank_node"),
    # One party imports another: the bank's code would run the platform's.
    ("bank_node.trainer", "import platform_node.sessions", "Layers",
     "bank_node is not allowed to import platform_node"),
    # A lower room imports a higher one, even lazily inside a function.
    ("fedscore.crypto.psi", "def _f() -> None:\n    import fedscore.wire.serde", "Layers",
     "fedscore.crypto is not allowed to import fedscore.wire"),
    # A circle inside a room, made with a function-level import.
    ("fedscore.crypto.primitives", "def _f() -> None:\n    import fedscore.crypto.psi",
     "No import circle", "No cycles are allowed in fedscore.crypto"),
    # The scoring server pulls torch in.
    ("bank_node.scoring_service", "import torch", "The bank's scoring server",
     "bank_node.scoring_service is not allowed to import torch"),
])
def test_a_forbidden_import_breaks_its_contract(tree: Path, module: str, line: str,
                                                contract: str, expected: str) -> None:
    result = _planted(tree, module, line)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout
    assert expected in " ".join(result.stdout.split()), result.stdout

