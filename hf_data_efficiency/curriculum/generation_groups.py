"""Prompts in generation groups, drawn by the curriculum: the data side of group-relative RL such as trl's GRPO.

GRPO generates ``num_generations`` (``G``) completions of every prompt and compares each completion with the others
of its *group*; a group must hold the completions of one prompt. trl's ``RepeatSampler`` lays its index stream out
for that, and :class:`GroupedPromptSampler` keeps the layout while the curriculum chooses the prompts:

* **Layout.** Generation ``c`` uses ``P = generation_batch_size / G`` distinct prompts; each is repeated ``G`` times
  in a row, and the ``P * G`` entries are repeated ``R = num_iterations * steps_per_generation`` times (the trainer
  generates on the first copy and trains on its buffered completions for the others). The DataLoader batches
  ``per_device_train_batch_size * steps_per_generation`` entries and accelerate hands batch ``i`` to process
  ``i % world_size``, so a generation's ``P * G`` entries are spread over the processes in order, and the trainer's
  gather puts each group back together.
* **Draw.** Generation ``c`` starts at micro-step ``c * R``, inside optimizer step ``k_c = c * R // GA + 1`` (``GA``
  = gradient accumulation); its prompts are drawn among those eligible at step ``k_c`` under the curriculum's
  sampling metrics (the rule of :mod:`~hf_data_efficiency.curriculum.eligibility`, shared with
  :class:`~hf_data_efficiency.CurriculumSampler`): ``P`` distinct prompts, uniformly, or weighted by their pass
  rates with a :class:`PassRateTracker`. Prompts repeat across generations (the eligible set changes every step).
* **Determinism.** A generation's draw is a pure function of the seed, ``c`` and the pass rates recorded up to
  generation ``c - lag``: every process draws the same prompts without communication, and a resumed run draws
  what the uninterrupted one drew.

**Pass-rate curriculum.** :class:`PassRateTracker` keeps each prompt's running pass rate: a completion *passes* when
its reward is above ``threshold``; a prompt's first group sets its rate to the fraction of its completions that
passed, each later group moves it by ``smoothing`` towards the new fraction (an exponential moving average).
Prompts whose rate lies inside ``band`` (``lo <= rate <= hi``), where a group's rewards differ and its advantages
are non-zero, are drawn with weight 1, the others with ``outside_weight``; a prompt never seen counts as having rate
``unseen``. The ``P`` prompts are drawn without replacement with those weights (Efraimidis-Spirakis keys). The data
loader prepares a generation's batch before the previous generation is scored, so generation ``c`` is drawn from the
pass rates recorded through generation ``c - lag`` (``lag`` = 2 with trl's defaults).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from transformers.utils import logging

from .._validation import check_list, check_number, check_state_int, check_state_keys, state_int
from ..config import CurriculumConfig
from .eligibility import DifficultyPacing, admission_levels, filtering_metrics
from .sampler import (
    INT64_MAX,
    EpochStreamSampler,
    check_sampler_state,
    curriculum_schedules,
    read_metric_values,
    sampler_state,
    state_fingerprint,
    whole_number,
)

logger = logging.get_logger(__name__)

#: Private example keys the sampler's tags arrive under (through ``CurriculumDataset``): the prompt's dataset index
#: and the generation it was drawn for. The trainer pops them before the rows reach the reward functions.
PROMPT_KEY = "_hfde_prompt"
GENERATION_KEY = "_hfde_generation"
STATE_VERSION = 1
_RNG_PROMPTS = 3  # the random stream of the prompt draws (CurriculumSampler uses 0-2)
_SAMPLER_KEYS = (
    "version",
    "position",
    "seed",
    "num_prompts",
    "num_generations",
    "generation_batch_size",
    "repeat_count",
    "gradient_accumulation_steps",
    "global_batch_size",
    "fingerprint",
)
_TRACKER_KEYS = (
    "version",
    "num_prompts",
    "lag",
    "config",
    "applied_through",
    "recorded_through",
    "prompts",
    "rates",
    "counts",
    "pending",
)


@dataclass(frozen=True)
class PassRateConfig:
    """The pass-rate rule (see the module docstring); the names are the flags' without their ``pass_rate_``."""

    band: tuple[float, float] = (0.2, 0.8)
    threshold: float = 0.5
    smoothing: float = 0.5
    unseen: float = 0.5
    outside_weight: float = 0.1

    def __post_init__(self) -> None:
        band = check_list(self.band, "pass_rate_band", lambda v, p: check_number(v, p, minimum=0, maximum=1))
        if len(band) != 2 or band[0] > band[1]:
            raise ValueError(
                f"pass_rate_band={list(self.band)!r} must be two pass rates lo <= hi in [0, 1], e.g. [0.2, 0.8]."
            )
        object.__setattr__(self, "band", (float(band[0]), float(band[1])))
        object.__setattr__(self, "threshold", float(check_number(self.threshold, "pass_rate_threshold")))
        object.__setattr__(
            self, "smoothing", float(check_number(self.smoothing, "pass_rate_smoothing", above=0, maximum=1))
        )
        object.__setattr__(self, "unseen", float(check_number(self.unseen, "pass_rate_unseen", minimum=0, maximum=1)))
        weight = check_number(self.outside_weight, "pass_rate_outside_weight", minimum=0, maximum=1)
        object.__setattr__(self, "outside_weight", float(weight))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "band": list(self.band)}

    def in_band(self, rates: np.ndarray) -> np.ndarray:
        """Whether each pass rate lies inside the band (bounds included)."""
        lo, hi = self.band
        return (rates >= lo) & (rates <= hi)


class PassRateTracker:
    """Every prompt's running pass rate, recorded generation by generation, and the draw weights it gives.

    ``record`` adds a generation's pass fractions (generations in order; a generation recorded before, as when a
    resumed run regenerates a checkpoint's last batch, is kept as first recorded). ``weights(c, prompts)`` are the
    weights of generation ``c``'s draw, from the records through ``c - lag`` only. Records wait in a short pending list
    until ``commit`` merges them, once no draw can need the rates without them any more; the pending records are part
    of the state, so a resumed run draws exactly as the uninterrupted one whatever its data loader had prefetched.

    Args:
        num_prompts: the number of prompts (dataset rows).
        config: the :class:`PassRateConfig`.
        lag: generation ``c`` is drawn from the records through generation ``c - lag`` (>= 1).
    """

    def __init__(self, num_prompts: int, config: PassRateConfig, *, lag: int = 1) -> None:
        self.num_prompts = whole_number(num_prompts, "num_prompts", 1)
        self.config = config
        self.lag = whole_number(lag, "lag", 1)
        self.reset()

    def reset(self) -> None:
        """Forget every record (a fresh run)."""
        self._rates = np.zeros(self.num_prompts, dtype=np.float64)
        self._counts = np.zeros(self.num_prompts, dtype=np.int64)
        self._applied_through = -1
        self._recorded_through = -1
        self._pending: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._resumed_at = 0

    @property
    def recorded_through(self) -> int:
        """The last generation recorded (-1 before the first)."""
        return self._recorded_through

    def pass_fractions(self, rewards: Any, num_generations: int) -> np.ndarray:
        """The fraction of each group's completions whose reward is above the threshold; ``rewards`` holds ``G``
        consecutive completions per group. A NaN reward (unscorable) does not pass."""
        rewards = np.asarray(rewards, dtype=np.float64).reshape(-1, num_generations)
        with np.errstate(invalid="ignore"):
            return (rewards > self.config.threshold).mean(axis=1)

    def record(self, generation: int, prompts: Any, fractions: Any) -> bool:
        """Record generation ``generation``'s groups: their prompts and pass fractions. Returns False when that
        generation was recorded before (kept as it was)."""
        if generation <= self._recorded_through:
            return False
        if generation != self._recorded_through + 1:
            raise ValueError(
                f"pass rates: generation {generation} is recorded after generation {self._recorded_through}; "
                "generations must be recorded in order, each once."
            )
        prompts = np.asarray(prompts, dtype=np.int64)
        fractions = np.asarray(fractions, dtype=np.float64)
        if prompts.shape != fractions.shape or prompts.ndim != 1:
            raise ValueError(f"pass rates: {prompts.shape} prompts but {fractions.shape} pass fractions.")
        if len(np.unique(prompts)) != len(prompts):
            raise ValueError(f"pass rates: generation {generation} holds a prompt in two groups.")
        self._pending.append((generation, prompts, fractions))
        self._recorded_through = generation
        return True

    def _merge(self, rates: np.ndarray, counts: np.ndarray, prompts: np.ndarray, fractions: np.ndarray) -> None:
        seen = counts[prompts] > 0
        a = self.config.smoothing
        rates[prompts] = np.where(seen, (1 - a) * rates[prompts] + a * fractions, fractions)
        counts[prompts] += 1

    def commit(self, through: int) -> None:
        """Merge the pending records of generations up to ``through``: call it once every later draw is for a
        generation ``>= through + lag``."""
        while self._pending and self._pending[0][0] <= through:
            generation, prompts, fractions = self._pending.pop(0)
            self._merge(self._rates, self._counts, prompts, fractions)
            self._applied_through = generation

    def rates_at(self, generation: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rates, counts)`` of every prompt as generation ``generation`` is drawn: from the records through
        ``generation - lag``. A count of 0 means never seen."""
        through = max(generation - self.lag, -1)  # -1: no generation
        if generation < self._resumed_at:  # a generation trained before the resumed checkpoint: its draw is skipped
            through = self._applied_through
        elif through > self._recorded_through:
            raise RuntimeError(
                f"pass rates: generation {generation} is drawn before generation {through} is scored, so its draw "
                f"would depend on timing. The data loader runs more than {self.lag} generation(s) ahead of training: "
                "use dataloader_num_workers=0 and the Trainer's own train loop."
            )
        elif through < self._applied_through:
            raise RuntimeError(
                f"pass rates: generation {generation} is drawn after the records through generation "
                f"{self._applied_through} were merged; commit only records no later draw excludes."
            )
        due = [p for p in self._pending if p[0] <= through]
        if not due:
            return self._rates, self._counts
        rates, counts = self._rates.copy(), self._counts.copy()
        for _, prompts, fractions in due:
            self._merge(rates, counts, prompts, fractions)
        return rates, counts

    def weights(self, generation: int, prompts: np.ndarray) -> np.ndarray:
        """The draw weight of each of ``prompts`` (dataset indices) for generation ``generation``: 1 inside the band,
        ``outside_weight`` outside it; an unseen prompt has rate ``unseen``."""
        rates, counts = self.rates_at(generation)
        rate = np.where(counts[prompts] > 0, rates[prompts], self.config.unseen)
        return np.where(self.config.in_band(rate), 1.0, self.config.outside_weight)

    def summary(self) -> dict[str, float]:
        """The prompts seen so far and the fraction of them whose rate is inside the band (merged records only)."""
        seen = self._counts > 0
        count = int(seen.sum())
        inside = float(self.config.in_band(self._rates[seen]).mean()) if count else 0.0
        return {"seen_prompts": count, "seen_in_band": inside}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The JSON-able state: the merged rates of the prompts seen and the pending records."""
        seen = np.flatnonzero(self._counts > 0)
        return {
            "version": STATE_VERSION,
            "num_prompts": self.num_prompts,
            "lag": self.lag,
            "config": self.config.to_dict(),
            "applied_through": self._applied_through,
            "recorded_through": self._recorded_through,
            "prompts": seen.tolist(),
            "rates": self._rates[seen].tolist(),
            "counts": self._counts[seen].tolist(),
            "pending": [
                {"generation": g, "prompts": p.tolist(), "pass_fractions": f.tolist()} for g, p, f in self._pending
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, checked against this tracker; a problem raises ``ValueError``/``TypeError``
        and leaves the tracker as it was."""
        where = "pass-rate"
        same = {"num_prompts": self.num_prompts, "lag": self.lag, "config": self.config.to_dict()}
        check_sampler_state(self, state, "pass_rates", _TRACKER_KEYS, STATE_VERSION, same)
        applied = state_int(where, "applied_through", state["applied_through"], -1, INT64_MAX)
        recorded = state_int(where, "recorded_through", state["recorded_through"], applied, INT64_MAX)
        prompts = self._index_list(state["prompts"], f"{where} state: prompts")
        rates = self._fraction_list(state["rates"], f"{where} state: rates", len(prompts))
        counts = [state_int(where, f"counts[{i}]", c, 1, INT64_MAX) for i, c in enumerate(state["counts"])]
        if len(counts) != len(prompts):
            raise ValueError(f"{where} state: {len(counts)} counts for {len(prompts)} prompts.")
        if not isinstance(state["pending"], list):
            raise TypeError(f"{where} state: pending must be a list, got {type(state['pending']).__name__}.")
        pending = []
        for i, entry in enumerate(state["pending"]):
            entry = check_state_keys(f"{where} pending[{i}]", entry, ("generation", "prompts", "pass_fractions"))
            generation = state_int(f"{where} pending[{i}]", "generation", entry["generation"], 0, INT64_MAX)
            if generation != applied + 1 + i:
                raise ValueError(
                    f"{where} state: pending[{i}] is generation {generation}, expected {applied + 1 + i}."
                )
            group = self._index_list(entry["prompts"], f"{where} state: pending[{i}].prompts")
            fractions = self._fraction_list(
                entry["pass_fractions"], f"{where} state: pending[{i}].pass_fractions", len(group)
            )
            pending.append((generation, np.asarray(group, dtype=np.int64), np.asarray(fractions, dtype=np.float64)))
        if applied + len(pending) != recorded:
            raise ValueError(
                f"{where} state: {len(pending)} pending generation(s) after generation {applied} do not reach "
                f"recorded_through={recorded}."
            )
        self.reset()
        self._rates[prompts] = rates
        self._counts[prompts] = counts
        self._applied_through, self._recorded_through, self._pending = applied, recorded, pending
        self._resumed_at = recorded + 1

    def _index_list(self, value: Any, path: str) -> list[int]:
        if not isinstance(value, list):
            raise TypeError(f"{path} must be a list of prompt indices, got {type(value).__name__}.")
        out = [check_state_int(v, f"{path}[{i}]", 0, self.num_prompts - 1) for i, v in enumerate(value)]
        if len(set(out)) != len(out):
            raise ValueError(f"{path} holds a prompt index twice.")
        return out

    @staticmethod
    def _fraction_list(value: Any, path: str, length: int) -> list[float]:
        if not isinstance(value, list) or len(value) != length:
            raise ValueError(f"{path} must be a list of {length} numbers in [0, 1].")
        return [float(check_number(v, f"{path}[{i}]", minimum=0, maximum=1)) for i, v in enumerate(value)]


class GroupedPromptSampler(EpochStreamSampler):
    """Prompt indices in generation groups (trl's ``RepeatSampler`` layout), drawn by the curriculum.

    Yields ``(index, {PROMPT_KEY: index, GENERATION_KEY: c})`` for ``CurriculumDataset``, so every row knows its
    prompt and generation. Stream position ``p`` belongs to optimizer step ``p // global_batch_size + 1``, where
    ``global_batch_size = generation_batch_size * gradient_accumulation_steps`` (each micro-step reads one copy of a
    generation batch on all processes together). ``len()`` is the stream of ``num_prompts // P`` generations, rounded
    down to whole optimizer steps and whole generations; ``set_epoch(e)`` starts at ``e * len()`` and the draws go
    on across epochs.

    Args:
        num_prompts: the number of prompts (dataset rows).
        num_generations: completions per prompt, ``G``.
        generation_batch_size: completions per generation over all processes (a multiple of ``G``).
        repeat_count: how many times each generation batch is read (``num_iterations * steps_per_generation``).
        gradient_accumulation_steps: micro-steps per optimizer step.
        seed: the draws' seed (a non-negative int).
        curriculum_config: the sampling metrics that decide eligibility (``None``: every prompt is eligible).
        metric_values: ``{metric name: 1-D array}`` or a ``datasets.Dataset`` with the metric columns.
        pass_rates: a :class:`PassRateTracker` whose weights the draws follow (``None``: uniform).
    """

    _fingerprint_changes = "the metric values or the curriculum"

    def __init__(
        self,
        num_prompts: int,
        *,
        num_generations: int,
        generation_batch_size: int,
        repeat_count: int,
        gradient_accumulation_steps: int,
        seed: int,
        curriculum_config: CurriculumConfig | None = None,
        metric_values: Mapping[str, Any] | Any = None,
        pass_rates: PassRateTracker | None = None,
    ) -> None:
        self.num_prompts = whole_number(num_prompts, "num_prompts", 1)
        self.num_generations = whole_number(num_generations, "num_generations", 1)
        self.generation_batch_size = whole_number(generation_batch_size, "generation_batch_size", 1)
        self.repeat_count = whole_number(repeat_count, "repeat_count", 1)
        self.gradient_accumulation_steps = whole_number(gradient_accumulation_steps, "gradient_accumulation_steps", 1)
        self.seed = whole_number(seed, "seed")
        if self.generation_batch_size % self.num_generations:
            raise ValueError(
                f"generation_batch_size={self.generation_batch_size} must be a multiple of num_generations="
                f"{self.num_generations}: a generation holds whole groups."
            )
        self.prompts_per_generation = self.generation_batch_size // self.num_generations
        self.global_batch_size = self.generation_batch_size * self.gradient_accumulation_steps
        self.entries_per_generation = self.generation_batch_size * self.repeat_count
        unit = math.lcm(self.entries_per_generation, self.global_batch_size)
        generations = self.num_prompts // self.prompts_per_generation
        self.epoch_length = generations * self.entries_per_generation // unit * unit
        if self.epoch_length == 0:
            needed = unit // self.entries_per_generation * self.prompts_per_generation
            raise ValueError(
                f"{self.num_prompts} prompts are too few: an epoch must hold whole generations of "
                f"{self.prompts_per_generation} prompts that end on an optimizer step, which takes at least {needed} "
                "prompts; lower generation_batch_size or use more prompts."
            )
        self.pass_rates = pass_rates
        if pass_rates is not None and pass_rates.num_prompts != self.num_prompts:
            raise ValueError(f"pass_rates tracks {pass_rates.num_prompts} prompts but there are {self.num_prompts}.")
        self.config = curriculum_config
        self._metrics: list[Any] = []
        self._values: dict[str, np.ndarray] = {}
        self._pacing: DifficultyPacing | None = None
        if curriculum_config is not None:
            self._init_curriculum(curriculum_config, metric_values)
        meta = {
            "version": STATE_VERSION,
            "num_prompts": self.num_prompts,
            "metrics": [m.to_dict() for m in self.config.sampling_metrics] if self.config is not None else None,
        }
        self._fingerprint = state_fingerprint(meta, (self._values[name] for name in sorted(self._values)))
        self._eligible_cache: tuple[int, np.ndarray] | None = None
        self._draw_cache: tuple[int, np.ndarray] | None = None
        self._position = 0
        first = self.num_eligible(1)
        if first < self.prompts_per_generation:
            raise ValueError(
                f"only {first} prompts are eligible at step 1 (difficulty {self.difficulty_at(1)}), but a generation "
                f"needs {self.prompts_per_generation} distinct prompts (generation_batch_size "
                f"{self.generation_batch_size} / num_generations {self.num_generations}); raise the curriculum's "
                "min_difficulty or lower generation_batch_size."
            )

    def _init_curriculum(self, config: CurriculumConfig, metric_values: Any) -> None:
        if not isinstance(config, CurriculumConfig):
            raise ValueError(f"curriculum_config must be a CurriculumConfig, got {type(config).__name__}.")
        if config.transform is not None:
            raise ValueError(
                f"curriculum metric {config.transform.name!r} (seqlen_curriculum) truncates or reshapes token "
                "batches; prompts for generation are not truncated: use sampling metrics (curriculum_metrics)."
            )
        self._metrics = filtering_metrics(config.sampling_metrics)
        self._pacing = DifficultyPacing(curriculum_schedules(config)[0])
        if self._metrics:
            self._values = read_metric_values(metric_values, self._metrics, self.num_prompts, "prompt")[0]
        self._levels = admission_levels(self._values, self._metrics, self._pacing, self.num_prompts)

    # ------------------------------------------------------------------ steps and generations
    def generation_step(self, generation: int) -> int:
        """The 1-based optimizer step generation ``generation`` (0-based) is generated in: its draw's difficulty."""
        return generation * self.repeat_count // self.gradient_accumulation_steps + 1

    def step_generation(self, step: int) -> int:
        """The generation whose completions the first micro-step of optimizer ``step`` trains on."""
        return (step - 1) * self.gradient_accumulation_steps // self.repeat_count

    def _level(self, step: int) -> int:
        if self._pacing.extend(step):  # custom schedules: levels become known as training goes on
            self._levels = admission_levels(self._values, self._metrics, self._pacing, self.num_prompts)
        return int(self._pacing.levels_at([step])[0])

    def eligible(self, step: int) -> np.ndarray:
        """The prompt indices eligible at 1-based optimizer ``step`` (all of them without a curriculum)."""
        if self._pacing is None:
            return np.arange(self.num_prompts)
        level = self._level(step)
        if self._eligible_cache is None or self._eligible_cache[0] != level:
            self._eligible_cache = (level, np.flatnonzero(self._levels <= level))
        return self._eligible_cache[1]

    def num_eligible(self, step: int) -> int:
        """How many prompts are eligible at ``step``."""
        return len(self.eligible(step))

    def difficulty_at(self, step: int) -> dict[str, float]:
        """``{metric: difficulty}`` of the prompts optimizer ``step`` trains on: those of the generation it reads,
        drawn at the difficulty of the step that generation is generated in (empty without a curriculum)."""
        if self._pacing is None:
            return {}
        level = self._level(self.generation_step(self.step_generation(step)))
        return {name: diffs[level] for name, diffs in self._pacing.diffs.items()}

    def prompts(self, generation: int) -> np.ndarray:
        """The ``P`` distinct prompt indices of generation ``generation``, in group order."""
        if self._draw_cache is not None and self._draw_cache[0] == generation:
            return self._draw_cache[1]
        step = self.generation_step(generation)
        candidates = self.eligible(step)
        size = self.prompts_per_generation
        if len(candidates) < size:
            raise ValueError(
                f"generation {generation} (optimizer step {step}): {len(candidates)} prompts are eligible but a "
                f"generation needs {size} distinct prompts; raise the curriculum's min_difficulty or lower "
                "generation_batch_size."
            )
        rng = np.random.default_rng([self.seed, _RNG_PROMPTS, generation])
        with np.errstate(divide="ignore"):
            keys = np.log(rng.random(len(candidates)))
            if self.pass_rates is not None:
                weights = self.pass_rates.weights(generation, candidates)
                keys = np.where(weights > 0, keys / np.where(weights > 0, weights, 1.0), -np.inf)
        chosen = candidates[np.argsort(-keys, kind="stable")[:size]]
        self._draw_cache = (generation, chosen)
        return chosen

    # ------------------------------------------------------------------ stream
    def __iter__(self) -> Iterator[tuple[int, dict[str, int]]]:
        end = (self._position // self.epoch_length + 1) * self.epoch_length
        while self._position < end:
            generation, offset = divmod(self._position, self.entries_per_generation)
            slot = offset % self.generation_batch_size // self.num_generations
            index = int(self.prompts(generation)[slot])
            self._position += 1
            yield index, {PROMPT_KEY: index, GENERATION_KEY: generation}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """JSON-able state; ``position`` overrides the yielded count (``global_step * global_batch_size``)."""
        return sampler_state(self, STATE_VERSION, _SAMPLER_KEYS[2:-1], position)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream of ``state`` after checking that it is this sampler's (seed, prompts, geometry,
        metric values and curriculum)."""
        check_sampler_state(self, state, "sampler", _SAMPLER_KEYS, STATE_VERSION, _SAMPLER_KEYS[2:-1])
        self._position = check_state_int(state["position"], "sampler.position", 0, INT64_MAX)
