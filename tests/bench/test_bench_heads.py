"""The results table of bench_heads on made-up errors: per-seed MADs, means and the difference to the baseline."""

import numpy as np
import torch

from bench.bench_heads import on_common_images, table
from bench.bench_heads import test_errors as scored_errors  # not a test: keep pytest from collecting it
from core.checkpoint import describe, save_checkpoint
from core.data import SiteDataConfig
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.predict.tta import TTAConfig
from sim.phantom.writer import generate_site


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


def test_checkpoints_are_scored_with_their_own_tta_and_optionally_an_extra_one(tmp_path):
    site = generate_site("rsna", 40, tmp_path / "site", seed=2, image_size=48)
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    runs = tmp_path / "runs"
    save_checkpoint(runs / "plain_s0.pt", model, describe(model))
    save_checkpoint(runs / "tta_s0.pt", model, describe(model, tta=TTAConfig(0.05, 0.0).to_dict()))
    errors = scored_errors(sorted(runs.glob("*.pt")), SiteDataConfig(site), "test", TTAConfig(0.05, 0.0))
    assert set(errors) == {"plain", "plain+tta", "tta", "tta+tta"}
    # the same weights: the checkpoint that records the augmentation scores as the plain one does with it
    def values(row: str) -> list[float]:
        return [errors[row][0][image] for image in sorted(errors["plain"][0])]

    assert np.allclose(values("tta"), values("plain+tta"))
    assert not np.allclose(values("plain"), values("plain+tta"))


def test_budget_table_reads_epochs_minutes_and_sums_an_ensembles_members(tmp_path):
    from bench.bench_heads import budget_table
    from core.model.combined import CombinedConfig, EnsembleModel, MemberSpec

    torch.manual_seed(0)
    member = TJNet(TJNetConfig(image_size=48, width=0.25))
    history = [{"epoch": e, "val_mad_months": 30.0 - e} for e in (1, 2, 3)]
    runs = tmp_path / "runs"
    for name, seconds in (("a_s0.pt", 120.0), ("b_s0.pt", 30.0)):
        save_checkpoint(runs / name, member, describe(member, history=history, best_epoch=2, train_seconds=seconds))
    spec = MemberSpec("tjnet", member.config.to_dict())
    ensemble = EnsembleModel(CombinedConfig(members=(spec, spec), names=("a", "b")), [member, member])
    members = [{"file": str(runs / "a_s0.pt")}, {"file": str(runs / "b_s0.pt")}]
    save_checkpoint(runs / "ens_s0.pt", ensemble, describe(ensemble, member_checkpoints=members))
    save_checkpoint(runs / "ens_s1.pt", ensemble, describe(ensemble, member_checkpoints=[{"file": "gone.pt"}]))
    lines = budget_table(sorted(runs.glob("*.pt")))
    n = sum(p.numel() for p in member.parameters())
    assert lines[2] == f"| a | {n:,} | 3 (2) | 2.0 | 2.0 |"
    assert lines[3] == f"| b | {n:,} | 3 (2) | 0.5 | 0.5 |"
    # the ensemble: its members' epochs and minutes summed; a seed whose member file is gone has no budget
    assert lines[4] == f"| ens | {2 * n:,} | 6, n/a | 2.5, n/a | n/a |"


def test_a_tagged_checkpoint_forms_its_own_row():
    from bench.bench_heads import row_and_seed

    assert row_and_seed("tjnet_s2.pt") == ("tjnet", 2)
    assert row_and_seed("tjnet_s2.raw.pt") == ("tjnet.raw", 2)  # the raw weights beside an --ema-decay run
    assert row_and_seed("tjnet_paper_s10.pt") == ("tjnet_paper", 10)
    assert row_and_seed("notes.pt") is None


def test_pairs_give_each_seeds_difference_its_mean_over_seeds_and_the_spread():
    from bench.bench_heads import pair_table

    errors = {"a": {0: np.array([9.0, -9.0, 9.0, -9.0]), 1: np.array([10.0, 10.0, -10.0, -10.0]),
                    2: np.array([5.0, 5.0, 5.0, 5.0])},
              "b": {0: np.array([10.0, -10.0, 10.0, -10.0]), 1: np.array([13.0, -13.0, 13.0, -13.0])}}
    line = pair_table(errors, [("a", "b")])[2]
    # seeds both rows have: 0 and 1; -1 month on every image of seed 0, -3 on seed 1 (no spread over images)
    assert line.startswith("| a - b | 0,1 | -1.00 [-1.00, -1.00]; -3.00 [-3.00, -3.00] | -2.00 [")
    # the t interval over two seeds' differences (-1, -3) is wide: 12.71 * 1.41 / 1.41 on each side
    assert "-2.00 [-14.71, 10.71]" in line
    assert line.endswith("| 1.00 | 3.00 |")  # MAD spread over seeds 0 and 1: a 9-10, b 10-13


def test_a_pair_naming_a_missing_row_is_one_line_and_exit_code_2(tmp_path, capsys):
    import pytest

    from bench.bench_heads import main

    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    save_checkpoint(tmp_path / "tjnet_s0.pt", model, describe(model))
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs", str(tmp_path), "--data", str(tmp_path), "--pairs", "tjnet:resnet18"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "resnet18" in err and "rows: tjnet" in err
