"""Operations: what lets an operator watch a node (Prometheus metrics, the log setup).

``metrics`` holds every metric a node exports and serves them on ``/metrics``; ``logs``
is the one logging setup of every node (text on a terminal, JSON lines on request).
Nothing here may carry a customer's id: metric labels are peers, kinds, methods,
reasons and codes, and log lines name no applicant.
"""

__all__ = ["logs", "metrics"]
