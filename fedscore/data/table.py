"""Loading, validating and writing one party's table.

Every cell is first read as a string (CSV) or as stored (Parquet) and then checked
with vectorized pyarrow/numpy operations, so a table of millions of rows is checked
in seconds. Nothing is dropped or coerced silently: every problem found is collected
and raised at once as one :class:`DataError`.

Row numbers in problems are what a person sees in the file:

* CSV (.csv, .csv.gz): the physical line number. The header is line 1, so the first
  data row is row 2 (for .csv.gz, the line in the decompressed text).
* Parquet: the 1-based record number; the first record is row 1.

``row`` is ``None`` for problems about the whole file; problems about the header
(missing or extra columns) of a CSV carry row 1.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedscore.data.ids import FORBIDDEN, NOT_NFC, id_masks
from fedscore.data.schema import Schema, SchemaError
from fedscore.errors import FedscoreError

__all__ = [
    "MISSING_TOKENS",
    "DataError",
    "PartyTable",
    "Problem",
    "find_table",
    "load_table",
    "table_format",
    "write_table",
]

# Cells of a numeric column that mean "missing" (after trimming whitespace).
# A categorical cell is missing only when it is empty.
MISSING_TOKENS: tuple[str, ...] = ("", "NA", "N/A", "NaN", "nan", "NAN", "null", "NULL", "None")
MAX_LISTED = 50  # problems printed by str(DataError)
_DETAIL_PER_CHECK = 20  # rows spelt out per (check, column); the rest are counted
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INF_RE = r"(?i)^[+-]?inf(inity)?$"
_SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclass(frozen=True)
class Problem:
    """One problem found in a table file, located by row and column where it has one."""

    file: Path
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [str(self.file)]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}"


class DataError(FedscoreError, ValueError):
    """Every problem found in one table; ``str()`` lists them one per line."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [str(p) for p in self.problems[:MAX_LISTED]]
        rest = len(self.problems) - MAX_LISTED
        if rest > 0:
            lines.append(f"... and {rest} more problems")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()


@dataclass
class PartyTable:
    """A party's table, loaded and validated against its schema: ids, features and labels."""

    schema: Schema
    source: Path
    ids: np.ndarray  # dtype object, Python str
    features: pd.DataFrame  # schema order; numeric float64, categorical object (str or None)
    labels: np.ndarray | None  # int8 0/1; None for the platform

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.features) != n or (self.labels is not None and len(self.labels) != n):
            raise ValueError(f"{self.source}: ids, features and labels differ in length")
        if list(self.features.columns) != list(self.schema.feature_names):
            raise ValueError(f"{self.source}: feature columns {list(self.features.columns)} "
                             f"do not match the schema {list(self.schema.feature_names)}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> PartyTable:
        """Rows by position (an index array or a boolean mask), as a new table."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return PartyTable(
            schema=self.schema,
            source=self.source,
            ids=self.ids[rows],
            features=self.features.iloc[rows].reset_index(drop=True),
            labels=None if self.labels is None else self.labels[rows],
        )


def table_format(path: Path) -> str | None:
    """'csv', 'csv.gz' or 'parquet' by file name; None when unsupported."""
    name = Path(path).name.lower()
    for suffix in (".csv.gz", ".csv", ".parquet"):
        if name.endswith(suffix):
            return suffix[1:]
    return None


def find_table(directory: Path, stem: str) -> Path:
    """The one table ``stem.csv``, ``stem.csv.gz`` or ``stem.parquet`` in ``directory``.

    Raises FileNotFoundError when there is none or more than one, naming what it found."""
    directory = Path(directory)
    found = [directory / f"{stem}{s}" for s in _SUFFIXES if (directory / f"{stem}{s}").is_file()]
    if len(found) != 1:
        wanted = ", ".join(f"{stem}{s}" for s in _SUFFIXES)
        what = ", ".join(p.name for p in found) if found else "none"
        raise FileNotFoundError(f"{directory}: expected exactly one of {wanted}; found {what}")
    return found[0]


# -- loading ---------------------------------------------------------------------------------


@dataclass
class _Raw:
    """A table as read, before checking: one pyarrow array per column (by header name)."""

    columns: dict[str, pa.Array]
    n: int
    rows: np.ndarray  # row number (as shown to people) of each data row
    header_row: int | None
    skipped: int = 0  # malformed CSV rows, already reported


class _Collector:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(self, row: int | None, column: str | None, message: str) -> None:
        self.problems.append(Problem(self.file, row, column, message))

    def rows(
        self,
        mask: np.ndarray,
        raw: _Raw,
        column: str,
        message: str,
        values: pa.Array | None = None,
        summary: str = "",
    ) -> None:
        """One problem per flagged row for the first few, then one line counting the rest.

        ``message`` is a format string with ``{value}`` (the cell, repr'd)."""
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        shown = idx[:_DETAIL_PER_CHECK]
        cells = (values.take(pa.array(shown)).to_pylist() if values is not None
                 else [None] * len(shown))
        for i, cell in zip(shown, cells, strict=True):
            self.add(int(raw.rows[i]), column, message.format(value=repr(cell)))
        rest = len(idx) - len(shown)
        if rest > 0:
            self.add(None, column, f"... and {rest} more rows: {summary or 'same problem'}")


def load_table(
    data: Path,
    schema: Path | Schema,
    *,
    require_label: bool | None = None,
) -> PartyTable:
    """Read and check ``data`` against ``schema``.

    ``require_label=True`` (a bank's table) demands a schema with a label column;
    ``False`` (the platform's) demands one without; ``None`` takes the schema as it is.
    Raises :class:`SchemaError` for a bad schema and :class:`DataError` listing every
    problem in the data.
    """
    data = Path(data)
    if not isinstance(schema, Schema):
        schema = Schema.load(Path(schema))
    where = str(schema.source) if schema.source is not None else "<schema>"
    if require_label is True and schema.label_column is None:
        raise SchemaError(f"{where}: missing key 'label'; this table must carry the default "
                          "label (a bank's table), expected label = \"<label column>\"")
    if require_label is False and schema.label_column is not None:
        raise SchemaError(f"{where}: label = {schema.label_column!r}; this table must not "
                          "carry labels (the platform's), expected no label key")

    out = _Collector(data)
    fmt = table_format(data)
    if fmt is None:
        out.add(None, None, f"unsupported file type {''.join(data.suffixes) or '(none)'!r}; "
                f"expected one of {', '.join(_SUFFIXES)}")
        raise DataError(out.problems)
    if not data.exists():
        out.add(None, None, "file not found")
        raise DataError(out.problems)
    if not data.is_file():
        out.add(None, None, "not a regular file")
        raise DataError(out.problems)
    if data.stat().st_size == 0:
        out.add(None, None, "file is empty (0 bytes); expected a header line and data rows")
        raise DataError(out.problems)

    raw = _read_parquet(data, out) if fmt == "parquet" else _read_csv(data, out)
    if raw is None:
        raise DataError(out.problems)
    return _check(raw, schema, out)


def _read_csv(path: Path, out: _Collector) -> _Raw | None:
    header = _read_header(path, out)
    if header is None:
        return None
    if not header or header == [""]:
        out.add(1, None, "empty header line; expected the column names")
        return None
    names: list[str] = []
    seen: dict[str, int] = {}
    for name in header:
        if name in seen:
            out.add(1, name, f"column {name!r} appears twice in the header")
            seen[name] += 1
            names.append(f"{name}\x00{seen[name]}")  # internal name, never matches the schema
        else:
            seen[name] = 1
            names.append(name)

    def read(use_threads: bool) -> tuple[pa.Table, list[Any]]:
        invalid: list[Any] = []

        def handler(row: Any) -> str:
            invalid.append(row)
            return "skip"

        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1,
                                           use_threads=use_threads),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False,
                                             invalid_row_handler=handler),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
        return table, invalid

    try:
        table, invalid = read(True)
        if invalid and any(r.number is None for r in invalid):
            table, invalid = read(False)  # single-threaded reads know line numbers
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc) or "UTF-8" in str(exc):
            _report_encoding(path, out)
        elif not _report_quotes(path, out):  # the row, when a quote is the cause
            out.add(None, None, f"cannot parse as CSV: {exc}")
        return None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        out.add(None, None, f"cannot read file: {exc}")
        return None

    # One record per physical line, so that row numbers are lines: a quoted value that
    # spans lines (or a quote never closed, which Arrow may read as swallowing the rest
    # of a block without a word) shows as fewer records than lines; name the rows.
    lines, quoted = _count_lines(path)
    if quoted and _report_quotes(path, out):  # also a last line's quote never closed
        return None
    if lines is not None and lines != 1 + table.num_rows + len(invalid):
        out.add(None, None, f"{lines - 1} data lines but {table.num_rows + len(invalid)} "
                "records parsed; expected one record per line")
        return None
    skipped = sorted(int(r.number) for r in invalid)
    for r in invalid[:_DETAIL_PER_CHECK]:
        out.add(int(r.number), None, f"has {r.actual_columns} fields, expected "
                f"{r.expected_columns} (one per header column): {r.text[:80]!r}")
    if len(invalid) > _DETAIL_PER_CHECK:
        out.add(None, None, f"... and {len(invalid) - _DETAIL_PER_CHECK} more rows with the "
                "wrong number of fields")
    n = table.num_rows
    rows = np.arange(2, 2 + n + len(skipped), dtype=np.int64)
    if skipped:
        rows = rows[~np.isin(rows, np.asarray(skipped, dtype=np.int64))]
    columns = {name: table.column(i).combine_chunks() for i, name in enumerate(names)}
    return _Raw(columns, n, rows, header_row=1, skipped=len(skipped))


def _count_lines(path: Path) -> tuple[int | None, bool]:
    """(physical lines as Arrow splits them: ``\n``, ``\r\n`` or ``\r``; whether any
    double quote occurs); None lines when the file cannot be read (the reader says so)."""
    count, last, prev_cr, quoted = 0, b"", False, False
    try:
        with _open_text_bytes(path) as fh:
            while block := fh.read(1 << 22):
                quoted = quoted or b'"' in block
                count += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
                if prev_cr and block.startswith(b"\n"):
                    count -= 1  # a \r\n split across two blocks
                prev_cr = block.endswith(b"\r")
                last = block[-1:]
    except (OSError, EOFError, gzip.BadGzipFile):
        return None, False
    return count + (1 if last not in (b"", b"\n", b"\r") else 0), quoted


def _report_quotes(path: Path, out: _Collector) -> bool:
    """Report each line (its row) where a double quote opens a value that the line does
    not close: values may not span lines. False when there is none."""
    found, row, rest = 0, 0, b""
    try:
        with _open_text_bytes(path) as fh:
            while True:  # in blocks: the file may be large
                block = fh.read(1 << 22)
                lines = (rest + block).splitlines(keepends=True)
                # the last line may go on in the next block (even "\r" before "\n")
                rest = lines.pop() if block and lines else b""
                for line in lines:
                    row += 1
                    if b'"' in line and line.count(b'"') % 2:
                        found += 1
                        if found <= _DETAIL_PER_CHECK:
                            out.add(row, None, "a double quote opens a value that this line "
                                    "does not close; expected one record per line (a quoted "
                                    "value may not hold a line break, and a quote inside one "
                                    "is written twice)")
                if not block:
                    break
    except (OSError, EOFError, gzip.BadGzipFile):
        return False
    if found > _DETAIL_PER_CHECK:
        out.add(None, None, f"... and {found - _DETAIL_PER_CHECK} more lines with an unclosed "
                "double quote")
    return found > 0


def _open_text_bytes(path: Path) -> io.BufferedIOBase:
    if table_format(path) == "csv.gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_header(path: Path, out: _Collector) -> list[str] | None:
    try:
        with _open_text_bytes(path) as fh:
            line = fh.readline(1 << 20)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        out.add(None, None, f"cannot read file: {exc}")
        return None
    if not line:
        out.add(None, None, "file is empty (no header line after decompression); expected "
                "a header line and data rows")
        return None
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        _report_encoding(path, out)
        return None
    return next(csv.reader([text.rstrip("\r\n")]), [])


def _report_encoding(path: Path, out: _Collector) -> None:
    """Find the first byte that is not UTF-8 by streaming through the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    line = 1
    try:
        with _open_text_bytes(path) as fh:
            while True:
                block = fh.read(1 << 20)
                final = not block
                pending = decoder.getstate()[0]  # bytes held back from the last block
                try:
                    decoder.decode(block, final)
                except UnicodeDecodeError as exc:
                    data = pending + block
                    # exc.start indexes into data (held-back bytes + this block)
                    bad = offset - len(pending) + exc.start
                    line += data.count(b"\n", 0, exc.start)
                    byte = data[exc.start] if exc.start < len(data) else 0
                    where = ("of the decompressed data " if table_format(path) == "csv.gz"
                             else "")
                    out.add(line, None, f"not valid UTF-8: byte 0x{byte:02x} at byte offset "
                            f"{bad} {where}(line {line}); expected a UTF-8 encoded file")
                    return
                if final:
                    break
                line += block.count(b"\n")
                offset += len(block)
    except (OSError, EOFError) as exc:
        out.add(None, None, f"cannot read file: {exc}")
        return
    out.add(None, None, "not valid UTF-8; expected a UTF-8 encoded file")


def _read_parquet(path: Path, out: _Collector) -> _Raw | None:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        out.add(None, None, f"cannot read as Parquet: {exc}")
        return None
    names = table.column_names
    for name in {n for n in names if names.count(n) > 1}:
        out.add(None, name, f"column {name!r} appears more than once")
    columns: dict[str, pa.Array] = {}
    for i, name in enumerate(names):
        if name not in columns:
            columns[name] = table.column(i).combine_chunks()
    n = table.num_rows
    return _Raw(columns, n, np.arange(1, n + 1, dtype=np.int64), header_row=None)


def _mask(arr: pa.Array) -> np.ndarray:
    """A pyarrow boolean array as numpy, nulls as False."""
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _check(raw: _Raw, schema: Schema, out: _Collector) -> PartyTable:
    schema_name = str(schema.source) if schema.source is not None else "the schema"
    present = set(raw.columns)
    for name in schema.columns:
        if name not in present:
            if name == schema.id_column:
                role = "the id column"
            elif name == schema.label_column:
                role = "the label column"
            else:
                role = f"a {schema.feature(name).kind} feature"
            out.add(raw.header_row, name, f"missing column {name!r} ({role} in {schema_name})")
    expected = set(schema.columns)
    for name in raw.columns:
        if name not in expected and "\x00" not in name:
            out.add(raw.header_row, name, f"extra column {name!r} is not in {schema_name}; "
                    f"expected only {', '.join(schema.columns)}")
    if raw.n == 0:
        if not raw.skipped:
            out.add(None, None, "no data rows (header only); expected at least one row")
        raise DataError(out.problems)

    ids = _check_ids(raw, schema.id_column, out) if schema.id_column in present else None
    features: dict[str, pd.Series] = {}
    for feat in schema.features:
        if feat.name not in present:
            continue
        arr = raw.columns[feat.name]
        if feat.kind == "numeric":
            values = _check_numeric(raw, feat.name, arr, feat.allow_missing, out)
            if values is not None:
                features[feat.name] = pd.Series(values, dtype=np.float64)
        else:
            cats = _check_categorical(raw, feat.name, arr, feat.allow_missing, out)
            if cats is not None:
                features[feat.name] = pd.Series(cats, dtype=object)
    labels = None
    if schema.label_column is not None and schema.label_column in present:
        labels = _check_labels(raw, schema.label_column, out)

    if out.problems:
        raise DataError(out.problems)
    assert ids is not None
    frame = pd.DataFrame(features, columns=list(schema.feature_names))
    return PartyTable(schema=schema, source=out.file, ids=ids, features=frame, labels=labels)


def _check_ids(raw: _Raw, column: str, out: _Collector) -> np.ndarray | None:
    arr = raw.columns[column]
    if not _is_string(arr.type):
        out.add(None, column, f"id column has type {arr.type}; expected strings")
        return None
    empty = _mask(pc.or_kleene(pc.is_null(arr), pc.equal(pc.utf8_trim_whitespace(arr), "")))
    out.rows(empty, raw, column, "empty id {value}; every row needs an id", arr, "empty id")
    padded = _mask(pc.not_equal(pc.utf8_trim_whitespace(arr), arr)) & ~empty
    out.rows(padded, raw, column, "id {value} has leading or trailing whitespace", arr,
             "ids with leading or trailing whitespace")
    forbidden, not_nfc = id_masks(arr)  # the id alphabet (fedscore.data.ids, docs/data.md)
    out.rows(forbidden & ~empty, raw, column, "id {value} " + FORBIDDEN, arr,
             "ids with control or format characters")
    out.rows(not_nfc & ~empty, raw, column, "id {value} " + NOT_NFC, arr,
             "ids not in NFC")
    ids = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
    if len(pc.unique(arr)) == len(arr):  # the common case, checked in C++
        return ids
    series = pd.Series(ids, dtype=object)
    later = series.duplicated(keep="first").to_numpy() & ~empty
    if later.any():
        dup_values = set(series[later].iloc[: _DETAIL_PER_CHECK].tolist())
        firsts = series[series.isin(dup_values) & ~series.duplicated(keep="first")]
        first_row = {v: int(raw.rows[int(i)]) for i, v in firsts.items()}  # type: ignore[call-overload]
        idx = np.flatnonzero(later)
        for i in idx[:_DETAIL_PER_CHECK]:
            v = ids[i]
            out.add(int(raw.rows[i]), column,
                    f"duplicate id {v!r}: rows {first_row[v]} and {int(raw.rows[i])}")
        if len(idx) > _DETAIL_PER_CHECK:
            out.add(None, column, f"... and {len(idx) - _DETAIL_PER_CHECK} more duplicate ids")
    return ids


def _check_numeric(
    raw: _Raw, column: str, arr: pa.Array, allow_missing: bool, out: _Collector
) -> np.ndarray | None:
    t = arr.type
    if _is_string(t):
        trimmed = pc.utf8_trim_whitespace(arr)
        missing = _mask(pc.or_kleene(pc.is_null(trimmed),
                                     pc.is_in(trimmed, value_set=pa.array(MISSING_TOKENS))))
        null = pa.scalar(None, pa.string())
        try:  # fast path: every present cell parses
            values = pc.cast(pc.if_else(pa.array(missing), null, trimmed), pa.float64())
        except pa.ArrowInvalid:  # find the cells that do not, by pattern
            is_num = _mask(pc.match_substring_regex(trimmed, _NUMBER_RE))
            is_inf = _mask(pc.match_substring_regex(trimmed, _INF_RE))
            bad = ~(missing | is_num | is_inf)
            out.rows(bad, raw, column, "{value} is not a number; expected a numeric value",
                     arr, "values that are not numbers")
            values = pc.cast(pc.if_else(pa.array(is_num | is_inf), trimmed, null), pa.float64())
        floats = np.array(values.to_numpy(zero_copy_only=False), dtype=np.float64)
        missing |= np.isnan(floats) & _mask(pc.is_valid(values))  # e.g. '-nan'
        infinite = np.isinf(floats)  # 'inf', and overflow such as 1e999
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        floats = np.array(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False),
                            dtype=np.float64)
        missing = np.isnan(floats)
        infinite = np.isinf(floats)
    else:
        out.add(None, column, f"numeric column has type {t}; expected numbers or strings")
        return None
    out.rows(infinite, raw, column, "infinite value {value}; infinity is never allowed", arr,
             "infinite values")
    if not allow_missing:
        out.rows(missing, raw, column, "missing value {value}; this numeric column does not "
                 "allow missing values (allow_missing = true in the schema permits them)", arr,
                 "missing values")
    floats[missing] = np.nan
    return floats


def _check_categorical(
    raw: _Raw, column: str, arr: pa.Array, allow_missing: bool, out: _Collector
) -> np.ndarray | None:
    t = arr.type
    if pa.types.is_integer(t):
        arr = pc.cast(arr, pa.string())
    elif not _is_string(t):
        out.add(None, column, f"categorical column has type {t}; expected strings or integers")
        return None
    empty = _mask(pc.or_kleene(pc.is_null(arr), pc.equal(pc.utf8_trim_whitespace(arr), "")))
    if not allow_missing:
        out.rows(empty, raw, column, "empty value {value}; this categorical column does not "
                 "allow missing values (allow_missing = true in the schema permits them)", arr,
                 "empty values")
    values = np.array(arr.to_numpy(zero_copy_only=False), dtype=object)
    values[empty] = None
    return values


def _check_labels(raw: _Raw, column: str, out: _Collector) -> np.ndarray | None:
    arr = raw.columns[column]
    t = arr.type
    if _is_string(t):
        trimmed = pc.utf8_trim_whitespace(arr)
        ones = _mask(pc.equal(trimmed, "1"))
        ok = ones | _mask(pc.equal(trimmed, "0"))
    elif pa.types.is_integer(t):
        ones = _mask(pc.equal(arr, 1))
        ok = ones | _mask(pc.equal(arr, 0))
    else:
        out.add(None, column, f"label column has type {t}; expected integers 0/1 or strings")
        return None
    out.rows(~ok, raw, column, "label {value} is not 0 or 1", arr, "labels that are not 0 or 1")
    return ones.astype(np.int8)


# -- writing ---------------------------------------------------------------------------------


def to_arrow(table: PartyTable, *, integral_as_int: bool = False) -> pa.Table:
    """The table as Arrow, columns in schema order (id, features, label).

    Numeric features are float64 unless ``integral_as_int`` and every present value is a
    whole number, in which case they become nullable int64 (so a CSV shows ``20000``,
    not ``20000.0``)."""
    schema = table.schema
    arrays: list[pa.Array] = [pa.array(table.ids, type=pa.string())]
    for feat in schema.features:
        col = table.features[feat.name]
        if feat.kind == "numeric":
            values = np.asarray(col.to_numpy(), dtype=np.float64)
            nan = np.isnan(values)
            present = values[~nan]
            if (integral_as_int and np.all(np.isfinite(present))
                    and np.all(present == np.round(present))
                    and (len(present) == 0 or np.abs(present).max() < 2**53)):
                arrays.append(pa.array(np.where(nan, 0, values).astype(np.int64), mask=nan))
            else:
                arrays.append(pa.array(values, mask=nan if nan.any() else None))
        else:
            arrays.append(pa.array(col.to_numpy(dtype=object), type=pa.string()))
    if schema.label_column is not None:
        if table.labels is None:
            raise ValueError(f"{table.source}: the schema has a label column but the table "
                             "has no labels")
        arrays.append(pa.array(np.asarray(table.labels, dtype=np.int8)))
    return pa.Table.from_arrays(arrays, names=list(schema.columns))


def _csv_bytes(arrow: pa.Table) -> bytes:
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(arrow.column_names)
    # Quote only when some string cell needs it, so ids and codes read plainly.
    needs_quotes = any(
        _is_string(col.type) and pc.any(pc.match_substring_regex(col, '[,"\r\n]')).as_py()
        for col in arrow.columns
    )
    body = io.BytesIO()
    if arrow.num_rows:
        pacsv.write_csv(arrow, body, pacsv.WriteOptions(
            include_header=False, quoting_style="needed" if needs_quotes else "none"))
    return head.getvalue().encode("utf-8") + body.getvalue()


def write_table(table: PartyTable, path: Path) -> None:
    """Write by suffix (.csv, .csv.gz, .parquet); the same table gives the same bytes."""
    path = Path(path)
    fmt = table_format(path)
    if fmt is None:
        raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(_SUFFIXES)}")
    if fmt == "parquet":
        write_parquet(to_arrow(table), path)
        return
    data = _csv_bytes(to_arrow(table, integral_as_int=True))
    if fmt == "csv.gz":
        with open(path, "wb") as raw_fh, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw_fh, mtime=0, compresslevel=6
        ) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)


def write_parquet(arrow: pa.Table, path: Path) -> None:
    pq.write_table(arrow, path, compression="zstd")
