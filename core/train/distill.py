"""Distillation of a teacher (an ensemble of class-head models) into one student: targets and the loss term.

A federation needs one model, and an ensemble of several TJ-Nets is more accurate than any of them
(docs/benchmarks.md, "Training recipe"). The teacher's targets are, per image id, the mean over its members and
their test-time-augmentation views of the class probabilities, and the teacher's age (their expected value);
`core.stages.teacher` makes them and writes them as one .npz file (`TeacherTargets`). The student trains with the
paper's joint loss plus

    distill_weight * T^2 * sum_c (1 - |C_c|/|C_t|) mean_{i in c} KL(q_i^T || p_i^T)

the Kullback-Leibler divergence from the teacher's distribution q_i to the student's p_i, both at temperature T
(q^T proportional to q^(1/T), p^T = softmax(logits / T)), summed over the classes of the batch with the weights of
the paper's age cross-entropy (`core.train.loss.class_balanced_mean`), so that a weight of 1 gives the teacher's
distribution the weight of the label's class. The T^2 keeps the gradient's size independent of T (Hinton et al.,
2015). The term is zero when the student's distribution is the teacher's. Under DP-SGD's per-sample form it is a
plain mean over the batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from core.data.dataset import BoneAgeDataset
from core.errors import ConfigError
from core.data.config import DataError

TEACHER_FORMAT = "ossifl-teacher-1"


def kl_to_teacher(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B] KL(teacher^T || softmax(logits / T)) per sample; `teacher` holds [B, K] probabilities."""
    log_student = F.log_softmax(logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(torch.log(teacher.float().clamp_min(1e-12)) / temperature, dim=1)
    return torch.sum(torch.exp(log_teacher) * (log_teacher - log_student), dim=1)


@dataclass(frozen=True)
class TeacherTargets:
    """A teacher's targets: per image id its class probabilities [N, K] and age (months); the grid they live on."""

    image_ids: tuple[str, ...]
    probabilities: np.ndarray
    ages_months: np.ndarray
    class_step_months: float
    metadata: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.probabilities.shape[1])

    def save(self, path: Path) -> Path:
        """Write the targets to `path` as it is named (no ".npz" added)."""
        with open(path, "wb") as handle:
            np.savez_compressed(handle, format=np.array(TEACHER_FORMAT), image_ids=np.array(self.image_ids),
                                probabilities=self.probabilities.astype(np.float32),
                                ages_months=self.ages_months.astype(np.float32),
                                class_step_months=np.array(self.class_step_months),
                                metadata=np.array(json.dumps(self.metadata)))
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "TeacherTargets":
        """Read a file `server distill-targets` wrote; anything else is a one-line `ConfigError`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != TEACHER_FORMAT:
                    raise ConfigError(f"--teacher {path}: format {str(data['format'])!r}, not {TEACHER_FORMAT!r}")
                ids = tuple(str(i) for i in data["image_ids"])
                probabilities, ages = data["probabilities"], data["ages_months"]
                step, metadata = float(data["class_step_months"]), json.loads(str(data["metadata"]))
        except ConfigError:
            raise
        except (OSError, ValueError, KeyError, EOFError, TypeError) as exc:
            raise ConfigError(f"--teacher {path} is not a teacher-targets file of server distill-targets "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
        if probabilities.ndim != 2 or len(probabilities) != len(ids) or ages.shape != (len(ids),):
            raise ConfigError(f"--teacher {path}: {len(ids)} ids, probabilities {probabilities.shape} and ages "
                              f"{ages.shape} do not match")
        if not (np.all(np.isfinite(probabilities)) and np.all(probabilities >= 0)
                and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)):
            raise ConfigError(f"--teacher {path}: the class probabilities are not distributions (negative, "
                              "non-finite or not summing to 1)")
        return cls(ids, probabilities, ages, step, {**metadata, "file": str(path)})

    def aligned(self, image_ids: list[str]) -> np.ndarray:
        """[len(image_ids), K] probabilities in the order of `image_ids`; a missing id is a one-line `DataError`."""
        row = {image_id: i for i, image_id in enumerate(self.image_ids)}
        missing = [image_id for image_id in image_ids if image_id not in row]
        if missing:
            raise DataError(f"the teacher targets {self.metadata.get('file', '')} have no row for {len(missing)} of "
                            f"the {len(image_ids)} training images (e.g. {missing[0]!r}); make them on this folder "
                            "(server distill-targets --data ...)")
        return self.probabilities[[row[image_id] for image_id in image_ids]]

    def check_grid(self, num_classes: int, class_step_months: float) -> None:
        if (num_classes, class_step_months) != (self.num_classes, self.class_step_months):
            raise ConfigError(f"the teacher's classes ({self.num_classes} of {self.class_step_months:g} months) are "
                              f"not the student's ({num_classes} of {class_step_months:g} months); give the student "
                              "the teacher's --head")


class WithTeacher(Dataset):
    """A training split whose items also carry the teacher's class probabilities of the image (``teacher``)."""

    def __init__(self, dataset: BoneAgeDataset, targets: TeacherTargets) -> None:
        self.dataset = dataset
        self.records = dataset.records
        self._teacher = torch.from_numpy(np.ascontiguousarray(targets.aligned([r.image_id for r in dataset.records])))

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.dataset[index], "teacher": self._teacher[index]}
