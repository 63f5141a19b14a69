"""The recipe's `training:` section (validated at the boundary, like every recipe section).

    training:
      steps: 1000
      batch_size: 8
      seq_len: 512
      text: tinyshakespeare            # any nmx text source
      objective: kd                    # or ce, or {name: kd, temperature: 2.0}
      lr: 1.0e-4
      lr_schedule: cosine              # or constant; after warmup_steps of linear warmup
      warmup_steps: 50
      eval_every: 100                  # perplexity on the evaluation text, eval_windows windows
      checkpoint_every: 100
      gradient_checkpointing: false
      mask:
        method: sr_ste                 # fixed | sr_ste | decay | dense (nmx.train.methods)
        pattern: "2:4"
        schedule: [{step: 0, pattern: "2:4"}, {step: 500, pattern: "1:4"}]   # N:M stepping
        ramp: {start: 0, end: 200}     # gradual density: dense -> N:M over these steps
        transposable: false            # N:M along both dims (W and Wᵀ)
        bidirectional: false           # forward mask along the input dim, backward along the output dim
        options: {lambda_w: 2.0e-4}    # the method's own parameters

The recipe's `sparsity:` section, when present, is the one-shot starting point (e.g. Wanda 2:4, then
masked fine-tuning); `quantization.weights`, when present, is trained through (fake quant in the forward,
straight-through in the backward) unless `quant_aware: false` (then applied once after training).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from nmx.validation import Strict, as_value_error


def _nm(v: Any, what: str = "pattern") -> str:
    from nmx.errors import InputError
    from nmx.sparsity.patterns import NMPattern, parse_pattern

    p = parse_pattern(v) if isinstance(v, str) else None
    if not isinstance(p, NMPattern):
        raise InputError(f"{what} must be an N:M pattern like '2:4' (training keeps N:M masks), got {v!r}")
    return str(p)


class SchedulePoint(Strict):
    """From `step` on (0-based), masks follow `pattern`."""

    step: int = Field(ge=0)
    pattern: str

    @field_validator("pattern", mode="before")
    @classmethod
    def _pattern(cls, v: Any) -> str:
        return as_value_error(_nm, v)


class Ramp(Strict):
    """Gradual density: at step `start` every group is dense, at `end` every group is N:M; in between the
    fraction of groups pruned grows (cubic: Zhu & Gupta's 1-(1-t)^3, or linear)."""

    start: int = Field(0, ge=0)
    end: int = Field(ge=1)
    shape: Literal["cubic", "linear"] = "cubic"

    @model_validator(mode="after")
    def _ordered(self) -> "Ramp":
        if self.end <= self.start:
            raise ValueError(f"ramp.end ({self.end}) must come after ramp.start ({self.start})")
        return self


class MaskSection(Strict):
    method: str = "fixed"
    #: the N:M pattern (default: the recipe's sparsity.pattern, else 2:4); a schedule replaces it
    pattern: Optional[str] = None
    schedule: list[SchedulePoint] = Field(default_factory=list)
    ramp: Optional[Ramp] = None
    transposable: bool = False
    bidirectional: bool = False
    #: linear layers to mask (default: the recipe's sparsity.targets, else nmx's default targets)
    targets: Optional[list[str]] = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        from nmx.train.methods import get_mask_method

        return as_value_error(get_mask_method, v) and v.strip().lower()

    @field_validator("pattern", mode="before")
    @classmethod
    def _pattern(cls, v: Any) -> Any:
        return None if v is None else as_value_error(_nm, v)

    @model_validator(mode="after")
    def _consistent(self) -> "MaskSection":
        from nmx.train.methods import get_mask_method

        as_value_error(get_mask_method(self.method).check_options, self.options)
        steps = [p.step for p in self.schedule]
        for a, b in zip(steps, steps[1:], strict=False):
            if b <= a:
                raise ValueError(f"schedule steps must increase strictly, got {steps}")
        if self.transposable and self.bidirectional:
            raise ValueError("transposable and bidirectional are two ways to make the backward pass sparse; "
                             "choose one")
        if self.method == "dense" and (self.schedule or self.ramp or self.transposable or self.bidirectional):
            raise ValueError("method dense trains without masks: drop schedule, ramp, transposable, bidirectional")
        return self


class Objective(Strict):
    """`ce`: next-token cross entropy on the text. `kd`: KL(teacher || student) of the dense model's
    next-token distributions at `temperature` (times temperature², Hinton et al.)."""

    name: Literal["ce", "kd"] = "kd"
    temperature: float = Field(1.0, gt=0)


class Training(Strict):
    steps: int = Field(ge=1)
    batch_size: int = Field(8, ge=1)
    seq_len: int = Field(512, ge=2)
    text: str = "tinyshakespeare"
    objective: Objective = Field(default_factory=Objective)
    lr: float = 1e-4
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    #: the cosine ends at lr * min_lr_ratio
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    #: clip the global gradient norm (null: no clipping)
    grad_clip: Optional[float] = Field(1.0, gt=0)
    #: which parameters learn: every one, or only the masked linears' weights
    trainable: Literal["all", "targets"] = "all"
    seed: int = 0
    #: perplexity on the evaluation text every K steps (0: only at the end), on eval_windows windows
    eval_every: int = Field(0, ge=0)
    eval_windows: int = Field(4, ge=1)
    #: a checkpoint every K steps (0: none); the newest keep_checkpoints are kept
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    gradient_checkpointing: bool = False
    #: also measure a step's peak memory with and without gradient checkpointing (CUDA)
    measure_memory: bool = False
    #: bf16 autocast on a CUDA device (the CPU trains in float32)
    bf16: bool = True
    #: with quantization.weights: train through the format (true) or quantize once after training (false)
    quant_aware: bool = True
    #: start from a `nmx run --save-model` folder (its model, weights and masks) instead of the recipe's model
    start: Optional[str] = None
    mask: MaskSection = Field(default_factory=MaskSection)

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"the learning rate must be a finite number > 0, got {v!r}")
        return v

    @model_validator(mode="after")
    def _within_steps(self) -> "Training":
        late = [p.step for p in self.mask.schedule if p.step >= self.steps]
        if late:
            raise ValueError(f"mask.schedule: step {late[0]} is beyond the last training step ({self.steps - 1}; "
                             f"steps: {self.steps})")
        if self.mask.ramp is not None and self.mask.ramp.end > self.steps:
            raise ValueError(f"mask.ramp.end ({self.mask.ramp.end}) is beyond training.steps ({self.steps})")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) is more than steps ({self.steps})")
        from nmx.train.methods import get_mask_method

        as_value_error(lambda o: get_mask_method(self.mask.method).check_steps(o, self.steps), self.mask.options)
        return self
