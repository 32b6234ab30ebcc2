"""The results table of bench_heads on made-up errors: per-seed MADs, means and the difference to the baseline."""

import numpy as np

from bench.bench_heads import table


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
