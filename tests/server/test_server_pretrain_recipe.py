"""`python -m server pretrain` with no recipe flags trains the best single-model recipe of issue 21.

The recipe measured as the best single model on rsna100 at 96 px (docs/benchmarks.md, "Training recipe": 40 epochs of
cosine AdamW at lr 3e-4, the joint loss with alpha raised by the `mad` rule, the head started at the ages' prior,
augmentation on, no moving average, the default TTA recorded) must be what a user gets without flags, and the docs'
table of the recipe's flags must say the same default.
"""

from __future__ import annotations

import re
from pathlib import Path

import server.pretrain_command
from core.data import AugmentConfig
from core.predict.tta import TTAConfig
from core.stages.central import PRETRAIN_EPOCHS, PretrainJob
from server.cli import main

BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def default_job(tmp_path: Path, monkeypatch) -> PretrainJob:
    """The job `server pretrain --data DIR --out FILE` builds, caught before it trains."""
    jobs: list[PretrainJob] = []
    monkeypatch.setattr(server.pretrain_command, "pretrain", jobs.append)
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "model.pt")]) == 0
    assert len(jobs) == 1
    return jobs[0]


def test_pretraining_without_recipe_flags_is_the_40_epoch_recipe_of_the_benchmarks(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    job = default_job(tmp_path, monkeypatch)
    train, loss = job.train, job.loss
    assert PRETRAIN_EPOCHS == 40 and train.epochs == 40
    assert (train.lr, train.lr_schedule, train.lr_final_factor, train.warmup_steps) == (3e-4, "cosine", 1e-3, 0)
    assert (train.batch_size, train.weight_decay, train.ema_decay, train.early_stop_patience) == (32, 1e-4, 0.0, 0)
    assert (loss.alpha_rule, loss.alpha_start, loss.label_sigma_months) == ("mad", 1.5, 0.0)
    assert job.head_init == "prior" and job.augment == AugmentConfig()
    assert job.tta == TTAConfig(shift=0.04, scale=0.05)
    assert job.architecture == "tjnet" and job.model_config["width"] == 0.5
    assert not (job.sex_specific or job.preprocess or job.init or job.teacher)
    assert (loss.distill_weight, loss.distill_temperature) == (0.0, 1.0)  # distillation off by default


def test_the_docs_recipe_table_gives_the_same_default_epochs() -> None:
    text = BENCHMARKS.read_text(encoding="utf-8")
    section = text[text.index("\n## Training recipe"):]
    row = re.search(r"^\| `--epochs N` \|[^|]*\| (\d+)", section, re.MULTILINE)
    assert row is not None, "docs/benchmarks.md, Training recipe: no `--epochs N` row in the flags table"
    assert int(row.group(1)) == PretrainJob.train.epochs
