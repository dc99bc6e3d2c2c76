"""Loading and validating a party's table: every bad input gives a message naming the
file, row and column; good inputs load identically from CSV, csv.gz and Parquet."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fedscore.cli.data import app
from fedscore.data.schema import Feature, Schema, SchemaError
from fedscore.data.table import (
    DataError,
    PartyTable,
    Problem,
    find_table,
    load_table,
    write_table,
)

SCHEMA_TOML = """\
id = "user_id"
label = "default"

[features]
A = "numeric"
B = "categorical"
C = { kind = "numeric", allow_missing = true }
"""
HEADER = "user_id,A,B,C,default\n"
GOOD_CSV = HEADER + "U1,1.5,x,,0\nU2,2,y,3,1\nU3,-4e2,z,NaN,0\n"


@pytest.fixture
def schema_path(tmp_path: Path) -> Path:
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA_TOML, encoding="utf-8")
    return path


def raw(body: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(body)

    return make


def text(body: str) -> Callable[[Path], None]:
    return raw(body.encode("utf-8"))


def gz(body: bytes) -> Callable[[Path], None]:
    return raw(gzip.compress(body, mtime=0))


def parquet(columns: dict[str, pa.Array]) -> Callable[[Path], None]:
    return lambda p: pq.write_table(pa.table(columns), p)


def nothing(_: Path) -> None:
    return None


GOOD_PARQUET = {
    "user_id": pa.array(["U1", "U2"]),
    "A": pa.array([1.0, 2.0]),
    "B": pa.array(["x", "y"]),
    "C": pa.array([None, 3.0]),
    "default": pa.array([0, 1], pa.int8()),
}

# (file name, how to write it, fragments the message must contain: file, row, column, what)
BAD_FILES: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("absent.csv", nothing, ["absent.csv: file not found"]),
    ("empty.csv", raw(b""), ["empty.csv: file is empty (0 bytes)"]),
    ("header_only.csv", text(HEADER), ["header_only.csv: no data rows (header only)"]),
    ("no_column.csv", text("user_id,A,C,default\nU1,1,2,0\n"),
     ["no_column.csv, row 1, column B: missing column 'B' (a categorical feature"]),
    ("no_label.csv", text("user_id,A,B,C\nU1,1,x,2\n"),
     ["no_label.csv, row 1, column default: missing column 'default' (the label column"]),
    ("extra.csv", text("user_id,A,B,C,default,E\nU1,1,x,2,0,9\n"),
     ["extra.csv, row 1, column E: extra column 'E' is not in"]),
    ("dup_header.csv", text("user_id,A,A,B,C,default\nU1,1,1,x,2,0\n"),
     ["dup_header.csv, row 1, column A: column 'A' appears twice in the header"]),
    ("not_number.csv", text(HEADER + "U1,1,x,,0\nU2,1 000,y,,0\n"),
     ["not_number.csv, row 3, column A: '1 000' is not a number"]),
    ("dup_id.csv", text(HEADER + "U1,1,x,,0\nU2,1,x,,0\nU1,1,x,,1\n"),
     ["dup_id.csv, row 4, column user_id: duplicate id 'U1': rows 2 and 4"]),
    ("empty_id.csv", text(HEADER + "U1,1,x,,0\n,1,x,,0\n"),
     ["empty_id.csv, row 3, column user_id: empty id"]),
    ("padded_id.csv", text(HEADER + "U1 ,1,x,,0\n"),
     ["padded_id.csv, row 2, column user_id: id 'U1 ' has leading or trailing whitespace"]),
    ("label.csv", text(HEADER + "U1,1,x,,0\nU2,1,x,,yes\n"),
     ["label.csv, row 3, column default: label 'yes' is not 0 or 1"]),
    ("nan.csv", text(HEADER + "U1,NaN,x,,0\n"),
     ["nan.csv, row 2, column A: missing value 'NaN'", "does not allow missing"]),
    ("blank_numeric.csv", text(HEADER + "U1,1,x,,0\nU2,,x,,0\n"),
     ["blank_numeric.csv, row 3, column A: missing value ''"]),
    ("inf.csv", text(HEADER + "U1,1,x,-Infinity,0\n"),
     ["inf.csv, row 2, column C: infinite value '-Infinity'; infinity is never allowed"]),
    ("overflow.csv", text(HEADER + "U1,1e999,x,,0\n"),
     ["overflow.csv, row 2, column A: infinite value '1e999'"]),
    ("empty_cat.csv", text(HEADER + "U1,1,x,,0\nU2,1,,,0\n"),
     ["empty_cat.csv, row 3, column B: empty value ''"]),
    ("latin1.csv", raw(HEADER.encode() + "U1,1,caf\xe9,,0\n".encode("latin-1")),
     ["latin1.csv, row 2: not valid UTF-8: byte 0xe9 at byte offset 30 (line 2)"]),
    ("latin1.csv.gz", gz(HEADER.encode() + b"U1,1,x,,0\nU2,1,\xff,,0\n"),
     ["latin1.csv.gz, row 3: not valid UTF-8: byte 0xff at byte offset 37 of the "
      "decompressed data (line 3)"]),
    ("ragged.csv", text(HEADER + "U1,1,x,,0\nU2,1\nU3,1,x,,0\n"),
     ["ragged.csv, row 3: has 2 fields, expected 5"]),
    ("table.xlsx", text(GOOD_CSV), ["table.xlsx: unsupported file type '.xlsx'"]),
    ("not_gzip.csv.gz", text(GOOD_CSV), ["not_gzip.csv.gz: cannot read file"]),
    ("broken.parquet", raw(b"PAR1 this is not parquet"),
     ["broken.parquet: cannot read as Parquet"]),
    ("nan.parquet", parquet({**GOOD_PARQUET, "A": pa.array([1.0, float("nan")])}),
     ["nan.parquet, row 2, column A: missing value"]),
    ("int_id.parquet", parquet({**GOOD_PARQUET, "user_id": pa.array([1, 2])}),
     ["int_id.parquet, column user_id: id column has type int64; expected strings"]),
    ("float_cat.parquet", parquet({**GOOD_PARQUET, "B": pa.array([1.5, 2.0])}),
     ["float_cat.parquet, column B: categorical column has type double"]),
    ("label.parquet", parquet({**GOOD_PARQUET, "default": pa.array([0, 2])}),
     ["label.parquet, row 2, column default: label 2 is not 0 or 1"]),
]


@pytest.mark.parametrize(("name", "make", "fragments"), BAD_FILES,
                         ids=[case[0] for case in BAD_FILES])
def test_bad_file_is_reported(
    tmp_path: Path, schema_path: Path, name: str, make: Callable[[Path], None],
    fragments: list[str],
) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError) as info:
        load_table(path, schema_path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment.replace(name, str(path), 1) in message, message
    assert all(p.file == path for p in info.value.problems)


def test_bad_file_table_is_distinct() -> None:
    assert len({case[0] for case in BAD_FILES}) == len(BAD_FILES) >= 14


def test_every_problem_is_reported_at_once(tmp_path: Path, schema_path: Path) -> None:
    path = tmp_path / "many.csv"
    path.write_text(HEADER + "U1,abc,x,,0\nU1,1,,inf,7\n,2,y,,0\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_table(path, schema_path)
    found = {(p.row, p.column) for p in info.value.problems}
    assert found == {(2, "A"), (3, "user_id"), (3, "B"), (3, "C"), (3, "default"),
                     (4, "user_id")}
    lines = str(info.value).splitlines()
    assert len(lines) == 6
    assert lines[0].startswith(f"{path}, row ")


def test_many_bad_rows_are_counted_and_listing_is_capped(
    tmp_path: Path, schema_path: Path
) -> None:
    n = 200_000
    frame = pd.DataFrame({
        "user_id": [f"U{i}" for i in range(n)],
        "A": ["x"] * n,  # every value bad
        "B": ["c"] * n,
        "C": [""] * n,
        "default": ["0"] * n,
    })
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        load_table(path, schema_path)
    problems = info.value.problems
    assert problems[0] == Problem(path, 2, "A", "'x' is not a number; expected a numeric value")
    assert f"and {n - 20} more rows" in problems[-1].message
    assert len(problems) <= 50


def test_listing_is_capped_at_fifty_lines() -> None:
    problems = [Problem(Path("f.csv"), i, "A", "bad") for i in range(2, 80)]
    lines = str(DataError(problems)).splitlines()
    assert len(lines) == 51
    assert lines[0] == "f.csv, row 2, column A: bad"
    assert lines[-1] == "... and 28 more problems"


def test_require_label(tmp_path: Path, schema_path: Path) -> None:
    path = tmp_path / "good.csv"
    path.write_text(GOOD_CSV, encoding="utf-8")
    with pytest.raises(SchemaError, match="label = 'default'; this table must not carry labels"):
        load_table(path, schema_path, require_label=False)
    platform_schema = tmp_path / "platform.toml"
    platform_schema.write_text('id = "user_id"\n[features]\nA = "numeric"\n', encoding="utf-8")
    with pytest.raises(SchemaError, match=r"platform\.toml: missing key 'label'"):
        load_table(path, platform_schema, require_label=True)


def test_csv_gz_and_parquet_load_the_same_table(tmp_path: Path, schema_path: Path) -> None:
    path = tmp_path / "good.csv"
    path.write_text(GOOD_CSV, encoding="utf-8")
    table = load_table(path, schema_path, require_label=True)
    assert list(table.ids) == ["U1", "U2", "U3"]
    assert all(type(i) is str for i in table.ids)
    assert table.features.dtypes.to_dict() == {"A": np.float64, "B": object, "C": np.float64}
    assert table.features["A"].tolist() == [1.5, 2.0, -400.0]
    assert table.features["B"].tolist() == ["x", "y", "z"]
    assert np.isnan(table.features["C"][0]) and np.isnan(table.features["C"][2])
    assert table.labels is not None and table.labels.dtype == np.int8
    assert table.labels.tolist() == [0, 1, 0]

    for name in ("copy.csv.gz", "copy.parquet", "copy.csv"):
        write_table(table, tmp_path / name)
        again = load_table(tmp_path / name, schema_path)
        assert list(again.ids) == list(table.ids)
        pd.testing.assert_frame_equal(again.features, table.features)
        assert again.labels is not None and np.array_equal(again.labels, table.labels)
    # hand-compressed CSV reads the same too
    (tmp_path / "hand.csv.gz").write_bytes(gzip.compress(GOOD_CSV.encode()))
    pd.testing.assert_frame_equal(
        load_table(tmp_path / "hand.csv.gz", schema_path).features, table.features)


def test_write_is_deterministic_and_plain(tmp_path: Path, schema_path: Path) -> None:
    path = tmp_path / "good.csv"
    path.write_text(GOOD_CSV, encoding="utf-8")
    table = load_table(path, schema_path)
    for name in ("a.csv", "b.csv", "a.csv.gz", "b.csv.gz", "a.parquet", "b.parquet"):
        write_table(table, tmp_path / name)
    for suffix in ("csv", "csv.gz", "parquet"):
        assert (tmp_path / f"a.{suffix}").read_bytes() == (tmp_path / f"b.{suffix}").read_bytes()
    assert (tmp_path / "a.csv").read_text() == (
        "user_id,A,B,C,default\nU1,1.5,x,,0\nU2,2,y,3,1\nU3,-400,z,,0\n")


def test_allow_missing_categorical_and_parquet_types(tmp_path: Path) -> None:
    schema = Schema("id", (Feature("n", "numeric", allow_missing=True),
                           Feature("k", "categorical", allow_missing=True),
                           Feature("code", "categorical")))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({
        "id": ["a", "b", "c"],
        "n": pa.array([1, None, 3], pa.int32()),
        "k": ["p", None, ""],
        "code": pa.array([-2, 0, 8], pa.int64()),
    }), path)
    table = load_table(path, schema, require_label=False)
    assert table.labels is None
    assert table.features["n"].tolist()[0::2] == [1.0, 3.0]
    assert np.isnan(table.features["n"][1])
    assert table.features["k"].tolist() == ["p", None, None]
    assert table.features["code"].tolist() == ["-2", "0", "8"]


def test_numeric_missing_tokens_and_spaces(tmp_path: Path, schema_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "U1, 7 ,x,NA,0\nU2,+.5,x,null,1\nU3,1E3,x, ,0\n", encoding="utf-8")
    table = load_table(path, schema_path)
    assert table.features["A"].tolist() == [7.0, 0.5, 1000.0]
    assert table.features["C"].isna().all()


def test_take(tmp_path: Path, schema_path: Path) -> None:
    path = tmp_path / "good.csv"
    path.write_text(GOOD_CSV, encoding="utf-8")
    table = load_table(path, schema_path)
    part = table.take(np.array([2, 0]))
    assert isinstance(part, PartyTable) and len(part) == 2
    assert list(part.ids) == ["U3", "U1"]
    assert part.features["B"].tolist() == ["z", "x"]
    assert part.labels is not None and part.labels.tolist() == [0, 0]
    assert list(table.take(np.array([False, True, False])).ids) == ["U2"]


def test_cli_check(tmp_path: Path, schema_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV, encoding="utf-8")
    result = runner.invoke(app, ["check", str(good), "--schema", str(schema_path)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "3 rows" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "U1,abc,x,,0\nU1,1,x,,2\n", encoding="utf-8")
    result = runner.invoke(app, ["check", str(bad), "--schema", str(schema_path)])
    assert result.exit_code == 1
    assert f"{bad}, row 2, column A: 'abc' is not a number" in result.output
    assert f"{bad}, row 3, column default: label '2' is not 0 or 1" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["check", str(bad), "--schema", str(tmp_path / "no.toml")])
    assert result.exit_code == 1
    assert "schema file not found" in result.output


def test_find_table(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"expected exactly one of train\.csv"):
        find_table(tmp_path, "train")
    (tmp_path / "train.parquet").write_bytes(b"")
    assert find_table(tmp_path, "train") == tmp_path / "train.parquet"
    (tmp_path / "train.csv.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"found train\.csv\.gz, train\.parquet"):
        find_table(tmp_path, "train")
