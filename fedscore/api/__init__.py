"""Generated wire types (``make proto`` writes ``v1`` from ``proto/fedscore/v1``): bottom layer."""
