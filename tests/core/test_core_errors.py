"""The CLIs turn user errors into one line and exit 2; genuine bugs keep their traceback."""

from __future__ import annotations

import argparse

import pytest

from core.checkpoint import CheckpointError
from core.cli import run_command
from core.data import DataError
from core.errors import ConfigError, UserError
from core.model.freeze import FreezeSpecError, parse_freeze_spec
from core.privacy.ledger import BudgetExceeded, LedgerError


def _raising(exc: BaseException):
    def handler(args: argparse.Namespace) -> int:
        raise exc
    return handler


@pytest.mark.parametrize("error", [
    DataError("labels.csv: no id column"), CheckpointError("model.pt: not a checkpoint"),
    ConfigError("lr must be > 0"), LedgerError("damaged ledger"), BudgetExceeded(1.0, 2.0, 1.5),
    FileNotFoundError(2, "No such file or directory", "missing.csv"),
])
def test_user_errors_become_one_line_and_exit_2(error: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(_raising(error), argparse.Namespace()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("bug", [ValueError("shapes (3,) and (4,) do not match"), RuntimeError("CUDA out of memory"),
                                 KeyError("pretrained"), OSError(28, "No space left on device")])
def test_genuine_bugs_keep_their_traceback(bug: Exception) -> None:
    with pytest.raises(type(bug)):
        run_command(_raising(bug), argparse.Namespace())


def test_error_classes_are_user_errors() -> None:
    for cls in (DataError, CheckpointError, FreezeSpecError, LedgerError, BudgetExceeded, ConfigError):
        assert issubclass(cls, UserError)
    with pytest.raises(UserError):
        parse_freeze_spec("9-12")
