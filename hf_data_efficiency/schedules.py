"""Pacing functions shared by the curriculum sampler and random-LTD.

Both techniques grow a quantity (difficulty, kept sequence length) from a minimum to a maximum
over a number of steps. The arithmetic below reproduces DeepSpeed's ``CurriculumScheduler`` and
``RandomLTDScheduler`` step for step, so that a DeepSpeed config means the same thing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._validation import Rule, check_int, check_keys, check_list, check_number, check_str, expect_mapping

#: Schedules given by a closed formula; random-LTD and the Trainer flags offer only these.
ROOT_SCHEDULE_TYPES = ("fixed_linear", "fixed_root")
#: Every curriculum schedule type (DeepSpeed's ``CurriculumScheduler`` types).
SCHEDULE_TYPES = (*ROOT_SCHEDULE_TYPES, "fixed_discrete", "custom")
#: ``schedule_config`` keys of the root schedules, with their rules (also the source of their Trainer flags).
ROOT_SCHEDULE_KEYS = {
    "total_curriculum_step": Rule("int", "Optimizer steps until the final difficulty is reached.", minimum=1),
    "difficulty_step": Rule("number", "The difficulty grows in multiples of this.", above=0),
    "root_degree": Rule("number", "Root degree of a fixed_root schedule.", above=0),
}
#: ``schedule_config`` keys of a ``fixed_discrete`` schedule.
DISCRETE_SCHEDULE_KEYS = ("difficulty", "max_step")


def root_pacing(
    step: float,
    *,
    total_steps: float,
    root_degree: float,
    min_value: float,
    max_value: float,
    step_size: float,
    floor_at_min: bool,
) -> float:
    """Value of a root pacing curve at ``step``, snapped down to a multiple of ``step_size``.

    ``value = floor((step / total_steps) ** (1 / root_degree) * (max - min) + min)``, rounded down
    to a multiple of ``step_size`` and capped at ``max_value``. With ``floor_at_min`` the result is
    never below the first multiple of ``step_size`` at or above ``min_value`` (DeepSpeed's
    curriculum does this; its random-LTD scheduler does not).
    """
    progress = (float(step) / total_steps) ** (1.0 / root_degree)
    value = math.floor(progress * (max_value - min_value) + min_value)
    value -= value % step_size
    if floor_at_min:
        value = max(value, -(-min_value // step_size) * step_size)
    return min(value, max_value)


def _require(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg:
        raise ValueError(f"{where} is missing the required key '{key}'.")
    return cfg[key]


@dataclass(frozen=True)
class DifficultySchedule:
    """Difficulty of the curriculum at a 1-based optimizer step.

    Built from one DeepSpeed ``curriculum_metrics`` entry; ``schedule(step)`` equals DeepSpeed's
    ``CurriculumScheduler(cfg).update_difficulty(step)`` on a fresh scheduler.
    """

    min_difficulty: float
    max_difficulty: float
    schedule_type: str
    schedule_config: Mapping[str, Any] = field(default_factory=dict)
    schedule_fn: Callable[[int], float] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        sc = validate_schedule(
            self.schedule_type,
            self.schedule_config,
            self.min_difficulty,
            self.max_difficulty,
            has_fn=self.schedule_fn is not None,
        )
        object.__setattr__(self, "schedule_config", sc)

    @classmethod
    def from_dict(
        cls, cfg: Mapping[str, Any], schedule_fn: Callable[[int], float] | None = None
    ) -> DifficultySchedule:
        """Build from a DeepSpeed metric entry (``min_difficulty``, ``max_difficulty``,
        ``schedule_type``, ``schedule_config``). ``custom`` schedules take ``schedule_fn``."""
        where = "curriculum metric config"
        expect_mapping(cfg, where)
        return cls(
            min_difficulty=_require(cfg, "min_difficulty", where),
            max_difficulty=_require(cfg, "max_difficulty", where),
            schedule_type=_require(cfg, "schedule_type", where),
            schedule_config=cfg.get("schedule_config", {}),
            schedule_fn=schedule_fn or cfg.get("schedule_fn"),
        )

    def __call__(self, step: int) -> float:
        if not self.min_difficulty < self.max_difficulty:
            return self.min_difficulty
        sc = self.schedule_config
        if self.schedule_type == "fixed_discrete":
            # past the last boundary the last difficulty holds; before it, the first boundary not yet passed wins
            if step > sc["max_step"][-1]:
                return sc["difficulty"][-1]
            return next(d for d, bound in zip(sc["difficulty"], sc["max_step"]) if step <= bound)
        if self.schedule_type == "custom":
            return self.schedule_fn(step)
        return root_pacing(
            step,
            total_steps=sc["total_curriculum_step"],
            root_degree=1 if self.schedule_type == "fixed_linear" else sc["root_degree"],
            min_value=self.min_difficulty,
            max_value=self.max_difficulty,
            step_size=sc["difficulty_step"],
            floor_at_min=True,
        )

    def final_step(self) -> int | None:
        """First step from which the difficulty stays at its final value (None for ``custom``)."""
        sc = self.schedule_config
        if self.schedule_type == "fixed_discrete":
            return int(sc["max_step"][-1]) + 1
        if self.schedule_type == "custom":
            return None
        return int(math.ceil(sc["total_curriculum_step"]))


def schedule_keys(schedule_type: str) -> tuple[str, ...]:
    """The ``schedule_config`` keys a schedule type reads (all of them are required)."""
    if schedule_type == "fixed_discrete":
        return DISCRETE_SCHEDULE_KEYS
    if schedule_type in ROOT_SCHEDULE_TYPES:
        return tuple(k for k in ROOT_SCHEDULE_KEYS if k != "root_degree" or schedule_type == "fixed_root")
    return ()


def _custom_with_keys_message(schedule_config: Mapping[str, Any], path: str, has_fn: bool) -> str:
    """Why a ``custom`` schedule refuses ``schedule_config`` keys (left over from another type), and where its
    difficulty comes from instead."""
    given = sorted(map(str, schedule_config))
    readers = [t for t in SCHEDULE_TYPES if set(given) & set(schedule_keys(t))]
    read_by = f" (keys of {' and '.join(readers)} schedules)" if readers else ""
    source = (
        "comes only from its Python callable (schedule_fn, or schedule_fns={<metric name>: fn} given to the sampler)"
        if has_fn
        else "comes from a Python callable step -> difficulty, and none is given: pass schedule_fn=... (or "
        "schedule_fns={<metric name>: fn} to the sampler)"
    )
    return (
        f"{path}: a custom schedule takes no schedule_config keys, got {', '.join(map(repr, given))}{read_by}. "
        f"Remove schedule_config or set it to {{}}; a custom schedule's difficulty {source}."
    )


def validate_schedule(
    schedule_type: str,
    schedule_config: Mapping[str, Any],
    min_difficulty: float,
    max_difficulty: float,
    *,
    has_fn: bool,
    where: str = "curriculum schedule",
) -> dict[str, Any]:
    """Check a curriculum schedule; return its normalised ``schedule_config``.

    Every problem is a ``ValueError`` naming ``where.<field>``, the value and what is allowed: the type, numeric
    (finite, non-boolean) difficulties, exactly the keys the schedule type reads, and for ``fixed_discrete`` lists
    of the right lengths with strictly increasing ``max_step`` and difficulties within [min, max].
    """
    check_str(schedule_type, f"{where}.schedule_type", SCHEDULE_TYPES)
    lo = check_number(min_difficulty, f"{where}.min_difficulty")
    hi = check_number(max_difficulty, f"{where}.max_difficulty")
    if lo > hi:
        raise ValueError(
            f"{where}: min_difficulty={lo} is larger than max_difficulty={hi}; "
            "min_difficulty must be <= max_difficulty."
        )
    path = f"{where}.schedule_config"
    sc = dict(expect_mapping(schedule_config, path))
    if schedule_type == "custom" and sc:
        raise ValueError(_custom_with_keys_message(sc, path, has_fn))
    keys = schedule_keys(schedule_type)
    check_keys(sc, keys, f"{path} (of a {schedule_type} schedule)", required=keys)
    if schedule_type in ROOT_SCHEDULE_TYPES:
        for key in keys:
            sc[key] = ROOT_SCHEDULE_KEYS[key].check(sc[key], f"{path}.{key}")
    elif schedule_type == "fixed_discrete":
        sc["difficulty"] = check_list(
            sc["difficulty"],
            f"{path}.difficulty",
            lambda v, p: check_number(v, p, minimum=lo, maximum=hi),
            nonempty=True,
        )
        sc["max_step"] = check_list(sc["max_step"], f"{path}.max_step", lambda v, p: check_int(v, p, minimum=1))
        difficulty, max_step = sc["difficulty"], sc["max_step"]
        if len(difficulty) != len(max_step) + 1:
            raise ValueError(
                f"{where}: fixed_discrete needs len(schedule_config.difficulty) == len(schedule_config.max_step) + 1 "
                f"(the last difficulty holds after the last max_step); got {len(difficulty)} and {len(max_step)}."
            )
        if any(b <= a for a, b in zip(max_step, max_step[1:])):
            raise ValueError(f"{path}.max_step={max_step} is not allowed; allowed: strictly increasing steps.")
    elif not has_fn:
        raise ValueError(
            f"{where}: schedule_type='custom' needs a Python callable step -> difficulty "
            "(pass schedule_fn=... or set CurriculumMetricConfig.schedule_fn)."
        )
    return sc
