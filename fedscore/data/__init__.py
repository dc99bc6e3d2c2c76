"""Each party's data: schema files, validated loading, the bundled reference scenario and
the synthetic population generator. See docs/data.md."""

from fedscore.data.schema import Feature, FeatureKind, Schema, SchemaError
from fedscore.data.table import DataError, PartyTable, Problem, load_table, write_table

__all__ = [
    "DataError",
    "Feature",
    "FeatureKind",
    "PartyTable",
    "Problem",
    "Schema",
    "SchemaError",
    "load_table",
    "write_table",
]
