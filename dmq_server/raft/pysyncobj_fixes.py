"""Every override of pysyncobj 0.3.17 internals that dmq needs, in one place.

dmq depends on the published pysyncobj package, unmodified. What it needs changed is done here, in two ways:

1. :class:`SyncObj`, a subclass of ``pysyncobj.SyncObj`` that dmq's Raft groups derive from. It replaces a few of
   pysyncobj's private (name-mangled) methods with corrected copies of the 0.3.17 code. The subclass is *named*
   ``SyncObj`` on purpose: inside its body ``self.__raftLog`` mangles to ``self._SyncObj__raftLog`` exactly as in
   pysyncobj, so the copies read like (and diff cleanly against) the originals. Every change is marked ``DMQ:``.
   Plain ``pysyncobj.SyncObj`` objects are not affected.

   * ``__onMessageReceived`` (follower side of ``append_entries``, leader side of ``next_node_idx``):
       - Raft §5.3 truncation: entries that match (same index and term) are kept; the log is truncated only from
         the first conflicting entry, and never at or below the commit index (stock 0.3.17 deleted everything after
         ``prevLogIdx`` on every message, so a stale/resent ``append_entries`` dropped entries the follower had
         already acknowledged and the leader had counted as committed).
       - The follower advances its commit index only over entries verified against this leader in this message
         (``min(leaderCommit, index of last new entry)``), not over an unverified tail.
       - The leader never rewinds ``nextIndex`` on an acknowledgement (stock set it back to the acked index, which
         re-sent in-flight entries); on a rejection it goes back to the follower's hint (never past its own last
         index + 1). A hint at or below the follower's match index means the follower lost its log (a wiped or
         replaced disk): its match index is lowered too, so the leader resends, through a snapshot if needed.
       - Every ``next_node_idx`` reply to ``append_entries`` is queued, and sent only after the log has been
         fsynced (group commit: one fsync for all the ``append_entries`` handled in one poll).
       - A corrupt chunked transmission is dropped with a rejection instead of raising in the tick thread.
   * ``__sendAppendEntries``: the chunked-transmission finish condition compares against the length of the
     pickled entry (stock compared with the raw command length, so a command just below a multiple of
     ``appendEntriesBatchSizeBytes`` produced a premature ``finish`` and an unpickling error on the follower).
   * ``__getEntries``: delegates to the log's ``getEntries`` when it has one (:class:`dmq_server.raft.log.RaftLog`
     reads only the requested range instead of slicing the whole tail on every send).
   * ``__loadDumpFile``: when the log already holds the snapshot's last two entries (same index, term, command),
     only the entries before them are dropped. Stock cleared the whole log in that case too, so a crash between
     writing a snapshot and compacting the log lost the entries after the snapshot, acknowledged ones included.
   * ``__applyLogEntries``: applies at most ``_dmq_applyMaxEntries`` entries or ``_dmq_applyMaxSeconds`` per tick
     (stock applied every committed entry in one tick), and starts after what the state machine already applied
     (``_dmq_resumeIndex``): stock walked the whole log again after every restart.
   * ``__onBecomeLeader`` and ``_onTick`` are wrapped (not copied) to fsync the log: at the top of every tick,
     before the leader counts its own entries toward commit (so "committed" means "durable on a majority"), and
     right after a new leader appended its no-op (a one-node group computes its commit in the same tick).
   * ``transferLeadership`` and ``_checkCommandsToApply`` are wrapped so that a leader that sent ``timeout_now``
     appends no new command until it steps down (or an election timeout passes): entries appended meanwhile made
     the target's log the shorter one, and the other voters refused it (Raft thesis §3.10). The same wrapper
     dates the commands pysyncobj forwards to a new leader at a leader change; one whose reply does not come
     within ``_dmq_forwardReplyTimeout`` fails with UNKNOWN_OUTCOME (stock waited for it forever).
   * Pre-vote (Raft thesis §9.6): the ``_onTick`` wrapper holds a ``pre_vote`` round before any election, and
     ``__onMessageReceived`` answers it without changing a term. A replica cut off from the others no longer
     deposes a healthy leader with a higher term when the network heals.
   * Quiescence: a leader idle for ``_dmq_quietAfter`` marks its heartbeats ``quiesce``; followers that match its
     whole, committed log go quiet and acknowledge it, and once all have, the leader stops heartbeating. A quiet
     follower holds no election while the transport says the leader's node is alive (``peer_alive``). The
     ``_onTick`` wrapper, ``__onMessageReceived`` (both sides) and ``__sendAppendEntries`` carry it.

2. :func:`install`, process-wide and idempotent, called explicitly by dmq's startup code (never on import):

   * pickle protocol 4 for everything pysyncobj pickles (commands, network messages, default snapshots):
     ``pysyncobj/pickle.py`` hard-codes protocol 2, which stores ``bytes`` as latin-1 strings (~1.5x bigger and
     ~100x slower). Any Python 3 unpickles protocol 4, so nodes with and without the override interoperate.
   * ``pysyncobj.syncobj.createJournal`` accepts a ready journal object in ``SyncObjConf.journalFile`` (dmq passes a
     :class:`~dmq_server.raft.log.RaftLog`); for ``None`` or a path it behaves as before.
   * Fingerprint guard: :data:`FINGERPRINTS` holds a hash of the exact source of every pysyncobj function this
     module overrides or whose structure it relies on. :func:`install` refuses to run when the installed pysyncobj
     differs (an upgrade changed what we override); ``tests/raft/test_fingerprints.py`` fails loudly too.

Not changed (known, see docs of the tests / report): the per-tick send-time budget shared by all followers, the
unbounded TCP write buffer (no flow control), and the batching pace (``appendEntriesPeriod``).
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import logging
import os
import threading

import pysyncobj.journal as _ps_journal
import pysyncobj.pickle as pickle
import pysyncobj.serializer as _ps_serializer
import pysyncobj.syncobj as _ps_syncobj
import pysyncobj.tcp_connection as _ps_tcp
from pysyncobj.config import FAIL_REASON  # noqa: F401  (used by the copied code paths)
from pysyncobj.monotonic import monotonic as monotonicTime
from pysyncobj.serializer import SERIALIZER_STATE  # noqa: F401
from pysyncobj.syncobj import _RAFT_STATE, _bchr, _COMMAND_TYPE, iteritems  # noqa: F401
from pysyncobj.version import VERSION as _PYSYNCOBJ_VERSION

logger = logging.getLogger(__name__)

__all__ = ["install", "installed", "SyncObj", "PICKLE_PROTOCOL", "FINGERPRINTS", "check_fingerprints",
           "current_fingerprints", "PysyncobjMismatch"]

PYSYNCOBJ_VERSION = "0.3.17"
PICKLE_PROTOCOL = 4

xrange = range
_StockSyncObj = _ps_syncobj.SyncObj
_stock_createJournal = _ps_syncobj.createJournal


class PysyncobjMismatch(RuntimeError):
    """The installed pysyncobj is not the exact code these overrides were written against."""


# ---------------------------------------------------------------------------------------------------------------
# Fingerprint guard

def _targets():
    S = _StockSyncObj
    return {
        # overridden (copied and corrected, or wrapped)
        "SyncObj.__onMessageReceived": S._SyncObj__onMessageReceived,
        "SyncObj.__sendAppendEntries": S._SyncObj__sendAppendEntries,
        "SyncObj.__getEntries": S._SyncObj__getEntries,
        "SyncObj.__loadDumpFile": S._SyncObj__loadDumpFile,
        "SyncObj.__onBecomeLeader": S._SyncObj__onBecomeLeader,
        "SyncObj._onTick": S._onTick,
        "SyncObj.transferLeadership": S.transferLeadership,
        "journal.createJournal": _ps_journal.createJournal,
        "pickle.dumps": pickle.dumps,
        "pickle.dump": pickle.dump,
        # relied on: the hook points and contracts the overrides assume
        "SyncObj.__init__": S.__init__,
        "SyncObj._checkCommandsToApply": S._checkCommandsToApply,
        "SyncObj._autoTickThread": S._autoTickThread,
        "SyncObj.doTick": S.doTick,
        "SyncObj.__applyLogEntries": S._SyncObj__applyLogEntries,
        "SyncObj.__tryLogCompaction": S._SyncObj__tryLogCompaction,
        "SyncObj.__deleteEntriesFrom": S._SyncObj__deleteEntriesFrom,
        "SyncObj.__deleteEntriesTo": S._SyncObj__deleteEntriesTo,
        "SyncObj.__sendNextNodeIdx": S._SyncObj__sendNextNodeIdx,
        "SyncObj.__setCurrentTerm": S._SyncObj__setCurrentTerm,
        "SyncObj.__getPrevLogIndexTerm": S._SyncObj__getPrevLogIndexTerm,
        "SyncObj.__connectedToAnyone": S._SyncObj__connectedToAnyone,
        "SyncObj.__generateRaftTimeout": S._SyncObj__generateRaftTimeout,
        "SyncObj.__onLeaderChanged": S._SyncObj__onLeaderChanged,
        "journal.Journal": _ps_journal.Journal,
        "tcp_connection.TcpConnection.send": _ps_tcp.TcpConnection.send,
    }


def _source_hash(obj) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode("utf-8")).hexdigest()[:16]


def current_fingerprints() -> dict:
    """Hashes of the installed pysyncobj's source for everything listed in :data:`FINGERPRINTS`."""
    fp = {name: _source_hash(obj) for name, obj in _targets().items()}
    fp["pickle.__protocol"] = str(getattr(pickle, "_dmq_stock_protocol", getattr(pickle, "__protocol", None)))
    fp["VERSION"] = _PYSYNCOBJ_VERSION
    return fp


#: sha256[:16] of ``inspect.getsource`` of pysyncobj 0.3.17, as published on PyPI.
FINGERPRINTS = {
    "SyncObj.__onMessageReceived": "ddfe34b6c0282179",
    "SyncObj.__sendAppendEntries": "9cb9073128c392fa",
    "SyncObj.__getEntries": "e29c4b33293b2101",
    "SyncObj.__loadDumpFile": "ec66e83905de703b",
    "SyncObj.__onBecomeLeader": "5a3fd97bc17dc1cf",
    "SyncObj._onTick": "cc9eb08232d005ba",
    "SyncObj.transferLeadership": "c3ac67963962d9aa",
    "journal.createJournal": "9ea9e463ae2a0b8b",
    "pickle.dumps": "9d907d0e2ec81365",
    "pickle.dump": "8632a4ffab1a6a8a",
    "SyncObj.__init__": "09df12cd7fd7d727",
    "SyncObj._checkCommandsToApply": "a386a8079361d204",
    "SyncObj._autoTickThread": "0edc1a54be46aed2",
    "SyncObj.doTick": "bef78c2ba06d784b",
    "SyncObj.__applyLogEntries": "073db677773b5a2d",
    "SyncObj.__tryLogCompaction": "c2f8a0ec14cc7312",
    "SyncObj.__deleteEntriesFrom": "3b23c411bb903d36",
    "SyncObj.__deleteEntriesTo": "b7b29988856a66b3",
    "SyncObj.__sendNextNodeIdx": "68aaeefc267b8896",
    "SyncObj.__setCurrentTerm": "0ad5bf456ac06bd3",
    "SyncObj.__getPrevLogIndexTerm": "6766914806ae2311",
    "SyncObj.__connectedToAnyone": "acd40e9e3ac6c4cc",
    "SyncObj.__generateRaftTimeout": "92ed37d3620e781a",
    "SyncObj.__onLeaderChanged": "53b7685e1d897887",
    "journal.Journal": "8375f2a66c8600e6",
    "tcp_connection.TcpConnection.send": "cb29077c32990abb",
    "pickle.__protocol": "2",
    "VERSION": PYSYNCOBJ_VERSION,
}


def check_fingerprints() -> list:
    """Names whose installed source differs from :data:`FINGERPRINTS` (empty list: all match)."""
    cur = current_fingerprints()
    return sorted(k for k in set(FINGERPRINTS) | set(cur) if FINGERPRINTS.get(k) != cur.get(k))


# ---------------------------------------------------------------------------------------------------------------
# Process-wide part

_install_lock = threading.Lock()
_installed = False


def _createJournal(journalFile=None):
    # DMQ: a ready journal object (dmq's RaftLog) is used as is; None / a path behave as in pysyncobj.
    if isinstance(journalFile, _ps_journal.Journal):
        return journalFile
    return _stock_createJournal(journalFile)


def install(verify: bool = True) -> None:
    """Apply the process-wide overrides (idempotent). Raises :class:`PysyncobjMismatch` if pysyncobj changed."""
    global _installed
    with _install_lock:
        if _installed:
            return
        if verify:
            bad = check_fingerprints()
            if bad:
                raise PysyncobjMismatch(
                    "installed pysyncobj differs from the %s code dmq's overrides were written for: %s"
                    % (PYSYNCOBJ_VERSION, ", ".join(bad)))
        # pysyncobj.pickle's dumps/dump read the module global '__protocol' at call time (a module-level name,
        # so no class-private mangling applies).
        pickle._dmq_stock_protocol = getattr(pickle, "__protocol")
        setattr(pickle, "__protocol", PICKLE_PROTOCOL)
        _ps_syncobj.createJournal = _createJournal
        _ps_serializer.atomicReplace = durable_replace
        _installed = True


def installed() -> bool:
    return _installed


def _uninstall_for_tests() -> None:
    """Undo :func:`install` (tests only)."""
    global _installed
    with _install_lock:
        if not _installed:
            return
        setattr(pickle, "__protocol", pickle._dmq_stock_protocol)
        del pickle._dmq_stock_protocol
        _ps_syncobj.createJournal = _stock_createJournal
        _ps_serializer.atomicReplace = _stock_atomicReplace
        _installed = False


_stock_atomicReplace = _ps_serializer.atomicReplace


def durable_replace(source: str, target: str) -> bool:
    """pysyncobj's atomicReplace (a bare rename) made durable: the file's bytes, then the rename itself (an fsync
    of the directory), reach the disk before pysyncobj compacts the log on the strength of the new snapshot. A
    power loss could otherwise keep the compaction and lose the snapshot (used for local and received ones)."""
    with open(source, "rb") as file:
        os.fsync(file.fileno())
    os.replace(source, target)
    directory = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True


# ---------------------------------------------------------------------------------------------------------------
# The corrected SyncObj. NB: the class must be called 'SyncObj' (see module docstring).

class SyncObj(_StockSyncObj):
    """``pysyncobj.SyncObj`` with dmq's fixes. Call :func:`install` before creating one."""

    def __init__(self, *args, **kwargs):
        if not _installed:
            raise RuntimeError("dmq_server.raft.pysyncobj_fixes.install() must be called before creating a SyncObj")
        # Set before the base __init__ starts the tick thread; also keeps them out of the default serializer.
        self._dmq_pendingReplies = []
        self._dmq_truncations = 0  # conflict truncations performed (metrics / tests)
        self._dmq_refusedConflicts = 0  # conflicts at or below the commit index that were refused
        self._dmq_preVoteTerm = None  # the term the pre-vote round under way asks about (None: no round)
        self._dmq_preVotes = 0  # grants in that round, this node's own included
        self._dmq_preVoteWon = False  # a majority granted: this tick starts the real election
        self._dmq_leaderContact = 0.0  # monotonic time of the last append_entries from the current leader
        self._dmq_handoverUntil = 0.0  # monotonic time until which a leader that sent timeout_now appends nothing
        self._dmq_quietLeader = None  # follower: (leader node, term) of the quiesce heartbeat it obeys
        self._dmq_asleep = False  # leader: every follower went quiet, no heartbeats are sent
        self._dmq_quietAcks = {}  # leader: node -> (term, log index) its quiet acknowledgement covered
        self._dmq_idleSince = (0, 0.0)  # leader: (last log index, monotonic time it was first seen last)
        self._dmq_forwarded = collections.deque()  # (monotonic deadline, request id) of commands forwarded
        super().__init__(*args, **kwargs)

    # -- durability hooks ----------------------------------------------------------------------------------------

    def _dmq_syncLog(self):
        flush = getattr(self.__raftLog, 'flush', None)
        if flush is not None:
            flush()

    def _dmq_reply(self, node, message):
        self._dmq_pendingReplies.append((node, message))

    def _dmq_syncAndReply(self):
        """fsync the log (no-op when clean), then send the queued append_entries replies, in order."""
        self._dmq_syncLog()
        if self._dmq_pendingReplies:
            replies, self._dmq_pendingReplies = self._dmq_pendingReplies, []
            for node, message in replies:
                self.__transport.send(node, message)

    def _dmq_queueNextNodeIdx(self, node, reset=False, nextNodeIdx=None, success=False, quiet=False):
        if nextNodeIdx is None:
            nextNodeIdx = self.__getCurrentLogIndex() + 1
        message = {
            'type': 'next_node_idx',
            'next_node_idx': nextNodeIdx,
            'reset': reset,
            'success': success,
        }
        if quiet:
            message['quiet'] = True  # DMQ: quiescence (stock leaders ignore the key)
        self._dmq_reply(node, message)

    def _onTick(self, timeToWait=0.0):
        # DMQ: everything appended so far (by the leader in the previous tick, or by message handlers during the
        # last poll) is made durable before pysyncobj's leader commit computation counts this node, and before any
        # follower acknowledgement leaves.
        self._dmq_syncAndReply()
        self._dmq_afterSync()
        if self._dmq_forwarded:
            self._dmq_expireForwarded(monotonicTime())
        self._dmq_quietTick()
        self._dmq_preVoteTick()
        super()._onTick(timeToWait)

    def _dmq_afterSync(self):
        """Hook for subclasses: the log was just fsynced, before this tick's Raft work (a leader may acknowledge
        what is durable locally here)."""

    def __onBecomeLeader(self):
        self._dmq_handoverUntil = 0.0
        _StockSyncObj._SyncObj__onBecomeLeader(self)
        # DMQ: the no-op is durable before a one-node group counts it toward commit later in this tick.
        self._dmq_syncLog()

    # -- leadership handover (Raft thesis §3.10) -------------------------------------------------------------------

    # DMQ: stock pysyncobj sends timeout_now and goes on appending commands. Its log, and soon the other followers',
    # is then longer than the target's, which they refuse their votes: under writes a granted handover ended in a
    # failed election. A leader that sent timeout_now now appends nothing more until it steps down, or for at most
    # an election timeout if the target does not win; another transfer is refused meanwhile (it would stretch the
    # pause). Commands that arrive meanwhile wait in the queue: this leader appends them if it stays, and pysyncobj
    # forwards them to the new leader if it stepped down (as it does with any command queued at a leader change).

    def _dmq_handoverPaused(self, now):
        """True while this leader, having sent timeout_now, appends nothing (until `_dmq_handoverUntil`)."""
        return self._dmq_handoverUntil > now and self.__raftState == _RAFT_STATE.LEADER

    def transferLeadership(self, node=None, callback=None):
        if isinstance(callback, tuple):  # a request from another node: answered by pysyncobj itself
            return super().transferLeadership(node, callback)
        if self._dmq_handoverPaused(monotonicTime()):
            if callback is not None:
                callback(None, FAIL_REASON.REQUEST_DENIED)
            return

        if self._dmq_asleep:
            self._dmq_wake(monotonicTime())

        def answered(result, error):
            if error == FAIL_REASON.SUCCESS:
                self._dmq_handoverUntil = monotonicTime() + self.__conf.raftMaxTimeout
            if callback is not None:
                callback(result, error)

        super().transferLeadership(node, answered)

    def _checkCommandsToApply(self):
        if self._dmq_handoverUntil:  # a handover under way (the clock is read only then: it costs a ctypes call)
            if self._dmq_handoverPaused(monotonicTime()):
                return
            self._dmq_handoverUntil = 0.0
        forwardedBefore = self.__commandsLocalCounter
        super()._checkCommandsToApply()
        if self.__commandsLocalCounter != forwardedBefore:
            deadline = monotonicTime() + self._dmq_forwardReplyTimeout
            self._dmq_forwarded.extend((deadline, requestId)
                                       for requestId in range(forwardedBefore + 1, self.__commandsLocalCounter + 1))

    # -- commands forwarded at a leader change --------------------------------------------------------------------

    # DMQ: a command still queued when its leader stepped down is forwarded by pysyncobj to the new leader, whose
    # apply_command_response tells where it was appended. Stock waits for that answer forever: when the message or
    # its answer was lost (the connection dropped it, the new leader died), the caller heard nothing until its own
    # timeout. Now a forwarded command with no answer within `_dmq_forwardReplyTimeout` fails with UNKNOWN_OUTCOME
    # (it may have been appended): dmq's frontend answers Unavailable and the client retries under its dedup ids.

    _dmq_forwardReplyTimeout = 2.0  # seconds; an answer normally takes one round trip

    def _dmq_expireForwarded(self, now):
        forwarded = self._dmq_forwarded
        while forwarded and forwarded[0][0] <= now:
            _, requestId = forwarded.popleft()
            callback = self.__commandsWaitingReply.pop(requestId, None)
            if callback is not None:
                callback(None, FAIL_REASON.UNKNOWN_OUTCOME)

    # -- pre-vote (Raft thesis §9.6) ------------------------------------------------------------------------------

    # DMQ: stock pysyncobj starts an election, with a new term, whenever its election timeout has passed and it is
    # connected to a peer. A replica cut off from the others campaigns the moment a connection comes back (or all
    # along, where the cut leaves connections open), and its vote request's higher term deposes a healthy leader:
    # one needless election per heal, seen in the fault tests. Before a real election a replica now asks the
    # others whether they would vote for it, without changing any term. They say yes only if its log is at least
    # as up to date as theirs and they have not heard from a leader within the minimum election timeout. A cut-off
    # replica gets no majority and keeps its term; after the heal it follows the leader's append_entries. A
    # leadership transfer (timeout_now) skips the round.
    # Replicas of other versions ignore 'pre_vote': every replica of a group must run this code.

    def _dmq_preVoteTick(self):
        """At the top of a tick: when the election timeout has passed, hold a pre-vote round instead of the
        election; the stock tick then finds the deadline moved and starts nothing. After a won round the stock
        tick starts the election (the deadline was set to 0)."""
        if self._dmq_preVoteWon:
            self._dmq_preVoteWon = False
            return
        if self.__selfNode is None or not self.__otherNodes:
            return
        if self.__raftState not in (_RAFT_STATE.FOLLOWER, _RAFT_STATE.CANDIDATE):
            return
        now = monotonicTime()
        if self.__raftElectionDeadline >= now:
            return
        if self.__raftLeader is not None:
            # No word from the leader for an election timeout: it is presumed gone and its address no longer given,
            # as stock does when it starts an election. Stock kept naming it for good while no peer was connected
            # (no election then), and the node kept forwarding requests to it.
            self.__raftLeader = None
            self.__onLeaderChanged()
        if self.__transferInProgress or not self.__connectedToAnyone():
            return  # a handover's election skips the round; without a peer there is nobody to ask
        self.__raftElectionDeadline = now + self.__generateRaftTimeout()
        self._dmq_preVoteTerm = self.__raftCurrentTerm + 1
        self._dmq_preVotes = 1
        for node in self.__otherNodes:
            self.__transport.send(node, {
                'type': 'pre_vote',
                'term': self._dmq_preVoteTerm,
                'last_log_index': self.__getCurrentLogIndex(),
                'last_log_term': self.__getCurrentLogTerm(),
            })

    def _dmq_grantsPreVote(self, message):
        if message['term'] <= self.__raftCurrentTerm or self.__raftState == _RAFT_STATE.LEADER:
            return False
        if self.__raftLeader is not None and \
                monotonicTime() - self._dmq_leaderContact < self.__conf.raftMinTimeout:
            return False  # the leader is alive as far as this replica knows
        if self._dmq_quietLeader is not None and self._dmq_quietUnderLiveLeader():
            return False  # quiet under a leader whose node is alive
        lastLogTerm = self.__getCurrentLogTerm()
        return message['last_log_term'] > lastLogTerm or (
            message['last_log_term'] == lastLogTerm and message['last_log_index'] >= self.__getCurrentLogIndex())

    def _dmq_onPreVoteResponse(self, message):
        if self.__raftState == _RAFT_STATE.LEADER:
            return
        if message['current_term'] > self.__raftCurrentTerm:
            # The group's term moved on without this replica (a vote request would have told it): catch up, so
            # that its next round asks about a term the others can grant.
            self.__setCurrentTerm(message['current_term'], None)
            self.__setState(_RAFT_STATE.FOLLOWER)
            self._dmq_preVoteTerm = None
            return
        if not message['granted'] or message['term'] != self._dmq_preVoteTerm:
            return
        self._dmq_preVotes += 1
        if self._dmq_preVotes > (len(self.__otherNodes) + 1) / 2:
            self._dmq_preVoteTerm = None
            self._dmq_preVoteWon = True
            self.__raftElectionDeadline = 0

    # -- quiescence: idle groups send no heartbeats --------------------------------------------------------------

    # DMQ: stock pysyncobj heartbeats every group every appendEntriesPeriod, busy or idle. With hundreds of
    # partitions per node, idle heartbeats alone kept a core busy. A leader that has had nothing to replicate,
    # apply or answer for _dmq_quietAfter seconds marks its heartbeats 'quiesce'. A follower whose log then matches
    # the leader's, with everything committed, goes quiet and says so in its reply ('quiet'). Once every follower
    # has, the leader sleeps: it sends no heartbeats until it has a command, hears from a follower, or loses a
    # follower's node. A quiet follower holds no election while the leader's node is alive, and denies pre-votes
    # meanwhile. Whether a node is alive is the transport's knowledge (RaftHost: one connection per node pair,
    # pinged when idle), so it costs nothing per group; the node going silent ends the quiet, and the election
    # timeout starts from there. Only liveness changes: terms, votes, logs and commits follow Raft as before.
    # A follower on code without quiescence never acknowledges, so its leader never sleeps (mixed versions are
    # safe); groups on a transport that cannot tell liveness (pysyncobj's own) never quiesce.

    _dmq_quiesce = True
    _dmq_quietAfter = 1.0  # seconds without anything to replicate before a leader asks its followers to go quiet

    def _dmq_peerAlive(self, node):
        """The transport's view of `node`'s process: True or False, None if the transport cannot tell."""
        alive = getattr(self.__transport, 'peer_alive', None)
        return None if alive is None else alive(node)

    def _dmq_peerLastHeard(self, node):
        """The transport's time of the last message from `node`'s process, None if unknown or not connected."""
        heard = getattr(self.__transport, 'peer_last_heard', None)
        return None if heard is None else heard(node)

    def _dmq_quiet(self):
        """True while this replica is a sleeping leader or a quiet follower (its host ticks it rarely)."""
        return self._dmq_asleep or self._dmq_quietLeader is not None

    def _dmq_mayQuiesce(self, now):
        """Leader: nothing to replicate, apply or answer, and nothing appended for _dmq_quietAfter seconds."""
        if not self._dmq_quiesce or self.__raftState != _RAFT_STATE.LEADER or self._dmq_handoverUntil:
            return False
        last = self.__getCurrentLogIndex()
        if self.__raftCommitIndex != last or self.__raftLastApplied != last:
            return False
        if self.__commandsQueue._FastQueue__queue:
            return False
        index, since = self._dmq_idleSince
        if index != last:
            self._dmq_idleSince = (last, now)
            return False
        if now - since < self._dmq_quietAfter:
            return False
        return all(self._dmq_peerAlive(node) for node in self.__otherNodes)

    def _dmq_quietUnderLiveLeader(self):
        """Follower: quiet under the leader of the current term, whose node is alive."""
        node, term = self._dmq_quietLeader
        return (self.__raftState == _RAFT_STATE.FOLLOWER and term == self.__raftCurrentTerm
                and self.__raftLeader == node and bool(self._dmq_peerAlive(node)))

    def _dmq_quietTick(self):
        """At the top of a tick: keep a quiet follower from campaigning, and put a leader to sleep or wake it."""
        if self._dmq_quietLeader is not None:
            now = monotonicTime()
            if self._dmq_quietUnderLiveLeader():
                self.__raftElectionDeadline = now + self.__generateRaftTimeout()
                self._dmq_skipOneSecondTimers(now)
                return
            leader_node = self._dmq_quietLeader[0]
            if self.__raftState == _RAFT_STATE.FOLLOWER and self.__raftLeader == leader_node:
                # Its node went silent. The election timeout runs from the node's last word, as a busy group's
                # runs from the last heartbeat: counted from now, quiet groups failed over a whole silence
                # (liveness timeout) later than busy ones. A closed connection is noticed at once: from now.
                heard = self._dmq_peerLastHeard(leader_node)
                start = now if heard is None else min(heard, now)
                self.__raftElectionDeadline = start + self.__generateRaftTimeout()
            self._dmq_quietLeader = None
        if self.__raftState != _RAFT_STATE.LEADER:
            if self._dmq_asleep or self._dmq_quietAcks:
                self._dmq_asleep = False
                self._dmq_quietAcks = {}
            return
        if not self._dmq_quietAcks:
            return
        now = monotonicTime()
        key = (self.__raftCurrentTerm, self.__getCurrentLogIndex())
        if all(self._dmq_quietAcks.get(node) == key for node in self.__otherNodes) and self._dmq_mayQuiesce(now):
            self._dmq_asleep = True
            self.__newAppendEntriesTime = float('inf')
            for node in self.__otherNodes:  # their nodes are alive: that stands in for answers to heartbeats
                self.__lastResponseTime[node] = now
            self._dmq_skipOneSecondTimers(now)
        elif self._dmq_asleep:
            self._dmq_wake(now)

    def _dmq_wake(self, now):
        """Leader: heartbeat again, at once. Followers whose nodes are alive count as just heard from."""
        self._dmq_asleep = False
        self._dmq_quietAcks = {}
        self.__newAppendEntriesTime = 0
        for node in self.__otherNodes:
            if self._dmq_peerAlive(node):
                self.__lastResponseTime[node] = now

    def _dmq_skipOneSecondTimers(self, now):
        """pysyncobj catches up its one-second timer one step per tick; a group ticked rarely would owe many."""
        owed = int(now - self.__startTime)
        if owed > self.__numOneSecondDumps:
            self.__numOneSecondDumps = owed - 1  # the stock tick runs the timer once (saving the commit index)

    # -- applying (copy of pysyncobj 0.3.17, bounded per tick) ---------------------------------------------------

    # DMQ: stock applied every committed entry in one tick. A replica that fell behind (a burst of pipelined
    # commands, a restart) then spent seconds in one tick without answering or sending heartbeats, and its peers
    # held elections. Each tick now applies at most this many entries or this long; the next tick goes on at once.
    _dmq_applyMaxEntries = 256
    _dmq_applyMaxSeconds = 0.02

    def _dmq_resumeIndex(self):
        """Hook: the index the state machine has durably applied, or None when unknown (see below)."""
        return None

    def _dmq_skipApplied(self):
        """DMQ: after a restart pysyncobj starts at raftLastApplied = 1 (or its last snapshot) and walks every
        committed entry again; the state machine ignores those it already applied, but reading and dispatching
        them took seconds once a log held tens of thousands of entries, and the group served nothing meanwhile.
        Resume right after what the state machine durably applied: those entries are committed (only committed
        entries are applied) and applying them again changes nothing. It also rescues a log compacted past what
        pysyncobj believes applied (its snapshot file lost), which would otherwise never apply again. Not when
        the log no longer holds the entries that follow (the state machine needs a snapshot then)."""
        resume = self._dmq_resumeIndex()
        if resume is None or not self.__raftLastApplied < resume <= self.__raftCommitIndex:
            return
        first = getattr(self.__raftLog, 'firstIndex', None)
        if first is not None and resume < first - 1:
            return
        if first is not None and self.__raftLastApplied + 1 < first:
            logger.warning('resuming apply after index %d (the log starts at %d; applied was %d)',
                           resume, first, self.__raftLastApplied)
        self.__raftLastApplied = resume

    def __applyLogEntries(self):
        needSendAppendEntries = False

        if self.__raftCommitIndex > self.__raftLastApplied:
            self._dmq_skipApplied()
            count = min(self.__raftCommitIndex - self.__raftLastApplied, self._dmq_applyMaxEntries)
            entries = self.__getEntries(self.__raftLastApplied + 1, count)
            stopAt = monotonicTime() + self._dmq_applyMaxSeconds
            for entry in entries:
                try:
                    currentTermID = entry[2]
                    subscribers = self.__commandsWaitingCommit.pop(entry[1], [])
                    res = self.__doApplyCommand(entry[0])
                    for subscribeTermID, callback in subscribers:
                        if subscribeTermID == currentTermID:
                            callback(res, FAIL_REASON.SUCCESS)
                        else:
                            callback(None, FAIL_REASON.DISCARDED)

                    self.__raftLastApplied += 1
                except _ps_syncobj.SyncObjExceptionWrongVer as e:
                    logger.error(
                        'request to switch to unsupported code version (self version: %d, requested version: %d)' %
                        (self.__selfCodeVersion, e.ver))
                if monotonicTime() > stopAt:  # DMQ
                    break

            if not self.__conf.appendEntriesUseBatch:
                needSendAppendEntries = True

        return needSendAppendEntries

    # -- log access ----------------------------------------------------------------------------------------------

    def __getEntries(self, fromIDx, count=None, maxSizeBytes = None):
        getEntries = getattr(self.__raftLog, 'getEntries', None)
        if getEntries is not None:
            return getEntries(fromIDx, count, maxSizeBytes)
        # pysyncobj 0.3.17 code, for other journals
        firstEntryIDx = self.__raftLog[0][1]
        if fromIDx is None or fromIDx < firstEntryIDx:
            return []
        diff = fromIDx - firstEntryIDx
        if count is None:
            result = self.__raftLog[diff:]
        else:
            result = self.__raftLog[diff:diff + count]
        if maxSizeBytes is None:
            return result
        totalSize = 0
        i = 0
        for i, entry in enumerate(result):
            totalSize += len(entry[0])
            if totalSize >= maxSizeBytes:
                break
        return result[:i + 1]

    # -- follower: append_entries (Raft §5.3) --------------------------------------------------------------------

    def _dmq_appendEntries(self, node, prevLogIdx, prevLogTerm, newEntries):
        """The receiver side of AppendEntries. Returns the last index verified to match the leader's log, or None
        when the message is rejected (the reply, if any, is queued)."""
        firstIdx = self.__raftLog[0][1]
        lastIdx = self.__getCurrentLogIndex()
        if prevLogIdx is None or prevLogIdx > lastIdx:
            self._dmq_queueNextNodeIdx(node, nextNodeIdx=lastIdx + 1, success=False, reset=True)
            return None
        if prevLogIdx >= firstIdx:
            if self.__getEntries(prevLogIdx, 1)[0][2] != prevLogTerm:
                self._dmq_queueNextNodeIdx(node, nextNodeIdx=prevLogIdx, success=False, reset=True)
                return None
        # else: prevLogIdx lies below our first entry, i.e. inside our snapshot: committed, hence identical.
        if newEntries and newEntries[0][1] != prevLogIdx + 1:
            logger.error('append_entries from %s: first entry %d does not follow prevLogIdx %d; ignored',
                         node, newEntries[0][1], prevLogIdx)
            return None

        # Skip the entries we already hold with the same term; truncate only at the first conflict.
        appendFrom = len(newEntries)
        overlapLo = max(firstIdx, prevLogIdx + 1)
        overlapHi = min(lastIdx, prevLogIdx + len(newEntries))
        local = self.__getEntries(overlapLo, overlapHi - overlapLo + 1) if overlapHi >= overlapLo else []
        for i, entry in enumerate(newEntries):
            idx = entry[1]
            if idx < firstIdx:
                continue
            if idx > lastIdx:
                appendFrom = i
                break
            if local[idx - overlapLo][2] == entry[2]:
                continue
            if idx <= self.__raftCommitIndex:
                self._dmq_refusedConflicts += 1
                logger.critical('append_entries from %s conflicts at index %d (term %d, local term %d) at or '
                                'below the commit index %d; refusing to truncate committed entries',
                                node, idx, entry[2], local[idx - overlapLo][2], self.__raftCommitIndex)
                return None
            # rollback cluster changes of the entries being removed
            if self.__conf.dynamicMembershipChange:
                for removed in reversed(self.__getEntries(idx)):
                    clusterChangeRequest = self.__parseChangeClusterRequest(removed[0])
                    if clusterChangeRequest is not None:
                        self.__doChangeCluster(clusterChangeRequest, reverse=True)
            self._dmq_truncations += 1
            self.__deleteEntriesFrom(idx)
            appendFrom = i
            break

        added = newEntries[appendFrom:]
        for entry in added:
            self.__raftLog.add(*entry)
        # apply cluster changes
        if self.__conf.dynamicMembershipChange:
            for entry in added:
                clusterChangeRequest = self.__parseChangeClusterRequest(entry[0])
                if clusterChangeRequest is not None:
                    self.__doChangeCluster(clusterChangeRequest)
        return newEntries[-1][1] if newEntries else prevLogIdx

    # -- the message handler (copy of pysyncobj 0.3.17 with the DMQ changes) -------------------------------------

    def __onMessageReceived(self, node, message):

        # DMQ: quiescence: a sleeping leader wakes at anything but a follower's quiet acknowledgement
        if self._dmq_asleep and not (message['type'] == 'next_node_idx' and message.get('quiet')):
            self._dmq_wake(monotonicTime())

        # DMQ: pre-vote (see _dmq_preVoteTick); answering one changes nothing here
        if message['type'] == 'pre_vote' and self.__selfNode is not None:
            self.__transport.send(node, {
                'type': 'response_pre_vote',
                'term': message['term'],
                'granted': self._dmq_grantsPreVote(message),
                'current_term': self.__raftCurrentTerm,
            })
            return
        if message['type'] == 'response_pre_vote':
            self._dmq_onPreVoteResponse(message)
            return

        if message['type'] == 'timeout_now' and self.__selfNode is not None:
            # Graceful leadership transfer (Raft 'TimeoutNow'): trigger an
            # immediate election, but only on request of the current leader.
            if message['term'] >= self.__raftCurrentTerm and node == self.__raftLeader:
                self.__raftElectionDeadline = 0
                self.__transferInProgress = True
                self._dmq_quietLeader = None  # DMQ: quiescence

        if message['type'] == 'request_vote' and self.__selfNode is not None:

            if message['term'] > self.__raftCurrentTerm:
                self.__setCurrentTerm(message['term'], None)
                self.__setState(_RAFT_STATE.FOLLOWER)
                self.__raftLeader = None

            if self.__raftState in (_RAFT_STATE.FOLLOWER, _RAFT_STATE.CANDIDATE):
                lastLogTerm = message['last_log_term']
                lastLogIdx = message['last_log_index']
                if message['term'] >= self.__raftCurrentTerm:
                    if lastLogTerm < self.__getCurrentLogTerm():
                        return
                    if lastLogTerm == self.__getCurrentLogTerm() and \
                            lastLogIdx < self.__getCurrentLogIndex():
                        return
                    if self.__votedForNodeId is not None:
                        return

                    # (the journal fsyncs term + vote before returning: the vote is durable before it is sent)
                    self.__setCurrentTerm(self.__raftCurrentTerm, node.id)

                    self.__raftElectionDeadline = monotonicTime() + self.__generateRaftTimeout()
                    self.__transport.send(node, {
                        'type': 'response_vote',
                        'term': message['term'],
                    })

        if message['type'] == 'append_entries' and message['term'] >= self.__raftCurrentTerm:
            if message['term'] > self.__raftCurrentTerm:
                # A new leader at a higher term supersedes any pending transfer.
                self.__transferInProgress = False
            if not self.__transferInProgress:
                # While a transfer is pending, ignore same-term heartbeats from
                # the outgoing leader so they can't postpone the forced election.
                self.__raftElectionDeadline = monotonicTime() + self.__generateRaftTimeout()
            if self.__raftLeader != node:
                self.__onLeaderChanged()
            self.__raftLeader = node
            self._dmq_leaderContact = monotonicTime()  # DMQ: pre-vote
            self._dmq_preVoteTerm = None
            self._dmq_quietLeader = None  # DMQ: quiescence, set again below if this heartbeat asks for it
            if message['term'] > self.__raftCurrentTerm:
                self.__setCurrentTerm(message['term'], None)
            self.__setState(_RAFT_STATE.FOLLOWER)
            newEntries = message.get('entries', [])
            serialized = message.get('serialized', None)
            self.__leaderCommitIndex = leaderCommitIndex = message['commit_index']
            # DMQ: last index known to match the leader's log after this message (None: nothing verified)
            verifiedIdx = None

            # Regular append entries
            if 'prevLogIdx' in message:
                transmission = message.get('transmission', None)
                if transmission is not None:
                    if transmission == 'start':
                        self.__recvTransmission = message['data']
                        self._dmq_queueNextNodeIdx(node, success=False, reset=False)
                        return
                    elif transmission == 'process':
                        if isinstance(self.__recvTransmission, bytes):
                            self.__recvTransmission += message['data']
                            self._dmq_queueNextNodeIdx(node, success=False, reset=False)
                        else:
                            # DMQ: no 'start' seen (stock raised TypeError here); make the leader resend
                            prevLogIdx = message['prevLogIdx']
                            self._dmq_queueNextNodeIdx(
                                node, success=False, reset=True,
                                nextNodeIdx=(prevLogIdx + 1) if prevLogIdx is not None else None)
                        return
                    elif transmission == 'finish':
                        try:
                            newEntries = [pickle.loads(self.__recvTransmission + message['data'])]
                        except Exception:
                            # DMQ: e.g. a 'start' chunk lost with a dropped connection; make the leader resend
                            logger.warning('dropping a corrupt chunked append_entries from %s', node)
                            self.__recvTransmission = ''
                            prevLogIdx = message['prevLogIdx']
                            self._dmq_queueNextNodeIdx(
                                node, success=False, reset=True,
                                nextNodeIdx=(prevLogIdx + 1) if prevLogIdx is not None else None)
                            return
                        self.__recvTransmission = ''
                    else:
                        raise Exception('Wrong transmission type')

                prevLogIdx = message['prevLogIdx']
                prevLogTerm = message['prevLogTerm']
                # DMQ: Raft §5.3 instead of "delete everything after prevLogIdx"
                verifiedIdx = self._dmq_appendEntries(node, prevLogIdx, prevLogTerm, newEntries)
                if verifiedIdx is None:
                    return

                # DMQ: quiescence: go quiet when this log matches the leader's and all of it is committed
                quiet = (message.get('quiesce', False) and self._dmq_quiesce and not self.__transferInProgress
                         and verifiedIdx == self.__getCurrentLogIndex() and leaderCommitIndex >= verifiedIdx
                         and self._dmq_peerAlive(node) is not None)
                if quiet:
                    self._dmq_quietLeader = (node, self.__raftCurrentTerm)

                # DMQ: acknowledge what was verified, after the fsync (queued)
                self._dmq_queueNextNodeIdx(node, nextNodeIdx=verifiedIdx + 1, success=True, quiet=quiet)

            # Install snapshot
            elif serialized is not None:
                if self.__serializer.setTransmissionData(serialized):
                    self.__loadDumpFile(clearJournal=True)
                    # DMQ: the snapshot's last entry is what is known to match (a retained tail may not)
                    verifiedIdx = self.__raftLastApplied
                    self._dmq_queueNextNodeIdx(node, nextNodeIdx=verifiedIdx + 1, success=True)

            # If the log was truncated below the commit index, don't persist a commit
            # index covering entries that are no longer the committed ones.
            if self.__raftCommitIndex > self.__getCurrentLogIndex():
                self.__raftCommitIndex = self.__getCurrentLogIndex()

            # DMQ: commit only entries verified against this leader (an unverified tail may be stale)
            if verifiedIdx is not None and leaderCommitIndex > self.__raftCommitIndex:
                self.__raftCommitIndex = max(self.__raftCommitIndex, min(leaderCommitIndex, verifiedIdx))

            self.__raftLog.setRaftCommitIndex(self.__raftCommitIndex)

        if message['type'] == 'apply_command':
            if 'request_id' in message:
                self._applyCommand(message['command'], (node, message['request_id']))
            else:
                self._applyCommand(message['command'], None)

        if message['type'] == 'apply_command_response':
            requestID = message['request_id']
            error = message.get('error', None)
            callback = self.__commandsWaitingReply.pop(requestID, None)
            if callback is not None:
                if error is not None:
                    callback(None, error)
                else:
                    idx = message['log_idx']
                    term = message['log_term']
                    if idx <= self.__raftLastApplied:
                        # Stale apply_command_response:
                        # The log position was already applied (e.g. via snapshot installed after leader reconnect)
                        # before this response was processed. Or the leader was restarted without notice (and remains leader).
                        # The command outcome cannot be tracked; signal the caller so it can retry rather than hanging
                        # forever.
                        callback(None, FAIL_REASON.UNKNOWN_OUTCOME)
                    else:
                        self.__commandsWaitingCommit[idx].append((term, callback))

        if self.__raftState == _RAFT_STATE.CANDIDATE:
            if message['type'] == 'response_vote' and message['term'] == self.__raftCurrentTerm:
                self.__votesCount += 1

                if self.__votesCount > (len(self.__otherNodes) + 1) / 2:
                    self.__onBecomeLeader()

        if self.__raftState == _RAFT_STATE.LEADER:
            if message['type'] == 'next_node_idx':
                reset = message['reset']
                nextNodeIdx = message['next_node_idx']
                success = message['success']

                currentNodeIdx = nextNodeIdx - 1
                # DMQ: quiescence. Only a follower's latest reply says whether it is quiet: one that a plain
                # heartbeat woke since its quiet acknowledgement must not count as quiet when the others ack.
                if success and message.get('quiet') and currentNodeIdx == self.__getCurrentLogIndex():
                    self._dmq_quietAcks[node] = (self.__raftCurrentTerm, currentNodeIdx)
                else:
                    self._dmq_quietAcks.pop(node, None)
                if success:
                    if self.__raftMatchIndex[node] < currentNodeIdx:
                        self.__raftMatchIndex[node] = currentNodeIdx
                    # DMQ: never rewind nextIndex on an acknowledgement (entries may be in flight)
                    if self.__raftNextIndex[node] < nextNodeIdx:
                        self.__raftNextIndex[node] = nextNodeIdx
                elif reset:
                    # DMQ: rejection - back off to the follower's hint, not past our own log. Replies on one
                    # connection arrive in order, so a hint at or below the follower's match index means the
                    # follower lost entries it had (a replaced disk, a wiped data directory): start over from
                    # the hint, through a snapshot if we compacted those entries away.
                    nextNodeIdx = min(nextNodeIdx, self.__getCurrentLogIndex() + 1)
                    if nextNodeIdx <= self.__raftMatchIndex[node]:
                        logger.warning('%s lost entries up to %d (now has up to %d); resending from there',
                                       node, self.__raftMatchIndex[node], nextNodeIdx - 1)
                        self.__raftMatchIndex[node] = nextNodeIdx - 1
                    # A rejection only ever lowers nextIndex: when one heartbeat carries several messages, the
                    # first is rejected at the conflict and the later ones (whose prevLogIdx lies beyond the
                    # follower's log) with higher hints; obeying those would undo the back-off every time and
                    # never send the entry before the conflict (a deposed leader with a divergent tail never
                    # caught up).
                    if nextNodeIdx < self.__raftNextIndex[node]:
                        self.__raftNextIndex[node] = nextNodeIdx
                self.__lastResponseTime[node] = monotonicTime()

    # -- leader: sending (copy of pysyncobj 0.3.17, chunking finish condition fixed) -----------------------------

    def __sendAppendEntries(self):
        self.__newAppendEntriesTime = monotonicTime() + self.__conf.appendEntriesPeriod

        startTime = monotonicTime()
        quiesce = self._dmq_mayQuiesce(startTime)  # DMQ: quiescence

        batchSizeBytes = self.__conf.appendEntriesBatchSizeBytes

        for node in self.__otherNodes | self.__readonlyNodes:
            if node not in self.__connectedNodes:
                self.__serializer.cancelTransmisstion(node)
                continue

            sendSingle = True
            sendingSerialized = False
            nextNodeIndex = self.__raftNextIndex[node]

            while nextNodeIndex <= self.__getCurrentLogIndex() or sendSingle or sendingSerialized:
                if nextNodeIndex > self.__raftLog[0][1]:
                    prevLogIdx, prevLogTerm = self.__getPrevLogIndexTerm(nextNodeIndex)
                    entries = []
                    if nextNodeIndex <= self.__getCurrentLogIndex():
                        entries = self.__getEntries(nextNodeIndex, None, batchSizeBytes)
                        self.__raftNextIndex[node] = entries[-1][1] + 1

                    if len(entries) == 1 and len(entries[0][0]) >= batchSizeBytes:
                        entry = pickle.dumps(entries[0])
                        for pos in xrange(0, len(entry), batchSizeBytes):
                            currData = entry[pos:pos + batchSizeBytes]
                            if pos == 0:
                                transmission = 'start'
                            elif pos + batchSizeBytes >= len(entry):  # DMQ: was len(entries[0][0])
                                transmission = 'finish'
                            else:
                                transmission = 'process'
                            message = {
                                'type': 'append_entries',
                                'transmission': transmission,
                                'data': currData,
                                'term': self.__raftCurrentTerm,
                                'commit_index': self.__raftCommitIndex,
                                'prevLogIdx': prevLogIdx,
                                'prevLogTerm': prevLogTerm,
                            }
                            self.__transport.send(node, message)
                            if node not in self.__connectedNodes:
                                break
                    else:
                        message = {
                            'type': 'append_entries',
                            'term': self.__raftCurrentTerm,
                            'commit_index': self.__raftCommitIndex,
                            'entries': entries,
                            'prevLogIdx': prevLogIdx,
                            'prevLogTerm': prevLogTerm,
                        }
                        if quiesce and not entries:
                            message['quiesce'] = True  # DMQ: stock followers ignore the key
                        self.__transport.send(node, message)
                        if node not in self.__connectedNodes:
                            break
                else:
                    transmissionData = self.__serializer.getTransmissionData(node)
                    message = {
                        'type': 'append_entries',
                        'term': self.__raftCurrentTerm,
                        'commit_index': self.__raftCommitIndex,
                        'serialized': transmissionData,
                    }
                    self.__transport.send(node, message)
                    if node not in self.__connectedNodes:
                        break

                    if transmissionData is not None:
                        isLast = transmissionData[2]
                        if isLast:
                            self.__raftNextIndex[node] = self.__raftLog[1][1] + 1
                            sendingSerialized = False
                        else:
                            sendingSerialized = True
                    else:
                        sendingSerialized = False

                nextNodeIndex = self.__raftNextIndex[node]

                sendSingle = False

                delta = monotonicTime() - startTime
                if delta > self.__conf.appendEntriesPeriod:
                    break

    # -- snapshots (copy of pysyncobj 0.3.17, keep the log tail that follows the snapshot) -----------------------

    def __loadDumpFile(self, clearJournal):
        try:
            data = self.__serializer.deserialize()
            if data[0] is not None:
                if self.__consumers:
                    selfData = data[0][0]
                    consumersData = data[0][1:]
                else:
                    selfData = data[0]
                    consumersData = []

                for k, v in iteritems(selfData):
                    self.__dict__[k] = v

                for i, consumer in enumerate(self.__consumers):
                    consumer._deserialize(consumersData[i])

            # DMQ: if the log holds the snapshot's last two entries, keep the entries after them (Raft §7);
            # only a log that does not contain them is replaced by them.
            if len(self.__raftLog) >= 2 and \
                    self.__getEntries(data[2][1], 1) == [tuple(data[2])] and \
                    self.__getEntries(data[1][1], 1) == [tuple(data[1])]:
                self.__deleteEntriesTo(data[2][1])
            elif clearJournal or \
                    len(self.__raftLog) < 2 or \
                    self.__raftLog[0] != data[2] or \
                    self.__raftLog[1] != data[1]:
                self.__raftLog.clear()
                self.__raftLog.add(*data[2])
                self.__raftLog.add(*data[1])

            self.__raftLastApplied = data[1][1]

            if self.__raftCommitIndex > self.__getCurrentLogIndex():
                logger.warning('raftCommitIndex (%d) exceeds journal end (%d) after loading dump, '
                               'likely due to unsynced journal entries lost on crash; '
                               'clamping to journal end',
                               self.__raftCommitIndex, self.__getCurrentLogIndex())
                self.__raftCommitIndex = self.__getCurrentLogIndex()
                self.__raftLog.setRaftCommitIndex(self.__raftCommitIndex)

            if self.__conf.dynamicMembershipChange:
                self.__updateClusterConfiguration([node for node in data[3] if node != self.__selfNode])
            self.__onSetCodeVersion(0)
        except:
            logger.exception('failed to load full dump')


DmqSyncObj = SyncObj
