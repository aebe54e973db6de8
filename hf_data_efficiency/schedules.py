"""Pacing functions shared by the curriculum sampler and random-LTD.

Both techniques grow a quantity (difficulty, kept sequence length) from a minimum to a maximum
over a number of steps. The arithmetic below reproduces DeepSpeed's ``CurriculumScheduler`` and
``RandomLTDScheduler`` step for step, so that a DeepSpeed config means the same thing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEDULE_TYPES = ("fixed_linear", "fixed_root", "fixed_discrete", "custom")


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
        validate_schedule(
            self.schedule_type,
            self.schedule_config,
            self.min_difficulty,
            self.max_difficulty,
            has_fn=self.schedule_fn is not None,
        )

    @classmethod
    def from_dict(
        cls, cfg: Mapping[str, Any], schedule_fn: Callable[[int], float] | None = None
    ) -> DifficultySchedule:
        """Build from a DeepSpeed metric entry (``min_difficulty``, ``max_difficulty``,
        ``schedule_type``, ``schedule_config``). ``custom`` schedules take ``schedule_fn``."""
        where = "curriculum metric config"
        return cls(
            min_difficulty=_require(cfg, "min_difficulty", where),
            max_difficulty=_require(cfg, "max_difficulty", where),
            schedule_type=_require(cfg, "schedule_type", where),
            schedule_config=dict(cfg.get("schedule_config", {})),
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


def validate_schedule(
    schedule_type: str,
    schedule_config: Mapping[str, Any],
    min_difficulty: float,
    max_difficulty: float,
    *,
    has_fn: bool,
    where: str = "curriculum schedule",
) -> None:
    """Raise a ``ValueError`` naming the offending field for an invalid schedule."""
    if schedule_type not in SCHEDULE_TYPES:
        raise ValueError(f"{where}: schedule_type={schedule_type!r} is unknown; allowed: {', '.join(SCHEDULE_TYPES)}.")
    for name, value in (("min_difficulty", min_difficulty), ("max_difficulty", max_difficulty)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"{where}: {name}={value!r} must be a number.")
    if min_difficulty > max_difficulty:
        raise ValueError(
            f"{where}: min_difficulty={min_difficulty} is larger than max_difficulty={max_difficulty}; "
            "min_difficulty must be <= max_difficulty."
        )
    sc = schedule_config
    if schedule_type in ("fixed_linear", "fixed_root"):
        needed = ["total_curriculum_step", "difficulty_step"] + (
            ["root_degree"] if schedule_type == "fixed_root" else []
        )
        for key in needed:
            _require(sc, key, f"{where}: schedule_config of a {schedule_type} schedule")
        if not sc["total_curriculum_step"] > 0:
            raise ValueError(
                f"{where}: schedule_config.total_curriculum_step={sc['total_curriculum_step']} must be > 0."
            )
        if not sc["difficulty_step"] > 0:
            raise ValueError(f"{where}: schedule_config.difficulty_step={sc['difficulty_step']} must be > 0.")
        if schedule_type == "fixed_root" and not sc["root_degree"] > 0:
            raise ValueError(f"{where}: schedule_config.root_degree={sc['root_degree']} must be > 0.")
    elif schedule_type == "fixed_discrete":
        difficulty = _require(sc, "difficulty", f"{where}: schedule_config of a fixed_discrete schedule")
        max_step = _require(sc, "max_step", f"{where}: schedule_config of a fixed_discrete schedule")
        if not isinstance(difficulty, Sequence) or not isinstance(max_step, Sequence) or len(max_step) == 0:
            raise ValueError(f"{where}: schedule_config.difficulty and .max_step must be non-empty lists.")
        if len(difficulty) != len(max_step) + 1:
            raise ValueError(
                f"{where}: fixed_discrete needs len(schedule_config.difficulty) == len(schedule_config.max_step) + 1 "
                f"(the last difficulty holds after the last max_step); got {len(difficulty)} and {len(max_step)}."
            )
    elif schedule_type == "custom" and not has_fn:
        raise ValueError(
            f"{where}: schedule_type='custom' needs a Python callable step -> difficulty "
            "(pass schedule_fn=... or set CurriculumMetricConfig.schedule_fn)."
        )
