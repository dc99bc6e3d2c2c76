"""A node's settings from a TOML file: one schema per role, checked with pydantic.

Every command that starts a node takes ``--config FILE``; every one of its flags has a
key of the same name without the dashes (``--state-dir`` is ``state-dir``), and a flag
given on the command line overrides the file's key. The roles:

- ``platform``: ``fedscore platform serve``;
- ``score-server``: ``fedscore bank score-server``;
- ``bank-train``: ``fedscore bank train`` (split learning with the platform, no Flower);
- ``supernode``: a bank's SuperNode node config (``flower-supernode --node-config FILE``);
- ``coordinator``: the run config of the coordinator's run (``flwr run --run-config FILE``,
  ``fedscore demo --config FILE``): the keys of
  :class:`~fedscore.federation.runconfig.RunSettings`.

A file names its role with a ``role = "platform"`` key, or the command that reads it
knows the role. The files Flower reads itself (``supernode``, ``coordinator``) carry no
``role`` key, since Flower's SuperLink refuses a run config key it does not know; check
them with ``fedscore config check --role``.

Unknown keys are refused, as are values of the wrong type (TOML's own: ``5`` is not
``"5"``), out of range, a malformed ``host:port`` or a file or folder that does not
exist; every problem is one line naming the file (or the flag), the key, the value and
what was expected (:class:`NodeConfigError`). Relative paths in a file are relative to
the file's folder, so a file means the same wherever the command starts; on the command
line they are relative to the working directory, as usual. The paths of the files
Flower reads are left as written (the SuperNode's and the ServerApp's processes resolve
them where they run) and are not checked for existence.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from fedscore.federation.runconfig import ConfigError, RunSettings, out_of_range

__all__ = [
    "ROLES",
    "BankTrainConfig",
    "CoordinatorConfig",
    "NodeConfig",
    "NodeConfigError",
    "PlatformConfig",
    "ScoreServerConfig",
    "SupernodeConfig",
    "check_file",
    "load",
    "read_file",
]

ROLE_KEY = "role"
C = TypeVar("C", bound="NodeConfig")


class NodeConfigError(ConfigError):
    """A node config file (or a flag) was refused; one line per problem, each naming the
    file or the flag, the key, the value and what was expected."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------------------------
# value types: each error message is the "expected ..." part of a problem
# --------------------------------------------------------------------------------------------

def _as_path(value: object) -> Path | None:
    if value is None or isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip():
        return Path(value)
    raise ValueError("a path (a non-empty string)")


def _existing_dir(path: Path | None) -> Path | None:
    if path is not None and not path.is_dir():
        found = "a file" if path.exists() else "missing"
        raise ValueError(f"an existing folder ({path} is {found})")
    return path


def _existing_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        found = "a folder" if path.is_dir() else "missing"
        raise ValueError(f"an existing file ({path} is {found})")
    return path


_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})$")


def _address(value: str) -> str:
    found = _ADDRESS.match(value)
    if found is None or int(found["port"]) > 65535:
        raise ValueError("host:port, a port from 0 to 65535 (an IPv6 host in brackets)")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("a non-empty string")
    return value


def _metrics_address(value: str) -> str:
    value = value.strip()
    return _address(f"127.0.0.1:{value}" if value.isdigit() else value)


PathValue = Annotated[Path, BeforeValidator(_as_path)]
OptionalPath = Annotated[Path | None, BeforeValidator(_as_path)]
ExistingDir = Annotated[Path, BeforeValidator(_as_path), AfterValidator(_existing_dir)]
ExistingFile = Annotated[Path, BeforeValidator(_as_path), AfterValidator(_existing_file)]
OptionalFile = Annotated[Path | None, BeforeValidator(_as_path),
                         AfterValidator(_existing_file)]
Address = Annotated[str, AfterValidator(_address)]
Name = Annotated[str, AfterValidator(_non_empty)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
MetricsAddress = Annotated[str | None, AfterValidator(
    lambda v: None if v is None else _metrics_address(v))]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class NodeConfig(BaseModel):
    """The settings of one node process; subclasses are the roles. Keys are kebab-case
    (the field name with ``-`` for ``_``), read with their TOML types, unknown ones
    refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              alias_generator=_kebab)

    role: ClassVar[str]
    command: ClassVar[str]  # what reads the file, for messages
    flower_reads: ClassVar[bool] = False  # Flower reads the file: no role key, paths as written

    @classmethod
    def keys(cls) -> list[str]:
        """The file keys of this role, sorted."""
        return sorted(f.alias or name for name, f in cls.model_fields.items())

    @classmethod
    def path_keys(cls) -> set[str]:
        """Keys whose values are paths (relative ones: to the file's folder)."""
        return {f.alias or name for name, f in cls.model_fields.items()
                if any(isinstance(m, BeforeValidator) and m.func is _as_path
                       for m in f.metadata)}


class _Watched(NodeConfig):
    """The keys every long-running node has for being watched (:mod:`fedscore.ops`)."""

    metrics_address: MetricsAddress = Field(
        None, description="host:port (a bare port: on 127.0.0.1) to serve Prometheus "
        "metrics on at /metrics (port 0: any free one; unset: off)")
    log_format: Literal["text", "json"] = Field(
        "text", description="text (human-readable) or json (one JSON object per line)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG (a line per message and request), INFO (lifecycle, "
        "sessions, rounds), WARNING or ERROR")


class PlatformConfig(_Watched):
    """``fedscore platform serve``: the platform node."""

    role = "platform"
    command = "fedscore platform serve"

    kit: ExistingDir = Field(description="the platform's startup kit folder")
    data: ExistingFile = Field(description="the platform's feature table (CSV or Parquet)")
    table_schema: ExistingFile = Field(alias="schema", description="the table's schema.toml")
    address: Address = Field("127.0.0.1:50051", description="host:port to bind (port 0: any)")
    state_dir: OptionalPath = Field(None, description="the folder for committed federated "
                                    "models (none: memory only)")
    ledger_dir: OptionalPath = Field(None, description="the audit ledger's folder (default: "
                                     "state-dir/ledger)")
    drain_s: Seconds = Field(0.0, description="seconds NOT_SERVING before the server stops")
    cert_warn_days: Annotated[int, Field(ge=0, le=3650)] = Field(
        30, description="warn (log, health answer) this many days before the node's TLS "
        "or CA certificate expires")

    @model_validator(mode="after")
    def _has_ledger(self) -> PlatformConfig:
        if self.ledger_dir is None and self.state_dir is None:
            raise ValueError("the platform needs --ledger-dir or --state-dir (key "
                             "ledger-dir or state-dir) for its audit ledger: it records "
                             "every message (default ledger-dir: state-dir/ledger)")
        return self


class ScoreServerConfig(_Watched):
    """``fedscore bank score-server``: a bank's real-time scoring server."""

    role = "score-server"
    command = "fedscore bank score-server"

    kit: ExistingDir = Field(description="this bank's startup kit folder")
    data: ExistingDir = Field(description="the bank's customer store: a folder with train.*, "
                              "test.* and schema.toml")
    release: ExistingDir = Field(description="a release folder signed by the coordinator")
    platform: Address = Field(description="the platform node's host:port")
    address: Address = Field("127.0.0.1:50061", description="host:port to bind (port 0: any)")
    policy: OptionalFile = Field(None, description="the bank's policy TOML (default: "
                                 "bank_node/default_policy.toml)")
    ledger_dir: PathValue = Field(description="the audit ledger's folder for this server")
    drain_s: Seconds = Field(0.0, description="seconds NOT_SERVING before the server stops")
    cert_warn_days: Annotated[int, Field(ge=0, le=3650)] = Field(
        30, description="warn (log, health answer) this many days before the node's TLS "
        "or CA certificate expires")


class BankTrainConfig(_Watched):
    """``fedscore bank train``: one bank's split learning with the platform (no Flower)."""

    role = "bank-train"
    command = "fedscore bank train"

    kit: ExistingDir = Field(description="this bank's startup kit folder")
    data: ExistingDir = Field(description="a folder with train.*, test.* and schema.toml")
    platform: Address = Field(description="the platform node's host:port")
    out: PathValue = Field(Path("out/bank"), description="where to write the model and "
                           "metrics")
    seed: Annotated[int, Field(ge=0, lt=2**62)] = Field(0, description="the random seed")
    epochs: Annotated[int, Field(ge=0)] = Field(0, description="maximum epochs (0: the "
                                                "default config)")
    ledger_dir: OptionalPath = Field(None, description="the audit ledger's folder (default: "
                                     "out/ledger)")


class SupernodeConfig(NodeConfig):
    """A bank's SuperNode node config (``flower-supernode --node-config FILE``): what
    :class:`bank_node.node.BankNode` reads."""

    role = "supernode"
    command = "flower-supernode --node-config"
    flower_reads = True

    bank: Name = Field(description="the bank's party name")
    data_dir: PathValue = Field(description="the bank's data folder")
    kit_dir: PathValue = Field(description="the bank's startup kit folder")
    platform_address: Address = Field(description="the platform node's host:port")
    state_dir: PathValue = Field(description="a bank-local folder for state between "
                                 "messages")


def _in_range(key: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        problems = out_of_range({key: value})
        if problems:
            raise ValueError(problems[0][2])
        return value
    return check


def _address_or_empty(value: str) -> str:
    return _address(value) if value else value


class _Coordinator(NodeConfig):
    role = "coordinator"
    command = "flwr run --run-config"
    flower_reads = True

    def settings(self) -> RunSettings:
        """The run settings these keys make."""
        return RunSettings.from_run_config(self.run_config())

    def run_config(self) -> dict[str, Any]:
        """The keys as a Flower run config (kebab-case), defaults included."""
        return self.model_dump(by_alias=True)


def _coordinator_model() -> type[_Coordinator]:
    """The run settings' keys, types and defaults, from RunSettings itself (never drifts)."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(RunSettings):
        key = _kebab(f.name)
        checks = [AfterValidator(_in_range(key))]
        if f.name == "platform_address":
            checks.append(AfterValidator(_address_or_empty))
        fields[f.name] = (Annotated[type(f.default), *checks],
                          Field(f.default, alias=key))
    return create_model("CoordinatorConfig", __base__=_Coordinator,
                        __doc__="The coordinator's run config: the run settings.",
                        __module__=__name__, **fields)


CoordinatorConfig = _coordinator_model()

ROLES: dict[str, type[NodeConfig]] = {
    c.role: c for c in (PlatformConfig, ScoreServerConfig, BankTrainConfig, SupernodeConfig,
                        CoordinatorConfig)
}
"""Every role by its name."""


# --------------------------------------------------------------------------------------------
# reading and checking
# --------------------------------------------------------------------------------------------

def show(value: object) -> str:
    """A value as TOML would write it (strings in double quotes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def read_file(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; NodeConfigError names the file when it is missing,
    unreadable or not TOML (with the line and column)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise NodeConfigError([f"{path}: no such file; expected a node config (TOML)"]) from None
    except IsADirectoryError:
        raise NodeConfigError([f"{path}: is a folder; expected a node config file (TOML)"]
                              ) from None
    except OSError as exc:
        raise NodeConfigError([f"{path}: cannot be read ({exc.strerror})"]) from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise NodeConfigError([f"{path}: not UTF-8 text; expected a node config (TOML)"]
                              ) from None
    except tomllib.TOMLDecodeError as exc:
        raise NodeConfigError([f"{path}: not valid TOML: {exc}"]) from None


def role_of(doc: Mapping[str, Any], path: Path, role: str | None) -> str:
    """The role a file is checked for: ``role`` (the command's or ``--role``), which the
    file's own ``role`` key must match, or else that key."""
    declared = doc.get(ROLE_KEY)
    names = ", ".join(f'"{r}"' for r in ROLES)
    if declared is not None and declared not in ROLES:
        raise NodeConfigError([f"{path}: {ROLE_KEY} = {show(declared)}: expected one of "
                               f"{names}"])
    if role is not None:
        if role not in ROLES:
            raise NodeConfigError([f"role {show(role)}: expected one of {names}"])
        if declared is not None and declared != role:
            raise NodeConfigError([f"{path}: {ROLE_KEY} = {show(declared)}: expected "
                                   f"{show(role)} (a file for {ROLES[role].command})"])
        return role
    if declared is None:
        raise NodeConfigError([f"{path}: no {ROLE_KEY} key; expected {ROLE_KEY} = one of "
                               f"{names} (or name the role with --role)"])
    return str(declared)


def load(model: type[C], path: Path | None = None,
         flags: Mapping[str, object | None] | None = None) -> C:
    """The settings of a ``model.role`` node from the file at ``path`` (if any) and
    ``flags`` (kebab-case keys; None: not given), flags first. Raises NodeConfigError with
    every problem."""
    values: dict[str, object] = {}
    written: dict[str, object] = {}  # as the user wrote it (before paths are resolved)
    source: dict[str, str] = {}
    where = "the command line"
    if path is not None:
        doc = read_file(path)
        role_of(doc, path, model.role)
        doc.pop(ROLE_KEY, None)
        where = str(path)
        paths = set() if model.flower_reads else model.path_keys()
        for key, value in doc.items():
            written[key] = value
            source[key] = str(path)
            if key in paths and isinstance(value, str) and value and not Path(value).is_absolute():
                value = str(path.parent / value)
            values[key] = value
    for key, value in (flags or {}).items():
        if value is not None:
            written[key] = values[key] = value
            source[key] = f"--{key}"
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise NodeConfigError([_problem(e, model, written, source, where)
                               for e in exc.errors()]) from None


def check_file(path: Path, role: str | None = None) -> NodeConfig:
    """Check the file at ``path`` for ``role`` (default: its ``role`` key)."""
    return load(ROLES[role_of(read_file(path), path, role)], path)


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "path_type": "a path (a string)",
}


def _expected(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}
    if kind in bounds:
        op, name = bounds[kind]
        return f"a number {op} {ctx[name]}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return str(error["msg"])


def _problem(error: Mapping[str, Any], model: type[NodeConfig], written: Mapping[str, object],
             source: Mapping[str, str], where: str) -> str:
    loc = error["loc"]
    if not loc:  # a check across keys
        return f"{where}: {_expected(error)}"
    key = str(loc[0])
    if error["type"] == "extra_forbidden":
        return (f"{source.get(key, where)}: unknown key {key!r} (= {show(written.get(key))}); "
                f"expected one of {', '.join(model.keys())} (for {model.command})")
    if error["type"] == "missing":
        field = next(f for n, f in model.model_fields.items() if (f.alias or n) == key)
        how = "" if model.flower_reads else f" (key {key} or --{key})"
        return f"{where}: {key} is missing; expected {field.description}{how}"
    flag = source.get(key, where)
    if flag.startswith("--"):
        return f"{flag} {show(written.get(key))}: expected {_expected(error)}"
    return f"{flag}: {key} = {show(written.get(key))}: expected {_expected(error)}"
