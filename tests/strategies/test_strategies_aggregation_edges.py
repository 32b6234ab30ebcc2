"""Aggregation details the mutation run (docs/mutation.md) found unguarded: Adam with a step other than 1,
integer arrays per element, trimming per coordinate, refused hyperparameters, reasons and encoded state."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from strategies import SiteUpdate, build_aggregator, validate_update
from strategies.aggregation import decode_array, encode_array


def _update(site: str, examples: int, **arrays: np.ndarray) -> SiteUpdate:
    return SiteUpdate(site=site, arrays=arrays, num_examples=examples)


def test_fedadam_moments_scale_with_the_pseudo_gradient() -> None:
    agg = build_aggregator("fedadam")  # eta 0.1, beta_1 0.9, beta_2 0.99, tau 1e-3
    result = agg.aggregate({"w": np.array([0.0, 1.0])}, [_update("A", 1, w=np.array([2.0, 0.5]))])
    delta = np.array([2.0, -0.5])
    m, v = 0.1 * delta, 0.01 * delta**2  # first moment linear, second quadratic in the step
    np.testing.assert_allclose(agg.m["w"], m) and np.testing.assert_allclose(agg.v["w"], v)
    np.testing.assert_allclose(result["w"], np.array([0.0, 1.0]) + 0.1 * m / (np.sqrt(v) + 1e-3))


def test_integer_arrays_take_the_elementwise_max_and_do_not_stop_the_float_keys() -> None:
    agg = build_aggregator("fedavg")
    global_arrays = {"count": np.array([0, 0], dtype=np.int64), "w": np.array([0.0], dtype=np.float32)}
    result = agg.aggregate(global_arrays, [_update("A", 1, count=np.array([5, 1]), w=np.array([1.0], np.float32)),
                                           _update("B", 3, count=np.array([2, 7]), w=np.array([3.0], np.float32))])
    np.testing.assert_array_equal(result["count"], [5, 7])
    assert result["count"].dtype == np.int64 and result["w"].dtype == np.float32
    np.testing.assert_allclose(result["w"], [2.5])


def test_fedtrimmedavg_trims_each_coordinate_on_its_own() -> None:
    agg = build_aggregator("fedtrimmedavg")  # beta 0.2: one cut at each end of five
    values = [(100.0, 0.0), (1.0, 50.0), (0.0, 1.0), (3.0, 2.0), (2.0, 3.0)]
    sites = [_update(str(i), 1, w=np.array(v)) for i, v in enumerate(values)]
    np.testing.assert_allclose(agg.aggregate({"w": np.zeros(2)}, sites)["w"], [2.0, 2.0])


@pytest.mark.parametrize("options", [{"tau": 0.0}, {"eta": 0.0}, {"beta_1": 1.0}, {"beta_2": 1.0}, {"tau": -1.0}])
def test_fedadam_refuses_each_bad_hyperparameter(options) -> None:
    with pytest.raises(ConfigError):
        build_aggregator("fedadam", **options)


def test_unknown_keys_are_named_up_to_three_then_counted() -> None:
    known = {"w": np.zeros(1)}
    many = _update("A", 1, **{k: np.zeros(1) for k in ("a", "b", "c", "d", "e")})
    assert validate_update(known, many) == "5 unknown key(s): a, b, c (+2 more)"
    three = _update("A", 1, **{k: np.zeros(1) for k in ("a", "b", "c")})
    assert validate_update(known, three) == "3 unknown key(s): a, b, c"
    assert validate_update(known, _update("A", 1)) == "empty update: no arrays returned"
    bad = _update("A", 1, w=np.array([np.inf]))
    assert validate_update(known, bad) == "non-finite values in w"


@pytest.mark.parametrize("array", [np.arange(6, dtype=np.int64).reshape(2, 3),
                                   np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)])
def test_encoded_arrays_come_back_with_their_dtype_and_shape(array) -> None:
    back = decode_array(encode_array(array))
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    assert back.flags.writeable
