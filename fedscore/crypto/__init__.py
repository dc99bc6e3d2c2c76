"""Cryptography and private protocols: the lowest room above fedscore's bottom layer.

``primitives`` holds every key type, sealed box and signature, and is the only module
that imports ``cryptography.hazmat``; ``psi`` is the ECDH private set intersection
engine, ``secure_sum`` the exact sums carried through SecAgg+, ``dp`` the Gaussian
mechanism and its accountant, ``consent`` the signed consent tokens of online scoring.

May import: only the bottom layer (``fedscore.api``, ``fedscore.errors``,
``fedscore.atomic``); no other room, no party package.

A new primitive, key format, private protocol or privacy mechanism goes here; anything
that needs ``cryptography.hazmat`` goes into ``primitives`` and is exposed through a
validated type. This package imports nothing: import from the submodule.
"""

__all__ = ["consent", "dp", "primitives", "psi", "secure_sum"]
