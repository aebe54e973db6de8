"""Token-budget (dynamic) batching over map-style data, following the curriculum.

:class:`TokenBudgetBatchSampler` is a DataLoader batch sampler: micro-batches (lists of dataset keys) of varying size
within ``max_tokens`` (:class:`~hf_data_efficiency.batching.budget.TokenBudget`), exactly ``world_size *
gradient_accumulation_steps`` of them per optimizer step, in the order accelerate's ``BatchSamplerShard`` deals them
out (micro-batch ``j`` of a step to rank ``j % world_size``; without a ``batch_size`` attribute it keeps them whole).
Without a curriculum, pass ``p`` over the data is the permutation ``default_rng([seed, 3, p])`` packed into as many
whole steps as it fills; with one, each step packs (a prefix of) the curriculum's draw for that step, so every sample
is eligible at its step. Everything is a pure function of the seed, the lengths and the step: every rank computes the
same stream without communication, and the state is a position plus what checks the stream is the same. Semantics,
picking orders included: ``docs/dynamic_batching.md``.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler
from transformers.utils import logging

from .._validation import check_int, check_keys, expect_mapping
from ..config import DynamicBatchingConfig
from ..curriculum.transforms import MAX_TOKENS_KEY, POSITION_KEY
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


class TokenBudgetBatchSampler(Sampler):
    """Deterministic token-budget batch sampler (see the module docstring).

    Args:
        lengths: token length of every sample (:func:`sample_lengths`).
        config: the :class:`~hf_data_efficiency.DynamicBatchingConfig`.
        world_size, gradient_accumulation_steps: one step is ``world_size * gradient_accumulation_steps`` micro-batches.
        reference_batch_size: the samples per step the user's LR is tuned for (the Trainer passes
            ``per_device_train_batch_size * world_size * gradient_accumulation_steps``); LR factors are relative to it.
        seed: stream seed.
        curriculum_sampler: a :class:`~hf_data_efficiency.CurriculumSampler` whose global batch is the per-step draw
            (build it with :meth:`required_draw_size` samples per step); ``None`` without a curriculum.
        packed: budget the sum of lengths instead of the padded count (a collator that packs rows).
        tag_positions: tag every key with its micro-batch's stream position, for ``SeededCollation``.
    """

    drop_last = True  # the stream always holds whole steps: BatchSamplerShard has no tail to even out

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
    ) -> None:
        transform = curriculum_sampler.config.transform if curriculum_sampler is not None else None
        self.budget = TokenBudget(
            config, reference_batch_size=reference_batch_size, packed=packed, transform=transform
        )
        self.config = config
        self.world_size = check_int(world_size, "world_size", minimum=1)
        self.gradient_accumulation_steps = check_int(
            gradient_accumulation_steps, "gradient_accumulation_steps", minimum=1
        )
        self.reference_batch_size = self.budget.reference_batch_size
        self.seed = check_int(seed, "seed", minimum=0)
        self.packed = self.budget.packed
        self.tag_positions = bool(tag_positions)
        self.micro_batches_per_step = self.world_size * self.gradient_accumulation_steps
        self.curriculum_sampler = curriculum_sampler
        self._lengths = self._check_lengths(lengths)
        self.num_samples = len(self._lengths)
        if curriculum_sampler is not None:
            if curriculum_sampler.num_samples != self.num_samples:
                raise ValueError(
                    f"the curriculum sampler has {curriculum_sampler.num_samples} samples but lengths has "
                    f"{self.num_samples}; both must describe the same dataset."
                )
            self.draw_size = int(curriculum_sampler.global_batch_size)
            eligible = curriculum_sampler.num_eligible(1)
            if eligible < self.micro_batches_per_step * config.min_batch_size:
                raise ValueError(
                    f"the curriculum admits {eligible} samples at step 1, fewer than one step of distinct samples "
                    f"needs: world_size x gradient_accumulation_steps x dynamic_batching.min_batch_size = "
                    f"{self.micro_batches_per_step * config.min_batch_size}; raise the curriculum's min_difficulty."
                )
            self.steps_per_epoch = max(1, self.num_samples // self.reference_batch_size)
        else:
            self.draw_size = self.num_samples
            self._pass_steps: list[int] = []
            self._cached_pass: tuple[int, list[StepPlan]] | None = None
            self.steps_per_epoch = len(self._pass(0))
        needed = self.micro_batches_per_step * config.min_batch_size
        if self.draw_size < needed:
            where = "the per-step curriculum draw" if curriculum_sampler is not None else "the dataset"
            raise ValueError(
                f"{where} holds {self.draw_size} samples, fewer than one step needs: world_size x "
                f"gradient_accumulation_steps x dynamic_batching.min_batch_size = {needed}."
            )
        self._fingerprint = self._compute_fingerprint()
        self._position = 0
        self._plans: OrderedDict[int, StepPlan] = OrderedDict()

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

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        meta = {"config": self.config.to_dict(), "packed": self.packed, "version": STATE_VERSION}
        h.update(json.dumps(meta, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self._lengths).data)
        return h.hexdigest()

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
    def _order(self, candidates: np.ndarray, lengths: np.ndarray, key: int) -> np.ndarray:
        """Permutation of ``candidates`` by ``sequence_picking_order``."""
        order = self.config.sequence_picking_order
        if order == "random":
            return np.random.default_rng([self.seed, _RNG_PICK, key]).permutation(len(candidates))
        if order == "seqlen":
            return np.argsort(lengths, kind="stable")
        return np.arange(len(candidates))

    def _plan(self, step: int, candidates: np.ndarray, lengths: np.ndarray, base: int, count: int | None) -> list:
        """Pack ``candidates`` (stream positions ``base ...``) into micro-batches and group them into plans."""
        transform = self.curriculum_sampler.max_tokens_at(step) if self.curriculum_sampler is not None else None
        truncate_to = self.budget.truncate_to(transform)
        if truncate_to is not None:
            lengths = np.minimum(lengths, truncate_to)
        slices = self.budget.pack(lengths, count)
        m = self.micro_batches_per_step
        plans = []
        for first in range(0, len(slices) - m + 1, m):
            group = slices[first : first + m]
            plans.append(
                StepPlan(
                    step=step + len(plans),
                    micro_batches=[candidates[a:b].tolist() for a, b in group],
                    lengths=[lengths[a:b].tolist() for a, b in group],
                    positions=[base + a for a, _ in group],
                    truncate_to=truncate_to,
                )
            )
        return plans

    def _sorted_plan(self, step: int, draw: np.ndarray, base: int) -> StepPlan:
        """``seqlen`` order with a curriculum: the step's samples are chosen in draw order (so the curriculum's
        distribution is kept), then sorted by length and packed again into the same number of micro-batches (the
        fullest split in halves where the sorted packing needs fewer); the draw-order plan when they do not fit."""
        m = self.micro_batches_per_step
        (plan,) = self._plan(step, draw, self._lengths[draw], base, m)
        chosen = np.asarray([i for mb in plan.micro_batches for i in mb])
        counted = np.asarray([n for ls in plan.lengths for n in ls])  # truncated where a truncation applies
        order = np.argsort(counted, kind="stable")
        chosen, counted = chosen[order], counted[order]
        slices = self.budget.pack(counted)
        if len(slices) > m or sum(b - a for a, b in slices) != len(chosen):
            return plan
        while len(slices) < m:  # a part of a micro-batch that fits also fits
            j = max(range(len(slices)), key=lambda i: slices[i][1] - slices[i][0])
            a, b = slices[j]
            if b - a < 2 * self.config.min_batch_size:
                return plan
            slices[j : j + 1] = [(a, a + (b - a) // 2), (a + (b - a) // 2, b)]
        return StepPlan(
            step=step,
            micro_batches=[chosen[a:b].tolist() for a, b in slices],
            lengths=[counted[a:b].tolist() for a, b in slices],
            positions=[base + a for a, _ in slices],
            truncate_to=plan.truncate_to,
        )

    def _pass(self, p: int) -> list[StepPlan]:
        """The step plans of pass ``p`` over the data (no curriculum), with 1-based steps counted from its start.
        Only the last pass built is kept; every pass's step count is."""
        if self._cached_pass is not None and self._cached_pass[0] == p:
            return self._cached_pass[1]
        perm = np.random.default_rng([self.seed, _RNG_PASS, p]).permutation(self.num_samples)
        perm = perm[self._order(perm, self._lengths[perm], p)]
        plans = self._plan(1, perm, self._lengths[perm], p * self.num_samples, None)
        if not plans:
            raise ValueError(
                f"dynamic_batching: pass {p} over the data fills no whole step of {self.micro_batches_per_step} "
                "micro-batches; use more data or a smaller max_tokens."
            )
        if p == len(self._pass_steps):
            self._pass_steps.append(len(plans))
        self._cached_pass = (p, plans)
        return plans

    def _build_plan(self, step: int) -> StepPlan:
        if self.curriculum_sampler is not None:
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
            draw, lengths = draw[order], lengths[order]
            (plan,) = self._plan(step, draw, lengths, base, self.micro_batches_per_step)
            return plan
        p, remaining = 0, step
        while True:
            while len(self._pass_steps) <= p:  # step counts of the passes before p
                self._pass(len(self._pass_steps))
            if remaining <= self._pass_steps[p]:
                break
            remaining -= self._pass_steps[p]
            p += 1
        local = self._pass(p)[remaining - 1]
        return StepPlan(step, local.micro_batches, local.lengths, local.positions, local.truncate_to)

    def plan(self, step: int) -> StepPlan:
        """The micro-batches of 1-based optimizer ``step`` (the last few are cached: the loader, the LR and the logs
        ask for the same steps)."""
        step = check_int(step, "step", minimum=1)
        plan = self._plans.get(step)
        if plan is None:
            plan = self._build_plan(step)
            self._plans[step] = plan
            if len(self._plans) > _PLAN_CACHE:
                self._plans.popitem(last=False)
        return plan

    def lr_factor(self, step: int) -> float:
        """The LR factor of 1-based ``step``, from its number of samples."""
        return self.budget.lr_factor(self.plan(step).samples)

    def step_stats(self, step: int) -> dict[str, float]:
        """Samples, real tokens, padding fraction and LR factor of 1-based ``step`` (as planned)."""
        plan = self.plan(step)
        return self.budget.step_stats(self.budget.totals(plan.lengths))

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
        position and, when a truncation applies, the tokens per row (see ``CurriculumDataset``)."""
        out = []
        for indices, position in zip(plan.micro_batches, plan.positions):
            tags: dict[str, int] = {POSITION_KEY: position} if self.tag_positions else {}
            if plan.truncate_to is not None:
                tags[MAX_TOKENS_KEY] = plan.truncate_to
            out.append([(i, tags) for i in indices])
        return out

    def __iter__(self) -> Iterator[list[Any]]:
        end = (self._position // self.steps_per_epoch + 1) * self.steps_per_epoch
        while self._position < end:
            plan = self.plan(self._position + 1)
            if self.config.verbose:
                logger.info(
                    f"dynamic_batching step {plan.step}: micro-batch sizes {[len(mb) for mb in plan.micro_batches]}, "
                    f"tokens {[sum(ls) for ls in plan.lengths]}"
                )
            self._position += 1
            yield from self.keys(plan)

    # ----- state --------------------------------------------------------------------------------------------------
    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """JSON-able state; ``position`` (steps done) overrides the yielded count, which prefetching runs ahead."""
        return {
            "version": STATE_VERSION,
            "position": int(self._position if position is None else position),
            "seed": self.seed,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "reference_batch_size": self.reference_batch_size,
            "draw_size": self.draw_size,
            "fingerprint": self._fingerprint,
        }

    def check_state(self, state: Any, path: str = "dynamic_batching") -> int:
        """Validate ``state`` against this sampler (same seed, data lengths, geometry, config); returns its position."""
        state = expect_mapping(state, path)
        check_keys(state, _STATE_KEYS, path, required=_STATE_KEYS)
        if isinstance(state["version"], bool) or state["version"] != STATE_VERSION:
            raise ValueError(f"{path}.version={state['version']!r} is not supported; allowed: [{STATE_VERSION}].")
        position = check_int(state["position"], f"{path}.position", minimum=0)
        for key in _STATE_KEYS[2:-1]:
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"{path}.{key}={state[key]!r} but this run has {key}={getattr(self, key)!r}; resume with the same "
                    "seed, dataset and batch geometry."
                )
        if state["fingerprint"] != self._fingerprint:
            raise ValueError(
                f"{path}.fingerprint does not match: the sample lengths or the dynamic_batching config changed since "
                "the checkpoint; resume with the same data and config."
            )
        return position

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream at ``state``'s position (checked first, see :meth:`check_state`)."""
        self._position = self.check_state(state)
