"""A real 3-process cluster on 127.0.0.1 with the fixes and the RocksDB log: replication, leader kill -9, restart
from the log, big (chunked) commands."""

import pytest

from .cluster import Cluster

pytestmark = pytest.mark.timeout(240)


def test_cluster_kill_leader_and_restart_from_log(tmp_path):
    with Cluster(tmp_path, args=["--mode", "dmq"]) as c:
        leader = c.wait_leader()
        r = leader.call("push", n=30, size=100)
        assert r["n_errors"] == 0
        r = leader.call("load", wait=90, cmds=300, msgs=20, msg_size=100, window=50, timeout=60)
        assert r["n_failed"] == 0 and len(r["acked"]) == 300
        assert c.wait_applied(330)
        applied = [nd.call("applied")["applied"] for nd in c.nodes]
        assert applied[0] == applied[1] == applied[2] and len(applied[0]) == 330

        # pipelined load, then kill -9 the leader while commands are in flight
        leader.proc.stdin.write('{"op": "load", "cmds": 2000, "msgs": 10, "msg_size": 100, "window": 200, '
                                '"timeout": 30}\n')
        leader.proc.stdin.flush()
        import time
        time.sleep(0.6)
        leader.kill9()
        survivors = [nd for nd in c.nodes if nd is not leader]
        new_leader = c.wait_leader(exclude=(leader,))
        r = new_leader.call("push", n=10, size=100)
        assert r["n_errors"] == 0
        time.sleep(0.5)
        after = [nd.call("applied")["applied"] for nd in survivors]
        assert after[0] == after[1]
        assert after[0][:330] == applied[0]  # everything acknowledged before is still there
        statuses = [nd.call("status") for nd in survivors]
        assert all(s["truncations"] == 0 for s in statuses), statuses

        # restart the killed node from its RocksDB log: it re-applies its committed entries and catches up
        leader.start()
        assert c.wait_applied(len(after[0]), nodes=[leader], timeout=60)
        time.sleep(0.3)
        final = [nd.call("applied")["applied"] for nd in c.nodes]
        assert final[0] == final[1] == final[2]


def test_cluster_big_commands_across_chunk_boundaries(tmp_path):
    sizes = [70_000, 65_536 * 2 - 40, 65_536 * 2 - 30, 65_536 * 2 - 20, 65_536 * 2 - 10, 300_000, 1_000_000]
    with Cluster(tmp_path, args=["--mode", "dmq"]) as c:
        leader = c.wait_leader()
        r = leader.call("big", wait=180, sizes=sizes, timeout=20)
        assert [x[3] for x in r["results"]] == [None] * len(sizes), r["results"]
        assert c.wait_applied(len(sizes))
