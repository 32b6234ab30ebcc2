"""A model per sex behind one checkpoint: each image goes to the model of its sex input."""

import torch

from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.model.combined import CombinedConfig, MemberSpec, SexSpecificModel
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet

CONFIG = TJNetConfig(image_size=48, width=0.25, head="months")


def _pair() -> SexSpecificModel:
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(TJNet(CONFIG))
    spec = MemberSpec("tjnet", CONFIG.to_dict())
    return SexSpecificModel(CombinedConfig(members=(spec, spec), names=("female", "male")), *members).eval()


def test_each_image_goes_to_the_model_of_its_sex():
    model = _pair()
    torch.manual_seed(2)
    image, male = torch.randn(4, 1, 48, 48), torch.tensor([1.0, 0.0, 0.0, 1.0])
    out = model(image, male)
    girls, boys = model.members[0](image[[1, 2]], male[[1, 2]]), model.members[1](image[[0, 3]], male[[0, 3]])
    torch.testing.assert_close(out.expected_months[[1, 2]], girls.expected_months)
    torch.testing.assert_close(out.expected_months[[0, 3]], boys.expected_months)
    torch.testing.assert_close(out.age_logits[[0, 3]], boys.age_logits)
    torch.testing.assert_close(out.sex_logits[[1, 2]], girls.sex_logits)
    assert model.age_head.name == "months"


def test_a_batch_of_one_sex_only_uses_that_model():
    model = _pair()
    image = torch.randn(2, 1, 48, 48)
    out = model(image, torch.zeros(2))
    torch.testing.assert_close(out.expected_months, model.members[0](image, torch.zeros(2)).expected_months)


def test_sex_specific_checkpoint_round_trips(tmp_path):
    model = _pair()
    path = save_checkpoint(tmp_path / "pair.pt", model, describe(model))
    loaded = load_checkpoint(path)
    assert loaded.metadata["architecture"] == "sex_specific"
    image, male = torch.randn(3, 1, 48, 48), torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(loaded.model.eval()(image, male).expected_months, model(image, male).expected_months)
