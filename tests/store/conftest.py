from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Driver


@pytest.fixture
def queue(tmp_path) -> Iterator[Driver]:
    driver = Driver(str(tmp_path / "partition"))
    yield driver
    driver.close()


@pytest.fixture
def fifo(tmp_path) -> Iterator[Driver]:
    driver = Driver(str(tmp_path / "fifo"))
    driver.configure(fifo=True)
    yield driver
    driver.close()
