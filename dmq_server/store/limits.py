"""Hard limits of one partition command; over a limit is an error, never unbounded work."""

MAX_BATCH_ENTRIES = 1_000  # messages, receipts or visibility changes in one command
MAX_RECEIVE = 1_000
MAX_KEY_BYTES = 128  # dedup ids and group keys, UTF-8 encoded
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_NAME = 128
MAX_TIME_MS = 2**62  # "now" and every deadline stay far below 2**64 when stored big-endian unsigned
MAX_VISIBILITY_MS = 43_200_000  # 12 hours
MAX_DELAY_MS = 900_000  # 15 minutes
HARD_MAX_MESSAGE_BYTES = 1_048_576
