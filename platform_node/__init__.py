"""The lending platform's node: the gRPC server that holds the platform's features.

PSI, split-learning forward and backward, embeddings for online scoring and the
federation's round control, each a thin servicer over the platform's sessions, model
store and federated rounds. It may import the shared rooms of ``fedscore`` and nothing
of the other parties (``bank_node``, ``coordinator``). Platform-specific features go here.
"""
