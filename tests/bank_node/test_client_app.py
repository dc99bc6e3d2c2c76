"""The bank's ClientApp module: light to import, and SecAgg+ unless a benchmark opts out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flwr.client.mod import secaggplus_mod

from bank_node import client_app as module
from bank_node.node import BankNode
from tests.conftest import Federation

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_client_app_does_not_load_torch() -> None:
    # A SuperNode starts a process per message; most SecAgg+ stages never need torch.
    code = ("import sys, bank_node.client_app; "
            "print(sorted(m for m in ('torch', 'bank_node.federated') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_deployed_bank_insists_on_secure_aggregation() -> None:
    for app in (module.app, module.client_app()):
        # the ledger outermost (it records the masked reply that leaves), SecAgg+ next
        assert app._mods[0].__qualname__.startswith("ledger_mod.")
        assert app._mods[1] is secaggplus_mod
    assert secaggplus_mod not in module.client_app(secure_aggregation=False)._mods


def test_a_bank_larger_than_max_weight_refuses_before_training(
    federation: Federation, tmp_path: Path
) -> None:
    """SecAgg+ scales weights by rows / max-weight; above 1 it would overflow, so refuse."""
    import pytest

    from bank_node.federated import BankClient
    from bank_node.trainer import BankTables
    from fedscore.data.preprocess import Preprocessor
    from fedscore.federation.runconfig import ConfigError

    node = BankNode("bank-1", federation.data.bank_dirs["bank-1"], federation.kits / "bank-1",
                    "127.0.0.1:1", tmp_path)
    client = BankClient(node)
    init = client.get_parameters({})
    with pytest.raises(ConfigError, match="preprocessing-layout and preprocessing-sums"):
        client.fit(init, {"round": 1, "run-id": "r"})  # no pooled statistics: refused
    moments = Preprocessor.moments(BankTables.load(node.data_dir).train)
    pooled = {"preprocessing-layout": moments.layout,
              "preprocessing-sums": moments.sums.astype("<f8").tobytes()}
    with pytest.raises(ConfigError, match=r"max-weight = 10 is below this bank's \d+ training"):
        client.fit(init, {"round": 1, "max-weight": 10.0, "run-id": "r", **pooled})
