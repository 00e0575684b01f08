"""Typed errors of the metadata store. Malformed commands raise the store's InvalidCommand / UnknownOperation."""

from __future__ import annotations

from dmq_server.store.errors import CommandError


class QueueAlreadyExists(CommandError):
    """A queue of that name exists with other attributes or another partition count."""

    code = "QueueAlreadyExists"


class QueueNotFound(CommandError):
    code = "QueueNotFound"


class TooManyQueues(CommandError):
    code = "TooManyQueues"


class TooManyNodes(CommandError):
    code = "TooManyNodes"
