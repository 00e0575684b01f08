from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Driver


@pytest.fixture
def meta(tmp_path) -> Iterator[Driver]:
    driver = Driver(str(tmp_path / "metadata"))
    yield driver
    driver.close()
