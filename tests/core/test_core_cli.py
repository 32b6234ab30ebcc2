"""The command-line pattern: shared options mean the same in every command, errors are one line, -v anywhere."""

from __future__ import annotations

import argparse

import pytest
import torch

from core.cli import DEVICE_DEFAULT, DEVICE_HELP, JSON_HELP, SEED_HELP, THREADS_HELP, run_command


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from client.__main__ import build_parser as client_parser
    from server.cli import build_parser as server_parser
    from sim.__main__ import build_parser as sim_parser

    found = {}
    for prog, build in (("client", client_parser), ("server", server_parser), ("sim", sim_parser)):
        root = build()
        found[prog] = root
        for action in root._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.update({f"{prog} {name}": sub for name, sub in action.choices.items()})
    return found


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_command_of_the_three_tools_is_found() -> None:
    names = set(_parsers())
    assert {"client predict", "client check", "client finetune", "server pretrain", "server evaluate",
            "server ensemble", "sim", "sim generate", "sim partition"} <= names


@pytest.mark.parametrize("flag,default,help_text", [("--device", DEVICE_DEFAULT, DEVICE_HELP),
                                                    ("--threads", None, THREADS_HELP)])
def test_device_and_threads_have_one_meaning_and_one_default_in_every_command(flag, default, help_text) -> None:
    having = {name: _option(p, flag) for name, p in _parsers().items() if _option(p, flag) is not None}
    assert len(having) >= 3
    assert {name: (a.default, a.help) for name, a in having.items()} == {name: (default, help_text) for name in having}


def test_seed_and_json_have_one_meaning_in_every_command() -> None:
    parsers = _parsers()
    seeds = {name: _option(p, "--seed") for name, p in parsers.items() if _option(p, "--seed") is not None}
    assert {"server pretrain", "client finetune", "sim", "sim generate", "sim partition"} <= set(seeds)
    # `python -m sim` takes its seed from an experiment file when the command line gives none: still 0 by default
    assert {name: a.default for name, a in seeds.items()} == {name: None if name == "sim" else 0 for name in seeds}
    assert all(a.help == SEED_HELP for name, a in seeds.items() if name != "sim")
    jsons = {name: _option(p, "--json") for name, p in parsers.items() if _option(p, "--json") is not None}
    assert {"server evaluate", "client check", "client finetune"} <= set(jsons)
    assert all(isinstance(a, argparse._StoreTrueAction) for a in jsons.values())
    assert sum(a.help == JSON_HELP for a in jsons.values()) >= len(jsons) - 1  # predict writes JSON lines


def test_verbose_may_come_before_or_after_the_command() -> None:
    from server.cli import build_parser

    base = ["evaluate", "--model", "m.pt", "--data", "d"]
    assert build_parser().parse_args(["-v", *base]).verbose is True
    assert build_parser().parse_args([*base, "-v"]).verbose is True
    assert build_parser().parse_args(base).verbose is False


def test_threads_are_applied_to_torch_before_the_handler_runs() -> None:
    before = torch.get_num_threads()
    seen = []
    try:
        assert run_command(lambda args: seen.append(torch.get_num_threads()) or 0, argparse.Namespace(threads=1)) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


def test_threads_must_be_positive(capsys) -> None:
    from server.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--data", "d", "--out", "o.pt", "--threads", "0"])
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--seed", "3", "generate", "--preset", "rsna", "--n", "2", "--out", "x"],
                                  ["--preset", "smoke", "partition", "--data", "d", "--sites", "2", "--out", "y"]])
def test_sim_refuses_root_flags_a_sub_command_would_ignore(argv, tmp_path, capsys, monkeypatch) -> None:
    from sim.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and argv[0] in err and "\n" not in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
