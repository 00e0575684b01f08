"""The partition store: one queue partition's state machine over its own RocksDB."""

from .config import QueueConfig
from .db import SharedResources
from .errors import CommandError, InvalidCommand, InvalidReceipt, MessageTooLarge, UnknownOperation
from .partition import PartitionStore, PartitionStoreFactory, StoreOptions

__all__ = [
    "CommandError",
    "InvalidCommand",
    "InvalidReceipt",
    "MessageTooLarge",
    "PartitionStore",
    "PartitionStoreFactory",
    "QueueConfig",
    "SharedResources",
    "StoreOptions",
    "UnknownOperation",
]
