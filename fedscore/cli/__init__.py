"""The ``fedscore`` command: the top of the layers.

``main`` is the entry point (``fedscore = fedscore.cli.main:app``) and the node commands;
``data`` (``fedscore data``), ``audit`` (``fedscore audit``), ``config`` (``fedscore
config``), ``health`` (``fedscore health``) and ``provision`` (``fedscore provision``)
are sub-apps; ``demo``, ``vertical``, ``local``, ``deploy`` and
``simulation`` start whole federations on one machine (real node processes, Flower's
Deployment or Simulation Engine).

May import: everything: the party packages (``platform_node``, ``bank_node``,
``coordinator``) and every room of ``fedscore``. Nothing imports this room.

A new command goes into a module of its own here, registered in ``main``; keep heavy
imports (torch, grpc, Flower) inside the command so ``fedscore --help`` stays instant.
This package imports nothing: import from the submodule.
"""

__all__ = [
    "audit",
    "config",
    "data",
    "demo",
    "deploy",
    "health",
    "local",
    "main",
    "provision",
    "simulation",
    "vertical",
]
