from importlib.metadata import version

from typer.testing import CliRunner

from fedscore.cli.main import app


def test_version_prints_the_installed_distribution_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fedscore {version('fedscore')}"
