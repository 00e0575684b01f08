"""dmq_client: the Python SDK of dmq. It depends only on the wire protocol, never on dmq_server. `Client`
(blocking) and `AsyncClient` (asyncio) share one implementation; docs/CLIENT.md is the guide."""

from .aio import AsyncClient
from .client import Client
from .errors import (BatchError, DmqError, Forbidden, FrameTooLarge, InternalError, InvalidReceipt, InvalidRequest,
                     MessageTooLarge, NotLeader, ProtocolViolation, QueueAlreadyExists, QueueFull, QueueNotFound,
                     ReceiptExpired, Timeout, TooManyQueues, TooManyRequests, Unauthorized, Unavailable,
                     UnknownOperation, UnsupportedVersion)
from .message import AsyncMessage, Message
from .model import PartitionInfo, PeekedMessage, QueueInfo, SendEntry

__all__ = [
    "AsyncClient", "AsyncMessage", "BatchError", "Client", "DmqError", "Forbidden", "FrameTooLarge",
    "InternalError", "InvalidReceipt", "InvalidRequest", "Message", "MessageTooLarge", "NotLeader",
    "PartitionInfo", "PeekedMessage", "ProtocolViolation", "QueueAlreadyExists", "QueueFull", "QueueInfo",
    "QueueNotFound", "ReceiptExpired", "SendEntry", "Timeout", "TooManyQueues", "TooManyRequests", "Unauthorized",
    "Unavailable", "UnknownOperation", "UnsupportedVersion",
]
