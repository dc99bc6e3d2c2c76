"""Check a packet capture of the compose federation's networks (tests/containers/run.sh).

``canaries``: print tests/test_privacy.py's canaries as JSON for plant_canaries.py.
``check PCAP``: every TCP connection between two containers carries only TLS records
(each direction's bytes, reassembled in sequence order, parse as a chain of TLS records
from the connection's first byte on; a connection already open when the capture began
must at least be dissected as TLS by tshark), the party connections are all there, and
none of the canaries' ids or numeric encodings occurs anywhere in the capture. Prints a
JSON summary; exits 1 with the reasons on any failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from tests.test_privacy import AGE_CANARY, N_CANARIES, SPEND_CANARY, _forms, canary_id

PORTS = {50051: "platform", 9092: "superlink", 50061: "scoring"}
TLS_CONTENT_TYPES = {20, 21, 22, 23}  # change_cipher_spec, alert, handshake, application_data


def canaries() -> dict[str, list[object]]:
    """The canary customers: ids and the platform's two numeric features."""
    return {"ids": [canary_id(i) for i in range(N_CANARIES)],
            "limit_bal": [SPEND_CANARY + i for i in range(N_CANARIES)],
            "age": [AGE_CANARY + i / 8 for i in range(N_CANARIES)]}


def needles() -> dict[str, bytes]:
    """Every byte string the capture must not hold."""
    found: dict[str, bytes] = {"CANARY": b"CANARY"}
    for i in range(N_CANARIES):
        found[canary_id(i)] = canary_id(i).encode()
        for k, form in enumerate(_forms(SPEND_CANARY + i) + _forms(AGE_CANARY + i / 8)):
            found[f"canary {i} numeric form {k}"] = form
    return found


def tls_chain(data: bytes) -> str | None:
    """None when ``data`` is a chain of TLS records (the last may be cut by the capture's
    end), else where and why it is not."""
    pos = 0
    while pos + 5 <= len(data):
        kind, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5])
        if kind not in TLS_CONTENT_TYPES or major != 3:
            return f"byte {pos}: not a TLS record header ({data[pos:pos + 5].hex()})"
        pos += 5 + length
    return None


def check(pcap: Path) -> dict[str, object]:
    """The checks of the module docstring; raises SystemExit(1) listing every failure."""
    fields = ["tcp.stream", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.seq",
              "tcp.flags.syn", "tcp.payload"]
    cmd = ["tshark", "-r", str(pcap), "-o", "tcp.relative_sequence_numbers:TRUE",
           "-o", "tcp.analyze_sequence_numbers:TRUE", "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    rows = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    syn: set[str] = set()
    ends: dict[str, tuple[str, int, str, int]] = {}
    parts: dict[tuple[str, str], dict[int, bytes]] = defaultdict(dict)
    for row in rows:
        stream, src, sport, dst, dport, seq, is_syn, payload = (row.split("\t") + [""] * 8)[:8]
        if not stream:
            continue
        ends.setdefault(stream, (src, int(sport), dst, int(dport)))
        if is_syn in ("1", "True"):
            syn.add(stream)
        if payload:
            parts[(stream, src)].setdefault(int(seq), bytes.fromhex(payload.replace(":", "")))
    problems: list[str] = []
    whole, joined, by_service = 0, 0, defaultdict(int)
    for stream, (src, sport, dst, dport) in ends.items():
        service = PORTS.get(dport) or PORTS.get(sport) or f"port {min(sport, dport)}"
        by_service[service] += 1
        sides = [k for k in parts if k[0] == stream]
        if not sides:
            continue
        if stream in syn:
            whole += 1
            for key in sides:
                data = b"".join(chunk for _, chunk in sorted(parts[key].items()))
                why = tls_chain(data)
                if why:
                    problems.append(f"connection {src}:{sport} -> {dst}:{dport} ({service}), "
                                    f"from {key[1]}: {why}")
        else:
            joined += 1
    if joined:  # open before the capture: tshark's TLS dissector must recognise them
        decode = [a for port in PORTS for a in ("-d", f"tcp.port=={port},tls")]
        seen = subprocess.run(
            ["tshark", "-r", str(pcap), *decode, "-Y", "tls.record", "-T", "fields",
             "-e", "tcp.stream"], capture_output=True, text=True, check=True).stdout.split()
        for stream in set(ends) - syn:
            if any(k[0] == stream for k in parts) and stream not in seen:
                problems.append(f"connection {ends[stream]} (open before the capture): no TLS "
                                "record in it")
    for service in ("platform", "superlink"):
        if not by_service.get(service):
            problems.append(f"no connection to the {service} in the capture")
    raw = pcap.read_bytes()
    leaks = [name for name, needle in needles().items() if needle in raw]
    if leaks:
        problems.append(f"canaries in the capture: {', '.join(leaks[:10])}")
    summary = {"pcap_bytes": len(raw), "connections": len(ends), "checked_from_start": whole,
               "open_before_capture": joined, "by_service": dict(by_service),
               "canaries_searched": len(needles()), "problems": problems}
    print(json.dumps(summary))
    if problems:
        raise SystemExit(1)
    return summary


def main() -> None:
    """``canaries`` or ``check PCAP``."""
    if sys.argv[1] == "canaries":
        print(json.dumps(canaries()))
    else:
        check(Path(sys.argv[2]))


if __name__ == "__main__":
    main()
