"""Fault-tolerance tooling: the history a chaos run records (`history`), the checker that judges it (`checker`),
a fault-injecting network of TCP proxies between nodes (`proxy`, `configs`, `node`), and the simulation of a
crash that loses unsynced writes (`unsynced`). Nothing here is imported by a production node."""
