"""The bank as a Flower ClientApp (registered in pyproject's ``[tool.flwr.app.components]``).

This module stays light: a SuperNode starts a new process for every message, and most
SecAgg+ stages never reach the bank's code, so torch and the bank's data are only
loaded (in :mod:`bank_node.federated`) for the messages that train or evaluate.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod

from bank_node.dp_mod import update_clipping_mod
from bank_node.node import BankNode
from fedscore.ledger.client_mod import Mod, ledger_mod


def client_app(
    nodes: Callable[[Context], BankNode] | None = None, seed: int | None = None,
    *, secure_aggregation: bool = True,
) -> ClientApp:
    """A ClientApp whose bank is ``nodes(context)``, or (None) the one the SuperNode's
    node config describes; the initial model's seed is ``seed`` or the run config's.

    ``secure_aggregation=False`` (plain FedAvg messages, no ``secaggplus_mod``) exists
    only for the federation benchmark's SecAgg+ cost measurement, paired with the
    coordinator's ``secure_aggregation=False``; a deployed bank always insists on SecAgg+."""

    def bank(context: Context) -> BankNode:
        return nodes(context) if nodes is not None else BankNode.from_node_config(
            context.node_config
        )

    def client_fn(context: Context) -> Client:
        node = bank(context)
        run_seed = context.run_config.get("seed", 0) if seed is None else seed
        from bank_node.federated import BankClient  # torch: only for the messages that train

        return BankClient(node, int(run_seed) if isinstance(run_seed, int) else 0).to_client()

    # The ledger outermost: it records what arrives and what leaves (masked, with SecAgg+).
    mods: list[Mod] = [ledger_mod(bank)]
    if secure_aggregation:
        mods.append(secaggplus_mod)
    # Update DP: clip nearest the client, so SecAgg+ masks the clipped update.
    mods.append(update_clipping_mod)
    return ClientApp(client_fn=client_fn, mods=mods)


app = client_app()
"""The ClientApp a SuperNode runs (pyproject's ``clientapp``): the bank its node config names."""
