"""Research code that no node runs: quality baselines and leakage measurements.

``baselines`` trains the federated reference, centralized, bank-alone and gradient
boosting models on one scenario in one process; ``leakage`` measures what the split
model's embeddings and gradients give away, with and without differential privacy.

May import: ``fedscore.audit``, ``fedscore.wire``, ``fedscore.ledger``,
``fedscore.federation``, ``fedscore.ml``, ``fedscore.data``, ``fedscore.crypto`` and the
bottom layer; never a party package or ``fedscore.cli``. No node imports this room.

A new experiment, attack or reference model goes here; the scripts that run and time
them stay in ``benchmarks/``. This package imports nothing: import from the submodule.
"""

__all__ = ["baselines", "leakage"]
