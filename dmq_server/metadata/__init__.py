"""The metadata group's state machine: queue definitions, node liveness and who leads which group."""

from .errors import QueueAlreadyExists, QueueChanged, QueueNotFound, TooManyNodes, TooManyQueues
from .naming import is_queue_name, partition_group_id
from .placement import place_partitions
from .store import MetadataStore, MetadataStoreFactory

__all__ = [
    "MetadataStore",
    "MetadataStoreFactory",
    "QueueAlreadyExists",
    "QueueChanged",
    "QueueNotFound",
    "TooManyNodes",
    "TooManyQueues",
    "is_queue_name",
    "partition_group_id",
    "place_partitions",
]
