"""The partner bank's node: everything that runs on the bank's own machines.

Its Flower ClientApp (training under the bank's SuperNode), the PSI client and the link
to the platform, the trainer, and the scoring server with the bank's credit policy.
It may import the shared rooms of ``fedscore`` and nothing of the other parties
(``platform_node``, ``coordinator``); what it shares with them lives in ``fedscore``.
Bank-specific features (a new decision, a new bank-side service) go here.
"""
