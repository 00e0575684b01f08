"""Request validation: every operation's fields type- and range-checked into a typed request, without I/O.

`parse(op, args)` returns one of the request classes below or raises RequestError with a stable code and a
message that says what to fix. Message-level checks that depend on a queue's configuration (size against
max_message_bytes, FIFO rules) reuse the partition store's own parser, so the frontend and the state machine
cannot disagree.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

from dmq_client.protocol import ErrorCode, parse_message_id, parse_receipt
from dmq_server.store import config as store_config
from dmq_server.store import limits as store_limits

QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}\Z")
MAX_WAIT_MS = 20_000
RECEIVE_BYTES_BUDGET = 3 << 20  # message records in one receive answer: under the default 4 MiB frame
MAX_REDRIVE = 100_000
MAX_PARTITION = 1023
REPLICATION_FACTORS = (1, 3, 5)
ACK_MODES = ("quorum", "leader")


class RequestError(Exception):
    def __init__(self, code: ErrorCode, message: str, leader: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.leader = leader


# Codes of the Raft group and the store that the protocol names differently.
_INNER_CODES = {"InvalidCommand": ErrorCode.INVALID_REQUEST, "CommandTooLarge": ErrorCode.INVALID_REQUEST,
                "UnknownOperation": ErrorCode.INTERNAL,
                "QueueChanged": ErrorCode.UNAVAILABLE}  # an update raced another one: computed again on retry


def error_code(code: str) -> ErrorCode:
    """The protocol's code for an error code of the Raft group, the store or the metadata store."""
    if code in _INNER_CODES:
        return _INNER_CODES[code]
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL


def invalid(message: str) -> RequestError:
    return RequestError(ErrorCode.INVALID_REQUEST, message)


@dataclasses.dataclass(frozen=True, slots=True)
class QueueAttributes:
    """What create_queue accepts. Store attributes apply per partition (max_messages is split over them)."""

    partitions: int = 1
    replication: int | None = None  # None: min(3, cluster size), decided when the queue is placed
    ack_mode: str = "quorum"
    receive_wait_ms: int = 0
    dead_letter_queue: str | None = None
    store: tuple[tuple[str, Any], ...] = ()  # validated partition-store attributes, sorted by name

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in ("partitions", "replication", "ack_mode",
                                                         "receive_wait_ms", "dead_letter_queue")}
        values.update(self.store)
        return values


@dataclasses.dataclass(frozen=True, slots=True)
class CreateQueue:
    name: str
    attributes: QueueAttributes


@dataclasses.dataclass(frozen=True, slots=True)
class UpdateQueue:
    name: str
    changes: tuple[tuple[str, Any], ...]  # (attribute, new value or None for its default), sorted


@dataclasses.dataclass(frozen=True, slots=True)
class QueueOp:
    """delete_queue, get_queue, lookup: just a queue name."""

    op: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class PurgeQueue:
    name: str
    purge_id: str | None = None  # idempotency key: a retry within the dedup window purges nothing sent since


@dataclasses.dataclass(frozen=True, slots=True)
class ListQueues:
    prefix: str


class OutgoingMessage(NamedTuple):
    """A message to enqueue. A tuple in the order of the partition store's enqueue entry, so a send's messages go
    into its command as they are (a NamedTuple: built per message, it costs a fifth of a frozen dataclass)."""

    body: bytes
    attributes: dict[str, Any] | None
    delay_ms: int | None
    dedup_id: str | None
    group: str | None

    def size(self) -> int:
        return len(self.body) + 64 * len(self.attributes or ()) + 256  # an upper bound of its share of a command


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    queue: str
    messages: tuple[OutgoingMessage, ...]
    partition: int | None
    batch_id: str | None = None  # idempotency key of the whole send; requires `partition`


@dataclasses.dataclass(frozen=True, slots=True)
class Receive:
    queue: str
    max_messages: int
    wait_ms: int | None  # None: the queue's receive_wait_ms
    visibility_ms: int | None  # None: the queue's visibility timeout
    partition: int | None
    max_bytes: int = RECEIVE_BYTES_BUDGET  # of message records in the answer (it must fit a frame)


@dataclasses.dataclass(frozen=True, slots=True)
class Peek:
    """Messages read without receiving them: no lease, no receive count, nothing replicated."""

    queue: str
    max_messages: int
    partition: int | None  # None: every partition, oldest first
    max_bytes: int = RECEIVE_BYTES_BUDGET
    after: int = 0  # in `partition`: only messages with a higher sequence number (paging)


class Receipt(NamedTuple):
    queue_id: int
    partition: int
    sequence: int
    receive_count: int
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Delete:
    queue: str
    receipts: tuple[Receipt | None, ...]  # None: not a receipt (reported per entry as InvalidReceipt)


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeVisibility:
    queue: str
    entries: tuple[tuple[Receipt | None, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Redrive:
    queue: str  # the dead-letter queue
    to: str | None  # None: each message goes back to the queue it was dead-lettered from
    max_messages: int


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterStatus:
    pass


# ---------------------------------------------------------------------------------------------- field checks

def _args(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise invalid("'args' must be a map")
    return args


def _shown(value: Any) -> str:
    """A short repr for an error message; never raises (repr of an int over 4300 digits does)."""
    return repr(value)[:40] if isinstance(value, (str, bytes)) else type(value).__name__


def _only(args: dict[str, Any], op: str, allowed: tuple[str, ...]) -> None:
    unknown = [name for name in args if name not in allowed]
    if unknown:
        raise invalid(f"{op}: unknown field {_shown(unknown[0])}; fields: {', '.join(allowed) or 'none'}")


def queue_name(value: Any, field: str = "queue") -> str:
    if not isinstance(value, str) or not QUEUE_NAME.match(value):
        raise invalid(f"'{field}' must be a queue name of 1 to 80 letters, digits, '-' or '_'")
    return value


def _int(args: dict[str, Any], field: str, low: int, high: int, default: int | None = None) -> int | None:
    value = args.get(field, default)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise invalid(f"'{field}' must be an integer from {low} to {high}")
    return value


def text_field(value: Any, field: str, *, max_bytes: int = store_limits.MAX_KEY_BYTES) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value.encode("utf-8", "surrogatepass")) <= max_bytes:
        raise invalid(f"'{field}' must be text of 1 to {max_bytes} UTF-8 bytes")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise invalid(f"'{field}' must be valid UTF-8 text")
    return value


def _list(args: dict[str, Any], field: str, limit: int) -> list[Any]:
    value = args.get(field)
    if not isinstance(value, list) or not 0 < len(value) <= limit:
        raise invalid(f"'{field}' must be a list of 1 to {limit} entries")
    return value


def _attributes(value: Any) -> dict[str, Any] | None:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) > store_limits.MAX_ATTRIBUTES:
        raise invalid(f"'attributes' must be a map of at most {store_limits.MAX_ATTRIBUTES} entries")
    for name, item in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= store_limits.MAX_ATTRIBUTE_NAME:
            raise invalid(f"attribute names must be text of 1 to {store_limits.MAX_ATTRIBUTE_NAME} characters")
        if isinstance(item, int) and not isinstance(item, bool) and not -2**63 <= item < 2**64:
            raise invalid(f"attribute {name!r} is an integer out of the 64-bit range")
        if not isinstance(item, (str, bytes, int, float, bool)):
            raise invalid(f"attribute {name!r} must be text, bytes, an integer, a float or a boolean")
    return value


def _receipt(value: Any) -> Receipt | None:
    parsed = parse_receipt(value)
    return None if parsed is None else Receipt(*parsed, text=value)


# ---------------------------------------------------------------------------------------------- operations

# Attributes fixed when a queue is created: they decide where its data lives and how it is ordered.
FIXED_ATTRIBUTES = ("partitions", "replication", "fifo")
CHANGEABLE_ATTRIBUTES = ("ack_mode", "receive_wait_ms", "dead_letter_queue", *store_config.INT_RANGES)


def parse_attributes(value: Any, *, max_partitions: int) -> QueueAttributes:
    attributes = _attribute_fields(value, max_partitions=max_partitions)
    if dict(attributes.store).get("max_receives") and attributes.dead_letter_queue is None:
        raise invalid("'max_receives' needs a 'dead_letter_queue' to move messages to")
    if attributes.dead_letter_queue is not None and not dict(attributes.store).get("max_receives"):
        raise invalid("a 'dead_letter_queue' needs 'max_receives' (1 to 1000): receives before a message moves")
    return attributes


def _attribute_fields(value: Any, *, max_partitions: int) -> QueueAttributes:
    """Each attribute checked alone; null (or absent) is the default."""
    if value is not None and not isinstance(value, dict):
        raise invalid("'attributes' must be a map")
    values = _args(value)
    _only(values, "attributes", (*FIXED_ATTRIBUTES, *CHANGEABLE_ATTRIBUTES))
    replication = values.get("replication")
    if replication is not None and (type(replication) is not int or replication not in REPLICATION_FACTORS):
        raise invalid("'replication' must be 1, 3 or 5")
    ack_mode = values.get("ack_mode")
    if ack_mode is not None and ack_mode not in ACK_MODES:
        raise invalid("'ack_mode' must be 'quorum' (acknowledged once a majority has it on disk) or 'leader'")
    dead_letter_queue = values.get("dead_letter_queue")
    if dead_letter_queue is not None:
        queue_name(dead_letter_queue, "dead_letter_queue")
    store: dict[str, Any] = {}
    if values.get("fifo") is not None:
        if not isinstance(values["fifo"], bool):
            raise invalid("'fifo' must be true or false")
        store["fifo"] = values["fifo"]
    for name, (low, high) in store_config.INT_RANGES.items():
        if values.get(name) is not None:
            store[name] = _int(values, name, low, high)
    return QueueAttributes(
        partitions=_int(values, "partitions", 1, max_partitions, 1) or 1,
        replication=replication,
        ack_mode=ack_mode or "quorum",
        receive_wait_ms=_int(values, "receive_wait_ms", 0, MAX_WAIT_MS, 0) or 0,
        dead_letter_queue=dead_letter_queue,
        store=tuple(sorted(store.items())),
    )


def parse_attribute_changes(value: Any) -> tuple[tuple[str, Any], ...]:
    """update_queue's attributes: the changeable ones, each checked alone (null: back to the default). How they
    combine with the queue's other attributes is checked by `updated_attributes`."""
    if not isinstance(value, dict) or not value:
        raise invalid("'attributes' must be a map of at least one attribute to change")
    fixed = sorted(str(name) for name in value if name in FIXED_ATTRIBUTES)
    if fixed:
        raise invalid(f"{', '.join(map(repr, fixed))} cannot change once a queue exists; create another queue")
    _attribute_fields(value, max_partitions=1)
    return tuple(sorted(value.items()))


def updated_attributes(current: dict[str, Any], changes: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """A queue's stored attributes with `changes` applied, in the form create_queue stores them, checked whole."""
    merged = {name: value for name, value in {**current, **dict(changes)}.items() if value is not None}
    attributes = parse_attributes(merged, max_partitions=max(1, int(current.get("partitions", 1))))
    attrs = attributes.to_dict()
    attrs["replication"] = current.get("replication")
    return attrs


def _message(value: Any) -> OutgoingMessage:
    if type(value) is dict and len(value) == 1:  # the common message, a body alone: no field to check but it
        body = value.get("body")
        if type(body) is bytes:
            return OutgoingMessage(body, None, None, None, None)
    if not isinstance(value, dict):
        raise invalid("each message must be a map with at least 'body'")
    _only(value, "message", ("body", "attributes", "delay_ms", "dedup_id", "group"))
    body = value.get("body")
    if isinstance(body, str):
        try:
            body = body.encode()
        except UnicodeEncodeError:
            raise invalid("a message 'body' given as text must be valid UTF-8") from None
    if not isinstance(body, bytes):
        raise invalid("a message 'body' must be bytes (or text, sent as UTF-8)")
    return OutgoingMessage(
        body=body,
        attributes=_attributes(value.get("attributes")),
        delay_ms=_int(value, "delay_ms", 0, store_limits.MAX_DELAY_MS),
        dedup_id=text_field(value.get("dedup_id"), "dedup_id"),
        group=text_field(value.get("group"), "group"),
    )


def _partition(args: dict[str, Any]) -> int | None:
    return _int(args, "partition", 0, MAX_PARTITION)


def parse(op: Any, raw_args: Any, *, max_partitions: int = 64) -> Any:
    """The typed request for `op`, or RequestError."""
    args = _args(raw_args)
    if op == "send":
        _only(args, op, ("queue", "messages", "partition", "batch_id"))
        messages = tuple(_message(entry) for entry in _list(args, "messages", store_limits.MAX_BATCH_ENTRIES))
        partition = _partition(args)
        batch_id = text_field(args.get("batch_id"), "batch_id")
        if batch_id is not None and partition is None:
            raise invalid("'batch_id' needs an explicit 'partition': a retry must reach the partition that "
                          "remembers the batch")
        return Send(queue_name(args.get("queue")), messages, partition, batch_id)
    if op == "receive":
        _only(args, op, ("queue", "max_messages", "wait_ms", "visibility_timeout_ms", "partition", "max_bytes"))
        return Receive(
            queue=queue_name(args.get("queue")),
            max_messages=_int(args, "max_messages", 1, store_limits.MAX_RECEIVE, 1) or 1,
            wait_ms=_int(args, "wait_ms", 0, MAX_WAIT_MS),
            visibility_ms=_int(args, "visibility_timeout_ms", 0, store_limits.MAX_VISIBILITY_MS),
            partition=_partition(args),
            max_bytes=_int(args, "max_bytes", 1, RECEIVE_BYTES_BUDGET, RECEIVE_BYTES_BUDGET) or RECEIVE_BYTES_BUDGET,
        )
    if op == "peek":
        _only(args, op, ("queue", "max_messages", "partition", "max_bytes", "after"))
        partition, after = _partition(args), 0
        if args.get("after") is not None:
            position = parse_message_id(args["after"])
            if position is None or position[0] > MAX_PARTITION or partition not in (None, position[0]):
                raise invalid("'after' must be the id of a message (\"partition.sequence\") of the partition peeked")
            partition, after = position
        return Peek(
            queue=queue_name(args.get("queue")),
            max_messages=_int(args, "max_messages", 1, store_limits.MAX_RECEIVE, 1) or 1,
            partition=partition,
            max_bytes=_int(args, "max_bytes", 1, RECEIVE_BYTES_BUDGET, RECEIVE_BYTES_BUDGET) or RECEIVE_BYTES_BUDGET,
            after=after,
        )
    if op == "delete":
        _only(args, op, ("queue", "receipts"))
        receipts = tuple(_receipt(entry) for entry in _list(args, "receipts", store_limits.MAX_BATCH_ENTRIES))
        return Delete(queue_name(args.get("queue")), receipts)
    if op == "change_visibility":
        _only(args, op, ("queue", "entries"))
        entries = []
        for entry in _list(args, "entries", store_limits.MAX_BATCH_ENTRIES):
            if not isinstance(entry, list) or len(entry) != 2:
                raise invalid("each entry must be [receipt, visibility_timeout_ms]")
            timeout = entry[1]
            if type(timeout) is not int or not 0 <= timeout <= store_limits.MAX_VISIBILITY_MS:
                raise invalid(f"visibility_timeout_ms must be an integer from 0 to {store_limits.MAX_VISIBILITY_MS}")
            entries.append((_receipt(entry[0]), timeout))
        return ChangeVisibility(queue_name(args.get("queue")), tuple(entries))
    if op == "create_queue":
        _only(args, op, ("name", "attributes"))
        return CreateQueue(queue_name(args.get("name"), "name"),
                           parse_attributes(args.get("attributes"), max_partitions=max_partitions))
    if op == "update_queue":
        _only(args, op, ("name", "attributes"))
        return UpdateQueue(queue_name(args.get("name"), "name"), parse_attribute_changes(args.get("attributes")))
    if op in ("delete_queue", "get_queue", "lookup"):
        _only(args, op, ("name",))
        return QueueOp(op, queue_name(args.get("name"), "name"))
    if op == "purge_queue":
        _only(args, op, ("name", "purge_id"))
        return PurgeQueue(queue_name(args.get("name"), "name"), text_field(args.get("purge_id"), "purge_id"))
    if op == "list_queues":
        _only(args, op, ("prefix",))
        prefix = args.get("prefix", "")
        if not isinstance(prefix, str) or len(prefix) > 80:
            raise invalid("'prefix' must be text of at most 80 characters")
        return ListQueues(prefix)
    if op == "redrive":
        _only(args, op, ("queue", "to", "max_messages"))
        to = args.get("to")
        return Redrive(queue_name(args.get("queue")), None if to is None else queue_name(to, "to"),
                       _int(args, "max_messages", 1, MAX_REDRIVE, 1000) or 1000)
    if op == "cluster_status":
        _only(args, op, ())
        return ClusterStatus()
    known = ", ".join(OPERATIONS)
    raise RequestError(ErrorCode.UNKNOWN_OPERATION, f"unknown operation {_shown(op)}; operations: {known}")


OPERATIONS = ("create_queue", "update_queue", "delete_queue", "get_queue", "list_queues", "purge_queue", "send",
              "receive", "peek", "delete", "change_visibility", "redrive", "lookup", "cluster_status")

# The permission each operation needs on its queue ("admin", "send" or "receive"); None: any principal.
PERMISSION = {
    "create_queue": "admin", "update_queue": "admin", "delete_queue": "admin", "purge_queue": "admin",
    "get_queue": None, "send": "send", "receive": "receive", "peek": "receive", "delete": "receive",
    "change_visibility": "receive", "redrive": "admin", "lookup": None, "list_queues": None, "cluster_status": None,
}
