"""`python -m server pretrain` and `evaluate` on a tiny phantom site."""

import json
import math

import pytest
import torch

from core.train.evaluation import evaluate_model
from core.checkpoint import load_checkpoint
from core.data import AugmentConfig, SiteDataConfig, load_site
from core.stages.finetune import train_site_round
from core.round_settings import RoundSettings
from core.privacy import DPConfig
from core.predict.tta import PRETRAIN_TTA, TTAConfig, tta_config_of
from server.cli import main
from sim.phantom.writer import generate_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return generate_site("rsna", 48, tmp_path_factory.mktemp("cli") / "site", seed=3, image_size=48)


@pytest.fixture(scope="module")
def checkpoint(site, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "model.pt"
    code = main(["pretrain", "--data", str(site), "--out", str(out), "--epochs", "2", "--image-size", "48",
                 "--width", "0.25", "--batch-size", "8", "--no-progress", "--no-cbam", "--seed", "5"])
    assert code == 0
    return out


def test_pretrain_saves_the_best_checkpoint_with_its_metadata(checkpoint):
    loaded = load_checkpoint(checkpoint)
    meta = loaded.metadata
    assert meta["model_config"]["use_cbam"] is False and meta["model_config"]["image_size"] == 48
    assert meta["seed"] == 5 and len(meta["history"]) == 2
    assert meta["best_epoch"] in (1, 2)
    assert meta["data"]["summary"]["n_usable"] == 48
    assert meta["block_names"] == ["block1", "block2", "block3", "block4", "block5", "block6"]


def test_pretrain_records_test_time_augmentation_by_default_and_no_tta_records_none(checkpoint, site, tmp_path,
                                                                                   capsys):
    """TTA (shift 0.04, scale 0.05) is the default recipe: it gained on every seed of both models at 96 px."""
    assert PRETRAIN_TTA == TTAConfig(shift=0.04, scale=0.05)
    assert tta_config_of(load_checkpoint(checkpoint).metadata) == PRETRAIN_TTA
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(site), "--json"]) == 0
    with_tta = json.loads(capsys.readouterr().out)
    assert with_tta["tta"] == {"shift": 0.04, "scale": 0.05}  # evaluate applies it, or not with --no-tta:
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(site), "--json", "--no-tta"]) == 0
    one_pass = json.loads(capsys.readouterr().out)
    test_split = load_site(SiteDataConfig(site), 48, None, seed=0).test
    plain = evaluate_model(load_checkpoint(checkpoint).model, test_split, torch.device("cpu"))
    assert one_pass["tta"] == {"shift": 0.0, "scale": 0.0} and one_pass["mad_months"] == pytest.approx(plain["mad_months"])
    assert with_tta["mad_months"] != pytest.approx(plain["mad_months"], abs=1e-6)
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(site)]) == 0
    assert "test-time augmentation recorded by the model: shift 0.04, scale 0.05" in capsys.readouterr().out
    out = tmp_path / "plain.pt"
    assert main(["pretrain", "--data", str(site), "--out", str(out), "--epochs", "1", "--image-size", "48",
                 "--width", "0.25", "--batch-size", "8", "--no-progress", "--no-tta"]) == 0
    assert not tta_config_of(load_checkpoint(out).metadata).enabled


def test_evaluate_json_has_the_documented_keys(checkpoint, site, capsys):
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(site), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"mad_months", "rmse_months", "n", "accuracy", "bias_months", "mad_by_age_group"} <= set(result)
    assert result["n"] > 0 and result["rmse_months"] >= result["mad_months"]


def test_evaluate_prints_a_readable_summary(checkpoint, site, capsys):
    assert main(["evaluate", "--model", str(checkpoint), "--data", str(site), "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "MAD" in out and "n=48" in out


def test_a_wrong_column_is_one_line_and_exit_code_2(checkpoint, site, capsys):
    code = main(["evaluate", "--model", str(checkpoint), "--data", str(site), "--age-column", "age"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "age" in err and "\n" not in err


def test_a_missing_checkpoint_is_one_line_and_exit_code_2(site, tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "nope.pt"), "--data", str(site)])
    assert code == 2 and "checkpoint not found" in capsys.readouterr().err


def test_pretraining_twice_with_one_seed_gives_identical_weights(site, checkpoint, tmp_path):
    again = tmp_path / "again.pt"
    assert main(["pretrain", "--data", str(site), "--out", str(again), "--epochs", "2", "--image-size", "48",
                 "--width", "0.25", "--batch-size", "8", "--no-progress", "--no-cbam", "--seed", "5"]) == 0
    first, second = load_checkpoint(checkpoint).model.state_dict(), load_checkpoint(again).model.state_dict()
    assert all((first[k] == second[k]).all() for k in first)


@pytest.mark.parametrize("arch, head", [("tjnet", "months"), ("tjnet", "regression"), ("resnet", "paper")])
def test_each_head_pretrains_evaluates_and_trains_a_site_round(site, tmp_path, capsys, arch, head):
    out = tmp_path / "model.pt"
    assert main(["pretrain", "--data", str(site), "--out", str(out), "--epochs", "1", "--image-size", "48",
                 "--width", "0.25", "--batch-size", "8", "--no-progress", "--arch", arch, "--head", head]) == 0
    loaded = load_checkpoint(out)
    assert loaded.metadata["model_config"]["head"] == head and loaded.model.age_head.name == head
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(site), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] > 0 and math.isfinite(metrics["mad_months"])
    if arch != "tjnet":  # federation fine-tunes TJ-Net blocks
        return
    data = load_site(SiteDataConfig(site), 48, AugmentConfig(), seed=0)
    # the regression loss has its own per-sample variant: one private round for it, a plain one for months
    dp = DPConfig(enabled=True, noise_multiplier=1.0, max_epsilon=100.0, seed=0) if head == "regression" else None
    model = load_checkpoint(out).model
    before = model.block6.head[-1].weight.detach().clone()
    result = train_site_round(model, data.train, data.val, RoundSettings(batch_size=8, freeze=(1, 2, 3, 4)),
                              torch.device("cpu"), 1, dp=dp, ledger_dir=tmp_path / "state")
    assert math.isfinite(result.val_mad_months) and not torch.equal(before, model.block6.head[-1].weight)


def test_sex_specific_pretraining_gives_one_checkpoint_with_a_model_per_sex(site, tmp_path, capsys):
    out = tmp_path / "pair.pt"
    assert main(["pretrain", "--data", str(site), "--out", str(out), "--epochs", "1", "--image-size", "48",
                 "--width", "0.25", "--batch-size", "8", "--no-progress", "--sex-specific", "--head", "regression"]) == 0
    loaded = load_checkpoint(out)
    assert loaded.metadata["architecture"] == "sex_specific"
    assert set(loaded.metadata["sex_specific"]) == {"female", "male"}
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(site), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] > 0


def test_recipe_flags_reach_the_configs_and_tta_is_saved_and_applied_by_evaluate(site, tmp_path, capsys):
    out = tmp_path / "recipe.pt"
    assert main(["pretrain", "--data", str(site), "--out", str(out), "--epochs", "2", "--image-size", "48",
                 "--width", "0.25", "--batch-size", "8", "--no-progress", "--alpha-rule", "ramp",
                 "--alpha-ramp-steps", "7", "--label-sigma", "4.5", "--lr-schedule", "step", "--lr-drop-at", "0.5",
                 "--warmup-steps", "2", "--early-stop", "3", "--tta-shift", "0.04", "--tta-scale", "0.05"]) == 0
    loaded = load_checkpoint(out)
    meta = loaded.metadata
    assert meta["loss_config"]["alpha_rule"] == "ramp" and meta["loss_config"]["alpha_ramp_steps"] == 7
    assert meta["loss_config"]["label_sigma_months"] == 4.5
    assert (meta["train_config"]["lr_schedule"], meta["train_config"]["lr_drop_at"]) == ("step", 0.5)
    assert (meta["train_config"]["warmup_steps"], meta["train_config"]["early_stop_patience"]) == (2, 3)
    assert meta["tta"] == {"shift": 0.04, "scale": 0.05}
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(site), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    test_split = load_site(SiteDataConfig(site), 48, None, seed=0).test
    with_tta = evaluate_model(loaded.model, test_split, torch.device("cpu"), tta=TTAConfig(0.04, 0.05))
    without = evaluate_model(loaded.model, test_split, torch.device("cpu"))
    assert metrics["tta"] == {"shift": 0.04, "scale": 0.05}
    assert metrics["mad_months"] == pytest.approx(with_tta["mad_months"])
    assert with_tta["mad_months"] != pytest.approx(without["mad_months"], abs=1e-6)


def test_a_bad_recipe_setting_is_one_line_and_exit_code_2(site, tmp_path, capsys):
    code = main(["pretrain", "--data", str(site), "--out", str(tmp_path / "x.pt"), "--tta-shift", "0.7"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err


INIT_ARGS = ["--image-size", "48", "--width", "0.25", "--batch-size", "8", "--no-progress", "--no-cbam", "--seed", "6"]


def test_init_starts_from_the_checkpoints_weights_head_included(site, checkpoint, tmp_path):
    out = tmp_path / "again.pt"
    assert main(["pretrain", "--data", str(site), "--out", str(out), "--epochs", "1", "--lr", "1e-12",
                 "--init", str(checkpoint), *INIT_ARGS]) == 0
    start, result = load_checkpoint(checkpoint), load_checkpoint(out)
    before, after = start.model.state_dict(), result.model.state_dict()
    for key in before:  # a step of 1e-12 leaves the started weights (the head's bias is not reset to the prior)
        assert torch.allclose(before[key].float(), after[key].float(), atol=1e-6), key
    init = result.metadata["init"]
    assert init["path"] == str(checkpoint.resolve()) and len(init["sha256"]) == 64
    assert init["best_val_mad_months"] == start.metadata["best_val_mad_months"]


@pytest.mark.parametrize("extra, message", [(["--image-size", "64"], "image_size 48 (asked 64)"),
                                            (["--arch", "resnet"], "holds a tjnet model"),
                                            (["--sex-specific"], "--sex-specific")])
def test_init_with_other_model_settings_is_one_line_and_exit_code_2(site, checkpoint, tmp_path, capsys, extra,
                                                                    message):
    code = main(["pretrain", "--data", str(site), "--out", str(tmp_path / "x.pt"), "--epochs", "1",
                 "--init", str(checkpoint), *INIT_ARGS, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "x.pt").exists()
