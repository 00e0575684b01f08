"""Hard limits of the metadata state: it is kept whole in memory and shipped whole to nodes."""

MAX_QUEUES = 100_000  # ceiling of a create_queue's max_queues
MAX_PARTITIONS = 1_024  # per queue
MAX_REPLICAS = 5  # per partition
MAX_ATTRS_BYTES = 16_384  # a queue's attrs, msgpack-encoded
MAX_NODES = 1_000  # nodes ever heard from (heartbeats)
MAX_LEADING = 65_536  # groups one heartbeat reports
MAX_IDENTIFIER = 128  # characters of a node id or group id
