"""The six aggregators on tiny arrays, against values worked out by hand."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import strategies.aggregation
from strategies import STRATEGY_NAMES, SiteUpdate, build_aggregator, validate_update
from strategies.aggregation import AGGREGATORS


def f64(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def update(site: str, examples: int, /, **arrays: np.ndarray) -> SiteUpdate:
    return SiteUpdate(site=site, arrays=arrays, num_examples=examples)


def test_registry_matches_names_and_unknown_name_lists_choices() -> None:
    assert tuple(AGGREGATORS) == STRATEGY_NAMES
    with pytest.raises(ValueError, match="fedavg, fedprox, fedavgm, fedadam, fedmedian, fedtrimmedavg"):
        build_aggregator("fedsgd")


def test_fedavg_per_key_over_the_sites_that_trained_each_key() -> None:
    global_arrays = {
        "a": np.zeros(2, dtype=np.float32),
        "b": np.ones(2, dtype=np.float32),
        "c": np.full(1, 5.0, dtype=np.float32),
        "n": np.array(3, dtype=np.int64),
    }
    full = update("A", 1, a=np.array([1, 2], np.float32), b=np.array([3, 3], np.float32), n=np.array(5))
    subset = update("B", 3, a=np.array([5, 6], np.float32), n=np.array(7))  # froze the block of "b"
    result = build_aggregator("fedavg").aggregate(global_arrays, [full, subset])
    assert list(result) == ["a", "b", "c", "n"]
    np.testing.assert_allclose(result["a"], [4.0, 5.0])  # (1*[1,2] + 3*[5,6]) / 4
    np.testing.assert_allclose(result["b"], [3.0, 3.0])  # only A trained it
    np.testing.assert_array_equal(result["c"], [5.0])  # nobody trained it
    assert result["n"] == 7 and result["n"].dtype == np.int64  # integer arrays: max of contributors
    assert all(result[k].dtype == global_arrays[k].dtype for k in global_arrays)


def test_fedprox_aggregates_like_fedavg_and_sends_mu() -> None:
    global_arrays = {"w": f64(0.0, 0.0)}
    updates = [update("A", 1, w=f64(1.0, 2.0)), update("B", 3, w=f64(5.0, 6.0))]
    prox = build_aggregator("fedprox", proximal_mu=0.01)
    np.testing.assert_allclose(prox.aggregate(global_arrays, updates)["w"], [4.0, 5.0])
    assert prox.train_config() == {"proximal-mu": 0.01}
    assert build_aggregator("fedavg").train_config() == {}


def test_fedavgm_momentum_over_two_rounds() -> None:
    agg = build_aggregator("fedavgm", server_learning_rate=0.5, server_momentum=0.9)
    # round 1: mean 0.25, pseudo-gradient 1 - 0.25 = 0.75, momentum 0.75, new 1 - 0.5 * 0.75 = 0.625
    x1 = agg.aggregate({"w": f64(1.0)}, [update("A", 1, w=f64(0.0)), update("B", 1, w=f64(0.5))])["w"]
    np.testing.assert_allclose(x1, [0.625])
    # round 2: mean 0.125, pseudo-gradient 0.5, momentum 0.9 * 0.75 + 0.5 = 1.175, new 0.625 - 0.5875
    x2 = agg.aggregate({"w": x1}, [update("A", 2, w=f64(0.125))])["w"]
    np.testing.assert_allclose(x2, [0.0375])


def test_fedavgm_defaults_reduce_to_fedavg() -> None:
    updates = [update("A", 1, w=f64(1.0, 2.0)), update("B", 3, w=f64(5.0, 6.0))]
    out = build_aggregator("fedavgm").aggregate({"w": f64(9.0, 9.0)}, updates)
    np.testing.assert_allclose(out["w"], [4.0, 5.0])


def test_fedadam_two_rounds_and_a_step_count_per_key() -> None:
    agg = build_aggregator("fedadam")  # eta 0.1, beta_1 0.9, beta_2 0.99, tau 1e-3
    # round 1 trains only "w": delta 1, m 0.1, v 0.01, eta_t = 0.1 * sqrt(0.01) / 0.1 = 0.1
    r1 = agg.aggregate({"w": f64(0.0), "late": f64(2.0)}, [update("A", 4, w=f64(1.0))])
    np.testing.assert_allclose(r1["w"], [0.1 * 0.1 / (0.1 + 1e-3)])  # 0.0990099
    np.testing.assert_array_equal(r1["late"], [2.0])
    # round 2 trains both with delta 1: "w" has m 0.19, v 0.0199 at t = 2; "late" is at its t = 1
    x1 = r1["w"][0]
    r2 = agg.aggregate({"w": r1["w"], "late": r1["late"]}, [update("A", 4, w=f64(x1 + 1), late=f64(3.0))])
    eta_2 = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    np.testing.assert_allclose(r2["w"], [x1 + eta_2 * 0.19 / (np.sqrt(0.0199) + 1e-3)])  # x1 + 0.0992961
    np.testing.assert_allclose(r2["late"], [2.0 + 0.1 * 0.1 / (0.1 + 1e-3)])


def test_fedmedian_is_unweighted_and_per_coordinate() -> None:
    agg = build_aggregator("fedmedian")
    odd = [update("A", 100, w=f64(1.0, 0.0)), update("B", 1, w=f64(10.0, 3.0)), update("C", 1, w=f64(2.0, 9.0))]
    np.testing.assert_allclose(agg.aggregate({"w": f64(0.0, 0.0)}, odd)["w"], [2.0, 3.0])
    even = odd + [update("D", 1, w=f64(20.0, 1.0))]
    np.testing.assert_allclose(agg.aggregate({"w": f64(0.0, 0.0)}, even)["w"], [6.0, 2.0])


def test_fedtrimmedavg_cuts_beta_at_each_end() -> None:
    agg = build_aggregator("fedtrimmedavg")  # beta 0.2
    five = [update(str(i), 1 + 10 * i, w=f64(v)) for i, v in enumerate([100.0, 1.0, 0.0, 3.0, 2.0])]
    np.testing.assert_allclose(agg.aggregate({"w": f64(0.0)}, five)["w"], [2.0])  # mean of 1, 2, 3
    four = five[:4]  # int(0.2 * 4) = 0: nothing cut, unweighted mean
    np.testing.assert_allclose(agg.aggregate({"w": f64(0.0)}, four)["w"], [26.0])
    with pytest.raises(ValueError, match="beta"):
        build_aggregator("fedtrimmedavg", beta=0.5)


def test_validate_update_reasons() -> None:
    glob = {"w": np.zeros((2, 2), np.float32), "n": np.array(0, np.int64)}
    assert validate_update(glob, update("A", 3, w=np.ones((2, 2), np.float32))) is None
    assert "> 0" in validate_update(glob, update("A", 0, w=np.ones((2, 2), np.float32)))
    assert "empty" in validate_update(glob, update("A", 3))
    reason = validate_update(glob, update("A", 3, w=np.ones((2, 2)), fc1=np.ones(1), fc2=np.ones(1)))
    assert "unknown" in reason and "fc1" in reason and "fc2" in reason
    reason = validate_update(glob, update("A", 3, w=np.ones((2, 3), np.float32)))
    assert "shape" in reason and "(2, 3)" in reason and "(2, 2)" in reason
    assert "dtype" in validate_update(glob, update("A", 3, n=np.array(1.5)))
    bad = np.ones((2, 2), np.float32)
    bad[0, 1] = np.nan
    assert validate_update(glob, update("A", 3, w=bad)) == "non-finite values in w"


def two_rounds(name: str, resume_through_torch: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round 2 from a live aggregator, from a fresh one loaded with the round-1 state, and from a fresh one."""
    options = {"fedavgm": {"server_momentum": 0.9}, "fedprox": {"proximal_mu": 0.1}}.get(name, {})
    live = build_aggregator(name, **options)
    glob = {"w": np.array([0.5, -1.0], np.float32), "n": np.array(1, np.int64)}
    round1 = [update("A", 2, w=np.array([1.0, 2.0], np.float32)), update("B", 5, w=np.array([0.0, 1.0], np.float32))]
    glob = live.aggregate(glob, round1)
    state = live.state_dict()
    if resume_through_torch:  # as a checkpoint stores it: JSON metadata, then torch.save
        state = json.loads(json.dumps(state, default=str))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    resumed = build_aggregator(name, **options)
    resumed.load_state_dict(state)
    round2 = [update("A", 3, w=np.array([0.25, 4.0], np.float32), n=np.array(9, np.int64))]
    fresh = build_aggregator(name, **options).aggregate(glob, round2)["w"]
    return live.aggregate(glob, round2)["w"], resumed.aggregate(glob, round2)["w"], fresh


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@pytest.mark.parametrize("through_torch", [False, True])
def test_state_dict_round_trip_continues_identically(name: str, through_torch: bool) -> None:
    live, resumed, fresh = two_rounds(name, through_torch)
    np.testing.assert_array_equal(live, resumed)
    assert np.array_equal(live, fresh) == (name not in ("fedavgm", "fedadam"))  # the state matters


def test_state_of_another_aggregator_is_refused() -> None:
    with pytest.raises(ValueError, match="fedavgm"):
        build_aggregator("fedadam").load_state_dict(build_aggregator("fedavgm").state_dict())


def test_aggregation_module_imports_only_numpy_the_standard_library_and_the_error_classes() -> None:
    tree = ast.parse(Path(strategies.aggregation.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {name.split(".")[0] for name in imported} == {"__future__", "base64", "dataclasses", "typing", "numpy",
                                                                "core"}
    assert {name for name in imported if name.startswith("core")} == {"core.errors"}
