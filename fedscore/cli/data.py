"""``fedscore data``: prepare scenario folders and check a party's table before use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedscore.data.scenarios import SCENARIOS, ScenarioError, ScenarioManifest, prepare_scenario
from fedscore.data.schema import SchemaError
from fedscore.data.table import DataError, load_table

app = typer.Typer(
    name="data",
    help="Prepare scenario data sets and check tables.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _summary(m: ScenarioManifest) -> None:
    typer.echo(f"{m.scenario} (seed {m.seed}) written to {m.root}: {m.people:,} people, "
               f"default rate {m.default_rate:.1%}")
    typer.echo(f"  platform: {m.platform_rows:,} users ({m.platform_rows / m.people:.1%})")
    for name, b in m.banks.items():
        typer.echo(f"  {name}: {b.customers:,} customers ({b.customers / m.people:.1%}), "
                   f"train {b.train_rows:,} / test {b.test_rows:,}, "
                   f"default rate {b.default_rate:.1%}, on platform {b.on_platform:,}")


@app.command("prepare")
def prepare_command(
    scenario: Annotated[str, typer.Argument(
        help=f"Scenario name: {', '.join(sorted(SCENARIOS))}.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the parties' files to.")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
) -> None:
    """Write every party's files, schemas and scenario.json for a named scenario."""
    try:
        manifest = prepare_scenario(scenario, out, seed)
    except (ScenarioError, DataError, SchemaError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    _summary(manifest)


@app.command("synth")
def synth_command(
    people: Annotated[int, typer.Option("--people", help="Number of people.")],
    banks: Annotated[int, typer.Option("--banks", help="Number of partner banks.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the parties' files to.")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    platform_share: Annotated[float, typer.Option(
        help="Share of people who are platform users.")] = 0.85,
    chunk_rows: Annotated[int, typer.Option(
        help="People generated and written per chunk (bounds memory).")] = 1_000_000,
) -> None:
    """Write a synthetic population (Parquet) with the default-credit layout."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from fedscore.data.synth import synth_population

    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("people", total=people)
        try:
            manifest = synth_population(
                out, people=people, banks=banks, seed=seed, platform_share=platform_share,
                chunk_rows=chunk_rows,
                progress=lambda done, _total: bar.update(task, completed=done),
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            raise _fail(f"cannot write {out}: {exc}") from None
    _summary(manifest)


@app.command("check")
def check_command(
    data: Annotated[Path, typer.Argument(help="Table: .csv, .csv.gz or .parquet.")],
    schema: Annotated[Path, typer.Option("--schema", help="The table's schema TOML file.")],
) -> None:
    """Validate a table against its schema: prints OK, or every problem and exits 1."""
    try:
        table = load_table(data, schema)
    except DataError as exc:
        typer.echo(str(exc), err=True)
        count = len(exc.problems)
        raise _fail(f"{data}: {count} problem{'s' if count != 1 else ''}") from None
    except SchemaError as exc:
        raise _fail(str(exc)) from None
    label = table.schema.label_column
    typer.echo(f"OK {data}: {len(table):,} rows, {len(table.schema.features)} features"
               + (f", label {label!r} ({int(table.labels.sum()):,} positives)"
                  if label is not None and table.labels is not None else ""))
