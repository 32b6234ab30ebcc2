"""`python -m client export`: a site's personalised model (the federated weights with the layers it kept) as one
checkpoint that predict, evaluate, calibrate and accept take."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from client.__main__ import main as client_main
from core.checkpoint import describe, file_sha256, load_checkpoint, save_checkpoint
from core.stages.local_layers import LocalLayers, save_local_layers
from core.model.config import TJNetConfig
from core.model.groups import norm_layer_keys
from core.model.tjnet import TJNet
from sim.phantom.writer import generate_site

TTA = {"shift": 0.04, "scale": 0.05}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A phantom site with its config, a pretrained model and a 'federated' one whose norm layers the site kept."""
    root = tmp_path_factory.mktemp("export")
    data = generate_site("rsna", 120, root / "site", seed=3, image_size=48)
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=48, width=0.25))
    pretrained = save_checkpoint(root / "pretrained.pt", model, describe(model))
    federated = save_checkpoint(root / "federated_final.pt", model, describe(  # with the TTA it inherited
        model, round=2, strategy="fedavg", pretrained=str(pretrained), pretrained_sha256=file_sha256(pretrained),
        tta=TTA))
    config = root / "site.toml"
    config.write_text(f'data-path = "{data}"\nsite-id = 4\nstate-dir = "{root / "state"}"\ndevice = "cpu"\n')
    return config, federated, pretrained


def _keep(config: Path, federated: Path, sha: str, round_: int = 2) -> dict[str, torch.Tensor]:
    model = load_checkpoint(federated).model
    state = model.state_dict()
    layers = {k: state[k] + 0.5 if state[k].is_floating_point() else state[k] for k in norm_layer_keys(model)}
    save_local_layers(config.parent / "state", LocalLayers(layers, 77, round_, sha))
    return layers


def test_the_exported_model_is_the_federated_one_with_the_sites_layers(site, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    config, federated, pretrained = site
    layers = _keep(config, federated, file_sha256(pretrained))
    out = tmp_path / "mine.pt"
    assert client_main(["export", "--model", str(federated), "--site-config", str(config), "--out", str(out),
                        "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    exported = load_checkpoint(out)
    state, before = exported.model.state_dict(), load_checkpoint(federated).model.state_dict()
    assert layers and all(torch.equal(state[k], v) for k, v in layers.items())
    assert all(torch.equal(state[k], before[k]) for k in before if k not in layers)
    provenance = exported.metadata["provenance"]
    assert provenance["personalised_for_site"] == "4" and provenance["federated_model_sha256"] == file_sha256(federated)
    assert exported.metadata["conformal"]["source"] == str(config.parent / "site") == result["conformal"]["source"]
    data = str(config.parent / "site")
    assert client_main(["calibrate", "--model", str(out), "--data", data, "--out", str(tmp_path / "c.pt")]) == 0
    # the exported model keeps the federated model's TTA, and its interval was fitted with it: the same as the one
    # `client calibrate` (which scores with the recorded TTA) fits on the same validation split
    assert exported.metadata["tta"] == TTA
    refitted = load_checkpoint(tmp_path / "c.pt").metadata["conformal"]
    assert refitted["n"] == exported.metadata["conformal"]["n"]
    assert refitted["halfwidth_months"] == pytest.approx(exported.metadata["conformal"]["halfwidth_months"], abs=1e-4)
    code = client_main(["accept", "--model", str(out), "--data", data, "--state-dir", str(tmp_path / "s"), "--json"])
    assert code in (0, 1) and json.loads(capsys.readouterr().out.splitlines()[-1])["figures"]["weights"]["passed"]
    image = next((config.parent / "site" / "images").iterdir())
    assert client_main(["predict", "--model", str(out), "--sex", "M", "--json", "--no-progress", str(image)]) == 0
    assert json.loads(capsys.readouterr().out)["interval_low_months"] is not None


def test_export_refuses_layers_it_cannot_vouch_for(site, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config, federated, _ = site
    _keep(config, federated, "0" * 64)
    argv = ["export", "--model", str(federated), "--site-config", str(config), "--out", str(tmp_path / "x.pt")]
    assert client_main(argv) == 2 and "another pretrained model" in capsys.readouterr().err
    (config.parent / "state" / "local_layers.pt").unlink()
    assert client_main(argv) == 2 and "holds no kept layers" in capsys.readouterr().err
    assert client_main([*argv[:-1], str(federated)]) == 2 and "never overwritten" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_a_calibrating_sites_export_predicts_through_its_line(site, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from core.predict.calibration import LinearCalibration, SexCalibration, calibration_of
    from core.data import SiteDataConfig, load_site, make_loader
    from core.stages.local_layers import SiteCalibration, save_site_calibration
    from core.train.training import predict

    config, federated, pretrained = site
    state = config.parent / "state"
    (state / "local_layers.pt").unlink(missing_ok=True)  # a site that kept no layers, only its line
    line = SexCalibration(LinearCalibration(12.0, 0.5), LinearCalibration(-3.0, 1.25))
    argv = ["export", "--model", str(federated), "--site-config", str(config), "--out", str(tmp_path / "c.pt")]
    try:
        save_site_calibration(state, SiteCalibration(line, 2, "0" * 64, "", 40))
        assert client_main(argv) == 2 and "another pretrained model" in capsys.readouterr().err
        save_site_calibration(state, SiteCalibration(line, 2, file_sha256(pretrained), "", 40))
        assert client_main(argv) == 0 and "fitted on 40 training images" in capsys.readouterr().out
    finally:
        (state / "calibration.json").unlink(missing_ok=True)
    exported, plain = load_checkpoint(tmp_path / "c.pt"), load_checkpoint(federated)
    assert calibration_of(exported.model) == line and calibration_of(plain.model) is None
    test = load_site(SiteDataConfig(root=config.parent / "site"), 48, None, seed=0, splits=("test",)).test
    raw, mine = (predict(m.model, make_loader(test, 64, shuffle=False, seed=0), torch.device("cpu"))
                 for m in (plain, exported))
    assert len(raw.true_months) > 0
    torch.testing.assert_close(torch.from_numpy(mine.predicted_months),
                               torch.from_numpy(line.apply(raw.predicted_months, raw.male).astype("float32")))
