"""Quiescence: idle groups on a RaftHost stop heartbeating, wake for a command, and still fail over.

pysyncobj_fixes: a leader idle for _dmq_quietAfter asks its followers to go quiet; once all have, it sleeps. A
quiet follower holds no election while the leader's node is alive (RaftHost.peer_alive).
"""

import time

from pysyncobj.monotonic import monotonic as raft_clock  # not time.monotonic: CLOCK_MONOTONIC_RAW

from .hostutil import InProcessCluster

GROUPS = 10


def _state(cl, gid):
    """Per host: (leader?, asleep?, quiet follower?, term) of the group's replica."""
    out = []
    for h, g in zip(cl.hosts, cl.groups[gid]):
        if h._running:
            out.append(h.call(lambda g=g: (g._isLeader(), g._dmq_asleep, g._dmq_quietLeader is not None,
                                           g._getTerm())))
    return out


def _all_quiet(cl):
    for gid in cl.groups:
        replicas = _state(cl, gid)
        if not all(asleep if leader else quiet for leader, asleep, quiet, _ in replicas):
            return False
    return True


def _wait(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def _frames(cl):
    return sum(h.stats()["frames_in"] for h in cl.hosts if h._running)


def _go_quiet(cl):
    """Elect the groups' leaders, commit one command in each, and wait until every group is quiet."""
    cl.wait_leaders()
    for gid in cl.groups:
        cl.leader(gid).apply((gid, 0), sync=True, timeout=10)
    assert _wait(lambda: _all_quiet(cl), 15), [_state(cl, gid) for gid in cl.groups]


def _busiest_leader(cl):
    """The index of the host that leads the most groups, and those groups (elections place leaders at random:
    with 10 groups a given host leads none in about 1 run in 60; the busiest leads at least 4)."""
    led = [[gid for gid, gs in cl.groups.items() if h.call(gs[i]._isLeader)] for i, h in enumerate(cl.hosts)]
    index = max(range(len(cl.hosts)), key=lambda i: len(led[i]))
    return index, led[index]


def _terms(cl):
    return {gid: max(term for *_, term in _state(cl, gid)) for gid in cl.groups}


def test_idle_groups_go_quiet_then_wake_for_a_command():
    with InProcessCluster(3, groups=GROUPS) as cl:
        _go_quiet(cl)
        terms = _terms(cl)

        before = _frames(cl)
        time.sleep(2.0)
        frames_per_second = (_frames(cl) - before) / 2.0
        # Awake, 10 groups x 2 followers x 20 heartbeats/s, and as many replies: 800 frames/s. Quiet, only the
        # hosts' keep-alives remain: 3 connections x 2 directions x about 10/s.
        assert frames_per_second < 150, frames_per_second
        assert _terms(cl) == terms, "a quiet group held an election"

        for gid in cl.groups:
            cl.leader(gid).apply((gid, 1), sync=True, timeout=5)
        for gid in cl.groups:
            assert cl.wait_applied(gid, 2)
            a = cl.applied(gid)
            assert a[0] == a[1] == a[2] == [(gid, 0), (gid, 1)]
        assert _terms(cl) == terms


def test_quiet_followers_elect_a_new_leader_when_the_leaders_node_goes_silent():
    """The leader's node stops answering without closing its connections (a stalled process, a cable pulled):
    its quiet followers notice through the host's keep-alives and elect a leader among themselves."""
    with InProcessCluster(3, groups=GROUPS) as cl:
        _go_quiet(cl)
        index, led = _busiest_leader(cl)
        assert led, "no host leads a group"
        terms = _terms(cl)

        cl.hosts[index].call(lambda: time.sleep(2.5), timeout=10)  # silent for 2.5 s; the connections stay open

        def moved():
            return all(cl.leader(gid) is not None and cl.leader(gid) is not cl.groups[gid][index] for gid in led)
        assert _wait(moved, 10), [_state(cl, gid) for gid in led]
        for gid in led:
            assert _terms(cl)[gid] > terms[gid]
            cl.leader(gid).apply((gid, 1), sync=True, timeout=5)
            assert cl.wait_applied(gid, 2)


def test_quiet_followers_elect_a_new_leader_when_the_leaders_node_stops():
    with InProcessCluster(3, groups=GROUPS) as cl:
        _go_quiet(cl)
        index, led = _busiest_leader(cl)
        assert led, "no host leads a group"
        cl.hosts[index].stop()
        start = time.monotonic()
        assert _wait(lambda: all(cl.leader(gid) is not None for gid in led), 10)
        elapsed = time.monotonic() - start
        # a closed connection is noticed at once: one election timeout (0.3-0.45 s) plus the pre-vote round
        assert elapsed < 3.0, elapsed
        for gid in led:
            cl.leader(gid).apply((gid, 1), sync=True, timeout=5)


def test_a_quiet_followers_election_timeout_runs_from_the_leaders_last_word():
    """A busy group's followers count the election timeout from the last heartbeat. A quiet follower learns that
    the leader's node went silent only a liveness timeout (the minimum election timeout) after its last word:
    counting from then made quiet groups fail over in 0.6-0.75 s instead of 0.3-0.45 s."""
    with InProcessCluster(3, groups=1) as cl:
        _go_quiet(cl)
        index = next(i for i, g in enumerate(cl.groups["g0"]) if not cl.hosts[i].call(g._isLeader))
        follower, host = cl.groups["g0"][index], cl.hosts[index]
        low, high = follower._SyncObj__conf.raftMinTimeout, follower._SyncObj__conf.raftMaxTimeout

        def deadline_after_silence(heard):
            """The follower's election deadline once the leader's node is silent since `heard` (None: its
            connection closed), as its quiet tick sets it."""
            assert follower._dmq_quietLeader is not None, "the follower is not quiet"
            transport = follower._SyncObj__transport
            transport.peer_alive = lambda node: False
            transport.peer_last_heard = lambda node: heard
            try:
                follower._dmq_quietTick()
                return follower._SyncObj__raftElectionDeadline
            finally:
                del transport.peer_alive, transport.peer_last_heard

        def check():
            heard = raft_clock() - low - 0.01
            deadline = deadline_after_silence(heard)
            assert heard + low <= deadline <= heard + high, (deadline - heard, low, high)

        host.call(check)
        cl.leader("g0").apply(("g0", 1), sync=True, timeout=10)  # the group is awake and serving afterwards
        assert _wait(lambda: _all_quiet(cl), 15)

        def closed():
            now = raft_clock()
            deadline = deadline_after_silence(None)
            assert now + low <= deadline <= raft_clock() + high, (deadline - now, low, high)

        host.call(closed)


def test_a_follower_without_quiescence_keeps_its_leader_heartbeating():
    """A replica on code that ignores 'quiesce' (an older version) never acknowledges it: its leader must not
    sleep, or that replica would start elections against a healthy leader."""
    with InProcessCluster(3, groups=4) as cl:
        for g in cl.groups_on(2):
            cl.hosts[2].call(lambda g=g: setattr(g, "_dmq_quiesce", False))
        cl.wait_leaders()
        for gid in cl.groups:
            cl.leader(gid).apply((gid, 0), sync=True, timeout=10)
        time.sleep(3.0)  # three times the idle time after which leaders ask for quiet
        terms = _terms(cl)
        for gid in cl.groups:
            replicas = _state(cl, gid)
            assert not any(asleep for _, asleep, _, _ in replicas), replicas
            assert not replicas[2][2], "a replica that does not quiesce went quiet"
        time.sleep(1.0)
        assert _terms(cl) == terms


def test_a_follower_woken_since_its_quiet_acknowledgement_keeps_its_leader_awake():
    """Only a follower's latest reply says whether it is quiet. A plain heartbeat (sent while the leader saw another
    node silent) wakes a quiet follower; its earlier quiet acknowledgement must not count when the last follower
    acknowledges, or the leader sleeps while that follower waits for heartbeats and then holds an election (seen
    after a follower's node stalled for a second)."""
    with InProcessCluster(3, groups=1) as cl:
        _go_quiet(cl)
        leader = cl.leader("g0")
        host = cl.hosts[cl.groups["g0"].index(leader)]

        def replies_then_asleep(replies):
            """Wake the leader, hand it these (follower index, quiet?) replies, then run its quiescence check."""
            leader._dmq_wake(raft_clock())
            followers = sorted(leader._SyncObj__otherNodes, key=str)
            last = leader._SyncObj__getCurrentLogIndex()
            for index, quiet in replies:
                reply = {"type": "next_node_idx", "next_node_idx": last + 1, "reset": False, "success": True}
                if quiet:
                    reply["quiet"] = True
                leader._SyncObj__onMessageReceived(followers[index], reply)
            leader._dmq_quietTick()
            return leader._dmq_asleep

        assert host.call(lambda: replies_then_asleep([(0, True), (1, True)])), "both quiet: the leader sleeps"
        assert not host.call(lambda: replies_then_asleep([(0, True), (0, False), (1, True)]))
