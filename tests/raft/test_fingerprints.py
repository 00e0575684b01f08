"""The overrides in dmq_server.raft.pysyncobj_fixes are copies of pysyncobj 0.3.17 code: fail loudly if the
installed pysyncobj is different (an upgrade changed what we override or rely on)."""

import pytest

import pysyncobj.pickle
from dmq_server.raft import pysyncobj_fixes as fx


def test_installed_pysyncobj_matches_the_overridden_source():
    bad = fx.check_fingerprints()
    cur = fx.current_fingerprints()
    assert not bad, (
        "pysyncobj's installed source differs from the 0.3.17 code that dmq_server/raft/pysyncobj_fixes.py "
        "overrides or relies on. Re-read the new upstream code of: %s; port or drop each fix, then update "
        "FINGERPRINTS. Current values: %s" % (", ".join(bad), {k: cur.get(k) for k in bad}))


def test_install_refuses_a_changed_pysyncobj(monkeypatch):
    fx._uninstall_for_tests()
    try:
        monkeypatch.setitem(fx.FINGERPRINTS, "SyncObj.__onMessageReceived", "0" * 16)
        with pytest.raises(fx.PysyncobjMismatch, match="__onMessageReceived"):
            fx.install()
        assert not fx.installed()
    finally:
        monkeypatch.undo()
        fx.install()


def test_install_is_idempotent_and_sets_protocol_4():
    fx.install()
    fx.install()
    assert getattr(pysyncobj.pickle, "__protocol") == fx.PICKLE_PROTOCOL == 4
    data = pysyncobj.pickle.dumps((1, (b"\xff" * 10,)))
    assert data[:2] == b"\x80\x04"
    assert pysyncobj.pickle.loads(data) == (1, (b"\xff" * 10,))
    assert fx.check_fingerprints() == []  # the guard still sees the stock protocol value


def test_fixed_syncobj_requires_install():
    fx._uninstall_for_tests()
    try:
        with pytest.raises(RuntimeError, match="install"):
            fx.SyncObj("127.0.0.1:1", [])
    finally:
        fx.install()
