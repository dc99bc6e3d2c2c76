"""A federated run on Flower's Simulation Engine: the same ServerApp and ClientApp as in
deployment, with each simulated SuperNode given one bank's node config. The platform
node is a real process; only the Flower transport is simulated."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence

from flwr.app import Context
from flwr.simulation import run_simulation

from bank_node.client_app import client_app
from bank_node.node import BankNode
from coordinator.app import server_app
from fedscore.federation.runconfig import RunSettings

log = logging.getLogger(__name__)


RAY_START_TRIES = 3


def start_ray(tries: int = RAY_START_TRIES) -> None:
    """Start Ray as Flower's backend would (which then reuses it), retrying a start-up that
    timed out: Ray gives its processes a fixed 30 s, which a loaded 2-core machine now and
    then misses. A failed Flower start would leave its ServerApp thread waiting for nodes
    that never come, holding the coordinator's ledger."""
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)  # as Flower's RayBackend passes it on
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    for attempt in range(1, tries + 1):
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                     include_dashboard=False)
            return
        except Exception as exc:  # Ray raises bare Exception / RuntimeError on time-outs
            ray.shutdown()
            if attempt == tries:
                raise
            log.warning("Ray did not start (%s); trying again (%d/%d)", exc, attempt + 1,
                        tries)
            time.sleep(2.0)


def simulate(
    settings: RunSettings, banks: Sequence[BankNode], *, secure_aggregation: bool = True
) -> None:
    """Run the federation with one simulated SuperNode per bank (Ray, one CPU each)."""

    def node(context: Context) -> BankNode:
        return banks[int(context.node_config["partition-id"])]

    start_ray()
    run_simulation(
        server_app=server_app(settings, secure_aggregation=secure_aggregation),
        client_app=client_app(node, seed=settings.seed, secure_aggregation=secure_aggregation),
        num_supernodes=len(banks),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
