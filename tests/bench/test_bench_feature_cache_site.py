"""bench_feature_cache_site's arms on made-up runs: each arm trains at its batch size with its cache, the site's
declared unit reaches every run, and every arm is compared with the uncached run at the first batch size."""

import sys
from pathlib import Path

import numpy as np

import bench.bench_feature_cache_site as bench


def test_every_arm_runs_at_each_batch_size_and_is_compared_with_the_uncached_first(monkeypatch, capsys):
    runs = []

    def timed(pretrained, data, out, config, features=None):
        runs.append((config.batch_size, config.feature_cache, config.feature_augment, data.label_unit,
                     None if features is None else features.augment_where))
        return 2.0, 1.0 if config.feature_cache else 3.0  # wall, CPU: the cache 3x faster in CPU

    monkeypatch.setattr(bench, "timed_finetune", timed)
    monkeypatch.setattr(bench, "finetune_site", lambda *args, **kwargs: None)  # the untimed warm-up
    monkeypatch.setattr(bench, "test_errors", lambda out, data, **shared: np.full(4, 2.0 if "off" in out.name else 1.0))
    monkeypatch.setattr(sys, "argv", ["bench", "--pretrained", "m.pt", "--data", str(Path("site")), "--label-unit",
                                      "years", "--seeds", "0,1", "--feature-augment", "features",
                                      "--batch-sizes", "16,32", "--no-warm"])
    bench.main()
    per_seed = [(16, False, "features", "years", None), (16, True, "features", "years", "features"),
                (32, False, "features", "years", None), (32, True, "features", "years", "features")]
    assert runs == per_seed * 2
    out = capsys.readouterr().out
    assert "arms off b16, features b16, off b32, features b32; reference off b16" in out
    assert "features b32: speed-up of the whole command (wall, CPU) 1.00x, 3.00x" in out
    assert "paired difference (features b32 - off b16) -1.00 [-1.00, -1.00] months, 8 image-seed pairs" in out
    assert "off b32: speed-up of the whole command (wall, CPU) 1.00x, 1.00x" in out and "warm" not in out


def test_named_arms_run_in_order_and_the_held_out_set_gets_its_own_paired_intervals(monkeypatch, capsys, tmp_path):
    runs, scored = [], []

    def timed(pretrained, data, out, config, features=None):
        runs.append((config.feature_cache, config.feature_augment, config.batch_size,
                     None if features is None else features.augment_where))
        return 1.0, 1.0

    def errors(out, data, **shared):
        scored.append(data.root.name)
        worse = 0.5 if "features" in out.name else 0.0  # the feature-space arm half a month worse, on both sets
        return np.full(3 if data.root.name == "site" else 5, 2.0 + worse)

    monkeypatch.setattr(bench, "timed_finetune", timed)
    monkeypatch.setattr(bench, "finetune_site", lambda *args, **kwargs: None)
    monkeypatch.setattr(bench, "test_errors", errors)
    monkeypatch.setattr(sys, "argv", ["bench", "--pretrained", "m.pt", "--data", "site", "--seeds", "0",
                                      "--arms", "off:16,images:16,features:32", "--extra-test", "heldout",
                                      "--save-errors", str(tmp_path / "errors.npz")])
    bench.main()
    assert runs == [(False, "images", 16, None), (True, "images", 16, "images"), (True, "features", 32, "features")]
    assert scored == ["site", "heldout"] * 3
    out = capsys.readouterr().out
    assert "features b32 on heldout: held-out MAD 2.50 months (off b16 2.00); paired difference 0.50 [0.50, 0.50]" \
           " months, 5 image-seed pairs" in out
    assert "images b16 on heldout: held-out MAD 2.00 months" in out and "warm" not in out
    saved = np.load(tmp_path / "errors.npz")
    assert sorted(saved.files) == sorted(f"{arm}/{kind}/0" for arm in ("off b16", "images b16", "features b32")
                                         for kind in ("test", "extra"))
    assert np.array_equal(saved["features b32/extra/0"], np.full(5, 2.5)) and saved["off b16/test/0"].shape == (3,)
