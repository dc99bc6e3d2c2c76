"""The scoring server imports neither torch nor Flower's server side.

Its model is numpy (:mod:`fedscore.ml.frozen`), and nothing it serves needs a Flower
workflow: importing either would cost every scoring process seconds of start-up and
hundreds of megabytes for code it never runs. Checked in a fresh interpreter, where
nothing the test session imported can hide a new import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_scoring_server_loads_neither_torch_nor_flowers_server() -> None:
    code = ("import json, sys; import bank_node.scoring_service; "
            "print(json.dumps(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    loaded = set(json.loads(run.stdout.splitlines()[-1]))
    assert "bank_node.scoring_service" in loaded  # the check saw the real import
    assert not sorted(m for m in loaded if m == "torch" or m.startswith("torch."))
    assert not sorted(m for m in loaded if m == "flwr.server" or m.startswith("flwr.server."))
