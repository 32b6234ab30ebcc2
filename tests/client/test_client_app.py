"""The ClientApp's replies to messages it cannot serve: one clean refusal, never a traceback."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import REFUSED, evaluate, train


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for attribute in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attribute, 1)


def _message(kind: str, config: dict) -> Message:
    content = RecordDict({"arrays": ArrayRecord({}), "config": ConfigRecord(config)})
    return Message(content=content, dst_node_id=1, message_type=kind)


@pytest.mark.parametrize("handler, kind", [(train, "train"), (evaluate, "evaluate")])
def test_a_missing_pretrained_model_is_a_clear_refusal(identity, tmp_path, handler, kind) -> None:
    context = Context(run_id=1, node_id=1, node_config={"data-path": str(tmp_path)}, state=RecordDict(),
                      run_config={})
    reply = handler(_message(kind, {"lr": 0.001}), context)  # a server that sends no 'pretrained'
    assert reply.has_error() and reply.error.code == REFUSED
    assert reply.error.reason == ("SiteConfigError: no pretrained model: set 'pretrained' in the node config "
                                  "(the server did not send one either)")


def test_a_node_without_site_settings_is_a_clear_refusal(identity) -> None:
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    reply = train(_message("train", {"pretrained": "model.pt"}), context)
    assert reply.has_error() and "no 'data-path'" in reply.error.reason
