"""The frozen-block feature cache: same loss and gradients as the full model, keyed on everything, bounded."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from core.train.loss import make_loss
from core.data import AugmentConfig
from core.data.dataset import BoneAgeDataset
from core.data.manifest import load_manifest
from core.data.config import SiteDataConfig
from core.train.feature_augment import plain_view
from core.train.feature_cache import FeatureCache
from core.stages.finetune import train_site_round
from core.train.loss import JointLossConfig
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks, parse_freeze_spec
from core.model.split import FrozenPrefix, TrainableTail, cached_depth
from core.model.tjnet import TJNet
from core.privacy import DPConfig
from core.round_settings import RoundSettings
from sim.phantom.writer import generate_site

SIZE = 48
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list:
    folder = generate_site("eu_clinic", 12, tmp_path_factory.mktemp("features") / "site", seed=3, image_size=SIZE)
    return load_manifest(SiteDataConfig(root=folder)).records


def _dataset(records: list, size: int = SIZE, augment: AugmentConfig | None = AugmentConfig(), seed: int = 0):
    return BoneAgeDataset(records, size, augment, seed)


def _model(size: int = SIZE, freeze: str = "1-3", seed: int = 0) -> TJNet:
    torch.manual_seed(seed)
    model = TJNet(TJNetConfig(image_size=size, width=0.25))
    freeze_blocks(model, parse_freeze_spec(freeze))
    return model


def test_the_cached_depth_is_the_longest_frozen_prefix() -> None:
    assert [cached_depth(parse_freeze_spec(s)) for s in ("none", "1", "1-2", "1-3", "1-4", "1-5", "2-3", "1,3")] == \
        [0, 1, 2, 3, 4, 5, 0, 1]


@pytest.mark.parametrize("freeze", ["1", "1-2", "1-3", "1-4", "1-5", "1-3,5"])
def test_the_tail_on_the_prefix_is_the_model(freeze: str) -> None:
    model = _model(freeze=freeze).eval()
    depth = cached_depth(model.frozen_blocks)
    image, male = torch.randn(3, 1, SIZE, SIZE), torch.tensor([0.0, 1.0, 1.0])
    with torch.no_grad():
        whole = model(image, male)
        tail = TrainableTail(model, depth).eval()
        cut = tail(FrozenPrefix(model, depth)(image), male)
    assert torch.allclose(whole.expected_months, cut.expected_months, atol=1e-5)
    assert torch.allclose(whole.sex_logits, cut.sex_logits, atol=1e-5)
    assert {name for name, p in tail.named_parameters() if p.requires_grad} == \
        {name for name, p in model.named_parameters() if p.requires_grad}


def _loss_and_grads(model: torch.nn.Module, module: torch.nn.Module, batch: dict) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    module.train()
    torch.manual_seed(7)  # the same dropout masks in blocks 5 and 6
    parts = make_loss(model, JointLossConfig())(module(batch["image"], batch["male"]), batch["age"], batch["male"])
    parts.total.backward()
    return float(parts.total.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("freeze", ["1-2", "1-3", "1-4"])
def test_cached_views_give_the_same_loss_and_gradients(records: list, freeze: str) -> None:
    model = _model(freeze=freeze)
    dataset = _dataset(records)
    tail, cached = FeatureCache(views=3, channels_last=False).prepare(model, dataset, CPU)  # the test's layout
    for epoch in (1, 2, 4):  # epoch 4 reuses view 1
        dataset.set_epoch(epoch % 3)
        cached.set_epoch(epoch)
        plain = _loss_and_grads(model, model, default_collate([dataset[i] for i in range(8)]))
        fast = _loss_and_grads(model, tail, default_collate([cached[i] for i in range(8)]))
        assert fast[0] == pytest.approx(plain[0], rel=1e-5)
        assert plain[1].keys() == fast[1].keys() and plain[1]
        assert all(not n.startswith(("block1.", "block2.")) for n in fast[1])
        for name, grad in plain[1].items():
            assert torch.allclose(fast[1][name], grad, rtol=1e-4, atol=1e-6), name


def _round(records: list, features: FeatureCache | None, dp: DPConfig | None = None, ledger: Path | None = None):
    model = _model()
    settings = RoundSettings(local_epochs=2, batch_size=4, seed=1, freeze=(1, 2, 3), num_rounds=2)
    train, val = _dataset(records[:8]), _dataset(records[8:], augment=None)
    result = train_site_round(model, train, val, settings, CPU, 1, dp, ledger, features=features)
    return model.state_dict(), result


@pytest.mark.parametrize("private", [False, True])
def test_a_round_trains_the_same_weights_with_and_without_the_cache(records: list, tmp_path: Path,
                                                                    private: bool) -> None:
    dp = DPConfig(enabled=True, noise_multiplier=1.0, delta=1e-3, seed=5, max_epsilon=1e3) if private else None
    plain, plain_result = _round(records, None, dp, tmp_path / "plain")
    cache = FeatureCache(views=8)
    fast, fast_result = _round(records, cache, dp, tmp_path / "fast")
    assert cache.misses == 1  # the cache was used
    if not private:  # two local epochs compute two views, no more: a view nobody uses is never computed
        assert len(next(iter(cache._entries.values())).views) == 2
    for key, value in plain.items():
        assert torch.allclose(fast[key], value, rtol=1e-4, atol=1e-5), key
    assert fast_result.val_mad_months == pytest.approx(plain_result.val_mad_months, rel=1e-4)
    assert any(not torch.equal(plain[k], _model().state_dict()[k]) for k in plain if k.startswith("block4"))
    if private:
        assert fast_result.epsilon == pytest.approx(plain_result.epsilon)


def _edited(records: list) -> BoneAgeDataset:
    dataset = _dataset(records)
    dataset.images = dataset.images.copy()
    dataset.images[0, SIZE // 2, SIZE // 2] ^= 0x40
    return dataset


def test_the_same_weights_and_pixels_in_new_objects_are_a_hit(records: list) -> None:
    cache = FeatureCache(views=2, channels_last=False)
    cache.prepare(_model(), _dataset(records), CPU)
    cache.prepare(_model(), _dataset(records), CPU)
    assert (cache.hits, cache.misses) == (1, 1)


def _changed_weights() -> TJNet:
    changed = _model()
    with torch.no_grad():
        changed.block2[0][0].weight.mul_(1.5)  # a frozen block changed (e.g. another pretrained model)
    return changed


# each component of the key: (the key's field it must change, a model and split differing from the cached one in it)
KEY_CHANGES = {
    "pretrained weights": ("weights_sha256", lambda r: (_changed_weights(), _dataset(r))),
    "preprocessing": ("pixels_sha256", lambda r: (_model(), _edited(r))),  # one pixel: another preprocessing
    "input size": ("image_size", lambda r: (_model(size=64), _dataset(r, size=64))),
    "freeze spec": ("depth", lambda r: (_model(freeze="1-2"), _dataset(r))),
    "augmentation": ("augment", lambda r: (_model(), _dataset(r, augment=AugmentConfig(rotate_deg=5.0)))),
    "augmentation seed": ("seed", lambda r: (_model(), _dataset(r, seed=1))),
    "no augmentation": ("augment", lambda r: (_model(), _dataset(r, augment=None))),
}


@pytest.mark.parametrize("change", KEY_CHANGES)
def test_a_change_of_each_key_component_is_a_new_entry_with_its_own_features(records: list, change: str) -> None:
    cache = FeatureCache(views=2, channels_last=False)
    model, dataset = _model(), _dataset(records)
    cache.prepare(model, dataset, CPU)
    field, make = KEY_CHANGES[change]
    other_model, other_data = make(records)
    tail, features = cache.prepare(other_model, other_data, CPU)
    assert (cache.hits, cache.misses) == (0, 2)
    old, new = (cache.key(m, d, c) for m, d, c in ((model, dataset, 3), (other_model, other_data, tail.depth)))
    assert getattr(old, field) != getattr(new, field)  # the key holds this component itself
    other_data.set_epoch(1)
    features.set_epoch(1)
    with torch.no_grad():  # what the cache returned is this model's view of these images
        expected = FrozenPrefix(other_model, tail.depth).eval()(other_data[0]["image"][None])[0]
    assert torch.allclose(features[0]["image"], expected, atol=1e-5)


def test_the_number_of_views_is_part_of_the_key(records: list) -> None:
    cache = FeatureCache(views=2, channels_last=False)
    model, dataset = _model(), _dataset(records)
    cache.prepare(model, dataset, CPU)
    cache.views = 3
    tail, features = cache.prepare(model, dataset, CPU)
    assert (cache.hits, cache.misses) == (0, 2) and features.views == 3
    features.set_epoch(2)  # view 2 exists only with 3 views
    dataset.set_epoch(2)
    with torch.no_grad():
        expected = FrozenPrefix(model, tail.depth).eval()(dataset[0]["image"][None])[0]
    assert torch.allclose(features[0]["image"], expected, atol=1e-5)


def test_the_memory_bound_is_kept_and_an_oversized_split_trains_uncached(records: list, caplog) -> None:
    model, dataset = _model(), _dataset(records)
    one = FeatureCache(views=2).prepare(model, dataset, CPU)[1].entry.nbytes
    cache = FeatureCache(max_bytes=one + one // 2, views=2)
    cache.prepare(model, dataset, CPU)
    cache.prepare(model, _dataset(records, seed=1), CPU)
    assert cache.nbytes <= cache.max_bytes and len(cache._entries) == 1  # the older entry was dropped
    cache.prepare(model, dataset, CPU)
    assert cache.misses == 3
    with caplog.at_level(logging.WARNING):
        assert FeatureCache(max_bytes=one - 1, views=2).prepare(model, dataset, CPU) is None
    assert "training without the cache" in caplog.text
    assert FeatureCache(max_bytes=0).prepare(model, dataset, CPU) is None
    assert FeatureCache().prepare(_model(freeze="none"), dataset, CPU) is None  # nothing frozen: nothing to cache


def test_in_feature_space_one_unaugmented_view_is_augmented_anew_every_epoch(records: list) -> None:
    cache = FeatureCache(views=4, channels_last=False, augment_where="features")
    model, dataset = _model(freeze="1-2"), _dataset(records)  # 1-2: block 2's maps, 6 x 6 at 48 px
    tail, features = cache.prepare(model, dataset, CPU)
    assert cache.key(model, dataset, 2).in_features and not FeatureCache().key(model, dataset, 2).in_features
    evaluated = _dataset(records, augment=None)  # what evaluation sees: the centre of the training canvas
    assert np.array_equal(plain_view(dataset).images, evaluated.images)
    with torch.no_grad():
        plain = FrozenPrefix(model, 2).eval()(torch.stack([evaluated[i]["image"] for i in range(len(evaluated))]))
    epochs = {}
    for epoch in (1, 2, 1):
        features.set_epoch(epoch)
        epochs.setdefault(epoch, []).append(torch.stack([features[i]["image"] for i in range(len(features))]))
    entry = next(iter(cache._entries.values()))
    assert list(entry.views) == [0] and entry.nbytes == len(dataset) * tail.feature_size * 4  # one view is kept
    assert torch.allclose(entry.views[0], plain, atol=1e-5)
    assert torch.equal(epochs[1][0], epochs[1][1]) and not torch.allclose(epochs[1][0], epochs[2][0], atol=1e-3)
    similarity = torch.nn.functional.cosine_similarity(epochs[1][0], plain).mean()
    assert 0.5 < similarity < 0.9999  # the same images, moved a little


def test_a_round_trains_on_features_augmented_in_feature_space(records: list) -> None:
    cache = FeatureCache(views=8, augment_where="features")
    state, result = _round(records, cache)
    (key, entry), = cache._entries.items()
    assert key.in_features and key.views == 1 and list(entry.views) == [0]  # one view served both epochs
    assert np.isfinite(result.val_mad_months)
    assert any(not torch.equal(state[k], _model().state_dict()[k]) for k in state if k.startswith("block4"))


def test_feature_space_never_builds_the_image_augmentation(records: list, monkeypatch) -> None:
    """A round in feature space reads no augmented image, so its process never loads albumentations."""
    monkeypatch.setitem(sys.modules, "albumentations", None)  # any import of it now fails
    _, result = _round(records, FeatureCache(views=8, augment_where="features"))  # builds augmented splits, trains
    assert np.isfinite(result.val_mad_months)
    with pytest.raises(ImportError):  # the guard holds: reading an augmented image needs the pipeline
        _dataset(records)[0]
