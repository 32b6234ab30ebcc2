"""The results table of bench_heads on made-up errors: per-seed MADs, means and the difference to the baseline."""

import numpy as np

from bench.bench_heads import on_common_images, table


def test_table_rows_hold_per_seed_mads_and_the_relative_difference():
    errors = {
        "resnet18": {0: np.array([10.0, -10.0, 10.0, -10.0]), 1: np.array([12.0, -12.0, 12.0, -12.0])},
        "tjnet": {0: np.array([9.0, -9.0, 9.0, -9.0]), 1: np.array([9.0, 9.0, -9.0, -9.0])},
    }
    lines = table(errors, "resnet18")
    resnet, tjnet = lines[2], lines[3]
    assert resnet.startswith("| resnet18 | 0,1 | 10.00, 12.00 | 11.00 [")
    assert tjnet.startswith("| tjnet | 0,1 | 9.00, 9.00 | 9.00 [9.00, 9.00]")
    # -1 month on every image of seed 0, -3 on seed 1: -2 on average, -18.2 % of the baseline's 11; the
    # bootstrap draws a seed, then images, so its interval runs from one seed's difference to the other's
    assert "-2.00 [-3.00, -1.00]" in tjnet and tjnet.rstrip(" |").endswith("-18.2 %")


def test_rows_are_compared_on_the_images_every_model_scored():
    # a region model refused image "b" (its registration failed): every row drops it, in one order
    errors = {"whole": {0: {"a": 1.0, "b": 50.0, "c": -3.0}, 1: {"c": 2.0, "a": -1.0, "b": 40.0}},
              "carpal": {0: {"c": 4.0, "a": 2.0}}}
    aligned, n = on_common_images(errors)
    assert n == 2
    np.testing.assert_array_equal(aligned["whole"][0], [1.0, -3.0])
    np.testing.assert_array_equal(aligned["whole"][1], [-1.0, 2.0])
    np.testing.assert_array_equal(aligned["carpal"][0], [2.0, 4.0])
