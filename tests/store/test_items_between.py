"""`items_between`: the bounded range read every scan of the store goes through."""

from __future__ import annotations

from dmq_server.store import keys
from dmq_server.store.db import DEFAULT_RESOURCES, open_partition_db
from dmq_server.store.txn import Txn, items_between


def test_a_range_with_a_temporary_upper_bound_is_read_whole(tmp_path) -> None:
    # rocksdict's iterator points into its bound without holding it: with the bound built inline (a temporary,
    # as every caller writes it) a plain db.items() stopped after the first of these 100 keys.
    db = open_partition_db(str(tmp_path / "db"), DEFAULT_RESOURCES, 1 << 20)
    try:
        for ident in range(1, 201):
            db.put(keys.message(ident), b"record %d" % ident)
        found = list(items_between(db, keys.message(1), keys.message(101)))
        assert [keys.id_of(key) for key, _ in found] == list(range(1, 101))
        assert list(Txn(db).scan(keys.message(51), keys.message(151)))[-1] == (keys.message(150), b"record 150")
    finally:
        db.close()
