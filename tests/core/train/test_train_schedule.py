"""Learning-rate schedules: warm-up, cosine, step drop and drop on plateau against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import ConfigError
from core.train.schedule import LRFactor
from core.train.training import TrainConfig, lr_factor


def test_linear_warm_up_then_cosine_over_the_remaining_steps() -> None:
    factor = LRFactor("cosine", total_steps=104, final_factor=1e-3, warmup_steps=4)
    # step k < 4 uses (k + 1) / 4; the cosine then starts at step 4 and runs over 100 steps
    assert [factor(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == pytest.approx(1.0)
    assert factor(54) == pytest.approx(0.001 + 0.999 * 0.5)  # halfway: cos(pi / 2) = 0
    assert factor(104) == pytest.approx(0.001) and factor(500) == pytest.approx(0.001)


def test_without_warm_up_the_cosine_is_the_previous_default() -> None:
    factor = lr_factor(TrainConfig(), total_steps=100)
    assert factor(0) == 1.0
    assert factor(25) == pytest.approx(0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert factor(100) == pytest.approx(0.001)


def test_step_schedule_drops_to_one_thousandth_at_the_given_fraction() -> None:
    factor = LRFactor("step", total_steps=10, final_factor=1e-3, drop_at=0.8)
    assert [factor(k) for k in range(10)] == [1.0] * 8 + [1e-3] * 2


def test_plateau_schedule_drops_once_after_patience_epochs_without_gain() -> None:
    factor = LRFactor("plateau", total_steps=10, final_factor=1e-3, patience=2)
    assert [factor.observe_val(v) for v in (30.0, 29.0, 29.5, 29.2)] == [False, False, False, True]
    assert factor(3) == 1e-3 and factor.observe_val(40.0) is False


def test_the_optimiser_follows_the_factor_step_by_step() -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor("cosine", 12, 1e-3, warmup_steps=2))
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5e-3, 1e-3, 1e-3])


@pytest.mark.parametrize("changes", [{"lr_schedule": "linear"}, {"warmup_steps": -1}, {"lr_drop_at": 1.5},
                                     {"lr_patience": 0}, {"early_stop_patience": -1}, {"batch_size": 0},
                                     {"epochs": 0}, {"lr": float("nan")}, {"lr": -1.0}, {"lr": float("inf")},
                                     {"weight_decay": float("nan")}])
def test_a_bad_schedule_setting_is_a_config_error(changes) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**changes)
