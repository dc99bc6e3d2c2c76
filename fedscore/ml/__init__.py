"""The split model, its one training loop and its quality metrics.

``architecture`` the layer sizes and the weights' names and shapes (no torch), ``model``
the platform's bottom and the bank's model in torch, ``frozen`` the bank model's
numpy forward pass for serving (no torch at scoring time), ``training`` the split-learning
loop and the platform link it talks to, ``metrics`` AUC, KS and log loss.

May import: ``fedscore.data``, ``fedscore.crypto`` and the bottom layer (``fedscore.api``,
``fedscore.errors``, ``fedscore.atomic``); no room above, no party package.

A new architecture, training option or quality metric goes here. This package imports
nothing, so importing ``fedscore.ml.metrics`` or ``fedscore.ml.frozen`` never drags torch
in: import from the submodule.
"""

__all__ = ["architecture", "frozen", "metrics", "model", "training"]
