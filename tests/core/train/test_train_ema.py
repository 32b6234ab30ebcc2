"""The moving average of the weights (`core.train.ema`) and its place in the training loop (`fit` with `ema_decay`)."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from core.train.ema import WeightAverage
from core.errors import ConfigError
from core.train.loss import JointLossConfig, make_loss
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.train.training import TrainConfig, fit

CPU = torch.device("cpu")


def test_the_average_follows_the_documented_formula_with_its_warm_up() -> None:
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.2)
    expected = 0.0
    for n, value in enumerate([10.0, 20.0, 30.0, 40.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        decay = min(0.2, (1 + n) / (10 + n))  # 0.1, 0.18, then capped: 0.2, 0.2
        expected = decay * expected + (1 - decay) * value
        average.update(model)
    assert average.state_dict()["weight"].item() == pytest.approx(expected)
    assert average.updates == 4


def test_the_decay_settles_at_its_value_after_the_warm_up() -> None:
    average = WeightAverage(nn.Linear(1, 1), decay=0.9)
    assert average.current_decay() == pytest.approx(0.1)
    average.updates = 1000
    assert average.current_decay() == 0.9


def test_integer_buffers_are_copied_and_the_copy_is_not_the_live_average() -> None:
    model = nn.BatchNorm1d(2)
    average = WeightAverage(model, decay=0.99)
    model.num_batches_tracked.fill_(7)
    average.update(model)
    state = average.state_dict()
    assert state["num_batches_tracked"].item() == 7
    state["weight"].add_(100.0)  # the caller's copy: the average itself is unchanged
    assert average.state_dict()["weight"].abs().max() < 10


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan")])
def test_a_decay_outside_0_1_is_a_config_error(decay: float) -> None:
    with pytest.raises(ConfigError, match="EMA decay"):
        TrainConfig(ema_decay=decay)


def _fit(decay: float):
    torch.manual_seed(0)
    items = [{"image": torch.randn(1, 32, 32), "male": torch.tensor(float(i % 2)), "age": torch.tensor(20.0 + 9 * i)}
             for i in range(16)]
    loader = DataLoader(items, batch_size=8)
    model = TJNet(TJNetConfig(image_size=32, width=0.25))
    config = TrainConfig(epochs=2, lr=1e-3, progress=False, ema_decay=decay)
    return fit(model, loader, loader, make_loss(model, JointLossConfig()), config, CPU), model


def test_fit_keeps_the_average_beside_the_raw_weights_without_changing_them() -> None:
    plain, _ = _fit(0.0)
    averaged, model = _fit(0.99)
    assert plain.ema_state is None
    # the average only watches: the raw training (and so its best state) is the same with or without it
    for name, value in plain.best_state.items():
        assert torch.equal(value, averaged.best_state[name]), name
    final = model.state_dict()
    moved = [name for name, value in averaged.ema_state.items()
             if value.is_floating_point() and not torch.allclose(value, final[name])]
    assert moved, "the average equals the final weights: it was never an average"


def test_with_a_tiny_decay_the_average_is_the_weights_after_the_last_step() -> None:
    result, model = _fit(1e-9)  # the average is updated after every step, the last one included
    final = model.state_dict()
    for name, value in result.ema_state.items():
        assert torch.allclose(value, final[name], atol=1e-6), name
