"""compose.yaml and deploy/config/ as files: the properties `make test-containers` relies
on, checked in the fast suite (no container engine needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedscore.federation.nodeconfig import PlatformConfig, ScoreServerConfig, check_file, read_file

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ONE_SHOT = {"provision", "register", "submit", "audit"}
BANKS = ("bank-1", "bank-2", "bank-3")


def networks(service: str) -> set[str]:
    nets = SERVICES[service].get("networks", [])
    return set(nets) if isinstance(nets, list) else set(nets.keys())


def volumes(service: str) -> dict[str, str]:
    """Named volume -> where the service mounts it."""
    found = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if not source.startswith("."):
            found[source] = target
    return found


def test_long_running_services_have_health_checks_and_restart() -> None:
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            assert "healthcheck" not in service, name
        else:
            assert service["restart"] == "unless-stopped", name
            assert service["healthcheck"]["test"][-1] == "healthcheck", name


def test_every_network_is_internal_and_each_bank_reaches_only_platform_and_superlink() -> None:
    assert all(net.get("internal") is True for net in COMPOSE["networks"].values())
    for bank in BANKS:
        on_it = {name for name in SERVICES if bank in networks(name)}
        assert on_it == {"platform", "superlink", f"supernode-{bank}", f"scoring-{bank}"}
        for own in (f"supernode-{bank}", f"scoring-{bank}"):
            assert networks(own) == {bank}
        # the SuperLink answers as `coordinator`, the name on its certificate
        assert SERVICES["superlink"]["networks"][bank]["aliases"] == ["coordinator"]
    assert SERVICES["provision"]["network_mode"] == "none"
    assert SERVICES["audit"]["network_mode"] == "none"
    assert all(spec.endswith(":ro") for spec in SERVICES["audit"]["volumes"])


def test_each_party_volume_is_mounted_only_by_that_party() -> None:
    provisioned = 0
    for volume in COMPOSE["volumes"]:
        users = {name for name in SERVICES if volume in volumes(name)}
        for bank in BANKS:
            if volume.endswith(bank):
                # provisioning writes the kit and data; the reviewer reads the ledgers
                assert users - {"provision", "audit"} <= {f"supernode-{bank}",
                                                          f"scoring-{bank}"}, volume
        if volume.startswith(("kit-", "data-")):
            assert "provision" in users, volume
            provisioned += 1
    # the banks' kits are read-only wherever a node mounts them
    for name in SERVICES:
        for spec in SERVICES[name].get("volumes", []):
            if spec.startswith("kit-") and name != "provision":
                assert spec.endswith(":ro"), (name, spec)
    assert provisioned == (2 + len(BANKS)) + (1 + len(BANKS))  # kits: + coordinator


@pytest.mark.parametrize("bank", BANKS)
def test_supernode_config_files_pass_the_node_config_check(bank: str) -> None:
    path = ROOT / "deploy" / "config" / f"supernode-{bank}.toml"
    assert read_file(path)["bank"] == bank
    check_file(path, role="supernode")


def test_run_config_passes_the_coordinator_check() -> None:
    settings = check_file(ROOT / "deploy" / "config" / "run.toml", role="coordinator")
    assert settings.model_dump(by_alias=True)["min-banks"] == len(BANKS)


@pytest.mark.parametrize(("name", "model"), [("platform.toml", PlatformConfig),
                                             ("scoring.toml", ScoreServerConfig)])
def test_node_files_use_only_their_roles_keys(name: str, model: type[Any]) -> None:
    """The paths exist only inside the containers (where the node itself checks them);
    here: the role and that every key is one of the role's."""
    doc = read_file(ROOT / "deploy" / "config" / name)
    assert doc.pop("role") == model.role
    assert set(doc) <= set(model.keys())
