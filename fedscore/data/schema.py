"""Schema files: which column is the join key, which are features (and how to read them),
and, for a bank, which column is the default label.

A schema is a small TOML file kept next to a party's table::

    id = "user_id"          # id column (string join key)
    label = "default"       # banks only; absent for the platform
    [features]
    LIMIT_BAL = "numeric"
    SEX = "categorical"
    AGE = { kind = "numeric", allow_missing = true }
    PAY_6 = { kind = "categorical", values = [-2, -1, 0, 1, 2] }

``values`` fixes a categorical feature's codes in the schema rather than in what one
party's rows happen to contain; banks that federate one model need it, so that code k
means the same value, and the embedding tables the same size, at every bank.

Feature order in the file is the column order of the loaded table, so every party
builds its model inputs in the same, written-down order.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

import grpc

from fedscore.errors import FedscoreError

FeatureKind = Literal["numeric", "categorical"]
FEATURE_KINDS: tuple[FeatureKind, ...] = ("numeric", "categorical")

_TOP_KEYS = ("id", "label", "features")
_FEATURE_KEYS = ("kind", "allow_missing", "values")


class SchemaError(FedscoreError, ValueError):
    """A schema file (or a Schema built in code) is malformed; the message names the
    file, the key, the value found and what was expected."""

    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class Feature:
    """One feature column: its kind, whether it may be missing, and any declared codes."""

    name: str
    kind: FeatureKind
    allow_missing: bool = False
    values: tuple[str, ...] | None = None  # categorical only: the declared vocabulary


@dataclass(frozen=True)
class Schema:
    """A party's schema file, validated: id column, features in file order, optional label."""

    id_column: str
    features: tuple[Feature, ...]
    label_column: str | None = None
    # Where the schema was read from, for error messages; not part of equality.
    source: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = str(self.source) if self.source is not None else "<schema>"
        if not isinstance(self.id_column, str) or not self.id_column:
            raise SchemaError(f"{where}: id: expected a non-empty column name, got "
                              f"{self.id_column!r}")
        if self.label_column is not None and (
            not isinstance(self.label_column, str) or not self.label_column
        ):
            raise SchemaError(f"{where}: label: expected a non-empty column name, got "
                              f"{self.label_column!r}")
        if self.label_column == self.id_column:
            raise SchemaError(f"{where}: label: {self.label_column!r} is also the id column; "
                              "expected a separate label column")
        if not self.features:
            raise SchemaError(f"{where}: features: expected at least one feature column")
        seen: set[str] = set()
        for feat in self.features:
            if not isinstance(feat.name, str) or not feat.name:
                raise SchemaError(f"{where}: features: expected non-empty column names, got "
                                  f"{feat.name!r}")
            key = f"features.{_toml_key(feat.name)}"
            if feat.kind not in FEATURE_KINDS:
                raise SchemaError(f"{where}: {key}: kind {feat.kind!r} is not one of "
                                  f"{', '.join(repr(k) for k in FEATURE_KINDS)}")
            if not isinstance(feat.allow_missing, bool):
                raise SchemaError(f"{where}: {key}: allow_missing = {feat.allow_missing!r}; "
                                  "expected true or false")
            if feat.values is not None and (
                feat.kind != "categorical" or not feat.values
                or len(set(feat.values)) != len(feat.values)
            ):
                raise SchemaError(f"{where}: {key}.values: expected a non-empty list of "
                                  "distinct values, on a categorical feature only")
            if feat.name == self.id_column:
                raise SchemaError(f"{where}: {key}: {feat.name!r} is the id column; the id "
                                  "must not also be listed as a feature")
            if feat.name == self.label_column:
                raise SchemaError(f"{where}: {key}: {feat.name!r} is the label column; the "
                                  "label must not also be listed as a feature")
            if feat.name in seen:
                raise SchemaError(f"{where}: {key}: feature listed twice")
            seen.add(feat.name)

    # -- views -----------------------------------------------------------------------------

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature's name, in file order."""
        return tuple(f.name for f in self.features)

    @property
    def numeric(self) -> tuple[str, ...]:
        """The numeric features' names, in file order."""
        return tuple(f.name for f in self.features if f.kind == "numeric")

    @property
    def categorical(self) -> tuple[str, ...]:
        """The categorical features' names, in file order."""
        return tuple(f.name for f in self.features if f.kind == "categorical")

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column a table with this schema has, in file order: id, features, label."""
        label = (self.label_column,) if self.label_column is not None else ()
        return (self.id_column, *self.feature_names, *label)

    @cached_property
    def _by_name(self) -> dict[str, Feature]:
        # built once: callers look up every feature by name, and a linear scan per
        # lookup made checking a 20,000-feature schema quadratic (issue 15)
        return {f.name: f for f in self.features}

    def feature(self, name: str) -> Feature:
        """The feature called ``name``; KeyError if there is none."""
        return self._by_name[name]

    # -- TOML ------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: Path | None = None) -> Schema:
        """Build from parsed TOML; every check names the key and the offending value."""
        where = str(source) if source is not None else "<schema>"
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            raise SchemaError(f"{where}: unknown key {unknown[0]!r}; expected only "
                              f"{', '.join(_TOP_KEYS)}")
        if "id" not in data:
            raise SchemaError(f"{where}: missing key 'id'; expected id = \"<id column>\"")
        id_column = data["id"]
        if not isinstance(id_column, str) or not id_column:
            raise SchemaError(f"{where}: id = {id_column!r}; expected a non-empty string "
                              "naming the id column")
        label = data.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise SchemaError(f"{where}: label = {label!r}; expected a non-empty string "
                              "naming the label column")
        raw = data.get("features")
        if raw is None:
            raise SchemaError(f"{where}: missing table [features]; expected one "
                              "'<column> = \"numeric\"|\"categorical\"' line per feature")
        if not isinstance(raw, Mapping):
            raise SchemaError(f"{where}: features = {raw!r}; expected a table [features]")
        features: list[Feature] = []
        for name, spec in raw.items():
            key = f"features.{_toml_key(name)}"
            allow_missing: Any = False
            values: tuple[str, ...] | None = None
            if isinstance(spec, str):
                kind: Any = spec
            elif isinstance(spec, Mapping):
                extra = [k for k in spec if k not in _FEATURE_KEYS]
                if extra:
                    raise SchemaError(f"{where}: {key}: unknown key {extra[0]!r}; expected "
                                      "only kind, allow_missing and values")
                if "kind" not in spec:
                    raise SchemaError(f"{where}: {key}: missing kind; expected "
                                      "{ kind = \"numeric\"|\"categorical\", ... }")
                kind = spec["kind"]
                allow_missing = spec.get("allow_missing", False)
                if not isinstance(allow_missing, bool):
                    raise SchemaError(f"{where}: {key}.allow_missing = {allow_missing!r}; "
                                      "expected true or false")
                if "values" in spec:
                    values = _values(where, key, spec["values"])
            else:
                raise SchemaError(f"{where}: {key} = {spec!r}; expected \"numeric\", "
                                  "\"categorical\" or { kind = ..., allow_missing = ... }")
            if kind not in FEATURE_KINDS:
                raise SchemaError(f"{where}: {key}: kind {kind!r} is not one of "
                                  f"{', '.join(repr(k) for k in FEATURE_KINDS)}")
            if values is not None and kind != "categorical":
                raise SchemaError(f"{where}: {key}.values: only a categorical feature takes "
                                  f"a list of values, this one is {kind!r}")
            features.append(Feature(name, cast(FeatureKind, kind), allow_missing, values))
        return cls(id_column, tuple(features), label, source=source)

    @classmethod
    def load(cls, path: Path) -> Schema:
        """Read and validate a schema TOML file; any problem raises SchemaError naming the file."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise SchemaError(f"{path}: schema file not found") from None
        except UnicodeDecodeError as exc:
            raise SchemaError(f"{path}: not valid UTF-8 at byte offset {exc.start}; "
                              "expected a UTF-8 TOML file") from None
        except OSError as exc:
            raise SchemaError(f"{path}: cannot read schema file: {exc.strerror}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SchemaError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=path)

    def to_toml(self) -> str:
        """The schema as TOML text that :meth:`load` reads back to an equal schema."""
        lines = [f"id = {_toml_str(self.id_column)}"]
        if self.label_column is not None:
            lines.append(f"label = {_toml_str(self.label_column)}")
        lines += ["", "[features]"]
        for feat in self.features:
            value = _toml_str(feat.kind)
            if feat.allow_missing or feat.values is not None:
                parts = [f"kind = {value}"]
                if feat.allow_missing:
                    parts.append("allow_missing = true")
                if feat.values is not None:
                    parts.append(f"values = [{', '.join(_toml_str(v) for v in feat.values)}]")
                value = "{ " + ", ".join(parts) + " }"
            lines.append(f"{_toml_key(feat.name)} = {value}")
        return "\n".join(lines) + "\n"

    def dump(self, path: Path) -> None:
        """Write :meth:`to_toml` to ``path``."""
        Path(path).write_text(self.to_toml(), encoding="utf-8")


def _values(where: str, key: str, raw: Any) -> tuple[str, ...]:
    """A declared vocabulary: strings or integers, as the strings a table cell reads as."""
    ok = isinstance(raw, list) and raw and all(
        (isinstance(v, str) and v) or (isinstance(v, int) and not isinstance(v, bool)) for v in raw
    )
    if not ok:
        raise SchemaError(f"{where}: {key}.values = {raw!r}; expected a non-empty list of "
                          "strings or integers")
    values = tuple(str(v) for v in raw)
    seen: set[str] = set()
    dup = None
    for v in values:  # a set, not a scan of the values before: linear in the vocabulary
        if v in seen:
            dup = v
            break
        seen.add(v)
    if dup is not None:
        raise SchemaError(f"{where}: {key}.values: {dup!r} is listed twice; expected "
                          "distinct values")
    return values


def _toml_str(value: str) -> str:
    # JSON string escapes are a subset of TOML basic-string escapes.
    return json.dumps(value, ensure_ascii=False)


def _toml_key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    return name if bare else _toml_str(name)
