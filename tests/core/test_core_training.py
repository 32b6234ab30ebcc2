"""Training and evaluation loops: the channels-last fast path changes speed, not results or layouts."""

from __future__ import annotations

import torch

from core.central import make_loss
from core.loss import JointLossConfig
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.training import TrainConfig, channels_last_layout, make_optimizer, predict, train_epoch

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
