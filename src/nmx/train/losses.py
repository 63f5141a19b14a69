"""Training objectives, one small class each, one registry.

- `ce`: next-token cross entropy, mean over the predicted tokens (positions 1.. of each window).
- `kd`: knowledge distillation from the dense teacher's logits (Hinton et al. 2015): at temperature τ,
  τ² · mean over predicted tokens of KL(p_teacher || p_student), p = softmax(logits / τ); computed in
  float32 whatever the autocast dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from nmx.errors import InputError, registry_get


def ce_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V] predicting ids [B, T] shifted by one: mean CE over the B·(T−1) predicted tokens."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ² · mean over tokens of Σ_v p_t(v) (log p_t(v) − log p_s(v)), p = softmax(logits / τ)."""
    if student.shape != teacher.shape:
        raise InputError(f"kd: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
                         "differ (the teacher must share the student's vocabulary)")
    v = student.shape[-1]
    log_s = F.log_softmax(student.reshape(-1, v).float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.reshape(-1, v).float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    return kl.mean() * temperature**2


@dataclass(frozen=True)
class CE:
    name: ClassVar[str] = "ce"
    needs_teacher: ClassVar[bool] = False

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor, teacher: Optional[torch.Tensor] = None):
        return ce_loss(logits, ids)


@dataclass(frozen=True)
class KD:
    name: ClassVar[str] = "kd"
    needs_teacher: ClassVar[bool] = True
    temperature: float = 1.0

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor, teacher: Optional[torch.Tensor] = None):
        if teacher is None:
            raise InputError("kd needs the teacher's logits")
        return kd_loss(logits[:, :-1], teacher[:, :-1], self.temperature)


LOSSES: dict[str, type] = {"ce": CE, "kd": KD}


def get_loss(name: str, **options) -> CE | KD:
    cls = registry_get(LOSSES, name, "objective")
    return cls(**options) if cls is KD else cls()
