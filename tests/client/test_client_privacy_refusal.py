"""A private site whose ledger is damaged, deleted or busy refuses the round cleanly: an error reply with a
one-line reason that names no local path, no traceback sent to the server, nothing trained or audited."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import REFUSED, train
from core.checkpoint import describe, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.privacy import LEDGER_FILENAME, PrivacyLedger
from core.privacy.guard import site_lock
from sim.phantom.writer import generate_site


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("private-site")
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=32, width=0.25, norm="group"))
    save_checkpoint(root / "pretrained.pt", model, describe(model))
    generate_site("rsna", 20, root / "data", seed=3, image_size=32)
    return root, {k: v for k, v in model.state_dict().items() if k.startswith("block4")}


def _train_request(root: Path, arrays: dict[str, torch.Tensor], state: Path) -> tuple[Message, Context]:
    node = {"data-path": str(root / "data"), "pretrained": str(root / "pretrained.pt"), "state-dir": str(state),
            "device": "cpu", "dp-noise-multiplier": 1.0, "dp-max-epsilon": 50.0, "dp-delta": 1e-3, "decode-cache": "none", "site-id": 4}
    config = ConfigRecord({"server-round": 1, "num-rounds": 1, "freeze": "1-3", "batch-size": 4, "local-epochs": 1})
    message = Message(RecordDict({"arrays": ArrayRecord(arrays), "config": config}), dst_node_id=1,
                      message_type="train")
    return message, Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})


pytestmark = pytest.mark.usefixtures("flower_identity")  # Messages built outside a Flower process


def _files(state: Path) -> dict[str, bytes]:
    """The state folder's regular files (a ledger replaced by a link to /dev/zero is never read)."""
    if not state.exists():
        return {}
    return {p.name: p.read_bytes() for p in state.iterdir()
            if p.name != "privacy_ledger.lock" and p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("misuse", ["damaged", "deleted", "busy", "edited", "device", "folder"])
def test_ledger_trouble_is_a_clean_refusal_without_local_paths(
        prepared: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, misuse: str) -> None:
    root, arrays = prepared
    state = tmp_path / "hospital-state"
    ledger = PrivacyLedger(state / LEDGER_FILENAME)
    if misuse == "damaged":
        ledger.record(1.0, 0.2, 5)
        with ledger.path.open("a", encoding="utf-8") as handle:
            handle.write('{"noise_multiplier": NaN, "sample_rate": 0.2, "steps": 5}\n')
    elif misuse in ("deleted", "edited"):
        assert train(*_train_request(root, arrays, state)).has_content()  # one private round, then the loss
        if misuse == "deleted":
            ledger.path.unlink()
        else:
            ledger.path.write_text(ledger.path.read_text(encoding="utf-8").replace('"steps": ', '"steps": 1'))
    elif misuse == "device":
        state.mkdir(parents=True)
        ledger.path.symlink_to("/dev/zero")
    elif misuse == "folder":
        ledger.path.mkdir(parents=True)
    before = _files(state)

    if misuse == "busy":
        with site_lock(ledger):
            reply = train(*_train_request(root, arrays, state))
    else:
        reply = train(*_train_request(root, arrays, state))

    assert reply.has_error() and reply.error.code == REFUSED
    reason = reply.error.reason
    assert reason.startswith("Ledger") and "\n" not in reason, reason
    assert str(tmp_path) not in reason and str(root) not in reason and "Traceback" not in reason, reason
    assert _files(state) == before  # nothing trained or audited
    shutil.rmtree(state)
