"""The local stack: a private redis-server, the bundled Triton binary and the transformer, as processes."""
