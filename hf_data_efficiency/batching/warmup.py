"""Batch-size warmup: Megatron-LM's ``--rampup-batch-size`` rule, on per-device batch sizes.

:class:`BatchSizeWarmup` is the rule. With ``B = per_device_train_batch_size``, ``start``, ``increment`` and
``samples`` (``batch_size_warmup.*``), the ramp has ``n = (B - start) / increment`` increments (``B - start`` must be a
multiple of the increment) and the per-device batch of a step, after ``c`` samples consumed (all processes) by the
steps before it, is::

    B                                       if c > samples
    start + floor(c * n / samples) * increment    otherwise

so it grows by ``increment`` every ``samples / n`` consumed samples, as Megatron's
``RampupBatchsizeNumMicroBatchesCalculator`` does (there the values are global batch sizes and the number of
micro-batches varies; here the number of micro-batches per step, ``world_size * gradient_accumulation_steps``, stays
fixed and each micro-batch holds the step's per-device batch). The floor is computed exactly (Megatron divides in
floating point, which can fall one increment short at an exact multiple of ``samples / n``).

With a token budget the ramp applies to ``max_tokens``: a step's budget is ``max_tokens * b / B`` for the per-device
batch ``b`` of the rule (never below what ``min_batch_size`` of the longest samples need), so token-budget steps grow in
the same proportion; consumed samples are the samples the budget's steps actually held.

:class:`WarmupBatchSampler` forms the fixed-size steps through the plan machinery of
:class:`~hf_data_efficiency.batching.sampler.StepPlanSampler`: without a per-step draw each pass over the data is cut
into consecutive steps of ``b * world_size * gradient_accumulation_steps`` samples; with one (a curriculum or group
mixing, drawn at the full batch), each step takes the first ``b * world_size * gradient_accumulation_steps`` samples
of its draw, which are exactly the fixed-batch steps once ``b = B``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers.utils import logging

from ..config import BatchSizeWarmupConfig
from .budget import lr_scale
from .sampler import StepPlan, StepPlanSampler

logger = logging.get_logger(__name__)


class BatchSizeWarmup:
    """The ramp of one run (see the module docstring).

    Args:
        config: the :class:`~hf_data_efficiency.BatchSizeWarmupConfig`.
        batch_size: the full per-device batch size ``B`` (``per_device_train_batch_size``).
    """

    def __init__(self, config: BatchSizeWarmupConfig, batch_size: int) -> None:
        if not isinstance(config, BatchSizeWarmupConfig):
            raise ValueError(f"batch_size_warmup must be a BatchSizeWarmupConfig, got {type(config).__name__}.")
        self.config = config
        self.batch_size = int(batch_size)
        start, increment = config.start, config.increment
        if start > self.batch_size:
            raise ValueError(
                f"batch_size_warmup.start={start} is above the per-device batch size (per_device_train_batch_size="
                f"{self.batch_size}), which the warmup grows to; allowed: 1 <= start <= {self.batch_size}."
            )
        if (self.batch_size - start) % increment:
            raise ValueError(
                f"batch_size_warmup: per_device_train_batch_size - start = {self.batch_size} - {start} = "
                f"{self.batch_size - start} is not a multiple of batch_size_warmup.increment={increment}; allowed: an "
                "increment that divides it (Megatron's rule reaches the full batch in whole increments)."
            )
        #: the number of increments from ``start`` to the full batch
        self.increments = (self.batch_size - start) // increment
        if self.increments == 0:
            logger.warning(
                f"batch_size_warmup.start={start} equals per_device_train_batch_size: the batch size does not ramp."
            )

    @property
    def samples(self) -> int:
        """Consumed samples over which the batch grows."""
        return self.config.samples

    def batch_size_at(self, consumed: int) -> int:
        """The per-device batch of a step after ``consumed`` samples (all processes)."""
        if self.increments == 0 or consumed > self.config.samples:
            return self.batch_size
        return self.config.start + consumed * self.increments // self.config.samples * self.config.increment

    def max_tokens_at(self, consumed: int, max_tokens: int, least: int) -> int:
        """A token budget ``max_tokens`` ramped like the batch after ``consumed`` samples, at least ``least``."""
        return max(max_tokens * self.batch_size_at(consumed) // self.batch_size, least)

    def lr_factor(self, samples: int, reference: int) -> float:
        """The LR factor of a step of ``samples`` samples against the full global batch ``reference``."""
        return lr_scale(self.config.lr_scaling_method, samples, reference)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share (in the batch sampler's fingerprint)."""
        return {**self.config.to_dict(), "batch_size": self.batch_size}


class WarmupBatchSampler(StepPlanSampler):
    """Fixed-size steps that grow with the warmup (see the module docstring); a DataLoader batch sampler.

    Args:
        num_samples: dataset size.
        warmup: the :class:`BatchSizeWarmup`.
        world_size, gradient_accumulation_steps, seed, tag_positions: as
            :class:`~hf_data_efficiency.batching.sampler.StepPlanSampler`.
        draw: the per-step draw (curriculum or group mixing) at the full global batch, or ``None``.
    """

    _fingerprint_changes = "the data or the batch_size_warmup config"

    def __init__(
        self,
        num_samples: int,
        warmup: BatchSizeWarmup,
        *,
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        seed: int = 0,
        draw: Any = None,
        tag_positions: bool = True,
    ) -> None:
        full = warmup.batch_size * world_size * gradient_accumulation_steps
        super().__init__(
            num_samples,
            world_size=world_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            reference_batch_size=full,
            seed=seed,
            draw=draw,
            tag_positions=tag_positions,
            warmup=warmup,
        )
        if draw is not None and self.draw_size != full:
            raise ValueError(
                f"the per-step draw holds {self.draw_size} samples; batch-size warmup takes its steps from a draw of "
                f"the full global batch, {full}."
            )
        if full > self.num_samples:
            raise ValueError(
                f"the full global batch {full} is larger than the data ({self.num_samples} samples); it must be <= "
                f"{self.num_samples}."
            )
        self.steps_per_epoch = self.num_samples // full if draw is not None else len(self._pass(0))
        self._fingerprint = self._compute_fingerprint({"draw_size": self.draw_size})

    def _steps(self, step: int, order: np.ndarray, size: int, base: int) -> StepPlan:
        """The plan of ``step``: the first ``size * micro-batches`` of ``order`` (stream positions ``base ...``)."""
        draw = self.curriculum_sampler
        truncate_to = draw.max_tokens_at(step) if draw is not None else None
        m = self.micro_batches_per_step
        return StepPlan(
            step=step,
            micro_batches=[order[j * size : (j + 1) * size].tolist() for j in range(m)],
            lengths=[[] for _ in range(m)],
            positions=[base + j * size for j in range(m)],
            truncate_to=truncate_to,
        )

    def _build_plan(self, step: int) -> StepPlan:
        indices = np.asarray(self.curriculum_sampler.step_indices(step), dtype=np.int64)
        return self._steps(step, indices, self.batch_size_at(step), (step - 1) * self.draw_size)

    def _pass_plans(self, p: int, perm: np.ndarray, first_step: int) -> list[StepPlan]:
        """Pass ``p`` cut into consecutive steps of the ramp's sizes; the samples left at the end (less than one step)
        are not used in that pass."""
        plans: list[StepPlan] = []
        start, consumed = 0, self.consumed_before(first_step)
        while True:
            size = self.warmup.batch_size_at(consumed)
            need = size * self.micro_batches_per_step
            if start + need > self.num_samples:
                return plans
            plans.append(
                self._steps(first_step + len(plans), perm[start : start + need], size, p * self.num_samples + start)
            )
            consumed += need
            start += need

    def lr_factor(self, step: int) -> float:
        """The LR factor of 1-based ``step`` (``batch_size_warmup.lr_scaling_method``; 1.0 with ``none``)."""
        return self.warmup.lr_factor(self.plan(step).samples, self.reference_batch_size)

    def step_logs(self, step: int) -> dict[str, float]:
        """``batch_size_warmup/batch_size`` (per device), ``/samples`` (all processes) and ``/lr_factor`` of ``step``."""
        plan = self.plan(step)
        return {
            "batch_size_warmup/batch_size": len(plan.micro_batches[0]),
            "batch_size_warmup/samples": plan.samples,
            "batch_size_warmup/lr_factor": self.lr_factor(step),
        }
