"""Real dmq nodes behind a chaos Network, for tests (the class lives in dmq_server.chaos.cluster, which the
`dmq chaos` runner shares)."""

from dmq_server.chaos.cluster import ChaosNodes

__all__ = ["ChaosNodes"]
