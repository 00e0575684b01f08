import pytest

from dmq_server.raft import pysyncobj_fixes


@pytest.fixture(scope="module", autouse=True)
def _fixes_installed():
    """dmq's pysyncobj overrides, installed as dmq-server installs them at start (idempotent)."""
    pysyncobj_fixes.install()
