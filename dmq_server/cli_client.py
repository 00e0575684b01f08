"""The `dmq` commands that talk to a running cluster through dmq_client: queue, send, receive, peek, tail,
redrive, cluster. dmq_server.cli registers them on its `main` group with `register(main)`.

Every command takes the connection options (--nodes, --token, --tls-ca, --timeout). Errors of the cluster
become one line on stderr, `error: <code>: <message>`, and an exit code per kind (EXIT_CODES_HELP).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import IO, Any, TypeVar

import click

from dmq_client import (BatchError, Client, DmqError, Forbidden, Message, NotLeader, PeekedMessage, QueueInfo,
                        QueueNotFound, SendEntry, Timeout, TooManyRequests, Unauthorized, Unavailable)
from dmq_client.connection import split_address

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_NODES = "127.0.0.1:7400"
DEFAULT_TIMEOUT = 30.0
MAX_BATCH = 1_000  # the protocol's per-request message limit

EXIT_ERROR = 1  # an operation failed (InvalidRequest, QueueFull, ...), or Ctrl-C / a declined prompt
EXIT_USAGE = 2  # click's own: a bad option or argument
EXIT_NOT_FOUND = 3  # QueueNotFound
EXIT_UNAVAILABLE = 4  # Unavailable, Timeout, NotLeader, TooManyRequests: unreachable, no leader, no answer
EXIT_AUTH = 5  # Unauthorized (token), Forbidden (permission)

EXIT_CODES_HELP = """\b
Commands that talk to a cluster take --nodes HOST:PORT[,...] (env DMQ_NODES,
default 127.0.0.1:7400), --token (env DMQ_TOKEN), --tls-ca FILE and
--timeout SECONDS (env DMQ_TIMEOUT, default 30: how long failed requests
are retried). Errors print one line on stderr, "error: <code>: <message>".

\b
Exit codes:
  0  success
  1  the operation failed (InvalidRequest, QueueAlreadyExists, QueueFull,
     MessageTooLarge, ...), or it was aborted (Ctrl-C, a declined prompt)
  2  usage error (a bad option or argument)
  3  not found (QueueNotFound)
  4  cluster unavailable: no node reachable, no leader or quorum, no
     answer in time (Unavailable, Timeout, NotLeader, TooManyRequests)
  5  authentication or permission (Unauthorized, Forbidden)"""


# ---------------------------------------------------------------------------------------------- errors


def exit_code_for(exc: DmqError) -> int:
    if isinstance(exc, BatchError) and exc.errors:
        exc = next(iter(exc.errors.values()))
    if isinstance(exc, QueueNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, (Unavailable, Timeout, NotLeader, TooManyRequests)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, (Unauthorized, Forbidden)):
        return EXIT_AUTH
    return EXIT_ERROR


def error_name(exc: DmqError) -> str:
    """The protocol's error code (docs/PROTOCOL.md); for a BatchError, its first failed entry's."""
    if isinstance(exc, BatchError) and exc.errors:
        exc = next(iter(exc.errors.values()))
    code = getattr(exc, "code", None)
    return str(getattr(code, "value", None) or type(exc).__name__)


class CommandError(click.ClickException):
    """A DmqError as the CLI reports it: `error: <code>: <message>` on stderr and its exit code."""

    def __init__(self, name: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.name = name
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.name}: {self.message}", err=True, file=file)


def _reason(exc: OSError) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _unreachable(nodes: Sequence[str], timeout: float) -> dict[str, str]:
    """The nodes that refuse (or do not answer) a TCP connection, with why."""
    failed: dict[str, str] = {}
    for address in nodes:
        try:
            with socket.create_connection(split_address(address), timeout=timeout):
                pass
        except OSError as exc:
            failed[address] = _reason(exc)
    return failed


# ---------------------------------------------------------------------------------------------- connection


@dataclasses.dataclass
class Settings:
    """The common options of every command that talks to a cluster."""

    nodes: list[str]
    token: str | None
    tls: ssl.SSLContext | None
    timeout: float

    def client(self) -> Client:
        return Client(self.nodes, self.token, self.tls, request_timeout=min(10.0, self.timeout),
                      retry_seconds=self.timeout, connect_timeout=min(5.0, self.timeout))

    def error(self, exc: DmqError) -> CommandError:
        message = exc.message
        if not isinstance(exc, Unavailable):
            pass
        elif "connect" in message or "closed" in message:
            failed = _unreachable(self.nodes, min(2.0, self.timeout))
            if len(failed) == len(self.nodes):
                reasons = sorted(set(failed.values()))
                why = reasons[0] if len(reasons) == 1 else "; ".join(f"{a}: {r}" for a, r in failed.items())
                message = (f"no node reachable at {', '.join(self.nodes)} ({why}); is dmq-server running "
                           f"there? (set --nodes or DMQ_NODES)")
            elif "handshake" in message and self.tls is None:
                message += " (does the node expect TLS? use --tls-ca)"
        return CommandError(error_name(exc), message, exit_code_for(exc))


def _parse_nodes(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    nodes = [part.strip() for part in value.split(",") if part.strip()]
    if not nodes:
        raise click.BadParameter("name at least one node as HOST:PORT")
    for address in nodes:
        try:
            split_address(address)
        except ValueError:
            raise click.BadParameter(f"{address!r} is not HOST:PORT") from None
    return nodes


def _tls_context(ctx: click.Context, param: click.Parameter, value: str | None) -> ssl.SSLContext | None:
    if value is None:
        return None
    try:
        return ssl.create_default_context(cafile=value)
    except (ssl.SSLError, OSError) as exc:
        raise click.BadParameter(f"cannot load CA certificates from {value}: {exc}") from None


_CONNECTION_OPTIONS = [
    click.option("--nodes", default=DEFAULT_NODES, show_default=True, envvar="DMQ_NODES", show_envvar=True,
                 callback=_parse_nodes, metavar="HOST:PORT[,HOST:PORT...]",
                 help="Client addresses of one or more nodes (any node serves any request)."),
    click.option("--token", default=None, envvar="DMQ_TOKEN", show_envvar=True,
                 help="The principal's token (not needed on nodes that allow anonymous access)."),
    click.option("--tls-ca", "tls", default=None, metavar="FILE", callback=_tls_context,
                 type=click.Path(exists=True, dir_okay=False),
                 help="Connect with TLS, trusting the CA certificates (PEM) in FILE."),
    click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, envvar="DMQ_TIMEOUT",
                 show_envvar=True, type=click.FloatRange(min=0.1), metavar="SECONDS",
                 help="How long failed requests are retried (unreachable node, no leader) before giving up."),
]

_JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def with_client(func: F) -> F:
    """Add the connection options to a command, and call it with a connected Client as its first argument;
    a DmqError it raises becomes a one-line error and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, nodes: list[str], token: str | None, tls: ssl.SSLContext | None, timeout: float,
                **kwargs: Any) -> Any:
        settings = Settings(nodes, token, tls, timeout)
        try:
            with contextlib.closing(settings.client()) as client:
                return func(client, *args, **kwargs)
        except DmqError as exc:
            raise settings.error(exc) from None
        except BrokenPipeError:  # the reader went away (`dmq receive q | head -1`): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(EXIT_ERROR) from None

    for option in reversed(_CONNECTION_OPTIONS):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- output


def format_table(headers: Sequence[str] | None, rows: Iterable[Sequence[Any]], indent: str = "") -> str:
    """Left-aligned columns separated by two spaces, under a header line unless `headers` is None; a None cell
    prints as "-"."""
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    if headers is not None:
        cells.insert(0, [str(h) for h in headers])
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in cells)


def _timestamp(ms: int | None) -> str:
    if ms is None:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms / 1000:g} s" if ms >= 1_000 else f"{ms} ms"


def _jsonable(value: Any) -> Any:
    """Attribute values for JSON: bytes become {"base64": "..."}."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(_jsonable(value), indent=indent, ensure_ascii=False)


def message_json(message: Message | PeekedMessage) -> str:
    """One line: id, receive_count, enqueued_at, group, attributes, then the receipt of a received message or the
    state and visible_at of a peeked one, and `body` (UTF-8 text) or `body_base64` (anything else)."""
    record: dict[str, Any] = {"id": message.id, "receive_count": message.receive_count,
                              "enqueued_at": message.enqueued_at, "group": message.group,
                              "attributes": message.attributes}
    if isinstance(message, PeekedMessage):
        record.update(state=message.state, visible_at=message.visible_at)
    else:
        record["receipt"] = message.receipt
    try:
        record["body"] = message.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(message.body).decode("ascii")
    return _dumps(record)


def _attribute_text(value: Any) -> str:
    return repr(value) if isinstance(value, (bytes, bytearray)) else str(value)


def message_text(message: Message | PeekedMessage) -> str:
    """A header line (id, receive count, enqueue time, a peeked message's state, group, attributes), then the
    body: text when it is UTF-8, else its Python bytes repr."""
    header = [message.id, f"receive_count={message.receive_count}",
              f"enqueued={_timestamp(message.enqueued_at)}"]
    if isinstance(message, PeekedMessage):
        header.append(f"state={message.state}")
        if message.visible_at is not None:
            header.append(f"visible={_timestamp(message.visible_at)}")
    if message.group is not None:
        header.append(f"group={message.group!r}")
    header += [f"{key}={_attribute_text(value)}" for key, value in message.attributes.items()]
    try:
        body = message.body.decode("utf-8")
    except UnicodeDecodeError:
        body = repr(message.body)
    return "  ".join(header) + "\n" + body + "\n"


def print_messages(messages: Sequence[Message | PeekedMessage], as_json: bool) -> None:
    for message in messages:
        click.echo(message_json(message) if as_json else message_text(message))


def queue_info_dict(info: QueueInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def describe_text(info: QueueInfo, with_stats: bool) -> str:
    lines = [format_table(None, [("name", info.name), ("id", info.id),
                                 ("created", _timestamp(info.created_at))])]
    attributes = []
    for key in sorted(info.attributes):
        value = info.attributes[key]
        if key.endswith("_ms") and isinstance(value, int) and not isinstance(value, bool) and value >= 1_000:
            value = f"{value} ({_duration(value)})"
        attributes.append((key, value))
    heading = "attributes (those not listed have their defaults)" if attributes else "attributes: defaults"
    lines += ["", heading, format_table(None, attributes, indent="  ")]
    lines += ["", "partitions", format_table(["PARTITION", "LEADER", "REPLICAS"],
                                             [(p.partition, p.leader, ",".join(p.replicas) or None)
                                              for p in info.partitions], indent="  ")]
    if with_stats:
        stats = info.stats
        if stats:
            rows = [(key, stats[key]) for key in ("count", "ready", "in_flight", "delayed", "bytes",
                                                  "dead_letters", "oldest_age_ms") if key in stats]
            rows += [(key, value) for key, value in sorted(stats.items()) if key not in dict(rows)]
            lines += ["", "stats", format_table(None, rows, indent="  ")]
        else:
            lines += ["", "stats: no partition answered"]
        if info.unavailable_partitions:
            lines.append(f"unavailable partitions: {info.unavailable_partitions} (stats leave them out)")
    return "\n".join(lines)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


# ---------------------------------------------------------------------------------------------- queue


@click.group("queue")
def queue_group() -> None:
    """Create, update, list, describe, delete and purge queues."""


_SECONDS = click.FloatRange(min=0)


def _changeable_options(command: Any) -> Any:
    """The options of the attributes update_queue can change, shared by `queue create` and `queue update`."""
    options = [
        click.option("--max-messages", type=click.IntRange(min=1),
                     help="Messages the queue holds, split over its partitions (default 1,000,000)."),
        click.option("--max-message-bytes", type=click.IntRange(min=1),
                     help="Largest message: body + encoded attributes (default 262,144)."),
        click.option("--visibility-timeout", type=_SECONDS, metavar="SECONDS",
                     help="How long a received message stays invisible (default 30)."),
        click.option("--retention", type=_SECONDS, metavar="SECONDS",
                     help="How long a message is kept (default 4 days)."),
        click.option("--delay", type=_SECONDS, metavar="SECONDS", help="Delay of every new message (default 0)."),
        click.option("--receive-wait", type=_SECONDS, metavar="SECONDS",
                     help="Long poll of a receive that gives no wait (default 0, at most 20)."),
        click.option("--dead-letter-queue", metavar="NAME", help="Where messages received --max-receives times go."),
        click.option("--max-receives", type=click.IntRange(min=0),
                     help="Receives after which a message is dead-lettered (needs --dead-letter-queue)."),
        click.option("--ack-mode", type=click.Choice(["quorum", "leader"]),
                     help="When a send is acknowledged: once a majority (quorum, the default) or the leader has it "
                          "on disk."),
        click.option("--dedup-window", type=_SECONDS, metavar="SECONDS",
                     help="How long dedup ids and batch ids are remembered (default 300)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _changeable_attributes(options: dict[str, Any]) -> dict[str, Any]:
    """Protocol attributes from the options given (times sent as ms); those not given are left out."""
    attributes = {
        "max_messages": options["max_messages"], "max_message_bytes": options["max_message_bytes"],
        "visibility_timeout_ms": _ms(options["visibility_timeout"]), "retention_ms": _ms(options["retention"]),
        "delay_ms": _ms(options["delay"]), "receive_wait_ms": _ms(options["receive_wait"]),
        "dead_letter_queue": options["dead_letter_queue"], "max_receives": options["max_receives"],
        "ack_mode": options["ack_mode"], "dedup_window_ms": _ms(options["dedup_window"]),
    }
    return {name: value for name, value in attributes.items() if value is not None}


def _print_queue(info: QueueInfo, as_json: bool, done: str) -> None:
    if as_json:
        click.echo(_dumps(queue_info_dict(info), indent=2))
    else:
        count = len(info.partitions)
        click.echo(f"{done} queue {info.name} (id {info.id}, {count} partition{'s' * (count != 1)})")


@queue_group.command("create")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions (default 1).")
@click.option("--fifo", is_flag=True, default=None, help="FIFO delivery per message group.")
@click.option("--replication", type=click.IntRange(min=1),
              help="Replicas per partition: 1, 3 or 5 (default 3 on clusters of 3 or more nodes, else 1).")
@_changeable_options
@_JSON_OPTION
@with_client
def queue_create(client: Client, name: str, partitions: int | None, fifo: bool | None, replication: int | None,
                 as_json: bool, **options: Any) -> None:
    """Create queue NAME. Options left out take the cluster's defaults; times are in seconds (sent as ms).
    Creating an existing queue with the same attributes succeeds and changes nothing; with other attributes it
    fails with QueueAlreadyExists (`dmq queue update` changes them)."""
    if options["dead_letter_queue"] is not None and not options["max_receives"]:
        raise click.UsageError("--dead-letter-queue needs --max-receives N (N >= 1)")
    if options["max_receives"] and options["dead_letter_queue"] is None:
        raise click.UsageError("--max-receives needs --dead-letter-queue NAME")
    fixed = {"partitions": partitions, "fifo": fifo, "replication": replication}
    attributes = {**{k: v for k, v in fixed.items() if v is not None}, **_changeable_attributes(options)}
    _print_queue(client.create_queue(name, **attributes), as_json, "created")


@queue_group.command("update")
@click.argument("name")
@_changeable_options
@click.option("--no-dead-letter-queue", is_flag=True,
              help="Stop dead-lettering: clears the dead-letter queue and max receives.")
@_JSON_OPTION
@with_client
def queue_update(client: Client, name: str, no_dead_letter_queue: bool, as_json: bool, **options: Any) -> None:
    """Change attributes of queue NAME; those not given keep their values, and its messages stay. The
    partitions apply the change within about a second. Partitions, replication and FIFO cannot change."""
    attributes: dict[str, Any] = _changeable_attributes(options)
    if no_dead_letter_queue:
        if "dead_letter_queue" in attributes or "max_receives" in attributes:
            raise click.UsageError("--no-dead-letter-queue excludes --dead-letter-queue and --max-receives")
        attributes.update(dead_letter_queue=None, max_receives=None)
    if not attributes:
        raise click.UsageError("give at least one attribute to change (see --help)")
    _print_queue(client.update_queue(name, **attributes), as_json, "updated")


@queue_group.command("list")
@click.option("--prefix", default="", help="Only names starting with this.")
@_JSON_OPTION
@with_client
def queue_list(client: Client, prefix: str, as_json: bool) -> None:
    """The names of the queues (on which the token has any permission), sorted, one per line."""
    names = client.list_queues(prefix)
    if as_json:
        click.echo(_dumps(names))
    else:
        for name in names:
            click.echo(name)


@queue_group.command("describe")
@click.argument("name")
@_JSON_OPTION
@with_client
def queue_describe(client: Client, name: str, as_json: bool) -> None:
    """Queue NAME: its attributes, its partitions with their leader and replicas, and message counts (stats
    over the partitions that answered)."""
    info = client.get_queue(name)
    if as_json:
        click.echo(_dumps(queue_info_dict(info), indent=2))
    else:
        click.echo(describe_text(info, with_stats=True))


@queue_group.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@with_client
def queue_delete(client: Client, name: str, yes: bool) -> None:
    """Delete queue NAME and every message in it. Asks first unless --yes."""
    if not yes:
        click.confirm(f"Delete queue {name} and all its messages?", abort=True, err=True)
    client.delete_queue(name)
    click.echo(f"deleted queue {name}")


@queue_group.command("purge")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_JSON_OPTION
@with_client
def queue_purge(client: Client, name: str, yes: bool, as_json: bool) -> None:
    """Delete every message of queue NAME (the queue stays). Asks first unless --yes."""
    if not yes:
        click.confirm(f"Delete every message of queue {name}?", abort=True, err=True)
    purged = client.purge_queue(name)
    click.echo(_dumps({"purged": purged}) if as_json else f"purged {purged} message{'s' * (purged != 1)} "
                                                           f"from {name}")


# ---------------------------------------------------------------------------------------------- send


def _parse_attribute(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        attributes[key] = value
    return attributes


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of a binary stream without their line ends; empty lines are skipped."""
    for line in stream:
        line = line.rstrip(b"\n").rstrip(b"\r")
        if line:
            yield line


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _batches(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@click.command("send")
@click.argument("queue")
@click.argument("bodies", nargs=-1, metavar="[BODY...]")
@click.option("--file", "file", type=click.File("rb"), metavar="PATH",
              help="Send the lines of PATH (- for stdin), one message per line.")
@click.option("--whole", is_flag=True, help="With --file or stdin: the whole input is one message.")
@click.option("--batch", default=100, show_default=True, type=click.IntRange(1, MAX_BATCH),
              help="Messages per send request.")
@click.option("--attribute", "-a", "attributes", multiple=True, metavar="KEY=VALUE",
              callback=_parse_attribute, help="A text attribute of every message (repeatable).")
@click.option("--group", help="Message group of every message (FIFO queues deliver a group in order).")
@click.option("--dedup-id", help="Deduplication id: a second send with it within the queue's dedup window "
                                 "enqueues nothing. Only when sending one message.")
@click.option("--delay", type=_SECONDS, default=0, metavar="SECONDS",
              help="Deliver no earlier than this (not on FIFO queues).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the number of messages sent.")
@_JSON_OPTION
@with_client
def send(client: Client, queue: str, bodies: tuple[str, ...], file: IO[bytes] | None, whole: bool, batch: int,
         attributes: dict[str, str], group: str | None, dedup_id: str | None, delay: float, quiet: bool,
         as_json: bool) -> None:
    """Send messages to QUEUE: each BODY argument is a message; or the lines of --file; or, with BODY `-` or
    no BODY while stdin is not a terminal, the lines of stdin (empty lines are skipped; --whole sends the
    whole input as one message). Messages go out --batch at a time.

    Prints the id of each message, one per line (`-` when the queue acknowledges before assigning ids:
    ack_mode leader); --quiet prints only the count; --json prints {"sent": n, "ids": [...]}. If a batch
    fails, the ids of the messages sent so far are printed and the error follows."""
    if bodies == ("-",):
        bodies = ()
        file = sys.stdin.buffer
    if bodies and file is not None:
        raise click.UsageError("give BODY arguments or --file, not both")
    if file is None and not bodies:
        if _stdin_is_tty():
            raise click.UsageError("nothing to send: give BODY arguments, --file PATH, or pipe lines to "
                                   "stdin")
        file = sys.stdin.buffer
    if whole and file is None:
        raise click.UsageError("--whole applies to --file or stdin")
    items: Iterable[bytes]
    if file is not None:
        items = [file.read()] if whole else _lines(file)
    else:
        items = [body.encode("utf-8", "surrogateescape") for body in bodies]
    if dedup_id is not None:
        items = list(items)
        if len(items) != 1:
            raise click.UsageError(f"--dedup-id applies to one message, not {len(items)}")

    ids: list[str | None] = []
    for chunk in _batches(items, batch):
        entries = [SendEntry(body, attributes or None, dedup_id, group, delay) for body in chunk]
        try:
            sent = client.send_batch(queue, entries)
        except BatchError as exc:
            sent = [r for r in exc.results if not isinstance(r, DmqError)]
            failures = list(exc.errors.values())
            if not sent and all(type(e) is type(failures[0]) for e in failures):
                failure: DmqError = failures[0]  # the request failed as a whole: report its error itself
            else:
                _report_ids(sent, quiet, as_json)
                ids += sent
                failure = exc
            failure.message += (f" ({len(ids)} message{'s' * (len(ids) != 1)} sent in all)" if ids
                                else " (nothing was sent)")
            raise failure from None
        except DmqError as exc:
            if ids:
                exc.message += f" ({len(ids)} message{'s' * (len(ids) != 1)} sent before)"
            raise
        _report_ids(sent, quiet, as_json)
        ids += sent
    if as_json:
        click.echo(_dumps({"sent": len(ids)} if quiet else {"sent": len(ids), "ids": ids}))
    elif quiet:
        click.echo(len(ids))
    if not ids:
        click.echo("nothing sent: the input had no messages", err=True)


def _report_ids(ids: Sequence[str | None], quiet: bool, as_json: bool) -> None:
    if quiet or as_json:
        return
    for message_id in ids:
        click.echo("-" if message_id is None else message_id)


# ---------------------------------------------------------------------------------------------- receive, tail


@click.command("receive")
@click.argument("queue")
@click.option("--max", "max_messages", default=10, show_default=True, type=click.IntRange(1, MAX_BATCH),
              help="At most this many messages.")
@click.option("--wait", default=0.0, show_default=True, type=click.FloatRange(0, 20), metavar="SECONDS",
              help="Long poll: wait up to this long for a first message.")
@click.option("--visibility-timeout", type=_SECONDS, metavar="SECONDS",
              help="Keep the messages invisible this long (default: the queue's); matters with --keep.")
@click.option("--keep", is_flag=True,
              help="Do not delete them: they are received again once their visibility timeout passes.")
@_JSON_OPTION
@with_client
def receive(client: Client, queue: str, max_messages: int, wait: float, visibility_timeout: float | None,
            keep: bool, as_json: bool) -> None:
    """Receive messages from QUEUE, print them, and delete them (unless --keep).

    Text output: a line with the id, receive count, enqueue time, group and attributes, then the body (as text
    when it is UTF-8, else as a bytes repr) and an empty line. --json: one JSON object per message and line
    (id, receive_count, enqueued_at ms, group, attributes, receipt, and "body" as text, or "body_base64" when
    the body is not UTF-8). Messages are deleted only after they are printed."""
    messages = client.receive(queue, max_messages=max_messages, wait_seconds=wait,
                              visibility_timeout=visibility_timeout)
    print_messages(messages, as_json)
    if not messages and not as_json:
        click.echo("no messages", err=True)
    if messages and not keep:
        client.delete_batch(queue, [m.receipt for m in messages])


@click.command("peek")
@click.argument("queue")
@click.option("--max", "max_messages", default=10, show_default=True, type=click.IntRange(1, MAX_BATCH),
              help="At most this many messages.")
@click.option("--partition", type=click.IntRange(min=0), help="Only this partition (default: every partition).")
@click.option("--after", metavar="MESSAGE_ID",
              help="Page on: the messages that follow this one in its partition (the last id a peek printed).")
@_JSON_OPTION
@with_client
def peek(client: Client, queue: str, max_messages: int, partition: int | None, after: str | None,
         as_json: bool) -> None:
    """Show the oldest messages of QUEUE in any state without receiving them: nothing changes (no lease, no
    receive count), so a peek never delays, redelivers or dead-letters a message. With several partitions, the
    oldest of them all by enqueue time.

    Output as for `dmq receive`, with each message's state (ready, in_flight or delayed) and, for in-flight
    and delayed ones, when it becomes receivable (`visible_at` in ms with --json) instead of a receipt."""
    try:
        messages = client.peek(queue, max_messages, partition=partition, after=after)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--after") from None
    print_messages(messages, as_json)
    if not messages and not as_json:
        click.echo("no messages", err=True)


@click.command("tail")
@click.argument("queue")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new messages until Ctrl-C (or --count).")
@click.option("--count", "-n", type=click.IntRange(min=1), help="Stop after printing this many messages.")
@click.option("--wait", type=click.FloatRange(0.1, 20), metavar="SECONDS",
              help="Long poll of each receive (default 10 with --follow, else 1: the tail ends after a "
                   "receive that waited this long for nothing).")
@click.option("--batch", default=100, show_default=True, type=click.IntRange(1, MAX_BATCH),
              help="Messages per receive.")
@click.option("--visibility-timeout", type=_SECONDS, metavar="SECONDS",
              help="Visibility timeout of each receive (default: the queue's).")
@_JSON_OPTION
@with_client
def tail(client: Client, queue: str, follow: bool, count: int | None, wait: float | None,
         batch: int, visibility_timeout: float | None, as_json: bool) -> None:
    """Print the messages of QUEUE as they are received, deleting each batch once printed. Without --follow it
    stops when the queue has nothing to receive; with --follow it long-polls until Ctrl-C (exit 0) or --count
    messages. Output as for `dmq receive`. To look without taking anything, use `dmq peek`."""
    wait = wait if wait is not None else (10.0 if follow else 1.0)
    printed = 0
    try:
        while count is None or printed < count:
            want = batch if count is None else min(batch, count - printed)
            messages = client.receive(queue, max_messages=want, wait_seconds=wait,
                                      visibility_timeout=visibility_timeout)
            print_messages(messages, as_json)
            printed += len(messages)
            if messages:
                client.delete_batch(queue, [m.receipt for m in messages])
            elif not follow:
                break
    except KeyboardInterrupt:
        click.echo(f"stopped after {printed} message{'s' * (printed != 1)}", err=True)


# ---------------------------------------------------------------------------------------------- redrive


@click.command("redrive")
@click.argument("dlq", metavar="DLQ")
@click.option("--to", help="Move every message to this queue (default: each back to the queue it came from).")
@click.option("--max", "max_messages", default=1_000, show_default=True, type=click.IntRange(1, 100_000),
              help="At most this many messages.")
@_JSON_OPTION
@with_client
def redrive(client: Client, dlq: str, to: str | None, max_messages: int, as_json: bool) -> None:
    """Move messages from the dead-letter queue DLQ back to the queues they came from (or all to --to).
    Messages whose source queue no longer exists are skipped (left in DLQ, invisible for 60 s)."""
    result = client.redrive(dlq, to, max_messages)
    if as_json:
        click.echo(_dumps(result))
    else:
        click.echo(f"moved {result.get('moved', 0)}, skipped {result.get('skipped', 0)}")


# ---------------------------------------------------------------------------------------------- cluster


@click.group("cluster")
def cluster_group() -> None:
    """The cluster's nodes and partition leaders."""


def _heartbeat(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms} ms ago" if ms < 10_000 else f"{ms / 1000:.0f} s ago"


def status_text(status: dict[str, Any]) -> str:
    leader = status.get("metadata_leader") or "none (no quorum?)"
    version = status.get("metadata_version")
    lines = [format_table(None, [("answered by", status.get("node")),
                                 ("metadata leader", f"{leader} (metadata version {version})")])]
    nodes = status.get("nodes", [])
    lines += ["", f"nodes ({len(nodes)})", format_table(
        ["ID", "CLIENT", "RAFT", "ALIVE", "LAST HEARTBEAT", "LEADING"],
        [(n.get("id"), n.get("client"), n.get("raft"), "yes" if n.get("alive") else "NO",
          _heartbeat(n.get("last_heartbeat_ms_ago")), n.get("leading")) for n in nodes], indent="  ")]
    partitions = status.get("partitions", [])
    lines += ["", f"partitions ({len(partitions)})"]
    if partitions:
        lines.append(format_table(
            ["QUEUE", "PARTITION", "GROUP", "LEADER", "REPLICAS"],
            [(p.get("queue"), p.get("partition"), p.get("group"), p.get("leader") or "NONE",
              ",".join(p.get("replicas") or []) or None) for p in partitions], indent="  "))
    return "\n".join(lines)


@cluster_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the raw cluster_status answer as JSON.")
@with_client
def cluster_status(client: Client, as_json: bool) -> None:
    """The cluster as the node asked sees it: every node (client and Raft address, alive, last heartbeat,
    partitions it leads), the metadata leader, and every partition (queue, partition, Raft group, leader,
    replicas).

    Replication lag per follower is not part of this status: each node's metrics endpoint has it
    (dmq_partition_follower_lag_entries at http://HOST:9400/metrics by default)."""
    status = client.cluster_status()
    click.echo(_dumps(status, indent=2) if as_json else status_text(status))


# ---------------------------------------------------------------------------------------------- registration


COMMANDS: list[click.Command] = [queue_group, send, receive, peek, tail, redrive, cluster_group]


def register(group: click.Group) -> None:
    """Add the commands to `group` (the `dmq` command) and the exit codes to its help."""
    for command in COMMANDS:
        group.add_command(command)
    if EXIT_CODES_HELP not in (group.epilog or ""):
        group.epilog = f"{group.epilog}\n\n{EXIT_CODES_HELP}" if group.epilog else EXIT_CODES_HELP
