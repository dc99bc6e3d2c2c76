"""What the parties of one federation share about it, beyond the wire.

``runconfig`` reads a run's settings from Flower's run config, ``nodeconfig`` a node's
settings from its TOML file (one schema per role), ``provision`` creates the
federation's CA and startup kits and loads a kit, ``release`` signs and verifies model
releases, ``statistics`` the banks' preprocessing statistics summed under SecAgg+ (round
0), ``arrays`` the array helpers the coordinator and the banks share.

May import: ``fedscore.ml``, ``fedscore.data``, ``fedscore.crypto`` and the bottom layer
(``fedscore.api``, ``fedscore.errors``, ``fedscore.atomic``); no room above, no party
package.

Code that two parties of a run need alike (the coordinator and the banks, a node and the
operator) goes here rather than into one party's package. This package imports nothing:
import from the submodule.
"""

__all__ = ["arrays", "grid", "nodeconfig", "provision", "release", "runconfig", "statistics"]
