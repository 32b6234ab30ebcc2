"""`python -m server pretrain --ema-decay`: the moving average saved as --out, the raw weights beside it."""

import json

import pytest
import torch

from core.stages.central import raw_weights_path
from core.checkpoint import load_checkpoint, save_checkpoint
from core.predict.tta import PRETRAIN_TTA, tta_config_of
from server.cli import main
from sim.phantom.writer import generate_site

ARGS = ["--epochs", "2", "--image-size", "48", "--width", "0.25", "--batch-size", "8", "--no-progress", "--seed", "4"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return generate_site("rsna", 48, tmp_path_factory.mktemp("ema") / "site", seed=6, image_size=48)


@pytest.fixture(scope="module")
def runs(site, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", "--data", str(site), "--out", str(folder / "plain.pt"), *ARGS]) == 0
    assert main(["pretrain", "--data", str(site), "--out", str(folder / "ema.pt"), *ARGS, "--ema-decay", "0.9"]) == 0
    return folder


def test_the_average_is_saved_as_out_and_the_raw_best_epoch_beside_it(runs):
    assert raw_weights_path(runs / "ema.pt") == runs / "ema.raw.pt"
    averaged, raw = load_checkpoint(runs / "ema.pt"), load_checkpoint(runs / "ema.raw.pt")
    assert averaged.metadata["weights"] == "ema" and raw.metadata["weights"] == "raw"
    assert averaged.metadata["train_config"]["ema_decay"] == 0.9
    record = averaged.metadata["ema"]
    assert record == raw.metadata["ema"] and record["decay"] == 0.9
    assert averaged.metadata["best_val_mad_months"] == record["val_mad_months_ema"]
    assert raw.metadata["best_val_mad_months"] == record["val_mad_months_raw"]
    assert not all(torch.equal(a, b) for a, b in zip(averaged.model.state_dict().values(),
                                                        raw.model.state_dict().values()))


def test_the_raw_weights_are_those_of_the_same_run_without_the_average(runs):
    # the pairing is fair: the EMA run trained exactly as the plain one, it only also kept the average
    plain, raw = load_checkpoint(runs / "plain.pt"), load_checkpoint(runs / "ema.raw.pt")
    for (name, a), b in zip(plain.model.state_dict().items(), raw.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert "ema" not in plain.metadata and not raw_weights_path(runs / "plain.pt").exists()


def test_the_recorded_val_mads_are_what_evaluate_gives(runs, site, capsys):
    """The recorded val MADs are single-pass (what training selects on); evaluate applies the checkpoint's
    test-time augmentation (on by default), so the same weights are compared with it removed."""
    for name, key in (("ema.pt", "val_mad_months_ema"), ("ema.raw.pt", "val_mad_months_raw")):
        loaded = load_checkpoint(runs / name)
        assert tta_config_of(loaded.metadata) == PRETRAIN_TTA
        plain = save_checkpoint(runs / f"plain_{name}", loaded.model, {**loaded.metadata, "tta": None})
        assert main(["evaluate", "--model", str(plain), "--data", str(site), "--split", "val", "--json"]) == 0
        measured = json.loads(capsys.readouterr().out)["mad_months"]
        assert measured == pytest.approx(load_checkpoint(runs / "ema.pt").metadata["ema"][key], abs=1e-3)


@pytest.mark.parametrize("extra, message", [(["--ema-decay", "1.5"], "EMA decay"),
                                            (["--ema-decay", "0.9", "--sex-specific"], "--sex-specific")])
def test_bad_ema_settings_are_one_line_and_exit_code_2(site, tmp_path, capsys, extra, message):
    code = main(["pretrain", "--data", str(site), "--out", str(tmp_path / "x.pt"), *ARGS, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "x.pt").exists()
