"""Typed errors of the partition store.

A `CommandError` rejects a whole command before any queue state changes. Per-entry outcomes of a valid batch
command (QueueFull, ReceiptExpired) are results, not exceptions: one bad receipt must not fail its neighbours.
"""

from __future__ import annotations


class CommandError(Exception):
    """A command the partition refuses as a whole; `code` is stable and travels to the client."""

    code = "CommandError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidCommand(CommandError):
    code = "InvalidCommand"


class UnknownOperation(CommandError):
    code = "UnknownOperation"


class MessageTooLarge(CommandError):
    code = "MessageTooLarge"


class InvalidReceipt(CommandError):
    code = "InvalidReceipt"


# Per-entry result codes.
QUEUE_FULL = "QueueFull"
RECEIPT_EXPIRED = "ReceiptExpired"
BATCH_MISMATCH = "BatchMismatch"  # a batch id remembered for a segment with another number of messages
