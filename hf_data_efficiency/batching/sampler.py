"""Per-step batch plans over map-style data: token budgets (dynamic batching), following the curriculum.

:class:`StepPlanSampler` is the plan machinery every map-style batcher shares: a DataLoader batch sampler that yields,
for each optimizer step, exactly ``world_size * gradient_accumulation_steps`` micro-batches (lists of dataset keys) in
the order accelerate's ``BatchSamplerShard`` deals them out (micro-batch ``j`` of a step to rank ``j % world_size``;
without a ``batch_size`` attribute it keeps them whole). Without a per-step draw, pass ``p`` over the data is the
permutation ``default_rng([seed, 3, p])`` cut into as many whole steps as it fills; with one (a curriculum or group
mixing: ``draw.step_indices(k)``), each step takes (a prefix of) the draw of that step, so every sample is eligible at
its step. Everything is a pure function of the seed, the lengths and the step: every rank computes the same stream
without communication, and the state is a position plus what checks the stream is the same. A batch-size warmup
(:mod:`.warmup`) sets each step's size from the samples consumed before it.

:class:`TokenBudgetBatchSampler` forms micro-batches of varying size within ``max_tokens``
(:class:`~hf_data_efficiency.batching.budget.TokenBudget`); the warmup's fixed-size plans are
:class:`~hf_data_efficiency.batching.warmup.WarmupBatchSampler`. Semantics, picking orders included:
``docs/dynamic_batching.md`` and ``docs/mixing_and_warmup.md``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler
from transformers.utils import logging

from .._validation import check_int, expect_mapping
from ..config import DynamicBatchingConfig
from ..curriculum.sampler import check_sampler_state, sampler_state, state_fingerprint
from ..curriculum.transforms import GROUP_KEY, MAX_TOKENS_KEY, POSITION_KEY
from .budget import TokenBudget

logger = logging.get_logger(__name__)

STATE_VERSION = 1
_RNG_PASS, _RNG_PICK = 3, 4  # numpy seed-sequence namespaces (the curriculum sampler uses 0-2)
_PLAN_CACHE = 64  # step plans kept (prefetching runs the loader a few steps ahead of the LR and the logs)
_STATE_KEYS = (
    "version",
    "position",
    "seed",
    "num_samples",
    "world_size",
    "gradient_accumulation_steps",
    "reference_batch_size",
    "draw_size",
    "fingerprint",
)


@dataclass(frozen=True)
class StepPlan:
    """The micro-batches of one optimizer step: micro-batch ``j`` runs on rank ``j % world_size`` as accumulation
    step ``j // world_size``."""

    step: int
    micro_batches: list[list[int]]  # dataset indices
    lengths: list[list[int]]  # the lengths the budget counted (truncated where a truncation applies)
    positions: list[int]  # stream position of each micro-batch's first sample (its collation seed)
    truncate_to: int | None  # tokens per row the collator keeps, when a truncation applies

    @property
    def samples(self) -> int:
        return sum(len(mb) for mb in self.micro_batches)

    @classmethod
    def cut(
        cls,
        step: int,
        samples: np.ndarray,
        lengths: np.ndarray,
        slices: list[tuple[int, int]],
        base: int,
        truncate_to: Any,
    ) -> StepPlan:
        """The plan of ``step`` whose micro-batches are the ``slices`` of ``samples`` (stream positions ``base ...``)
        with their counted ``lengths``."""
        return cls(
            step=step,
            micro_batches=[samples[a:b].tolist() for a, b in slices],
            lengths=[lengths[a:b].tolist() for a, b in slices],
            positions=[base + a for a, _ in slices],
            truncate_to=truncate_to,
        )


class StepPlanSampler(Sampler):
    """The plan machinery of the map-style batchers (see the module docstring): plans of whole steps, dealt to the
    ranks, with a position, epochs and a checkable state. Subclasses form each step (:meth:`_build_plan`, and
    :meth:`_pass_plans` for a pass over the data without a draw), set their fingerprint
    (:meth:`_compute_fingerprint`) and say what it covers (``_fingerprint_changes``, for messages).

    Args:
        num_samples: dataset size.
        world_size, gradient_accumulation_steps: one step is ``world_size * gradient_accumulation_steps`` micro-batches.
        reference_batch_size: the samples per step the user's LR is tuned for (the Trainer passes
            ``per_device_train_batch_size * world_size * gradient_accumulation_steps``); LR factors are relative to it.
        seed: stream seed.
        draw: the per-step draw (a :class:`~hf_data_efficiency.CurriculumSampler` or a
            :class:`~hf_data_efficiency.curriculum.mixing.GroupMixingSampler`, built for ``draw_size`` samples per
            step); ``None``: passes over the data.
        tag_positions: tag every key with its micro-batch's stream position, for ``SeededCollation``.
        warmup: a :class:`~hf_data_efficiency.batching.warmup.BatchSizeWarmup` (``None``: no warmup).
    """

    drop_last = True  # the stream always holds whole steps: BatchSamplerShard has no tail to even out

    def __init__(
        self,
        num_samples: int,
        *,
        world_size: int,
        gradient_accumulation_steps: int,
        reference_batch_size: int,
        seed: int,
        draw: Any,
        tag_positions: bool,
        warmup: Any,
    ) -> None:
        self.num_samples = int(num_samples)
        self.world_size = check_int(world_size, "world_size", minimum=1)
        self.gradient_accumulation_steps = check_int(
            gradient_accumulation_steps, "gradient_accumulation_steps", minimum=1
        )
        self.reference_batch_size = check_int(reference_batch_size, "reference_batch_size", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        self.tag_positions = bool(tag_positions)
        self.micro_batches_per_step = self.world_size * self.gradient_accumulation_steps
        self.curriculum_sampler = draw  # the per-step draw (the name predates group mixing)
        if draw is not None and draw.num_samples != self.num_samples:
            raise ValueError(
                f"the per-step draw has {draw.num_samples} samples but the data has {self.num_samples}; both must "
                "describe the same dataset."
            )
        self.tag_groups = bool(getattr(draw, "tag_groups", False))
        self.warmup = warmup
        self.draw_size = int(draw.global_batch_size) if draw is not None else self.num_samples
        self._pass_steps: list[int] = []
        self._cached_pass: tuple[int, list[StepPlan]] | None = None
        self._consumed = [0]  # samples of steps 1..i, as far as the warmup has needed them
        self._position = 0
        self._plans: OrderedDict[int, StepPlan] = OrderedDict()

    # ----- to be formed by subclasses -------------------------------------------------------------------------
    def _build_plan(self, step: int) -> StepPlan:
        """The plan of 1-based ``step`` (with a draw; without one, see :meth:`_pass_plans`)."""
        raise NotImplementedError

    def _pass_plans(self, p: int, perm: np.ndarray, first_step: int) -> list[StepPlan]:
        """The plans of pass ``p`` over the data (the permutation ``perm``), its first step being ``first_step``."""
        raise NotImplementedError

    # ----- passes -----------------------------------------------------------------------------------------------
    def _pass(self, p: int) -> list[StepPlan]:
        """The step plans of pass ``p`` over the data (no draw). Only the last pass built is kept; every pass's step
        count is."""
        if self._cached_pass is not None and self._cached_pass[0] == p:
            return self._cached_pass[1]
        while len(self._pass_steps) < p:  # the steps of the passes before p
            self._pass(len(self._pass_steps))
        perm = np.random.default_rng([self.seed, _RNG_PASS, p]).permutation(self.num_samples)
        plans = self._pass_plans(p, perm, 1 + sum(self._pass_steps[:p]))
        if not plans:
            raise ValueError(
                f"pass {p} over the data fills no whole step of {self.micro_batches_per_step} micro-batches; use more "
                "data, or a smaller batch (or max_tokens)."
            )
        if p == len(self._pass_steps):
            self._pass_steps.append(len(plans))
        self._cached_pass = (p, plans)
        return plans

    def _pass_plan(self, step: int) -> StepPlan:
        p, first = 0, 1
        while True:
            while len(self._pass_steps) <= p:
                self._pass(len(self._pass_steps))
            if step < first + self._pass_steps[p]:
                return self._pass(p)[step - first]
            first += self._pass_steps[p]
            p += 1

    # ----- plans ------------------------------------------------------------------------------------------------
    def plan(self, step: int) -> StepPlan:
        """The micro-batches of 1-based optimizer ``step`` (the last few are cached: the loader, the LR and the logs
        ask for the same steps)."""
        step = check_int(step, "step", minimum=1)
        plan = self._plans.get(step)
        if plan is None:
            plan = self._build_plan(step) if self.curriculum_sampler is not None else self._pass_plan(step)
            self._plans[step] = plan
            if len(self._plans) > _PLAN_CACHE:
                self._plans.popitem(last=False)
        return plan

    def consumed_before(self, step: int) -> int:
        """Samples of the steps before 1-based ``step`` (all processes); with a warmup, only as far as the ramp needs
        them (afterwards every step is full; this then stops at the step where the ramp ended)."""
        # until the ramp is done: after it, every step is full
        while len(self._consumed) < step and self.warmup is not None and self._consumed[-1] <= self.warmup.samples:
            k = len(self._consumed)
            self._consumed.append(self._consumed[-1] + self.plan(k).samples)
        return self._consumed[min(step, len(self._consumed)) - 1]

    def batch_size_at(self, step: int) -> int | None:
        """The warmup's per-device batch size of 1-based ``step`` (``None`` without a warmup)."""
        if self.warmup is None:
            return None
        return self.warmup.batch_size_at(self.consumed_before(step))

    def step_logs(self, step: int) -> dict[str, float]:
        """The logged values of 1-based ``step``, keyed as the engine logs them."""
        raise NotImplementedError

    # ----- sampler protocol -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Micro-batches of one epoch (all ranks)."""
        return self.steps_per_epoch * self.micro_batches_per_step

    @property
    def position(self) -> int:
        """Optimizer steps already yielded (across epochs)."""
        return self._position

    def set_epoch(self, epoch: int) -> None:
        """Position the stream at the start of ``epoch`` (step ``epoch * steps_per_epoch``)."""
        self._position = check_int(epoch, "epoch", minimum=0) * self.steps_per_epoch

    def keys(self, plan: StepPlan) -> list[list[Any]]:
        """The dataset keys of each micro-batch of ``plan``: ``(index, tags)`` pairs carrying the collation seed's
        position, when a truncation applies the tokens per row (see ``CurriculumDataset``), and with online mixing
        each sample's group."""
        out = []
        for indices, position in zip(plan.micro_batches, plan.positions):
            tags: dict[str, int] = {POSITION_KEY: position} if self.tag_positions else {}
            if plan.truncate_to is not None:
                tags[MAX_TOKENS_KEY] = plan.truncate_to
            if self.tag_groups:
                groups = self.curriculum_sampler.group_of(indices)
                out.append([(i, {**tags, GROUP_KEY: g}) for i, g in zip(indices, groups)])
            else:
                out.append([(i, tags) for i in indices])
        return out

    def _announce(self, plan: StepPlan) -> None:
        """Called for every step as it is yielded."""

    def __iter__(self) -> Iterator[list[Any]]:
        end = (self._position // self.steps_per_epoch + 1) * self.steps_per_epoch
        while self._position < end:
            plan = self.plan(self._position + 1)
            self._announce(plan)
            self._position += 1
            yield from self.keys(plan)

    # ----- state --------------------------------------------------------------------------------------------------
    def _compute_fingerprint(self, meta: dict[str, Any], lengths: np.ndarray | None = None) -> str:
        """The state's fingerprint: ``meta`` (the config), the version, the warmup and the sample ``lengths``."""
        meta = {**meta, "version": STATE_VERSION}
        if self.warmup is not None:
            meta["batch_size_warmup"] = self.warmup.identity()
        return state_fingerprint(meta, [lengths] if lengths is not None else [])

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """JSON-able state; ``position`` (steps done) overrides the yielded count, which prefetching runs ahead."""
        return sampler_state(self, STATE_VERSION, _STATE_KEYS[2:-1], position)

    def check_state(self, state: Any, path: str = "dynamic_batching") -> int:
        """Validate ``state`` against this sampler (same seed, data, geometry, config); returns its position."""
        state = expect_mapping(state, path)
        check_sampler_state(self, state, path, _STATE_KEYS, STATE_VERSION, _STATE_KEYS[2:-1])
        return check_int(state["position"], f"{path}.position", minimum=0)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream at ``state``'s position (checked first, see :meth:`check_state`)."""
        self._position = self.check_state(state)


class TokenBudgetBatchSampler(StepPlanSampler):
    """Deterministic token-budget batch sampler: micro-batches of varying size within ``max_tokens`` (see the module
    docstring).

    Args:
        lengths: token length of every sample (:func:`sample_lengths`).
        config: the :class:`~hf_data_efficiency.DynamicBatchingConfig`.
        world_size, gradient_accumulation_steps, reference_batch_size, seed, tag_positions: as
            :class:`StepPlanSampler`.
        curriculum_sampler: the per-step draw (a :class:`~hf_data_efficiency.CurriculumSampler`, or group mixing's
            sampler), built with :meth:`required_draw_size` samples per step; ``None`` without one.
        packed: budget the sum of lengths instead of the padded count (a collator that packs rows).
        warmup: a :class:`~hf_data_efficiency.batching.warmup.BatchSizeWarmup`: each step's budget is ``max_tokens``
            ramped as the per-device batch (never below what ``min_batch_size`` of the longest samples need).
    """

    _fingerprint_changes = "the sample lengths or the dynamic_batching config"

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        config: DynamicBatchingConfig,
        *,
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        reference_batch_size: int,
        seed: int = 0,
        curriculum_sampler: Any = None,
        packed: bool = False,
        tag_positions: bool = True,
        warmup: Any = None,
    ) -> None:
        transform = curriculum_sampler.transform if curriculum_sampler is not None else None
        self.budget = TokenBudget(
            config, reference_batch_size=reference_batch_size, packed=packed, transform=transform
        )
        self.config = config
        self.packed = self.budget.packed
        self._lengths = self._check_lengths(lengths)
        super().__init__(
            len(self._lengths),
            world_size=world_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            reference_batch_size=reference_batch_size,
            seed=seed,
            draw=curriculum_sampler,
            tag_positions=tag_positions,
            warmup=warmup,
        )
        counted = self._lengths if transform is None else np.minimum(self._lengths, int(transform.max_difficulty))
        longest = (
            int(counted.max()) if not config.truncate_long_samples else min(int(counted.max()), self.budget.row_cap)
        )
        #: the least budget a ramped step gets: ``min_batch_size`` of the longest samples
        self.min_ramped_tokens = config.min_batch_size * longest
        if curriculum_sampler is not None:
            eligible = curriculum_sampler.num_eligible(1)
            if eligible < self.micro_batches_per_step * config.min_batch_size:
                raise ValueError(
                    f"the curriculum admits {eligible} samples at step 1, fewer than one step of distinct samples "
                    f"needs: world_size x gradient_accumulation_steps x dynamic_batching.min_batch_size = "
                    f"{self.micro_batches_per_step * config.min_batch_size}; raise the curriculum's min_difficulty."
                )
            self.steps_per_epoch = max(1, self.num_samples // self.reference_batch_size)
        else:
            self.steps_per_epoch = len(self._pass(0))
        needed = self.micro_batches_per_step * config.min_batch_size
        if self.draw_size < needed:
            where = "the per-step curriculum draw" if curriculum_sampler is not None else "the dataset"
            raise ValueError(
                f"{where} holds {self.draw_size} samples, fewer than one step needs: world_size x "
                f"gradient_accumulation_steps x dynamic_batching.min_batch_size = {needed}."
            )
        self._fingerprint = self._compute_fingerprint(
            {"config": config.to_dict(), "packed": self.packed}, self._lengths
        )

    # ----- construction ---------------------------------------------------------------------------------------
    @property
    def truncated_samples(self) -> int:
        """Samples longer than the row cap, cut to it (``truncate_long_samples``)."""
        return self.budget.truncated_samples

    def _check_lengths(self, lengths: Any) -> np.ndarray:
        arr = np.asarray(lengths)
        if arr.ndim != 1 or len(arr) == 0 or arr.dtype.kind not in "iu" or (arr < 1).any():
            raise ValueError("lengths must be a non-empty 1-D array of integers >= 1 (tokens of every sample).")
        arr = arr.astype(np.int64)
        shortest = int(arr.min())
        if self.config.max_tokens < shortest:
            raise ValueError(
                f"dynamic_batching.max_tokens={self.config.max_tokens} is below the shortest sample ({shortest} "
                f"tokens); allowed: max_tokens >= {shortest}."
            )
        self.budget.admit(arr, "samples")
        return arr

    @staticmethod
    def required_draw_size(
        lengths: np.ndarray, config: DynamicBatchingConfig, micro_batches_per_step: int, *, transform_min: int | None
    ) -> int:
        """Samples the curriculum must draw per step so that no step runs out: every micro-batch full of the
        shortest samples (``transform_min``: the smallest truncation of a ``seqlen_truncate`` schedule), at most the
        dataset size."""
        shortest = int(np.min(lengths))
        if transform_min is not None:
            shortest = min(shortest, int(transform_min))
        per_micro = config.max_tokens // max(1, shortest)
        if config.max_batch_size is not None:
            per_micro = min(per_micro, config.max_batch_size)
        return int(min(len(lengths), micro_batches_per_step * max(per_micro, config.min_batch_size)))

    # ----- plans ------------------------------------------------------------------------------------------------
    def max_tokens_at(self, consumed: int) -> int:
        """The budget of a step after ``consumed`` samples: ``max_tokens``, ramped with a warmup."""
        if self.warmup is None:
            return self.config.max_tokens
        return self.warmup.max_tokens_at(consumed, self.config.max_tokens, self.min_ramped_tokens)

    def _order(self, candidates: np.ndarray, lengths: np.ndarray, key: int) -> np.ndarray:
        """Permutation of ``candidates`` by ``sequence_picking_order``."""
        order = self.config.sequence_picking_order
        if order == "random":
            return np.random.default_rng([self.seed, _RNG_PICK, key]).permutation(len(candidates))
        if order == "seqlen":
            return np.argsort(lengths, kind="stable")
        return np.arange(len(candidates))

    def _plan(self, step: int, candidates: np.ndarray, lengths: np.ndarray, base: int, count: int) -> StepPlan:
        """Pack ``candidates`` (stream positions ``base ...``) into ``count`` micro-batches (fewer when they run out)
        as the plan of ``step``."""
        truncate_to = self.budget.truncate_to(self.curriculum_sampler.max_tokens_at(step))
        if truncate_to is not None:
            lengths = np.minimum(lengths, truncate_to)
        budget = self.max_tokens_at(self.consumed_before(step))
        slices = self.budget.pack(lengths, count, max_tokens=budget)
        if len(slices) != count:
            raise ValueError(
                f"dynamic_batching step {step}: the {len(candidates)} drawn samples fill {len(slices)} of the "
                f"{count} micro-batches a step needs within max_tokens={budget}."
            )
        return StepPlan.cut(step, candidates, lengths, slices, base, truncate_to)

    def _sorted_plan(self, step: int, draw: np.ndarray, base: int) -> StepPlan:
        """``seqlen`` order with a curriculum: the step's samples are chosen in draw order (so the curriculum's
        distribution is kept), then sorted by length and packed again into the same number of micro-batches (the
        fullest split in halves where the sorted packing needs fewer); the draw-order plan when they do not fit."""
        m = self.micro_batches_per_step
        plan = self._plan(step, draw, self._lengths[draw], base, m)
        chosen = np.asarray([i for mb in plan.micro_batches for i in mb])
        counted = np.asarray([n for ls in plan.lengths for n in ls])  # truncated where a truncation applies
        order = np.argsort(counted, kind="stable")
        chosen, counted = chosen[order], counted[order]
        slices = self.budget.pack(counted, max_tokens=self.max_tokens_at(self.consumed_before(step)))
        if len(slices) > m or sum(b - a for a, b in slices) != len(chosen):
            return plan
        while len(slices) < m:  # a part of a micro-batch that fits also fits
            j = max(range(len(slices)), key=lambda i: slices[i][1] - slices[i][0])
            a, b = slices[j]
            if b - a < 2 * self.config.min_batch_size:
                return plan
            slices[j : j + 1] = [(a, a + (b - a) // 2), (a + (b - a) // 2, b)]
        return StepPlan.cut(step, chosen, counted, slices, base, plan.truncate_to)

    def _pass_plans(self, p: int, perm: np.ndarray, first_step: int) -> list[StepPlan]:
        """Pass ``p`` packed greedily, step after step, each step within its budget; the samples left at the end
        (less than one step) are not used in that pass."""
        perm = perm[self._order(perm, self._lengths[perm], p)]
        lengths = self._lengths[perm]
        truncate_to = self.budget.truncate_to(None)
        if truncate_to is not None:
            lengths = np.minimum(lengths, truncate_to)
        m, cfg = self.micro_batches_per_step, self.config
        most = m * (cfg.max_batch_size if cfg.max_batch_size is not None else cfg.max_tokens) + 1
        plans: list[StepPlan] = []
        start, consumed = 0, self.consumed_before(first_step) if self.warmup is not None else 0
        while True:
            window = lengths[start : start + most]
            slices = self.budget.pack(window, stop_after=m, max_tokens=self.max_tokens_at(consumed))
            if len(slices) < m:
                return plans
            base = p * self.num_samples + start
            plans.append(StepPlan.cut(first_step + len(plans), perm[start:], window, slices, base, truncate_to))
            consumed += plans[-1].samples
            start += slices[-1][1]

    def _build_plan(self, step: int) -> StepPlan:
        draw = np.asarray(self.curriculum_sampler.step_indices(step), dtype=np.int64)
        # the curriculum draws with replacement: a step holds each sample once, unless too few distinct ones
        # were drawn to give every micro-batch min_batch_size samples
        distinct = draw[np.sort(np.unique(draw, return_index=True)[1])]
        if len(distinct) >= self.micro_batches_per_step * self.config.min_batch_size:
            draw = distinct
        else:
            logger.warning(
                f"dynamic_batching step {step}: the curriculum drew only {len(distinct)} distinct samples, fewer "
                f"than {self.micro_batches_per_step} micro-batches x min_batch_size; some samples repeat."
            )
        base = (step - 1) * self.draw_size
        if self.config.sequence_picking_order == "seqlen":
            return self._sorted_plan(step, draw, base)
        lengths = self._lengths[draw]
        order = self._order(draw, lengths, step)
        return self._plan(step, draw[order], lengths[order], base, self.micro_batches_per_step)

    def lr_factor(self, step: int) -> float:
        """The LR factor of 1-based ``step``, from its number of samples."""
        return self.budget.lr_factor(self.plan(step).samples)

    def step_stats(self, step: int) -> dict[str, float]:
        """Samples, real tokens, padding fraction and LR factor of 1-based ``step`` (as planned)."""
        plan = self.plan(step)
        return self.budget.step_stats(self.budget.totals(plan.lengths))

    def step_logs(self, step: int) -> dict[str, float]:
        """``dynamic_batching/*`` of :meth:`step_stats`; with a warmup also ``batch_size_warmup/max_tokens``."""
        out = {f"dynamic_batching/{key}": value for key, value in self.step_stats(step).items()}
        if self.warmup is not None:
            out["batch_size_warmup/max_tokens"] = self.max_tokens_at(self.consumed_before(step))
        return out

    def _announce(self, plan: StepPlan) -> None:
        if self.config.verbose:
            logger.info(
                f"dynamic_batching step {plan.step}: micro-batch sizes {[len(mb) for mb in plan.micro_batches]}, "
                f"tokens {[sum(ls) for ls in plan.lengths]}"
            )
