"""The round settings: one record, its defaults defined once, written by the server and read back by the site."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.round_settings import KEYS, RoundSettings


def test_a_record_survives_the_message_round_trip() -> None:
    sent = RoundSettings(num_rounds=5, local_epochs=2, lr=1e-3, batch_size=8, proximal_mu=0.1, seed=7,
                         freeze=(1, 2), local_layers="norm", pretrained="/m.pt", pretrained_sha256="ab" * 32,
                         uniform_weights=True)
    config = sent.to_config()
    assert set(config) == set(KEYS.values()) and config["freeze"] == "1-2"
    assert all(isinstance(v, (int, float, str, bool)) for v in config.values())  # a Flower ConfigRecord takes them
    assert RoundSettings.from_config(config) == sent


def test_missing_keys_take_the_defaults_and_other_keys_are_ignored() -> None:
    assert RoundSettings.from_config({}) == RoundSettings()
    assert RoundSettings.from_config({"server-round": 3, "lr": "0.01"}) == RoundSettings(lr=0.01)


@pytest.mark.parametrize("config, match", [
    ({"lr": 0}, "lr"), ({"lr": "fast"}, "lr"), ({"batch-size": 2.5}, "batch-size"), ({"freeze": "7"}, "freeze"),
    ({"local-layers": "all"}, "local-layers"), ({"central-dp": "maybe"}, "central-dp"), ({"num-rounds": 0}, "num-rounds"),
])
def test_bad_values_are_one_line_config_errors(config: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RoundSettings.from_config(config)


@pytest.mark.parametrize("raw, blocks", [([1, 2, 3], (1, 2, 3)), ((4, 2), (2, 4)), ([], ()), ("1,2,3", (1, 2, 3)),
                                         ([2.0], (2,))])
def test_freeze_may_be_a_spec_or_a_list_of_blocks(raw, blocks) -> None:
    settings = RoundSettings.from_config({"freeze": raw})
    assert settings.freeze == blocks and RoundSettings.from_config(settings.to_config()) == settings


@pytest.mark.parametrize("raw", [["x"], [7], [1.5]])
def test_a_bad_list_of_blocks_is_a_one_line_error(raw) -> None:
    with pytest.raises(ConfigError, match="freeze"):
        RoundSettings.from_config({"freeze": raw})


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 0}, "num-rounds, local-epochs and batch-size must be at least 1"),
    ({"local_epochs": 0}, "must be at least 1"), ({"num_rounds": 0}, "must be at least 1"),
    ({"weight_decay": -1e-4}, "weight-decay and proximal-mu must be >= 0"),
    ({"proximal_mu": -0.1}, "weight-decay and proximal-mu must be >= 0"),
    ({"local_layers": "all"}, "local-layers must be one of none, norm.*, got 'all'"),
    ({"freeze": (0, 1)}, "blocks run from 1 to 6"), ({"freeze": (7,)}, "blocks run from 1 to 6"),
    ({"freeze": (1, 2, 3, 4, 5, 6)}, "every block is frozen: nothing to train"),
])
def test_the_record_refuses_what_cannot_train_with_the_reason(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RoundSettings(**values)


def test_the_smallest_valid_values_are_accepted() -> None:
    settings = RoundSettings(batch_size=1, local_epochs=1, num_rounds=1, weight_decay=0.0, proximal_mu=0.0,
                             freeze=(1, 2, 3, 4, 5), local_layers="norm")
    assert settings.freeze_spec == "1-5" and RoundSettings(freeze=(6,)).freeze == (6,)
