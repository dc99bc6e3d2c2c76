"""The bank's half of update DP: Flower's ``fixedclipping_mod``, only where it belongs.

When the run asks for update DP the coordinator puts Flower's clipping norm
(``KEY_CLIPPING_NORM``) into each training round's instructions; this mod then lets
Flower's ``fixedclipping_mod`` clip the bank's update (its trained weights minus the
round's global weights) to that L2 norm before SecAgg+ masks it: in the ClientApp's mods
it comes after ``secaggplus_mod``, i.e. nearer the client, so it is the last to touch the
parameters. Flower's mod refuses a training message without the norm; round 0 (the
preprocessing sums, which must stay exact) and runs without update DP carry none, so
they pass through unclipped. Light on purpose: no torch here.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedscore.federation.runconfig import STATISTICS_TASK, TASK_KEY

FIT_CONFIG = "fitins.config"
"""The record of a training message that holds its instructions (Flower's legacy layout)."""


def update_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Clip the bank's model update when the coordinator asked for it; else pass through."""
    records = msg.content.config_records
    if msg.metadata.message_type != MessageType.TRAIN or FIT_CONFIG not in records:
        return call_next(msg, ctxt)
    config = records[FIT_CONFIG]
    if KEY_CLIPPING_NORM not in config or config.get(TASK_KEY) == STATISTICS_TASK:
        return call_next(msg, ctxt)
    return fixedclipping_mod(msg, ctxt, call_next)
