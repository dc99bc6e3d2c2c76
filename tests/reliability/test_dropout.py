"""A bank lost mid-run (issue 15, item 4) on Flower's Simulation Engine, the platform node a
real process, every round under SecAgg+.

One bank's ClientApp is killed in SecAgg+'s masked-vector stage of one round, after it
trained and committed its session on the platform but before its masked update reached
the coordinator (the mod runs the bank, then raises instead of answering), which is the
worst moment: the platform holds a copy the coordinator's sum lacks.

* ``survives``: 3 banks, min-banks 2, bank-3 lost in round 2 of 3: the run completes,
  round 2 is the sum of bank-1 and bank-2 only (on both sides: the platform averaged the
  same two banks' copies), bank-3 is back in round 3, and the checkpoints, the progress
  log and the signed release name who contributed;
* ``stops``: min-banks 3 and bank-2 lost in round 1: the run stops with a CoordinatorError
  naming bank-2, logged as ``stopped``; and bank-1 lost in round 0 (the pooled
  statistics) with min-banks 3: a StatisticsError naming bank-1.

A bank that never answers is covered by ``ReplyWatch``'s own test (tests/coordinator):
on the Simulation Engine a hung ClientApp holds one of the machine's two Ray workers for
as long as it hangs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.client import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage

import fedscore.cli.simulation as simulation
from bank_node.client_app import client_app
from bank_node.node import BankNode
from coordinator.app import RELEASE_DIR
from coordinator.checkpoint import Checkpoints
from coordinator.statistics import StatisticsError
from coordinator.strategy import CoordinatorError
from fedscore.cli.local import platform_process
from fedscore.data.scenarios import ScenarioManifest
from fedscore.data.synth import synth_population
from fedscore.federation.provision import load_kit, provision
from fedscore.federation.release import verify_release
from fedscore.federation.runconfig import STATISTICS_TASK, TASK_KEY, RunSettings

PEOPLE = 4000
BANKS = ("bank-1", "bank-2", "bank-3")


@dataclass
class World:
    root: Path
    data: ScenarioManifest
    address: str

    def kit(self, party: str) -> Path:
        return self.root / "kits" / party

    def nodes(self) -> list[BankNode]:
        return [BankNode(b, self.data.bank_dirs[b], self.kit(b), self.address,
                         self.root / "bank-state" / b) for b in BANKS]

    def settings(self, run_id: str, rounds: int, **kw: Any) -> RunSettings:
        return RunSettings(run_id=run_id, num_rounds=rounds, local_epochs=1,
                           max_weight=10_000.0, state_dir=str(self.root / "coordinator"),
                           coordinator_kit=str(self.kit("coordinator")),
                           platform_address=self.address, reply_timeout=600.0, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dropout")
    data = synth_population(root / "data", people=PEOPLE, banks=len(BANKS), seed=5)
    assert sorted(data.bank_dirs) == list(BANKS)
    provision(root / "kits", parties=("platform", *BANKS, "coordinator"))
    with platform_process(root / "kits" / "platform", data.platform_features,
                          data.platform_schema, log=root / "platform.log",
                          state_dir=root / "platform-state") as address:
        yield World(root, data, address)


def losing(banks: list[BankNode], bank: str, round_: int, seed: int) -> ClientApp:
    """The banks' ClientApp, with ``bank`` killed in round ``round_`` (0: the statistics)
    once it has trained (and committed on the platform), before its answer leaves."""
    inner = client_app(lambda ctx: banks[int(ctx.node_config["partition-id"])], seed=seed)

    def kill(msg: Message, ctx: Context, _: Any) -> Message:
        me = banks[int(ctx.node_config["partition-id"])].bank
        configs = msg.content.config_records
        stage = configs[RECORD_KEY_CONFIGS].get("stage") if RECORD_KEY_CONFIGS in configs \
            else None
        fit = configs.get("fitins.config")
        task_round = (0 if fit is not None and fit.get(TASK_KEY) == STATISTICS_TASK
                      else fit.get("round") if fit is not None else None)
        if (me == bank and msg.metadata.message_type == "train"
                and stage == Stage.COLLECT_MASKED_VECTORS and task_round == round_):
            inner(msg, ctx)  # the whole bank (ledger, SecAgg+, training), then lost
            raise RuntimeError(f"{bank} lost in round {round_} (fault injected)")
        return inner(msg, ctx)

    def unused(ctx: Context) -> Any:
        raise AssertionError("the kill mod answers every message")

    return ClientApp(client_fn=unused, mods=[kill])


def simulate(world: World, settings: RunSettings, bank: str, round_: int) -> None:
    banks = world.nodes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulation, "client_app",
                   lambda nodes, seed, secure_aggregation=True: losing(banks, bank, round_,
                                                                       seed))
        simulation.simulate(settings, banks)


def _events(settings: RunSettings) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (settings.run_dir / "progress.jsonl").read_text()
            .splitlines()]


@pytest.fixture(scope="module")
def survived(world: World) -> RunSettings:
    settings = world.settings("survives", 3)
    simulate(world, settings, "bank-3", 2)
    return settings


def test_the_run_survives_a_bank_lost_in_round_2(world: World, survived: RunSettings) -> None:
    cps = Checkpoints(survived.run_dir)
    assert cps.rounds() == [1, 2, 3]
    r1, r2, r3 = (cps.load(r) for r in (1, 2, 3))
    assert r1.info["contributors"] == list(BANKS) and r1.info["lost"] == {}
    # round 2: bank-1 and bank-2 only, bank-3 named as lost with its error
    assert r2.info["contributors"] == ["bank-1", "bank-2"] and r2.info["banks"] == 2
    assert list(r2.info["lost"]) == ["bank-3"]
    assert "fault injected" in r2.info["lost"]["bank-3"]
    # the platform averaged the same two banks' copies, although bank-3 had committed
    assert r2.info["platform_sessions"] == 2
    assert r2.info["platform_rows"] == sum(world.data.banks[b].train_on_platform
                                           for b in ("bank-1", "bank-2"))
    # bank-3 rejoins in round 3
    assert r3.info["contributors"] == list(BANKS) and r3.info["platform_sessions"] == 3
    assert r3.info["evaluation"]["pooled_auc"] > 0.6
    assert [b["bank"] for b in r3.info["evaluation"]["banks"]] == list(BANKS)
    trained = [e for e in _events(survived) if e["event"] == "trained"]
    assert [e["contributors"] for e in trained] == [list(BANKS), ["bank-1", "bank-2"],
                                                     list(BANKS)]
    assert _events(survived)[-1]["event"] == "released"
    # the round-2 model is a proper average (SecAgg+ removed the lost bank's masks): it
    # is finite and near rounds 1 and 3, not masked noise of the field's size
    gap = max(float(np.abs(a - b).max()) for a, b in zip(r2.arrays, r1.arrays, strict=True))
    assert np.isfinite(gap) and gap < 1.0


def test_the_release_names_the_banks_of_every_round(world: World,
                                                    survived: RunSettings) -> None:
    kit = load_kit(world.kit("coordinator"))
    manifest, _ = verify_release(survived.run_dir / RELEASE_DIR, kit.signing_key.verify_key())
    assert manifest["contributors"] == {"0": list(BANKS), "1": list(BANKS),
                                        "2": ["bank-1", "bank-2"], "3": list(BANKS)}
    assert manifest["banks_last_round"] == list(BANKS)
    # signed with the rest: changing who contributed breaks the signature
    body = (survived.run_dir / RELEASE_DIR / "manifest.json").read_text()
    forged = survived.run_dir.parent / "forged"
    forged.mkdir()
    for f in (survived.run_dir / RELEASE_DIR).iterdir():
        (forged / f.name).write_bytes(f.read_bytes())
    doc = json.loads(body)
    doc["contributors"]["2"].append("bank-3")  # as if bank-3's data were in round 2
    (forged / "manifest.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    assert (forged / "manifest.json").read_text() != body
    with pytest.raises(Exception, match="signature does not verify"):
        verify_release(forged, kit.signing_key.verify_key())


def test_fewer_than_min_banks_stops_the_run_naming_the_lost_bank(world: World) -> None:
    settings = world.settings("stops", 2, min_banks=3)
    with pytest.raises(CoordinatorError, match=r"round 1: .*fewer than min-banks = 3; "
                                               r"lost: bank-2 \(error: .*fault injected"):
        simulate(world, settings, "bank-2", 1)
    stopped = _events(settings)[-1]
    assert stopped["event"] == "stopped" and stopped["code"] == "ABORTED"
    assert "bank-2" in stopped["error"] and "bank-1" in stopped["error"]
    assert Checkpoints(settings.run_dir).rounds() == []
    assert not (settings.run_dir / RELEASE_DIR).exists()


def test_a_bank_lost_in_round_0_is_named_too(world: World) -> None:
    settings = world.settings("stops-0", 1, min_banks=3)
    with pytest.raises(StatisticsError, match=r"preprocessing statistics: only 2 bank.*"
                                              r"lost: bank-1 \(error: .*fault injected"):
        simulate(world, settings, "bank-1", 0)
    assert _events(settings)[-1]["event"] == "stopped"
    assert not (settings.run_dir / "preprocessing.json").exists()
