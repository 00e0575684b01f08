"""Run a dmq node for chaos tests: the unchanged `dmq_server.node.Node`, with two test-only differences.

    python -m dmq_server.chaos.node --config FILE [--data-dir DIR] [--raft-bind HOST:PORT]
                                    [--client-bind HOST:PORT] [--sync-record PATH]

* Binds: the node listens for Raft and clients on private addresses while every config (its own included) lists
  the advertised ones, where a chaos proxy listens (proxy.py says why). The binds come from the flags or from the
  ``# dmq-chaos: raft_bind = "..."`` / ``client_bind`` comment lines of the config (configs.py writes them).
  RaftHost already supports this (``bind_address``, raft/host.py); config.py has no key for it in a cluster.
* ``--sync-record PATH`` (or the environment variable DMQ_CHAOS_SYNC_RECORD): after every fsync of a Raft log,
  the sizes of its WAL files are appended to PATH, so `unsynced.lose_unsynced_writes` can cut them back to what
  was durable after a kill -9.

Everything else is `dmq-server --config FILE`: same validation, logging, signals and exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys

from dmq_server.config import Address, ConfigError, NodeConfig, load_config, prepare_data_dir

from .configs import bind_comments
from .unsynced import record_synced_wals

SYNC_RECORD_ENV = "DMQ_CHAOS_SYNC_RECORD"


def with_binds(config: NodeConfig, raft_bind: str | None, client_bind: str | None) -> NodeConfig:
    """The config with the node's listening addresses replaced; the advertised ones (config.nodes) stay."""
    changes = {}
    if raft_bind:
        changes["raft_bind"] = Address.parse(raft_bind)
    if client_bind:
        changes["client_address"] = Address.parse(client_bind)  # node.py binds the client port here (only)
    return dataclasses.replace(config, **changes)


def install_sync_recorder(path: str) -> None:
    """Wrap LogSpace.sync (every Raft log fsync goes through it, closing included) so each fsync appends the WAL
    sizes of the log database to `path` (this process only)."""
    from dmq_server.raft.log import LogSpace

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    original_sync = LogSpace.sync

    def sync(self: LogSpace, written: int) -> bool:
        synced = original_sync(self, written)
        if synced:
            record_synced_wals(self.path, fd)
        return synced

    LogSpace.sync = sync  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dmq_server.chaos.node")
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--raft-bind")
    parser.add_argument("--client-bind")
    parser.add_argument("--sync-record", default=os.environ.get(SYNC_RECORD_ENV))
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as f:
            binds = bind_comments(f.read())
        config = load_config(args.config, overrides={"node": {"data_dir": args.data_dir}} if args.data_dir else None)
        config = with_binds(config, args.raft_bind or binds.get("raft_bind"),
                            args.client_bind or binds.get("client_bind"))
        prepare_data_dir(config.data_dir)
    except (ConfigError, OSError) as exc:
        print(f"dmq chaos node: {exc}", file=sys.stderr)
        sys.exit(2)
    from dmq_server.daemon import configure_logging

    configure_logging(config)
    if args.sync_record:
        install_sync_recorder(args.sync_record)
    from dmq_server.node import Node  # after logging is configured, as the daemon does

    try:
        asyncio.run(Node(config).run())
    except OSError as exc:
        logging.getLogger("dmq_server").error("cannot start: %s", exc)
        sys.exit(1)
    logging.shutdown()


if __name__ == "__main__":
    main()
