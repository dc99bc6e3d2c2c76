"""Mutation testing of the guards: does removing or bending a check turn a test red?

Cosmic Ray makes the mutants (its operators, its work database, its apply-and-restore of
a mutation on disk); this script chooses what is mutated and which tests run for each
mutant, from ``tools/mutation.toml``:

* only the bodies of the listed guard functions of the security-critical modules;
* not the inert parts of them: annotations (strings at run time, under
  ``from __future__ import annotations``), the text of error and log messages (f-strings,
  the message arguments of a ``raise``, logging calls): clients decide on status codes,
  never on message text, so a changed message is no weaker a guard;
* each mutant runs only the module's test files' tests that execute the mutated line
  (one coverage run with per-test contexts finds them; a line only run at import falls
  back to its function's tests), fastest first, stopping at the first failure, with a
  timeout; a mutant on a line no test executes survives without a run.

Everything runs in a copy of the tree (a mutation left on disk by a killed run can never
reach the work tree). A survivor counts as equivalent only when ``docs/security.md``'s
"Mutation testing" section lists it (module, line, the line before -> after, why).

    python benchmarks/mutation.py [--module PATH ...] [--limit N] [--keep DIR]

The last stdout line is one JSON object: mutants, killed, survived, equivalent_listed,
mutation_score (killed over mutants less the listed equivalents), the same on the
comparison lines (identities, sessions, handles, signatures, tags, consent), timeouts,
the mutants excluded as inert, and the wall time.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tools" / "mutation.toml"
SECURITY_DOC = ROOT / "docs" / "security.md"
SECTION = "## Mutation testing"

Span = tuple[tuple[int, int], tuple[int, int]]  # ((line, col), (end line, end col)), chars


class ConfigError(ValueError):
    """tools/mutation.toml names something that does not exist (says which key and what)."""


@dataclass(frozen=True)
class Comparison:
    """A line that compares an identity, session, handle, signature, tag or consent."""

    function: str
    line: int  # 1-based


@dataclass
class ModuleConfig:
    """One [[module]] of tools/mutation.toml, resolved against the source."""

    path: str
    functions: dict[str, tuple[int, int]]  # qualname -> first line (decorators), last line
    tests: list[str]
    comparisons: list[Comparison]
    source: str = field(repr=False)

    def function_at(self, line: int) -> str | None:
        """The guard function whose lines hold ``line``, if any."""
        for name, (first, last) in self.functions.items():
            if first <= line <= last:
                return name
        return None


@dataclass(frozen=True)
class Equivalent:
    """A survivor listed in docs/security.md as an equivalent mutant."""

    module: str
    line: int
    before: str
    after: str
    reason: str


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every module-level function and method of a top class."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{node.name}.{item.name}", item


def load_config(root: Path = ROOT, path: Path | None = None) -> tuple[dict[str, Any],
                                                                       list[ModuleConfig]]:
    """The settings and the modules of tools/mutation.toml; ConfigError names what is wrong."""
    path = path or root / "tools" / "mutation.toml"
    raw = tomllib.loads(path.read_text())
    modules: list[ModuleConfig] = []
    for i, entry in enumerate(raw.get("module", [])):
        where = f"{path.name}: module #{i + 1} ({entry.get('path', '?')})"
        source_path = root / entry["path"]
        if not source_path.is_file():
            raise ConfigError(f"{where}: path {entry['path']!r} is not a file")
        source = source_path.read_text()
        defined = dict(_functions(ast.parse(source)))
        functions: dict[str, tuple[int, int]] = {}
        for name in entry["functions"]:
            node = defined.get(name)
            if node is None:
                raise ConfigError(f"{where}: functions: no function {name!r} in the module")
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None
            functions[name] = (first, node.end_lineno)
        for test in entry["tests"]:
            if not (root / test).is_file():
                raise ConfigError(f"{where}: tests: {test!r} is not a file")
        lines = source.splitlines()
        comparisons: list[Comparison] = []
        for spec in entry.get("comparisons", []):
            snippet, within = (spec, list(functions)) if isinstance(spec, str) else (
                spec["line"], [spec["function"]])
            for name in within:
                if name not in functions:
                    raise ConfigError(f"{where}: comparisons: {name!r} is not a listed function")
            hits = [Comparison(name, n) for name in within
                    for n in range(functions[name][0], functions[name][1] + 1)
                    if snippet in lines[n - 1]]
            if len(hits) != 1:
                raise ConfigError(f"{where}: comparisons: {snippet!r} is on {len(hits)} lines "
                                  f"of {', '.join(within)}; expected exactly one")
            comparisons.append(hits[0])
        modules.append(ModuleConfig(entry["path"], functions, list(entry["tests"]),
                                    comparisons, source))
    return raw.get("settings", {}), modules


_ROW = re.compile(r"^\|\s*`(?P<module>[^`]+)`\s*\|\s*(?P<line>\d+)\s*\|\s*`(?P<before>.+?)`\s*"
                  r"→\s*`(?P<after>.*?)`\s*\|\s*(?P<reason>.+?)\s*\|\s*$")


def load_equivalents(doc: Path = SECURITY_DOC) -> list[Equivalent]:
    """The rows of the "Mutation testing" section's table of equivalent mutants."""
    text = doc.read_text()
    start = text.find(SECTION)
    if start < 0:
        return []
    end = text.find("\n## ", start + len(SECTION))
    rows = []
    for raw in text[start: end if end >= 0 else len(text)].splitlines():
        m = _ROW.match(raw)
        if m:
            rows.append(Equivalent(m["module"], int(m["line"]), m["before"].replace("\\|", "|"),
                                   m["after"].replace("\\|", "|"), m["reason"]))
    return rows


# --------------------------------------------------------------------------------------------
# What not to mutate: annotations and message text
# --------------------------------------------------------------------------------------------


def _char_col(lines: list[str], line: int, byte_col: int) -> int:
    """ast counts columns in UTF-8 bytes, parso (Cosmic Ray) in characters."""
    return len(lines[line - 1].encode("utf-8")[:byte_col].decode("utf-8", "replace"))


def _span(lines: list[str], node: ast.AST) -> Span:
    end_line = getattr(node, "end_lineno", None) or node.lineno  # type: ignore[attr-defined]
    end_col = getattr(node, "end_col_offset", None) or 0
    return ((node.lineno, _char_col(lines, node.lineno, node.col_offset)),  # type: ignore[attr-defined]
            (end_line, _char_col(lines, end_line, end_col)))


def inert_spans(source: str) -> list[Span]:
    """Where a mutation cannot weaken a guard: annotations and message text."""
    lines = source.splitlines()
    spans: list[Span] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.arg) and node.annotation is not None:
            spans.append(_span(lines, node.annotation))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            spans.append(_span(lines, node.returns))
        elif isinstance(node, ast.AnnAssign):
            spans.append(_span(lines, node.annotation))
        elif isinstance(node, ast.JoinedStr):
            spans.append(_span(lines, node))
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            spans.extend(_span(lines, arg) for arg in node.exc.args)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name)
              and node.func.value.id in ("log", "logging")):
            spans.append(_span(lines, node))
    return spans


def _inside(pos: tuple[int, int], spans: list[Span]) -> bool:
    return any(a <= pos < b for a, b in spans)


# --------------------------------------------------------------------------------------------
# Which tests run for which line
# --------------------------------------------------------------------------------------------


@dataclass
class TestMap:
    """Per module: line -> node ids of the tests that execute it; node id -> seconds."""

    lines: dict[str, dict[int, set[str]]]
    seconds: dict[str, float]
    unusable: list[str]


def _durations(report: str) -> dict[str, float]:
    seconds: dict[str, float] = defaultdict(float)
    for m in re.finditer(r"^\s*([\d.]+)s (?:setup|call|teardown)\s+(\S.*?)\s*$", report, re.M):
        seconds[m[2]] += float(m[1])
    return seconds


def map_tests(work: Path, modules: list[ModuleConfig], python: str,
              reuse: Path | None = None) -> TestMap:
    """Run every configured test file once under coverage with per-test contexts. A test
    that fails unmutated (a timing test on a loaded machine) can kill nothing: it is left
    out of the map, and named in ``unusable``."""

    tests = sorted({t for m in modules for t in m.tests})
    cov_file = work / ".coverage-map"
    if reuse is not None:  # a map made by an earlier run in the same folder
        shutil.copy(reuse, cov_file)
        return _read_map(cov_file, modules, {}, set())
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "--durations=0", "--durations-min=0", "--cov-context=test", "--cov-report=",
           *(f"--cov={Path(m.path).parent}" for m in modules), *tests]
    env = dict(os.environ, COVERAGE_FILE=str(cov_file), PYTHONPATH=str(work),
               PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    failed = set(re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M))
    if proc.returncode not in (0, 1) or len(failed) > 5:
        raise SystemExit(f"the unmutated tests fail; fix them first:\n{proc.stdout[-4000:]}")
    return _read_map(cov_file, modules, _durations(proc.stdout), failed)


def _read_map(cov_file: Path, modules: list[ModuleConfig], seconds: dict[str, float],
              failed: set[str]) -> TestMap:
    from coverage import CoverageData

    data = CoverageData(basename=str(cov_file))
    data.read()
    lines: dict[str, dict[int, set[str]]] = {}
    work = cov_file.parent
    for m in modules:
        by_line = data.contexts_by_lineno(str(work / m.path))
        lines[m.path] = {n: {c.rsplit("|", 1)[0] for c in ctx if c} - failed
                         for n, ctx in by_line.items()}
    return TestMap(lines, seconds, sorted(failed))


def tests_for(module: ModuleConfig, line: int, tmap: TestMap) -> list[str]:
    """The tests that execute ``line`` (else any line of its function), fastest first."""
    by_line = tmap.lines[module.path]
    chosen = set(by_line.get(line, ()))
    if not chosen:
        name = module.function_at(line)
        if name is not None:
            first, last = module.functions[name]
            for n in range(first, last + 1):
                chosen |= by_line.get(n, set())
    return sorted(chosen, key=lambda t: (tmap.seconds.get(t, 1.0), t))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Mutant:
    """One mutation of a guard line and what its tests made of it."""

    module: str
    line: int
    function: str
    operator: str
    occurrence: int
    comparison: bool
    outcome: str = "pending"  # killed | survived | timeout | incompetent
    tests_run: int = 0
    seconds: float = 0.0
    before: str = ""
    after: str = ""
    detail: str = ""


def _copy_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files of the work tree, nothing else."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _preload() -> None:
    """Import the heavy libraries once, before any fork, so each mutant's test run starts in
    a fraction of a second; nothing of fedscore is imported here (the mutated module and
    everything above it are imported afresh in each child)."""
    import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401
    import grpc  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import torch  # noqa: F401

    sys.dont_write_bytecode = True


def _child(work: Path, tests: list[str], timeout: float, log: Path) -> None:
    """In the forked child: run ``tests`` against the mutated copy and exit with pytest's code."""
    code = 3
    try:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(work)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.path.insert(0, str(work))
        os.environ["PYTHONPATH"] = str(work)
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        import pytest

        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                                f"--timeout={int(timeout)}", *tests]))
    except BaseException:  # the harness failed, not the mutant: exit 3, "incompetent"
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _outcome(status: int) -> str:
    """A child's wait status as the mutant's outcome."""
    code = os.waitstatus_to_exitcode(status)
    # 1: a test failed; 2: collection failed (the mutant does not even import); both kill.
    if code in (1, 2):
        return "killed"
    if code == 0:
        return "survived"
    return "incompetent"  # 3 internal error, 4 usage, 5 no tests, a signal: the harness's


def _record(db_path: Path, job_id: str, mutant: Mutant, output: str = "") -> None:
    """The mutant's outcome into Cosmic Ray's work database (``cr-report`` reads it)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    outcome = {"survived": TestOutcome.SURVIVED, "incompetent": TestOutcome.INCOMPETENT}.get(
        mutant.outcome, TestOutcome.KILLED)
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        db.set_result(job_id, WorkResult(worker_outcome=WorkerOutcome.NORMAL,
                                         output=output or mutant.detail, test_outcome=outcome))


def _line_change(source: str, mutated: str) -> tuple[str, str]:
    a, b = source.splitlines(), mutated.splitlines()
    for x, y in zip(a, b, strict=False):
        if x != y:
            return x.strip(), y.strip()
    return "", ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate, select and run the mutants; return the figures."""
    from cosmic_ray.commands.init import init
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    started = time.perf_counter()
    settings, modules = load_config()
    if args.module:
        unknown = set(args.module) - {m.path for m in modules}
        if unknown:
            raise SystemExit(f"--module {', '.join(sorted(unknown))}: not in {CONFIG.name}")
        modules = [m for m in modules if m.path in args.module]
    equivalents = load_equivalents()
    python = sys.executable
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedscore-mutation-"))
    if root.exists():
        shutil.rmtree(root)
    work, dbs = root / "tree0", root / "db"
    work.mkdir(parents=True)
    dbs.mkdir()
    exclude = re.compile(settings.get("exclude_operators", "(?!)"))
    try:
        _copy_tree(work)
        print(f"mapping tests to lines under coverage ({work})", file=sys.stderr, flush=True)
        tmap = map_tests(work, modules, python, Path(args.map) if args.map else None)
        mapped = time.perf_counter()
        mutants: list[Mutant] = []
        excluded = invalid = 0
        jobs: list[tuple[Mutant, Any, Path]] = []
        mutated_of: dict[int, str] = {}
        for m in modules:
            db_path = dbs / (m.path.replace("/", "_") + ".sqlite")
            spans = inert_spans(m.source)
            comparison_lines = {c.line for c in m.comparisons}
            with use_db(str(db_path), WorkDB.Mode.create) as db:
                init([work / m.path], db, {})
                skipped: dict[str, list[str]] = defaultdict(list)
                for item in list(db.pending_work_items):
                    spec = item.mutations[0]
                    line = spec.start_pos[0]
                    name = m.function_at(line)
                    why = ("not a guard line" if name is None else
                           "inert" if _inside(tuple(spec.start_pos), spans) else
                           "operator excluded" if exclude.search(spec.operator_name) else "")
                    if not why and args.only_comparisons and line not in comparison_lines:
                        why = "not a comparison line (--only-comparisons)"
                    if why:
                        excluded += why == "inert"
                        skipped[why].append(item.job_id)
                        continue
                    assert name is not None
                    mutant = Mutant(m.path, line, name, spec.operator_name, spec.occurrence,
                                    line in comparison_lines)
                    mutants.append(mutant)
                    jobs.append((mutant, item, db_path))
                for why, ids in skipped.items():  # one transaction: one fsync, not thousands
                    db.set_multiple_results(ids, WorkResult(
                        worker_outcome=WorkerOutcome.SKIPPED, output=why))
        if args.limit and len(jobs) > args.limit:
            jobs = random.Random(0).sample(jobs, args.limit)
        # Only now parse each mutant (parso is slow on big modules); a mutant that is not
        # valid Python (the bare * of keyword-only arguments as a product) is no mutant.
        kept = []
        for mutant, item, db_path in jobs:
            spec = item.mutations[0]
            operator = get_operator(spec.operator_name)(**spec.operator_args)
            source = next(m.source for m in modules if m.path == mutant.module)
            mutated = mutate_code(source, operator, spec.occurrence) or ""
            try:
                compile(mutated, mutant.module, "exec")
            except SyntaxError:
                invalid += 1
                with use_db(str(db_path), WorkDB.Mode.open) as db:
                    db.set_result(item.job_id, WorkResult(
                        worker_outcome=WorkerOutcome.SKIPPED, output="not valid Python"))
                continue
            mutated_of[id(mutant)] = mutated
            kept.append((mutant, item, db_path))
        jobs = kept
        mutants = [j[0] for j in jobs]
        by_path = {m.path: m for m in modules}
        print(f"{len(jobs)} mutants to run ({excluded} inert ones excluded)", file=sys.stderr,
              flush=True)
        timeout_s = float(settings.get("timeout_s", 60))
        factor = float(settings.get("timeout_factor", 4))
        copies = [work]
        for k in range(1, args.jobs):
            copies.append(root / f"tree{k}")
            _copy_tree(copies[-1])
        _preload()
        idle = list(range(len(copies)))
        killer: dict[tuple[str, str | int], str] = {}
        running: dict[int, tuple[int, Mutant, Any, Path, float, float, list[str]]] = {}
        queue = list(jobs)
        done = 0
        stop: list[int] = []  # SIGTERM/SIGINT: let the running mutants finish, start no more

        def _stop(signum: int, _frame: Any) -> None:
            stop.append(signum)
            queue.clear()
            print("stopping: figures over the mutants run so far", file=sys.stderr, flush=True)

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while queue or running:
            while queue and idle:
                mutant, item, db_path = queue.pop(0)
                module = by_path[mutant.module]
                tests = tests_for(module, mutant.line, tmap)
                # The test that killed a mutant of the same line (else function) goes first:
                # with -x most mutants then cost one test, not the whole selection.
                for key in ((mutant.module, mutant.function), (mutant.module, mutant.line)):
                    if killer.get(key) in tests:
                        tests.remove(killer[key])
                        tests.insert(0, killer[key])
                mutant.tests_run = len(tests)
                mutant.before, mutant.after = _line_change(module.source, mutated_of[id(mutant)])
                if not tests:
                    mutant.outcome, mutant.detail = "survived", "no test executes this line"
                    _record(db_path, item.job_id, mutant)
                    done += 1
                    continue
                slot = idle.pop()
                (copies[slot] / mutant.module).write_text(mutated_of[id(mutant)])
                budget = timeout_s + factor * sum(tmap.seconds.get(t, 1.0) for t in tests)
                log = dbs / f"slot{slot}.log"
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(copies[slot], tests, budget, log)
                now = time.perf_counter()
                running[pid] = (slot, mutant, item, db_path, now, now + budget, tests)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.perf_counter()
                for cpid, run_ in list(running.items()):
                    if now > run_[5]:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(cpid, 9)
                        os.waitpid(cpid, 0)
                        run_[1].outcome = "timeout"
                        pid = cpid
                        break
                else:
                    time.sleep(0.05)
                    continue
            if pid not in running:
                continue
            slot, mutant, item, db_path, t0, _, tests = running.pop(pid)
            if mutant.outcome == "pending":
                mutant.outcome = _outcome(status)
            # the test run's own children (servers it started) go with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, 9)
            mutant.seconds = time.perf_counter() - t0
            log = dbs / f"slot{slot}.log"
            output = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            mutant.detail = "" if mutant.outcome == "killed" else output[-800:]
            failed = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
            if mutant.outcome == "killed" and failed and failed[1] in tests:
                killer[(mutant.module, mutant.line)] = failed[1]
                killer[(mutant.module, mutant.function)] = failed[1]
            (copies[slot] / mutant.module).write_text(by_path[mutant.module].source)
            idle.append(slot)
            _record(db_path, item.job_id, mutant, output)
            done += 1
            print(f"[{done}/{len(jobs)}] {mutant.outcome:9s} {mutant.seconds:5.1f}s "
                  f"{mutant.module}:{mutant.line} {mutant.operator.split('/')[-1]} "
                  f"({len(tests)} tests)", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.report:
        with open(args.report, "w") as f:
            for mutant in mutants:
                f.write(json.dumps(mutant.__dict__) + "\n")
    finished = [m for m in mutants if m.outcome != "pending"]
    figures = _figures(finished, equivalents, excluded, started, mapped, args)
    figures["complete"] = len(finished) == len(mutants)
    figures["not_run"] = len(mutants) - len(finished)
    figures["excluded_operators"] = settings.get("exclude_operators", "")
    figures["excluded_invalid"] = invalid
    figures["jobs"] = args.jobs
    figures["unusable_tests"] = tmap.unusable
    return figures


def _is_listed(m: Mutant, equivalents: list[Equivalent]) -> bool:
    return any(e.module == m.module and e.before == m.before and e.after == m.after
               for e in equivalents)


def _score(mutants: list[Mutant], equivalents: list[Equivalent]) -> tuple[int, int, int, float]:
    killed = sum(m.outcome in ("killed", "timeout") for m in mutants)
    survived = [m for m in mutants if m.outcome == "survived"]
    listed = sum(_is_listed(m, equivalents) for m in survived)
    counted = len(mutants) - listed
    return killed, len(survived), listed, round(killed / counted, 4) if counted else 1.0


def _figures(mutants: list[Mutant], equivalents: list[Equivalent], excluded: int,
             started: float, mapped: float, args: argparse.Namespace) -> dict[str, Any]:
    killed, survived, listed, score = _score(mutants, equivalents)
    comparison = [m for m in mutants if m.comparison]
    c_killed, c_survived, c_listed, c_score = _score(comparison, equivalents)
    unlisted = [m for m in mutants if m.outcome == "survived" and not _is_listed(m, equivalents)]
    for m in sorted(unlisted, key=lambda m: (m.module, m.line)):
        print(f"SURVIVED {m.module}:{m.line} [{m.function}] {m.operator.split('/')[-1]}: "
              f"`{m.before}` → `{m.after}` ({m.tests_run} tests)", file=sys.stderr)
    incompetent = [m for m in mutants if m.outcome == "incompetent"]
    for m in incompetent:
        print(f"INCOMPETENT {m.module}:{m.line}: {m.detail}", file=sys.stderr)
    per_module: dict[str, dict[str, int]] = {}
    for m in mutants:
        row = per_module.setdefault(m.module, {"mutants": 0, "killed": 0, "survived": 0})
        row["mutants"] += 1
        row["killed" if m.outcome in ("killed", "timeout") else "survived"] += (
            m.outcome != "incompetent")
    return {
        "mutants": len(mutants),
        "killed": killed,
        "survived": survived,
        "equivalent_listed": listed,
        "unlisted_survivors": len(unlisted),
        "incompetent": len(incompetent),
        "timeouts": sum(m.outcome == "timeout" for m in mutants),
        "mutation_score": score,
        "comparison_mutants": len(comparison),
        "comparison_killed": c_killed,
        "comparison_survived": c_survived,
        "comparison_equivalent_listed": c_listed,
        "comparison_score": c_score,
        "excluded_inert": excluded,
        "per_module": per_module,
        "subset": bool(args.limit or args.module or args.only_comparisons),
        "coverage_map_s": round(mapped - started, 1),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    """Run the mutation test of the guards; print the figures as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", default=[],
                        help="only this module of tools/mutation.toml (repeatable)")
    parser.add_argument("--limit", type=int, default=0,
                        help="run a random sample of this many mutants (to measure)")
    parser.add_argument("--keep", default="", help="work in this folder and keep it")
    parser.add_argument("--report", default="", help="write every mutant as JSON lines here")
    parser.add_argument("--map", default="", help="reuse this coverage map (same --keep)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--only-comparisons", action="store_true",
                        help="only the mutants of the comparison lines")
    args = parser.parse_args()
    figures = run(args)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
