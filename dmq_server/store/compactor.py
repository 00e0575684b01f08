"""One background thread per process that compacts partitions' consumed ranges when they ask.

Consumed messages leave tombstones below the cursors. Reads never scan them (they start at the cursors), but
they take disk space and slow RocksDB's own compactions until compacted away. `compact_range` releases the GIL,
so this runs beside the Raft tick threads without stalling them.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger(__name__)


class Compactable(Protocol):
    path: str

    def compact_consumed(self) -> None: ...


class Compactor:
    def __init__(self, max_pending: int = 10_000) -> None:
        self._pending: OrderedDict[int, Compactable] = OrderedDict()
        self._max_pending = max_pending
        self._wake = threading.Condition()
        self._stopped = False
        self.compactions = 0
        self._thread = threading.Thread(target=self._run, name="dmq-compactor", daemon=True)
        self._thread.start()

    def request(self, store: Compactable) -> None:
        """Ask for a compaction of `store`; repeated requests before it runs collapse into one."""
        with self._wake:
            if len(self._pending) < self._max_pending:
                self._pending[id(store)] = store
                self._wake.notify()

    def cancel(self, store: Compactable) -> None:
        with self._wake:
            self._pending.pop(id(store), None)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                _, store = self._pending.popitem(last=False)
            try:
                store.compact_consumed()
                self.compactions += 1
            except Exception:  # a failed compaction costs space, never correctness: log it and carry on
                log.exception("compaction of %s failed", store.path)

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout)
