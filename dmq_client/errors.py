"""The exceptions of dmq_client, one per protocol error code (docs/PROTOCOL.md says what each means)."""

from __future__ import annotations

from .protocol import ErrorCode


class DmqError(Exception):
    """Base of every dmq error. `code` is the protocol's stable error code."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable = False

    def __init__(self, message: str, *, leader: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.leader = leader  # NotLeader: the client address of the leader, when the server knew it


class ProtocolViolation(DmqError):
    code = ErrorCode.PROTOCOL_ERROR


class FrameTooLarge(DmqError):
    code = ErrorCode.FRAME_TOO_LARGE


class UnsupportedVersion(DmqError):
    code = ErrorCode.UNSUPPORTED_VERSION


class Unauthorized(DmqError):
    code = ErrorCode.UNAUTHORIZED


class Forbidden(DmqError):
    code = ErrorCode.FORBIDDEN


class TooManyRequests(DmqError):
    code = ErrorCode.TOO_MANY_REQUESTS
    retryable = True


class InvalidRequest(DmqError):
    code = ErrorCode.INVALID_REQUEST


class UnknownOperation(DmqError):
    code = ErrorCode.UNKNOWN_OPERATION


class QueueNotFound(DmqError):
    code = ErrorCode.QUEUE_NOT_FOUND


class QueueAlreadyExists(DmqError):
    code = ErrorCode.QUEUE_ALREADY_EXISTS


class TooManyQueues(DmqError):
    code = ErrorCode.TOO_MANY_QUEUES


class QueueFull(DmqError):
    code = ErrorCode.QUEUE_FULL


class MessageTooLarge(DmqError):
    code = ErrorCode.MESSAGE_TOO_LARGE


class InvalidReceipt(DmqError):
    code = ErrorCode.INVALID_RECEIPT


class ReceiptExpired(DmqError):
    code = ErrorCode.RECEIPT_EXPIRED


class NotLeader(DmqError):
    code = ErrorCode.NOT_LEADER
    retryable = True


class Unavailable(DmqError):
    """No leader or quorum, or no node reachable; raised by the SDK once its retries are spent."""

    code = ErrorCode.UNAVAILABLE
    retryable = True


class Timeout(DmqError):
    """No answer in time: the outcome is unknown (a send may have been enqueued; retry with its dedup id)."""

    code = ErrorCode.TIMEOUT
    retryable = True


class InternalError(DmqError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[str, type[DmqError]] = {cls.code.value: cls for cls in (
    ProtocolViolation, FrameTooLarge, UnsupportedVersion, Unauthorized, Forbidden, TooManyRequests,
    InvalidRequest, UnknownOperation, QueueNotFound, QueueAlreadyExists, TooManyQueues, QueueFull,
    MessageTooLarge, InvalidReceipt, ReceiptExpired, NotLeader, Unavailable, Timeout, InternalError)}


def error_from(body: object) -> DmqError:
    """The exception for an error body {"code", "message", "leader"?} as the server sent it."""
    if not isinstance(body, dict):
        return ProtocolViolation(f"malformed error from the server: {body!r:.200}")
    cls = _BY_CODE.get(str(body.get("code")), InternalError)
    leader = body.get("leader")
    return cls(str(body.get("message", body.get("code"))), leader=leader if isinstance(leader, str) else None)


class BatchError(DmqError):
    """Some entries of a batch failed (the others took effect). `results[i]` is entry i's outcome: its value
    (a message id for send_batch, None for delete_batch) or the DmqError it got; `errors` maps index -> error."""

    def __init__(self, message: str, results: list[object]) -> None:
        super().__init__(message)
        self.results = results
        self.errors = {i: r for i, r in enumerate(results) if isinstance(r, DmqError)}
        first = next(iter(self.errors.values()), None)
        self.code = first.code if first is not None else ErrorCode.INTERNAL
        self.retryable = bool(self.errors) and all(e.retryable for e in self.errors.values())


def raise_for_batch(what: str, results: list[object]) -> list[object]:
    """`results` when no entry failed; else a BatchError naming how many did and the first error."""
    failures = [r for r in results if isinstance(r, DmqError)]
    if failures:
        raise BatchError(f"{what}: {len(failures)} of {len(results)} entries failed; the first: "
                         f"{type(failures[0]).__name__}: {failures[0].message}", results)
    return results
