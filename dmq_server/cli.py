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
@click.option("--batch-ids", is_flag=True, help="Enqueue with a batch id (idempotency key) per command.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of progress lines.")
def bench_store(messages: int, batch: int, body_bytes: int, consumed: int, batch_ids: bool, as_json: bool) -> None:
    """Benchmark one partition store through `apply`: enqueue, receive+delete, head read after many consumed."""
    from dmq_server.store import bench

    if not 1 <= batch <= 1_000:
        raise click.BadParameter("must be from 1 to 1000", param_hint="--batch")
    if messages < batch:
        raise click.BadParameter("must be at least --batch", param_hint="--messages")
    results = bench.run_in_temp(messages=messages, batch=batch, body_bytes=body_bytes, consumed=consumed,
                                batch_ids=batch_ids, progress=(lambda line: None) if as_json else click.echo)
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


@main.command("bench")
@click.option("--nodes", default="127.0.0.1:7400", show_default=True, envvar="DMQ_NODES",
              help="Client addresses of the cluster, comma separated.")
@click.option("--token", envvar="DMQ_TOKEN", default=None, help="A token with admin, send and receive on bench-*.")
@click.option("--messages", default=200_000, show_default=True, help="Messages for the throughput phases.")
@click.option("--body-bytes", default=100, show_default=True, help="Body size of each message.")
@click.option("--batch", default=100, show_default=True, help="Messages per send_batch in the send phase.")
@click.option("--producers", default=8, show_default=True, help="Concurrent producers (one batch in flight each).")
@click.option("--consumers", default=8, show_default=True,
              help="Concurrent consumers (each receives a batch, then deletes it while receiving the next).")
@click.option("--receive-batch", default=100, show_default=True, help="Messages per receive in the receive phase.")
@click.option("--partitions", default=4, show_default=True, help="Partitions of the benchmark queue.")
@click.option("--latency-sends", default=2_000, show_default=True,
              help="Sequential single sends for the latency figures.")
@click.option("--queue", default=None, help="Queue name (default: a new bench-<random> queue).")
@click.option("--keep-queue", is_flag=True, help="Do not delete the queue at the end.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
def bench(nodes: str, token: str | None, messages: int, body_bytes: int, batch: int, producers: int, consumers: int,
          receive_batch: int, partitions: int, latency_sends: int, queue: str | None, keep_queue: bool,
          as_json: bool) -> None:
    """Benchmark a running cluster through the SDK: send throughput, receive+delete throughput, single-send
    latency, and an exact count of lost messages (must be 0)."""
    import asyncio

    from dmq_client import DmqError

    from . import bench_client

    if not 1 <= batch <= 1_000:
        raise click.BadParameter("must be from 1 to 1000", param_hint="--batch")
    if not 1 <= receive_batch <= 1_000:
        raise click.BadParameter("must be from 1 to 1000", param_hint="--receive-batch")
    if min(messages, producers, consumers, partitions) < 1 or latency_sends < 0:
        raise click.BadParameter("counts must be positive")
    addresses = [address.strip() for address in nodes.split(",") if address.strip()]
    try:
        results = asyncio.run(bench_client.run(
            addresses, token, messages=messages, body_bytes=body_bytes, batch=batch, producers=producers,
            consumers=consumers, receive_batch=receive_batch, partitions=partitions, latency_sends=latency_sends,
            queue=queue, keep_queue=keep_queue, show_progress=not as_json,
            log=(lambda line: None) if as_json else click.echo))
    except (DmqError, ValueError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    click.echo(json.dumps(results) if as_json else bench_client.report(results))
    if results["lost"]:
        raise SystemExit(1)


from dmq_server.cli_client import register  # noqa: E402  queue, send, receive, peek, tail, redrive, cluster

register(main)


@main.command("chaos")
@click.option("--duration", type=float, default=240.0, show_default=True, help="Seconds of workload under faults.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the fault schedule and the workload.")
@click.option("--nodes", type=int, default=3, show_default=True, help="Cluster size (3 or 5).")
@click.option("--out", "out_dir", default="chaos-out", show_default=True,
              help="Directory for history.jsonl, table.txt, result.json and the cluster's data and logs.")
@click.option("--min-each", type=int, default=2, show_default=True,
              help="Go on past --duration (up to twice) until every fault kind ran this many times.")
@click.option("--kinds", default=None, metavar="KIND[,KIND...]",
              help="Inject only these fault kinds (default: all; see docs/RELIABILITY.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the result summary as JSON instead of the table.")
def chaos(duration: float, seed: int, nodes: int, out_dir: str, min_each: int, kinds: str | None,
          as_json: bool) -> None:
    """Fault-tolerance run: a local cluster behind fault-injecting proxies, a recorded workload, faults (kill -9,
    pauses, partitions, power loss), a drain, and the total-queue checker (docs/RELIABILITY.md). Exit 1 on a
    failed check."""
    import signal

    from dmq_server.chaos import runner

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds the runner: nodes stopped, network closed

    signal.signal(signal.SIGTERM, terminate)
    if duration <= 0 or nodes not in (3, 5) or min_each < 0:
        raise click.BadParameter("--duration must be positive, --nodes 3 or 5, --min-each >= 0")
    chosen = runner.KINDS if kinds is None else tuple(kind.strip() for kind in kinds.split(",") if kind.strip())
    unknown = sorted(set(chosen) - set(runner.KINDS))
    if not chosen or unknown:
        raise click.BadParameter(f"--kinds takes a comma-separated subset of {', '.join(runner.KINDS)}"
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    result = runner.run(duration, seed, nodes=nodes, out_dir=out_dir, min_each=min_each, kinds=chosen, log=echo)
    click.echo(json.dumps(runner.summary(result)) if as_json else result.text)  # type: ignore[attr-defined]
    if not result.ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
