"""The `dmq` command line."""

from __future__ import annotations

import json

import click


@click.group()
@click.version_option(package_name="dmq")
def main() -> None:
    """dmq: a durable, replicated message queue."""


@main.command("bench-store")
@click.option("--messages", default=500_000, show_default=True, help="Messages to enqueue, then receive+delete.")
@click.option("--batch", default=100, show_default=True, help="Messages per command.")
@click.option("--body-bytes", default=100, show_default=True, help="Body size of each message.")
@click.option("--consumed", default=1_000_000, show_default=True,
              help="Messages consumed in all before the head-read latency is measured.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of progress lines.")
def bench_store(messages: int, batch: int, body_bytes: int, consumed: int, as_json: bool) -> None:
    """Benchmark one partition store through `apply`: enqueue, receive+delete, head read after many consumed."""
    from dmq_server.store import bench

    if not 1 <= batch <= 1_000:
        raise click.BadParameter("must be from 1 to 1000", param_hint="--batch")
    if messages < batch:
        raise click.BadParameter("must be at least --batch", param_hint="--messages")
    results = bench.run_in_temp(messages=messages, batch=batch, body_bytes=body_bytes, consumed=consumed,
                                progress=(lambda line: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(results))


@main.command("bench-raft")
@click.option("--commands", "cmds", default=3_000, show_default=True, help="Enqueue commands for the throughput run.")
@click.option("--batch", default=100, show_default=True, help="Messages per command.")
@click.option("--body-bytes", default=100, show_default=True, help="Body size of each message.")
@click.option("--window", default=50, show_default=True, help="Commands in flight during the throughput run.")
@click.option("--latency-commands", default=2_000, show_default=True,
              help="Sequential one-message commands for the latency run.")
@click.option("--failover-rounds", default=5, show_default=True, help="Leader kills (0 skips the failover run).")
@click.option("--transport", type=click.Choice(["host", "pysyncobj"]), default="host", show_default=True,
              help="host: the node's shared authenticated transport (production); pysyncobj: its own TCP one.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of progress lines.")
def bench_raft(cmds: int, batch: int, body_bytes: int, window: int, latency_commands: int, failover_rounds: int,
               transport: str, as_json: bool) -> None:
    """Benchmark one partition replicated over 3 local processes (fsync on): throughput, latency, failover."""
    from dmq_server.raft import bench

    if not 1 <= batch <= 1_000:
        raise click.BadParameter("must be from 1 to 1000", param_hint="--batch")
    if cmds < 1 or window < 1 or latency_commands < 1 or failover_rounds < 0:
        raise click.BadParameter("counts must be positive")
    results = bench.run_in_temp(cmds=cmds, msgs=batch, body_bytes=body_bytes, window=window,
                                latency_commands=latency_commands, failover_rounds=failover_rounds,
                                host=transport == "host", progress=(lambda line: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(results))


if __name__ == "__main__":
    main()
