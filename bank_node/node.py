"""Where one bank's SuperNode finds its things: the :class:`BankNode` record.

Its own module so that the ClientApp (:mod:`bank_node.client_app`) and the client it
starts (:mod:`bank_node.federated`) both import it without importing each other. Light
on purpose: no torch, no Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedscore.federation.runconfig import require


@dataclass(frozen=True)
class BankNode:
    """One bank as its SuperNode runs it: its name, its data, its startup kit, the
    platform's address and a bank-local folder for state kept between messages (the PSI
    session, test predictions, the ledger)."""

    bank: str
    data_dir: Path
    kit_dir: Path
    platform_address: str
    state_dir: Path

    @classmethod
    def from_node_config(cls, config: Mapping[str, object]) -> BankNode:
        """The bank a SuperNode's ``--node-config`` describes; ConfigError names a
        missing or empty key."""
        where = "SuperNode node config"
        return cls(
            bank=require(config, "bank", where),
            data_dir=Path(require(config, "data-dir", where)),
            kit_dir=Path(require(config, "kit-dir", where)),
            platform_address=require(config, "platform-address", where),
            state_dir=Path(require(config, "state-dir", where)),
        )
