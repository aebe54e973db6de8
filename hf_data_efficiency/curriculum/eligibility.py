"""Which samples a curriculum admits at a step: the one eligibility rule shared by the sampler and the CLI preview.

* **Metric values** must be 1-D, numeric and finite (:func:`metric_array`).
* **Difficulty levels.** Each metric's difficulty is the running maximum of its schedule, so a sample once admitted
  stays admitted (DeepSpeed does the same). A new level starts at every step where one of those running maxima
  grows (:class:`DifficultyPacing`).
* **Admission.** ``value`` metrics admit ``metric <= difficulty``; ``percentile`` metrics admit the samples whose
  stable rank by metric is below :func:`percentile_count`. With several metrics a sample must pass all of them;
  ``single_cluster`` metrics do not filter (:func:`filtering_metrics`). :func:`admission_levels` gives every sample
  the first level it is eligible at, from which the sampler builds its clusters and the preview its counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from ..config import CurriculumMetricConfig
from ..schedules import DifficultySchedule

#: Samples per vectorised chunk when levels are looked up or clusters built (bounds the temporaries).
CHUNK_SAMPLES = 1 << 20


# ---------------------------------------------------------------------------------------------
# metric values
# ---------------------------------------------------------------------------------------------
def numeric_array(values: Any, what: str) -> np.ndarray:
    """``values`` (array-like or torch tensor) as a 1-D numeric numpy array; ``what`` names it in errors."""
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one number per sample), got shape {arr.shape}.")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numeric (bool, int or float), got dtype {arr.dtype}.")
    return arr


def check_finite(arr: np.ndarray, what: str) -> np.ndarray:
    """``arr`` unchanged, or a ``ValueError`` naming ``what`` and the first sample index holding inf or NaN."""
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            value = arr[bad[0]]
            shown = "NaN" if np.isnan(value) else str(float(value))
            raise ValueError(
                f"{what} has a non-finite value ({shown}) at sample index {int(bad[0])} ({bad.size} non-finite in "
                "all); metric values must be finite numbers."
            )
    return arr


def metric_array(values: Any, what: str) -> np.ndarray:
    """``values`` checked as curriculum metric values: 1-D, numeric and finite."""
    return check_finite(numeric_array(values, what), what)


# ---------------------------------------------------------------------------------------------
# difficulty levels
# ---------------------------------------------------------------------------------------------
def percentile_count(num_samples: int, percentile: float) -> int:
    """Number of samples a percentile difficulty admits: ``floor(N * p / 100)``, computed exactly.

    ``p`` is read through its shortest decimal form (``12.5`` -> 25/2), so e.g. ``N=1000, p=29``
    admits exactly 290 samples; ``p = 100`` admits all. (DeepSpeed uses ``(N // max_difficulty) * p``.)
    """
    return math.floor(Fraction(num_samples) * Fraction(repr(float(percentile))) / 100)


def filtering_metrics(metrics: Iterable[CurriculumMetricConfig]) -> list[CurriculumMetricConfig]:
    """The sampling metrics that restrict eligibility (``single_cluster`` ones admit every sample)."""
    return [m for m in metrics if m.clustering_type != "single_cluster"]


def _monotone_changes(fn: Callable[[int], float], lo: int, hi: int) -> list[int]:
    """Steps ``s`` in ``(lo, hi]`` where a non-decreasing ``fn`` changes, by bisection (O(changes * log))."""
    found: list[int] = []
    stack = [(lo, fn(lo), hi, fn(hi))]
    while stack:
        a, fa, b, fb = stack.pop()
        if fa == fb:
            continue
        if b - a == 1:
            found.append(b)
            continue
        mid = (a + b) // 2
        fm = fn(mid)
        stack += [(mid, fm, b, fb), (a, fa, mid, fm)]
    return sorted(found)


class DifficultyPacing:
    """Change points of the joint (running-maximum) difficulty of the sampling metrics.

    ``steps[c]`` is the step level ``c`` starts at (``steps[0] == 1``) and ``diffs[name][c]`` the effective
    difficulty of each metric from that step on. Built-in schedules are enumerated once (bisection for the
    monotone root/linear pacing, breakpoints for ``fixed_discrete``); ``custom`` ones are evaluated step by
    step, lazily, up to ``horizon``. The levels up to a step do not depend on how far ``extend`` went before.
    """

    def __init__(self, schedules: Mapping[str, DifficultySchedule]) -> None:
        self.schedules = dict(schedules)
        self.steps: list[int] = []
        self.diffs: dict[str, list[float]] = {name: [] for name in self.schedules}
        self._current: dict[str, float] = {}
        self.horizon = 0
        finals = [s.final_step() for s in self.schedules.values()]
        self.complete_at = None if None in finals else max([1, *finals])

    @property
    def complete(self) -> bool:
        return self.complete_at is not None and self.horizon >= self.complete_at

    def _candidates(self, sched: DifficultySchedule, lo: int, hi: int) -> list[int]:
        if sched.schedule_type == "custom":
            return list(range(lo + 1, hi + 1))
        first = [1] if lo == 0 else []
        if sched.schedule_type == "fixed_discrete":
            breaks = [math.floor(ms) + 1 for ms in sched.schedule_config["max_step"]]
            return sorted({s for s in first + breaks if lo < s <= hi})
        hi = min(hi, max(sched.final_step(), 1))
        return first + (_monotone_changes(sched, max(lo, 1), hi) if hi > max(lo, 1) else [])

    def extend(self, step: int) -> bool:
        """Make the change points known up to ``step``; return True when new ones were added."""
        if self.complete or step <= self.horizon:
            return False
        hi = self.complete_at if self.complete_at is not None else max(step, 2 * self.horizon, 1024)
        candidates = sorted({s for sch in self.schedules.values() for s in self._candidates(sch, self.horizon, hi)})
        if not self.schedules and self.horizon == 0:
            candidates = [1]
        known = len(self.steps)
        for s in candidates:
            changed = s == 1
            for name, sched in self.schedules.items():
                value = sched(s)
                if name not in self._current or value > self._current[name]:
                    self._current[name] = value
                    changed = True
            if changed:
                self.steps.append(s)
                for name in self.schedules:
                    self.diffs[name].append(self._current[name])
        self.horizon = hi
        return len(self.steps) > known

    def levels_at(self, steps: Sequence[int] | np.ndarray) -> np.ndarray:
        """The level in force at each 1-based step (change points are made known up to the largest)."""
        steps = np.asarray(steps, dtype=np.int64)
        if steps.size:
            self.extend(int(steps.max()))
        return np.searchsorted(np.asarray(self.steps, dtype=np.int64), steps, side="right") - 1


def admission_levels(
    values: Mapping[str, np.ndarray],
    metrics: Sequence[CurriculumMetricConfig],
    pacing: DifficultyPacing,
    num_samples: int,
) -> np.ndarray:
    """Per sample, the first level of ``pacing`` it is eligible at under every one of ``metrics``
    (``len(pacing.steps)`` = not within the levels known so far). ``values[name]`` holds each metric's
    per-sample values (:func:`metric_array`)."""
    n, levels = num_samples, len(pacing.steps)
    level = np.zeros(n, dtype=np.int16 if levels < 2**15 - 1 else np.int32)
    for m in metrics:
        vals = values[m.name]
        limits = np.asarray(pacing.diffs[m.name], dtype=np.float64)
        if m.difficulty_type == "value":
            # non-negative integers of moderate range (seqlen, ...) use a value -> level table
            small = vals.dtype.kind == "u" or (vals.dtype.kind == "i" and vals.min() >= 0)
            table = None
            if small and int(vals.max()) < 2**22:
                table = np.searchsorted(limits, np.arange(int(vals.max()) + 1), side="left").astype(level.dtype)
            for start in range(0, n, CHUNK_SAMPLES):
                chunk, part = vals[start : start + CHUNK_SAMPLES], level[start : start + CHUNK_SAMPLES]
                first = table[chunk] if table is not None else np.searchsorted(limits, chunk, side="left")
                np.maximum(part, first, out=part, casting="unsafe")
        else:
            counts = np.array([percentile_count(n, p) for p in limits], dtype=np.int64)
            by_rank = np.repeat(np.arange(levels + 1, dtype=level.dtype), np.diff(counts, prepend=0, append=n))
            ranked = np.argsort(vals, kind="stable")
            level[ranked] = np.maximum(level[ranked], by_rank)
            del ranked, by_rank
    return level


@dataclass
class EligibilityCurve:
    """Eligibility at a list of steps: what the sampler's ``num_eligible`` and ``difficulty_at`` report."""

    steps: np.ndarray  #: the 1-based steps
    num_samples: int
    difficulty: dict[str, np.ndarray]  #: effective (running-maximum) difficulty of each sampling metric per step
    eligible: np.ndarray  #: samples eligible under all filtering metrics, per step
    per_metric: dict[str, np.ndarray]  #: samples eligible under each filtering metric alone, per step


def eligibility_curve(
    values: Mapping[str, Any],
    metrics: Sequence[CurriculumMetricConfig],
    schedules: Mapping[str, DifficultySchedule],
    steps: Sequence[int] | np.ndarray,
    num_samples: int,
) -> EligibilityCurve:
    """Eligible counts at ``steps`` for the sampling ``metrics`` with their ``schedules`` (``{name: schedule}``)."""
    from .sampler import read_metric_values  # the sampler module builds on this one

    filtering = filtering_metrics(metrics)
    arrays = read_metric_values(values, filtering, num_samples)[0]
    pacing = DifficultyPacing(schedules)
    at = pacing.levels_at(steps)

    def counts(ms: Sequence[CurriculumMetricConfig]) -> np.ndarray:
        level = admission_levels(arrays, ms, pacing, num_samples)
        per_level = np.bincount(level, minlength=len(pacing.steps) + 1)[: len(pacing.steps)]
        return np.cumsum(per_level)[at]

    return EligibilityCurve(
        steps=np.asarray(steps, dtype=np.int64),
        num_samples=num_samples,
        difficulty={name: np.asarray(d, dtype=np.float64)[at] for name, d in pacing.diffs.items()},
        eligible=counts(filtering),
        per_metric={m.name: counts([m]) for m in filtering},
    )
