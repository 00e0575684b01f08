"""dmq's wire protocol: length-prefixed msgpack frames. A pure codec (bytes in, messages out), no sockets.

Frame: a 4-byte big-endian unsigned length N, then N bytes holding one msgpack map. N is at most the receiver's
frame limit (announced in the handshake); a larger length is a protocol error and the connection is closed.

Session:
    client -> {"dmq": VERSION, "token": str | None, "client": str}            the handshake, first frame
    server -> {"dmq": VERSION, "node": str, "max_frame_bytes": int, "max_in_flight": int}
              or {"error": {"code": ..., "message": ...}} and the connection closes
    client -> {"id": int, "op": str, "args": {...}}                            any number, pipelined
    server -> {"id": int, "result": ..., "leaders"?: [[partition, address], ...]}
              or {"id": int, "error": {"code", "message", "leader"?}}
Answers may come back in any order; `id` pairs them. docs/PROTOCOL.md lists every operation and error code.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Any

import msgpack

VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 4 << 20
MIN_FRAME_LIMIT = 64 << 10
MAX_REQUEST_ID = 2**63 - 1


class ErrorCode(str, enum.Enum):
    """Stable error codes. What a client should do is in docs/PROTOCOL.md."""

    PROTOCOL_ERROR = "ProtocolError"  # malformed frame or handshake; the connection is closed
    FRAME_TOO_LARGE = "FrameTooLarge"
    UNSUPPORTED_VERSION = "UnsupportedVersion"
    UNAUTHORIZED = "Unauthorized"  # missing or unknown token
    FORBIDDEN = "Forbidden"  # the token lacks the permission for this queue
    TOO_MANY_REQUESTS = "TooManyRequests"  # over the in-flight limit of a connection
    INVALID_REQUEST = "InvalidRequest"
    UNKNOWN_OPERATION = "UnknownOperation"
    QUEUE_NOT_FOUND = "QueueNotFound"
    QUEUE_ALREADY_EXISTS = "QueueAlreadyExists"
    TOO_MANY_QUEUES = "TooManyQueues"
    QUEUE_FULL = "QueueFull"
    MESSAGE_TOO_LARGE = "MessageTooLarge"
    INVALID_RECEIPT = "InvalidReceipt"
    RECEIPT_EXPIRED = "ReceiptExpired"
    NOT_LEADER = "NotLeader"  # carries "leader": the client address to try, when known
    UNAVAILABLE = "Unavailable"  # no leader or quorum right now; retry with backoff
    TIMEOUT = "Timeout"  # the outcome is unknown; retry with the same dedup ids
    INTERNAL = "Internal"


RETRYABLE = frozenset({ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT,
                       ErrorCode.TOO_MANY_REQUESTS})


class ProtocolError(Exception):
    """The byte stream cannot be a dmq session; the connection must be closed after sending `code`."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(message: dict[str, Any], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """One frame. Raises ProtocolError(FrameTooLarge) when the encoded map exceeds the limit."""
    payload = msgpack.packb(message, use_bin_type=True)
    if len(payload) > max_frame_bytes:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the limit of {max_frame_bytes}; "
                            "send smaller batches", ErrorCode.FRAME_TOO_LARGE)
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: feed() bytes as they arrive, get the complete messages (dicts) out. Each message is
    decoded with limits tied to its frame size; anything but a msgpack map is a ProtocolError."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        assert max_frame_bytes >= MIN_FRAME_LIMIT, "a frame limit below 64 KiB cannot carry one message"
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buffer = self._buffer
        buffer += data
        messages = []
        offset = 0
        size = len(buffer)
        while size - offset >= 4:
            (length,) = HEADER.unpack_from(buffer, offset)
            if length > self.max_frame_bytes:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes}",
                                    ErrorCode.FRAME_TOO_LARGE)
            end = offset + 4 + length
            if end > size:
                break
            messages.append(decode_payload(bytes(buffer[offset + 4:end])))
            offset = end
        if offset:
            del buffer[:offset]
        return messages


def decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, UnicodeDecodeError, ...)
        raise ProtocolError(f"frame is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a msgpack map")
    return message


# ---------------------------------------------------------------------------------------------- message shapes

def hello(token: str | None, client: str) -> dict[str, Any]:
    return {"dmq": VERSION, "token": token, "client": client}


def request(request_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": request_id, "op": op, "args": args}


def result(request_id: int, value: Any, leaders: dict[int, str] | None = None) -> dict[str, Any]:
    """`leaders`: partition -> client address of its leader, for the partitions whose part of the request the
    node forwarded (the client's cached leader was stale). Sent as [[partition, address], ...]: map keys are
    text on the wire."""
    if leaders:
        return {"id": request_id, "result": value, "leaders": [[p, address] for p, address in leaders.items()]}
    return {"id": request_id, "result": value}


def error(request_id: int | None, code: ErrorCode | str, message: str, leader: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": str(code.value if isinstance(code, ErrorCode) else code), "message": message}
    if leader:
        body["leader"] = leader
    if request_id is None:
        return {"error": body}
    return {"id": request_id, "error": body}


# ---------------------------------------------------------------------------------------------- identifiers

def partition_of_key(key: str, partitions: int) -> int:
    """The partition a keyed send goes to (a FIFO group, else a dedup id): zlib's crc32 of the UTF-8 bytes.
    Server and SDK route with this one function, so a retry lands where the first attempt did."""
    return zlib.crc32(key.encode()) % partitions


def message_id(partition: int, sequence: int) -> str:
    """A message id, unique within its queue: the partition and the partition's sequence number."""
    return f"{partition}.{sequence}"


def parse_message_id(text: Any) -> tuple[int, int] | None:
    """(partition, sequence) of a message id, or None when `text` is not one."""
    if not isinstance(text, str) or len(text) > 40 or not text.isascii():
        return None
    parts = text.split(".")
    if len(parts) != 2 or not text.replace(".", "").isdigit() or "" in parts:
        return None
    partition, sequence = map(int, parts)
    if sequence < 1 or sequence >= 2**63 or partition >= 2**16:
        return None
    return partition, sequence


def receipt(queue_id: int, partition: int, sequence: int, receive_count: int) -> str:
    """A receipt names the queue's incarnation (a deleted and re-created queue rejects old receipts), the
    message, and the delivery it came from (a receipt from before a redelivery is rejected)."""
    return f"{queue_id}.{partition}.{sequence}.{receive_count}"


def parse_receipt(text: Any) -> tuple[int, int, int, int] | None:
    """(queue id, partition, sequence, receive count), or None when `text` is not a receipt."""
    if not isinstance(text, str) or len(text) > 80 or not text.isascii():
        return None
    parts = text.split(".")
    # On ASCII text isdigit means [0-9]+: no sign, space, underscore or other script's digits reach int().
    if len(parts) != 4 or not text.replace(".", "").isdigit() or "" in parts:
        return None
    queue_id, partition, sequence, count = map(int, parts)
    if sequence < 1 or count < 1 or sequence >= 2**63 or count >= 2**32 or queue_id >= 2**63 or partition >= 2**16:
        return None
    return queue_id, partition, sequence, count
