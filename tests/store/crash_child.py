"""Child process of the crash test: applies the workload until it is killed."""

import sys

from dmq_server.store import PartitionStore
from workload import run

if __name__ == "__main__":
    path, seed, fifo = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fifo"
    store = PartitionStore(path)
    print("ready", flush=True)
    run(store, seed, fifo)
