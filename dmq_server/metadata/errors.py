"""Typed errors of the metadata store. Malformed commands raise the store's InvalidCommand / UnknownOperation."""

from __future__ import annotations

from dmq_server.store.errors import CommandError


class QueueAlreadyExists(CommandError):
    """A queue of that name exists with other attributes or another partition count."""

    code = "QueueAlreadyExists"


class QueueNotFound(CommandError):
    code = "QueueNotFound"


class QueueChanged(CommandError):
    """An update computed from attributes that another update has changed since."""

    code = "QueueChanged"


class TooManyQueues(CommandError):
    code = "TooManyQueues"


class TooManyNodes(CommandError):
    code = "TooManyNodes"
