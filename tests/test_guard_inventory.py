"""The guard inventory in docs/security.md cannot drift from the code.

Each row of the table under "## Guard inventory" names, in backticks, where a check lives
(``module:qualname``), the status code(s) its refusal answers with, and the tests that
prove it. This file fails when a named function, test file or test function does not
exist, when a named code is not one the guard can answer with (the source of one of the
row's functions, or of an error class one of them refers to, must mention it), and, in
the other direction, when a refusal site in the code is in no row: a ``context.abort``
or any other call with a literal PERMISSION_DENIED or UNAUTHENTICATED status, a raise of
a FedscoreError whose class code is one of those two, or a raise of one of the
:data:`GUARD_ERRORS` (integrity refusals whose class code is another one).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from fedscore.errors import FedscoreError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"
SECTION = "## Guard inventory"
PACKAGES = ("fedscore", "platform_node", "bank_node", "coordinator")
GENERATED = ("fedscore/api",)
REFUSAL_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})
GUARD_ERRORS = (
    "fedscore.federation.release:ReleaseError",
    "fedscore.crypto.psi:PsiProtocolError",
    "platform_node.sessions:StaleRoundError",
    "platform_node.split_service:StepRejected",
)
"""Errors that only guards raise, under a code other than the two refusal codes."""
MARKERS = frozenset({"(handshake)", "(no call)", "(gRPC)"})
"""Code-column entries for refusals that are not a status answered by our code: the TLS
handshake fails before any call, a process or command refuses (no call to answer), or
gRPC itself answers under a setting of ours."""
CODES = frozenset(c.name for c in grpc.StatusCode)
_TARGET = re.compile(r"^[a-z_][\w.]*:[A-Za-z_][\w.]*$")
_TEST = re.compile(r"^(tests/[\w/]+\.py)(?:::(\w+))?$")


@dataclass(frozen=True)
class Row:
    line: int
    what: str
    where: tuple[str, ...]
    codes: tuple[str, ...]
    tests: tuple[str, ...]


def parse_inventory(text: str) -> list[Row]:
    """The rows of the table under SECTION: what | where | code | tests (backticked)."""
    lines = text.splitlines()
    start = lines.index(SECTION)
    rows: list[Row] = []
    in_table = False
    for number, line in enumerate(lines[start + 1:], start + 2):
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or set(cells[0]) <= {"-", ":", " "} or cells[0] == "what it refuses":
            continue
        where, code, tests = (tuple(re.findall(r"`([^`]+)`", c)) for c in cells[1:])
        rows.append(Row(number, cells[0], where, code, tests))
    return rows


@cache
def inventory() -> list[Row]:
    return parse_inventory(DOC.read_text(encoding="utf-8"))


# -- the code ---------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(GENERATED):
                yield _module_name(path), path


def definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """Every function, method, nested function and class by qualname, and module-level
    assignments by name."""
    found: dict[str, ast.AST] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                found[name] = child
                walk(child, name + ".")
            elif not prefix and isinstance(child, ast.Assign | ast.AnnAssign):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        found[t.id] = child

    walk(tree, "")
    return found


def _resolve(node: ast.expr, namespace: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, namespace)
        return getattr(base, node.attr, None) if base is not None else None
    return None


def _error_class(obj: Any, namespace: Mapping[str, Any]) -> type[FedscoreError] | None:
    """``obj`` if it is a FedscoreError class; the class a factory is annotated to return."""
    if isinstance(obj, type):
        return obj if issubclass(obj, FedscoreError) else None
    if callable(obj):
        returns = getattr(obj, "__annotations__", {}).get("return")
        if isinstance(returns, str):
            globs = getattr(obj, "__globals__", namespace)
            returns = globs.get(returns)
        if isinstance(returns, type) and issubclass(returns, FedscoreError):
            return returns
    return None


@cache
def guard_errors() -> tuple[type, ...]:
    out = []
    for target in GUARD_ERRORS:
        module, name = target.split(":")
        out.append(getattr(importlib.import_module(module), name))
    return tuple(out)


def namespace_of(module: ModuleType, tree: ast.Module) -> dict[str, Any]:
    """The module's globals, and the names its functions import for themselves (a class
    imported inside a function is resolved as well)."""
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                try:
                    source = importlib.import_module(node.module)
                except ImportError:
                    continue
                if hasattr(source, alias.name):
                    names[alias.asname or alias.name] = getattr(source, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                try:
                    imported = importlib.import_module(alias.name)
                except ImportError:
                    continue
                top = alias.name.split(".")[0]
                names[alias.asname or top] = (imported if alias.asname
                                              else importlib.import_module(top))
    return {**names, **vars(module)}


def _status(node: ast.expr) -> str | None:
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "StatusCode" and node.attr in REFUSAL_CODES):
        return node.attr
    return None


def refusal_sites(tree: ast.Module, namespace: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """(enclosing qualname, line, why) of every refusal site in a module (see the module)."""
    sites: list[tuple[str, int, str]] = []

    def walk(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.Call):
                for arg in [*child.args, *(k.value for k in child.keywords)]:
                    code = _status(arg)
                    if code:
                        sites.append((scope or "<module>", child.lineno, f"call with {code}"))
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                cls = _error_class(_resolve(exc, namespace), namespace)
                if cls is not None and (cls.code.name in REFUSAL_CODES
                                        or issubclass(cls, guard_errors())):
                    sites.append((scope or "<module>", child.lineno,
                                  f"raise {cls.__name__} ({cls.code.name})"))
            walk(child, inner)

    walk(tree, "")
    return sites


@cache
def _parsed(module: str) -> tuple[ModuleType, ast.Module, str]:
    mod = importlib.import_module(module)
    assert mod.__file__ is not None
    source = Path(mod.__file__).read_text(encoding="utf-8")
    return mod, ast.parse(source), source


def _lookup(target: str) -> tuple[ModuleType, ast.AST, str] | None:
    module, qualname = target.split(":")
    try:
        mod, tree, source = _parsed(module)
    except ImportError:
        return None
    node = definitions(tree).get(qualname)
    return (mod, node, source) if node is not None else None


def _texts(target: str) -> Iterator[str]:
    """The target's source, and that of every FedscoreError class (and its FedscoreError
    bases) it refers to or raises through an annotated factory."""
    found = _lookup(target)
    assert found is not None
    mod, node, source = found
    yield ast.get_source_segment(source, node) or ""
    namespace = namespace_of(mod, _parsed(mod.__name__)[1])
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name | ast.Attribute):
            cls = _error_class(_resolve(sub, namespace), namespace)
            for base in cls.__mro__ if cls is not None else ():
                if issubclass(base, FedscoreError) and base is not FedscoreError:
                    yield inspect.getsource(base)


# -- the tests --------------------------------------------------------------------------------


def test_the_inventory_is_a_table_of_rows_with_every_column() -> None:
    rows = inventory()
    assert len(rows) >= 30, "the table under '## Guard inventory' was not found whole"
    for row in rows:
        assert row.where and row.codes and row.tests, f"security.md:{row.line} lacks a column"
        assert all(_TARGET.match(w) for w in row.where), f"security.md:{row.line}: {row.where}"
        assert all(c in CODES or c in MARKERS for c in row.codes), \
            f"security.md:{row.line}: {row.codes} (a gRPC status code or one of {MARKERS})"
        assert all(_TEST.match(t) for t in row.tests), f"security.md:{row.line}: {row.tests}"


def test_every_named_guard_exists() -> None:
    missing = [f"security.md:{row.line}: {w}" for row in inventory() for w in row.where
               if _lookup(w) is None]
    assert not missing, "no such module, function or name:\n" + "\n".join(missing)


def test_every_named_test_exists() -> None:
    problems = []
    for row in inventory():
        for ref in row.tests:
            match = _TEST.match(ref)
            assert match is not None
            file, name = match.groups()
            path = ROOT / file
            if name is None:
                problems.append(f"security.md:{row.line}: {ref} names no test function")
            elif not path.is_file():
                problems.append(f"security.md:{row.line}: {file} does not exist")
            else:
                tree = ast.parse(path.read_text(encoding="utf-8"))
                names = {n.name for n in tree.body
                         if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
                if name not in names:
                    problems.append(f"security.md:{row.line}: {file} has no {name}")
    assert not problems, "\n".join(problems)


def test_every_named_code_is_one_the_guard_can_answer_with() -> None:
    problems = []
    for row in inventory():
        if any(_lookup(w) is None for w in row.where):
            continue  # reported by test_every_named_guard_exists
        texts = [t for w in row.where for t in _texts(w)]
        for code in row.codes:
            if code in MARKERS:
                continue
            if not any(re.search(rf"\b{code}\b", t) for t in texts):
                problems.append(f"security.md:{row.line}: none of {', '.join(row.where)} "
                                f"(nor an error class they raise) mentions {code}")
    assert not problems, "\n".join(problems)


def _unlisted(listed: set[str]) -> list[str]:
    out = []
    for module, path in source_modules():
        mod = importlib.import_module(module)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for qualname, line, why in refusal_sites(tree, namespace_of(mod, tree)):
            if f"{module}:{qualname}" not in listed:
                out.append(f"{path.relative_to(ROOT)}:{line} {module}:{qualname}: {why}")
    return out


def test_every_refusal_site_in_the_code_is_in_a_row() -> None:
    listed = {w for row in inventory() for w in row.where}
    unlisted = _unlisted(listed)
    assert not unlisted, ("refusal sites in no row of docs/security.md's guard inventory "
                          "(add a row, with the tests that prove it):\n" + "\n".join(unlisted))


PLANTED = '''
def sneak(context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "planted")

class Planted:
    def refuse(self):
        raise SessionError("planted")

    def stale(self):
        def inner():
            raise StaleRoundError("planted", code=grpc.StatusCode.INTERNAL)
        return inner

def imports_its_own():
    from fedscore.federation.release import ReleaseError
    raise ReleaseError("planted")
'''


def test_a_planted_refusal_site_is_found() -> None:
    """The scan is not vacuous: refusal sites planted in a copy of a module are found,
    each under its enclosing function, and none of them is in a row."""
    mod, tree, source = _parsed("platform_node.sessions")
    before = refusal_sites(tree, namespace_of(mod, tree))
    assert ("SessionRegistry.get", "call with UNAUTHENTICATED") in {(q, w) for q, _, w in before}
    planted_tree = ast.parse(source + PLANTED)
    planted = refusal_sites(planted_tree, namespace_of(mod, planted_tree))
    new = {(q, why) for q, _, why in planted} - {(q, why) for q, _, why in before}
    assert new == {("sneak", "call with UNAUTHENTICATED"),
                   ("Planted.refuse", "raise SessionError (PERMISSION_DENIED)"),
                   ("Planted.stale.inner", "raise StaleRoundError (ABORTED)"),
                   ("imports_its_own", "raise ReleaseError (FAILED_PRECONDITION)")}
    listed = {w for row in inventory() for w in row.where}
    assert not {f"platform_node.sessions:{q}" for q, _ in new} & listed


_GOOD = ("`tests/platform_node/test_sessions.py::"
         "test_a_session_is_stored_for_a_bank_of_the_manifest_only`")


@pytest.mark.parametrize(("where", "code", "test"), [
    ("platform_node.sessions:SessionRegistry.gone", "PERMISSION_DENIED", _GOOD),
    ("platform_node.sessions:SessionRegistry.get", "PERMISSION_DENIED",
     "`tests/platform_node/test_sessions.py::test_gone`"),
    ("platform_node.sessions:SessionRegistry.get", "DATA_LOSS", _GOOD),
], ids=["no-such-guard", "no-such-test", "not-its-code"])
def test_a_wrong_row_is_caught(where: str, code: str, test: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check above fails on a row that names a missing guard, a missing test, or a
    code the guard cannot answer with, and only that check."""
    text = (f"{SECTION}\n\n| what it refuses | where | code | tests |\n|---|---|---|---|\n"
            f"| x | `{where}` | `{code}` | {test} |\n")
    rows = parse_inventory(text)
    assert len(rows) == 1
    monkeypatch.setattr(f"{__name__}.inventory", lambda: rows)
    checks = (test_every_named_guard_exists, test_every_named_test_exists,
              test_every_named_code_is_one_the_guard_can_answer_with)
    failed = 0
    for check in checks:
        try:
            check()
        except AssertionError:
            failed += 1
    assert failed == 1
