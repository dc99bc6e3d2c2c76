"""The mutation run's configuration (tools/mutation.toml) and its list of equivalent mutants
(docs/security.md) name only what exists, so they cannot drift from the code. The run
itself (`make mutation`, benchmarks/mutation.py) is slow and stays out of CI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = ROOT / "benchmarks" / "mutation.py"
    spec = importlib.util.spec_from_file_location("mutation_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_module_function_test_and_comparison_line_exists(bench: ModuleType) -> None:
    settings, modules = bench.load_config(ROOT)
    paths = {m.path for m in modules}
    assert {
        "fedscore/crypto/primitives.py", "fedscore/crypto/consent.py", "fedscore/crypto/psi.py",
        "fedscore/wire/serde.py", "fedscore/wire/transport.py", "fedscore/ledger/verify.py",
        "fedscore/federation/release.py", "platform_node/sessions.py",
        "platform_node/psi_service.py", "platform_node/embedding_service.py",
        "platform_node/split_service.py", "platform_node/federation_service.py",
    } <= paths
    for m in modules:
        assert m.functions and m.tests, m.path
        for c in m.comparisons:  # resolved to one line inside one guard function
            first, last = m.functions[c.function]
            assert first <= c.line <= last
    assert settings["timeout_s"] > 0


def test_a_config_naming_a_missing_function_or_test_is_refused(
    bench: ModuleType, tmp_path: Path
) -> None:
    good = (ROOT / "tools" / "mutation.toml").read_text()
    bad = tmp_path / "mutation.toml"
    bad.write_text(good.replace('"handles_from_bytes"', '"handles_from_bytez"', 1))
    with pytest.raises(bench.ConfigError, match=r"serde\.py.*'handles_from_bytez'"):
        bench.load_config(ROOT, bad)
    bad.write_text(good.replace('"tests/wire/test_serde.py"', '"tests/wire/test_nope.py"', 1))
    with pytest.raises(bench.ConfigError, match=r"tests: 'tests/wire/test_nope.py'"):
        bench.load_config(ROOT, bad)
    bad.write_text(good.replace("int(handles.max()) >= limit", "int(handles.max()) > limit", 1))
    with pytest.raises(bench.ConfigError, match="on 0 lines"):
        bench.load_config(ROOT, bad)


def test_each_listed_equivalent_mutant_is_on_its_line(bench: ModuleType) -> None:
    _, modules = bench.load_config(ROOT)
    by_path = {m.path: m for m in modules}
    for e in bench.load_equivalents(ROOT / "docs" / "security.md"):
        module = by_path[e.module]
        assert module.source.splitlines()[e.line - 1].strip() == e.before, e
        assert module.function_at(e.line) is not None, e
        assert e.after != e.before and e.reason, e


def test_annotations_and_message_text_are_inert_and_checks_are_not(bench: ModuleType) -> None:
    source = (
        "def f(x: int | None, y: bytes) -> bytes | None:\n"
        "    if x != 1 and len(y) > 2:\n"
        "        raise ValueError(f'{x + 1} is not 1', 3 - 1)\n"
        "    log.info('x %d', x * 2)\n"
        "    return y\n"
    )
    spans = bench.inert_spans(source)

    def inert(line: int, text: str) -> bool:
        col = source.splitlines()[line - 1].index(text)
        return bool(bench._inside((line, col), spans))

    assert inert(1, "| None,") and inert(1, "| None:")  # annotations
    assert inert(3, "+ 1") and inert(3, "- 1")  # the message of a raise
    assert inert(4, "* 2")  # a log call
    assert not inert(2, "!=") and not inert(2, "> 2") and not inert(2, "1 and")


def test_make_mutation_runs_the_benchmark_and_ci_does_not(bench: ModuleType) -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "\nmutation:" in makefile and "benchmarks/mutation.py" in makefile
    assert "mutation" not in (ROOT / ".ci" / "run").read_text()
