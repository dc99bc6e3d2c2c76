"""Audit ledger entries for the Flower messages between the banks and the coordinator.

Flower carries a message's content as a tree of objects; the content's ``object_id`` is the
SHA-256 of its deflated root, which names every child by its own SHA-256 (a Merkle tree),
so it is the same at both ends and changes with any byte. The ledgers record that digest
and the deflated size of the whole tree (what Flower ships), never the content.

Kinds are named from the instruction (``request``) alone, the same way at both ends: the
coordinator knows which instruction a reply answers, and so does the bank.

The coordinator cannot tell which bank a SuperNode is (its messages go through the
SuperLink, which terminates TLS), so before anything else it sends each node a challenge
and the bank answers with its party name signed by its kit's Ed25519 key; see
:func:`identity_statement`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from flwr.app import ConfigRecord, Message
from flwr.supercore.inflatable.inflatable_object import InflatableObject

from fedscore.federation.runconfig import STATISTICS_TASK, TASK_KEY

HELLO_RECORD = "fedscore-hello"
"""The challenge's (and the answer's) ConfigRecord; a bank's ledger mod answers it itself."""
HELLO_DOMAIN = b"fedscore-identity-v1\x00"
"""Prefix of what a bank signs to prove its identity (domain separation)."""
PURPOSE = "federation"
"""The purpose of every ledger entry of a Flower message."""
_SECAGG_CONFIGS = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants

# SecAgg+ stage of the instruction -> (kind of the instruction, kind of the bank's reply)
_STAGES: dict[str, tuple[str, str]] = {
    "setup": ("secagg-setup", "secagg-public-keys"),
    "share_keys": ("secagg-public-keys", "secagg-key-shares"),
    "collect_masked_vectors": ("model", "model-update"),
    "unmask": ("secagg-unmask", "secagg-key-shares"),
}


def _objects(obj: InflatableObject) -> Iterator[InflatableObject]:
    yield obj
    for child in (obj.children or {}).values():
        yield from _objects(child)


def content_digest(message: Message) -> tuple[str, int]:
    """(hex SHA-256 naming the content, deflated bytes of the content); ("", 0) if none."""
    if not message.has_content():
        return "0" * 64, 0
    content = message.content
    size = sum(len(obj.deflate()) for obj in _objects(content))
    return content.object_id, size


def _configs(message: Message) -> list[ConfigRecord]:
    return list(message.content.config_records.values()) if message.has_content() else []


def is_hello(message: Message) -> bool:
    """Whether ``message`` is the coordinator's identity challenge (or a bank's answer)."""
    return message.has_content() and HELLO_RECORD in message.content.config_records


def kinds(request: Message) -> tuple[str, str]:
    """(kind of the coordinator's instruction, kind of the bank's reply to it)."""
    if is_hello(request):
        return "identity-challenge", "identity"
    message_type = request.metadata.message_type
    if message_type.startswith("evaluate"):
        return "model", "metrics"
    if message_type == "get_parameters":
        return "parameters-request", "initial-model"
    statistics = any(c.get(TASK_KEY) == STATISTICS_TASK for c in _configs(request))
    stage = None
    if request.has_content() and _SECAGG_CONFIGS in request.content.config_records:
        stage = request.content.config_records[_SECAGG_CONFIGS].get("stage")
    sent, reply = _STAGES.get(str(stage), ("model", "model-update"))
    if statistics and reply == "model-update":
        return "statistics-request", "statistics-sums"
    return sent, reply


def message_round(message: Message) -> int:
    """Flower's round (the message's group id), 0 when it is not a number."""
    group = message.metadata.group_id
    return int(group) if group.isdigit() else 0


def identity_statement(run_id: int, node_id: int, party: str) -> bytes:
    """What a bank signs to tell the coordinator that SuperNode ``node_id`` is ``party``."""
    body = json.dumps({"run": run_id, "node": node_id, "party": party}, sort_keys=True)
    return HELLO_DOMAIN + body.encode()
