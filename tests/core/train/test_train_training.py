"""Training and evaluation loops: the channels-last fast path changes speed, not results or layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from core.train import training
from core.train.loss import make_loss
from core.train.loss import JointLossConfig
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.stats.metrics import Predictions
from core.train.training import TrainConfig, channels_last_layout, fit, make_optimizer, predict, train_epoch

CPU = torch.device("cpu")


def _batches(n_batches: int = 3, size: int = 48) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(8, 1, size, size, generator=generator),
             "male": torch.randint(0, 2, (8,), generator=generator).float(),
             "age": torch.randint(6, 220, (8,), generator=generator).float()} for _ in range(n_batches)]


def _model() -> TJNet:
    torch.manual_seed(0)
    return TJNet(TJNetConfig(image_size=48, width=0.25))


def _all_standard(model: torch.nn.Module) -> bool:
    return all(t.is_contiguous() for t in (*model.parameters(), *model.buffers()))


def test_the_layout_is_standard_outside_the_block_and_channels_last_inside() -> None:
    model = _model()
    conv = model.block2[0][0].weight
    with channels_last_layout(model) as layout:
        assert layout == torch.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
        assert not conv.is_contiguous()
    assert _all_standard(model)
    with channels_last_layout(model, enabled=False) as layout:
        assert layout == torch.contiguous_format and conv.is_contiguous()


def test_prediction_agrees_with_the_standard_layout() -> None:
    batches, model = _batches(), _model()
    fast = predict(model, batches, CPU, channels_last=True).predicted_months
    standard = predict(model, batches, CPU, channels_last=False).predicted_months
    assert abs(fast - standard).max() < 1e-3 and _all_standard(model)


def test_training_agrees_with_the_standard_layout_up_to_rounding() -> None:
    batches = _batches()
    results = {}
    for channels_last in (True, False):
        model = _model()
        loss_fn = make_loss(model, JointLossConfig())
        optimizer = make_optimizer(model, TrainConfig(lr=1e-3))
        stats = train_epoch(model, batches, loss_fn, optimizer, CPU, channels_last=channels_last)
        predicted = predict(model, batches, CPU, channels_last=channels_last).predicted_months
        assert _all_standard(model)  # what checkpoints and federated arrays see
        results[channels_last] = (stats.loss, torch.from_numpy(predicted), model.state_dict())
    fast, standard = results[True], results[False]
    assert abs(fast[0] - standard[0]) < 1e-3 * abs(standard[0])
    assert torch.allclose(fast[1], standard[1], atol=0.5)  # Adam's normalised steps amplify rounding
    for key, value in standard[2].items():
        assert torch.allclose(fast[2][key], value, atol=1e-2), key


def test_the_fast_path_is_reproducible() -> None:
    batches = _batches()
    predictions = []
    for _ in range(2):
        model = _model()
        optimizer = make_optimizer(model, TrainConfig(lr=1e-3))
        train_epoch(model, batches, make_loss(model, JointLossConfig()), optimizer, CPU)
        predictions.append(predict(model, batches, CPU).predicted_months)
    assert (predictions[0] == predictions[1]).all()


def test_a_model_evaluated_on_the_fast_path_can_train_again() -> None:
    batches, model = _batches(), _model()
    predict(model, batches, CPU)
    assert not any(t.is_inference() for t in (*model.parameters(), *model.buffers()))
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # what freezing and unfreezing do
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3))
    stats = train_epoch(model, batches, make_loss(model, JointLossConfig()), optimizer, CPU)
    assert stats.examples == 24


def _scripted_fit(monkeypatch, val_mads: list[float], config: TrainConfig, loss_config: JointLossConfig):
    """`fit` on three small batches, with the val MAD of epoch k set to val_mads[k - 1]."""
    sequence = iter(val_mads)

    def scripted(*args, **kwargs) -> Predictions:
        mad = next(sequence)
        return Predictions(np.array([mad], dtype=np.float32), np.zeros(1, dtype=np.float32), np.ones(1, dtype=np.float32))

    monkeypatch.setattr(training, "predict", scripted)
    items = [{"image": b["image"][i], "male": b["male"][i], "age": b["age"][i]} for b in _batches() for i in range(8)]
    loader = DataLoader(items, batch_size=8)
    model = _model()
    return fit(model, loader, loader, make_loss(model, loss_config), config, CPU)


def test_fit_stops_early_drops_the_lr_on_a_plateau_and_raises_alpha_on_a_stable_val_mad(monkeypatch) -> None:
    config = TrainConfig(epochs=6, lr=1e-3, lr_schedule="plateau", lr_patience=1, early_stop_patience=2,
                         progress=False)
    result = _scripted_fit(monkeypatch, [30.0, 31.0, 32.0, 1.0], config, JointLossConfig(alpha_rule="val"))
    # epoch 2 is no better than epoch 1: the plateau drop (patience 1) and the val rule both fire after it;
    # epoch 3 is the second epoch without a gain: training stops there (patience 2), keeping epoch 1
    assert [row["epoch"] for row in result.history] == [1, 2, 3] and result.best_epoch == 1
    assert [row["lr"] for row in result.history] == pytest.approx([1e-3, 1e-3, 1e-6])
    assert [row["alpha"] for row in result.history] == [1.5, 1.5, 77.0]


def test_fit_without_early_stopping_trains_every_epoch(monkeypatch) -> None:
    result = _scripted_fit(monkeypatch, [30.0, 31.0, 32.0], TrainConfig(epochs=3, progress=False), JointLossConfig())
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.history[-1]["lr"] < result.history[0]["lr"] < 1e-3  # the cosine decays
