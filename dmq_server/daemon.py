"""`dmq-server`: run one dmq node.

    dmq-server                      the embedded single-node default: data in ./dmq-data, clients on
                                    127.0.0.1:7400, metrics on http://127.0.0.1:9400/metrics, no token needed
    dmq-server --config FILE        a node as FILE describes it (config/*.toml)

SIGTERM or SIGINT stops it cleanly: no new connections, leadership handed to other replicas, logs flushed,
exit status 0. A bad config exits with status 2 and a message naming the key to fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

import click

from .config import ConfigError, NodeConfig, default_config, load_config, prepare_data_dir


class _JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "node": self._node_id,
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(config: NodeConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(_JsonFormatter(config.node_id))
    else:
        formatter = logging.Formatter(f"%(asctime)s.%(msecs)03dZ %(levelname)s node={config.node_id} "
                                      "%(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level.upper())
    logging.getLogger("pysyncobj").setLevel(max(logging.WARNING, root.level))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Node config file (TOML). Without it: the embedded single-node default.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Override [node] data_dir.")
def main(config_path: str | None, data_dir: str | None) -> None:
    """Run a dmq node."""
    try:
        if config_path is None:
            config = default_config(data_dir or "./dmq-data")
        else:
            config = load_config(config_path, overrides={"node": {"data_dir": data_dir}} if data_dir else None)
        prepare_data_dir(config.data_dir)
    except ConfigError as exc:
        click.echo(f"dmq-server: {exc}", err=True)
        sys.exit(2)
    configure_logging(config)
    from .node import Node  # after logging is configured: importing the Raft layer logs

    try:
        asyncio.run(Node(config).run())
    except OSError as exc:  # e.g. the client port is taken
        logging.getLogger("dmq_server").error("cannot start: %s", exc)
        sys.exit(1)
    logging.shutdown()


if __name__ == "__main__":
    main()
