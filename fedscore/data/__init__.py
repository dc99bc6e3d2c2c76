"""Each party's data: schema files, validated loading, per-party preprocessing, the
bundled reference scenario and the synthetic population generator. See docs/data.md.

``ids`` is the id alphabet every party's ids keep, ``schema`` reads and writes schema
files, ``table`` loads, checks and writes a party's table, ``preprocess`` turns a table
into model inputs, ``scenarios`` builds reference scenario folders, ``synth`` a
synthetic population of any size.

May import: only the bottom layer (``fedscore.api``, ``fedscore.errors``,
``fedscore.atomic``); never ``fedscore.crypto``, its independent neighbour, nor
``fedscore.ml``, which builds on this room, nor any room above it or a party package.

A new table format, schema field, validation check, feature transform or scenario goes
here. This package imports nothing (so ``fedscore.data.schema`` stays free of pandas and
pyarrow): import from the submodule.
"""

__all__ = ["ids", "preprocess", "scenarios", "schema", "synth", "table"]
