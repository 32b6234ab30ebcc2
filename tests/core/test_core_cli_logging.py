"""Log noise: every Flower line once (through Flower's own handler, not ours too), no DEBUG line without -v."""

from __future__ import annotations

import logging

import pytest

from core.cli import setup_logging


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def flower_logger():
    from flwr.common.logger import log  # noqa: F401  (Flower's logger and its console handler exist from here)

    flower = logging.getLogger("flwr")
    saved = (flower.propagate, [(h, h.level) for h in flower.handlers])
    own, root = Recorder(), Recorder()
    flower.addHandler(own)
    logging.getLogger().addHandler(root)
    yield own, root
    flower.removeHandler(own)
    logging.getLogger().removeHandler(root)
    flower.propagate = saved[0]
    for handler, level in saved[1]:
        handler.setLevel(level)


def test_flower_lines_are_printed_once_and_debug_only_when_verbose(flower_logger) -> None:
    from flwr.common.logger import log

    flower_own, ours = flower_logger
    setup_logging(verbose=False)
    log(logging.INFO, "one flower line")
    assert ours.messages == []  # not a second time through our handler
    console = [h for h in logging.getLogger("flwr").handlers if h is not flower_own]
    assert console and all(h.level == logging.INFO for h in console)  # Flower's DEBUG lines stay quiet
    setup_logging(verbose=True)
    assert all(h.level == logging.DEBUG for h in console)
