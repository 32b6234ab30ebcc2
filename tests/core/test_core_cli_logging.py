"""Log noise: every Flower line once, and no DEBUG line without -v."""

from __future__ import annotations

import logging

import pytest

from core.cli import setup_logging


@pytest.fixture
def restore_flower_logger():
    flower = logging.getLogger("flwr")
    saved = (flower.propagate, [(h, h.level) for h in flower.handlers])
    yield
    flower.propagate = saved[0]
    for handler, level in saved[1]:
        handler.setLevel(level)


def test_flower_lines_are_printed_once_and_debug_only_when_verbose(restore_flower_logger, capfd) -> None:
    from flwr.common.logger import log

    capfd.readouterr()
    root = logging.getLogger()
    own = logging.StreamHandler()  # stands for the handler setup_logging installs on a fresh process
    root.addHandler(own)
    try:
        setup_logging(verbose=False)
        log(logging.INFO, "one flower line")
        log(logging.DEBUG, "a flower debug line")
        err = capfd.readouterr().err
        assert err.count("one flower line") == 1 and "a flower debug line" not in err
        setup_logging(verbose=True)
        log(logging.DEBUG, "a verbose debug line")
        assert capfd.readouterr().err.count("a verbose debug line") == 1
    finally:
        root.removeHandler(own)
