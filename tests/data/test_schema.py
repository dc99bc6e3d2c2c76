"""Schema files: both feature forms, round trips, and errors that name file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedscore.data.schema import Feature, Schema, SchemaError

GOOD = """\
id = "user_id"
label = "default"

[features]
LIMIT_BAL = "numeric"
SEX = "categorical"
AGE = { kind = "numeric", allow_missing = true }
"""


def write(tmp_path: Path, text: str, name: str = "schema.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_short_and_long_forms(tmp_path: Path) -> None:
    schema = Schema.load(write(tmp_path, GOOD))
    assert schema.id_column == "user_id"
    assert schema.label_column == "default"
    assert schema.features == (
        Feature("LIMIT_BAL", "numeric"),
        Feature("SEX", "categorical"),
        Feature("AGE", "numeric", allow_missing=True),
    )
    assert schema.numeric == ("LIMIT_BAL", "AGE")
    assert schema.categorical == ("SEX",)
    assert schema.columns == ("user_id", "LIMIT_BAL", "SEX", "AGE", "default")


def test_platform_schema_has_no_label(tmp_path: Path) -> None:
    schema = Schema.load(write(tmp_path, 'id = "uid"\n[features]\nx = "numeric"\n'))
    assert schema.label_column is None
    assert schema.columns == ("uid", "x")


def test_dump_round_trips_including_odd_names(tmp_path: Path) -> None:
    schema = Schema(
        "ID",
        (Feature("a.b c", "categorical"), Feature("é", "numeric", allow_missing=True),
         Feature('q"x', "numeric")),
        "default.payment.next.month",
    )
    path = tmp_path / "out.toml"
    schema.dump(path)
    assert Schema.load(path) == schema
    schema.dump(tmp_path / "again.toml")
    assert path.read_bytes() == (tmp_path / "again.toml").read_bytes()


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('id = "u"\n[features]\nx = "numerc"\n', ["features.x", "'numerc'", "'numeric'"]),
        ('id = "u"\n[features]\nu = "numeric"\n', ["features.u", "is the id column"]),
        ('id = "u"\nlabel = "y"\n[features]\ny = "numeric"\n',
         ["features.y", "is the label column"]),
        ('id = "u"\nlabel = "u"\n[features]\nx = "numeric"\n', ["label", "also the id column"]),
        ('label = "y"\n[features]\nx = "numeric"\n', ["missing key 'id'"]),
        ('id = 3\n[features]\nx = "numeric"\n', ["id = 3", "non-empty string"]),
        ('id = "u"\nlable = "y"\n[features]\nx = "numeric"\n', ["unknown key 'lable'"]),
        ('id = "u"\n', ["missing table [features]"]),
        ('id = "u"\n[features]\n', ["at least one feature"]),
        ('id = "u"\n[features]\nx = { kind = "numeric", allow_missing = "yes" }\n',
         ["features.x.allow_missing", "'yes'", "true or false"]),
        ('id = "u"\n[features]\nx = { allow_missing = true }\n', ["features.x", "missing kind"]),
        ('id = "u"\n[features]\nx = { kind = "numeric", nullable = true }\n',
         ["features.x", "unknown key 'nullable'"]),
        ('id = "u"\n[features]\nx = 5\n', ["features.x = 5", "expected"]),
        ('id = "u"\n[features\nx = "numeric"\n', ["not valid TOML"]),
    ],
)
def test_bad_schema_names_file_key_and_value(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text, "bank.toml")
    with pytest.raises(SchemaError) as info:
        Schema.load(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_schema_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"nope\.toml: schema file not found"):
        Schema.load(tmp_path / "nope.toml")


def test_schema_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.toml"
    path.write_bytes('id = "caf\xe9"\n[features]\nx = "numeric"\n'.encode("latin-1"))
    with pytest.raises(SchemaError, match="not valid UTF-8 at byte offset 9"):
        Schema.load(path)


def test_schema_built_in_code_is_checked() -> None:
    with pytest.raises(SchemaError, match="kind 'text'"):
        Schema("u", (Feature("x", "text"),))  # type: ignore[arg-type]
    with pytest.raises(SchemaError, match="listed twice"):
        Schema("u", (Feature("x", "numeric"), Feature("x", "categorical")))


def test_declared_values_round_trip_and_fix_the_codes(tmp_path: Path) -> None:
    from fedscore.data.preprocess import Preprocessor
    from fedscore.data.table import load_table

    text = 'id = "u"\nlabel = "y"\n[features]\nP = { kind = "categorical", values = [-1, 0, 2] }\n'
    schema = Schema.load(write(tmp_path, text))
    assert schema.feature("P").values == ("-1", "0", "2")
    schema.dump(tmp_path / "again.toml")
    assert Schema.load(tmp_path / "again.toml") == schema
    # Two banks whose rows hold different subsets still code the values alike.
    codes = []
    for name, rows in (("a", "0\n2\n0\n"), ("b", "-1\n2\n")):
        data = tmp_path / f"{name}.csv"
        body = "".join(f"{name}{i},{v},0\n" for i, v in enumerate(rows.split()))
        data.write_text("u,P,y\n" + body)
        table = load_table(data, tmp_path / "schema.toml", require_label=True)
        pre = Preprocessor.fit(table)
        assert pre.cat_cardinalities == (4,)
        codes.append(pre.transform(table).categorical[:, 0].tolist())
    assert codes == [[2, 3, 2], [1, 3]]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('{ kind = "numeric", values = [1] }', r"features\.P\.values: only a categorical"),
        ('{ kind = "categorical", values = [] }', r"features\.P\.values = \[\]; expected a non"),
        ('{ kind = "categorical", values = [1, "1"] }', r"'1' is listed twice"),
        ('{ kind = "categorical", values = [1.5] }', r"expected a non-empty list of strings or"),
    ],
)
def test_bad_declared_values_are_named(tmp_path: Path, spec: str, message: str) -> None:
    path = write(tmp_path, f'id = "u"\n[features]\nP = {spec}\n')
    with pytest.raises(SchemaError, match=message):
        Schema.load(path)
