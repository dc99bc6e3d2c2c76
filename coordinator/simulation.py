"""A federated run on Flower's Simulation Engine: the same ServerApp and ClientApp as in
deployment, with each simulated SuperNode given one bank's node config. The platform
node is a real process; only the Flower transport is simulated."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context
from flwr.simulation import run_simulation

from bank_node.client_app import BankNode, client_app
from coordinator.app import server_app
from fedscore.runconfig import RunSettings


def simulate(
    settings: RunSettings, banks: Sequence[BankNode], *, secure_aggregation: bool = True
) -> None:
    """Run the federation with one simulated SuperNode per bank (Ray, one CPU each)."""

    def node(context: Context) -> BankNode:
        return banks[int(context.node_config["partition-id"])]

    run_simulation(
        server_app=server_app(settings, secure_aggregation=secure_aggregation),
        client_app=client_app(node, seed=settings.seed, secure_aggregation=secure_aggregation),
        num_supernodes=len(banks),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
