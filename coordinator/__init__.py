"""The coordinator: a Flower ServerApp that runs federated rounds; it never holds user data."""
