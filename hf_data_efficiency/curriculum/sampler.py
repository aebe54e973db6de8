"""Distributed curriculum sampler: DeepSpeed's curriculum data sampling as a ``torch.utils.data.Sampler``.

The sampler yields one infinite, deterministic stream of sample indices. Stream position ``p`` belongs
to optimizer step ``k = p // G + 1`` (``G`` = global batch = ``batch_size * world_size *
gradient_accumulation_steps``), and the batch of step ``k`` is drawn at the difficulty of step ``k``.
Every rank builds the same stream from the seed alone and accelerate's ``BatchSamplerShard`` hands
micro-batch ``i`` to rank ``i % world_size``, so no communication is needed.

How a global batch is drawn (DeepSpeed semantics, without its resume and short-batch bugs):

* **Clusters.** Each time the (running-maximum) difficulty changes, the samples that become eligible
  form a new cluster; cluster ``c`` is active from the step it was created at.
* **Draw.** Each of the ``G`` slots of a batch picks an active cluster with probability proportional
  to its size (``integers`` + ``searchsorted`` on the cumulative sizes: DeepSpeed's multinomial choice).
* **Walk.** Each cluster is walked in a shuffled order; when the walk wraps it continues on a fresh
  shuffle, as often as needed, so batches are never short. Then the global batch is shuffled.

Everything random is a pure function of the position: the draws of step block ``b`` come from
``default_rng([seed, 0, b])``, the ``w``-th shuffle of cluster ``c`` from ``default_rng([seed, 1, c, w])``
and the batch shuffle from ``default_rng([seed, 2, b])`` (never the global numpy RNG, DeepSpeed#8405).
Jumping to any position only replays the cheap per-block draws to count how far each cluster walked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler
from transformers.utils import logging

from .._validation import check_state_int, check_state_keys
from ..config import CurriculumConfig
from ..schedules import DifficultySchedule
from .eligibility import (
    CHUNK_SAMPLES,
    DifficultyPacing,
    admission_levels,
    filtering_metrics,
    metric_array,
    percentile_count,
)

logger = logging.get_logger(__name__)

STATE_VERSION = 1
_DRAWS_PER_BLOCK = 8192  # a block holds max(1, _DRAWS_PER_BLOCK // G) steps; part of the stream definition
_RNG_DRAW, _RNG_WALK, _RNG_SHUFFLE = 0, 1, 2
_STATE_KEYS = ("version", "position", "seed", "num_samples", "global_batch_size", "fingerprint")
_GEOMETRY = ("batch_size", "world_size", "gradient_accumulation_steps")
#: what a 1-based optimizer step must be, for messages
STEP_ALLOWED = "a 1-based optimizer step (an integer >= 1)"
INT64_MAX = 2**63 - 1


def whole_number(value: Any, name: str, minimum: int = 0, allowed: str | None = None) -> int:
    """``value`` as an ``int`` when it is an integer (not a bool) >= ``minimum``; else a ``ValueError`` saying that
    ``name`` must be ``allowed`` (default: a non-negative integer, or an integer >= ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        if allowed is None:
            allowed = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r} must be {allowed}.")
    return int(value)


def state_fingerprint(meta: Mapping[str, Any], arrays: Iterable[np.ndarray] = ()) -> str:
    """SHA-256 of ``meta`` (as sorted JSON) and of the bytes of ``arrays``: what a sampler's state is checked against
    on resume (the data and the config it was drawn from)."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for arr in arrays:
        h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


def sampler_state(
    sampler: Any, version: int, keys: Sequence[str], position: int | None, kind: str | None = None
) -> dict[str, Any]:
    """A sampler's JSON-able state: ``version``, its ``kind`` when given, ``position`` (default: the sampler's own),
    the sampler's attributes ``keys`` (its seed, data size and geometry) and its fingerprint."""
    return {
        "version": version,
        **({"kind": kind} if kind is not None else {}),
        "position": int(sampler._position if position is None else position),
        **{key: getattr(sampler, key) for key in keys},
        "fingerprint": sampler._fingerprint,
    }


def batch_geometry(batch_size: Any, world_size: Any, gradient_accumulation_steps: Any) -> tuple[int, int, int, int]:
    """``batch_size``, ``world_size`` and ``gradient_accumulation_steps`` checked as integers >= 1, and the global
    batch (their product)."""
    b, w, a = (
        whole_number(v, name, 1) for v, name in zip((batch_size, world_size, gradient_accumulation_steps), _GEOMETRY)
    )
    return b, w, a, b * w * a


def check_sampler_state(
    sampler: Any,
    state: Any,
    path: str,
    keys: Sequence[str],
    version: int,
    same: Iterable[str] | Mapping[str, Any] = (),
) -> Mapping[str, Any]:
    """Check the state ``path`` of ``sampler`` (or any other stateful part) read back from a checkpoint, before
    anything is restored: exactly ``keys``, its ``version`` (and ``kind``, when ``keys`` has one: the part's
    ``state_kind``), the values of ``same`` (``{key: this run's value}``, or keys of the part's own attributes: its
    seed, data size and geometry) and its ``fingerprint`` when ``keys`` has one (``sampler._fingerprint_changes`` says
    what a mismatch means changed). Returns ``state``."""
    state = check_state_keys(path, state, keys)
    wanted = {"version": version, **({"kind": sampler.state_kind} if "kind" in keys else {})}
    found = {key: state[key] for key in wanted}
    if isinstance(state["version"], bool) or found != wanted:
        raise ValueError(f"{path} state {found} is not supported; allowed: {wanted}.")
    same = same if isinstance(same, Mapping) else {key: getattr(sampler, key) for key in same}
    for key, mine in same.items():
        if state[key] != mine:
            raise ValueError(
                f"{path}.{key}={state[key]!r} but this run has {key}={mine!r}; resume with the same data, batch "
                "geometry and config."
            )
    if "fingerprint" in keys and state["fingerprint"] != sampler._fingerprint:
        raise ValueError(
            f"{path}.fingerprint does not match: {sampler._fingerprint_changes} changed since the checkpoint; resume "
            "with the same data and config."
        )
    return state


def state_position(value: Any, path: str, global_batch_size: int) -> int:
    """A state's ``position`` (``path``), checked as a whole number of global batches."""
    position = check_state_int(value, path, 0, INT64_MAX)
    if position % global_batch_size:
        raise ValueError(f"{path}={position} is not a multiple of the global batch {global_batch_size}.")
    return position


def dataset_column(dataset: Any, name: str, compute: Callable[[Any], Any] | None = None) -> np.ndarray:
    """A numeric column of a ``datasets.Dataset`` (or ``compute`` of it: an Arrow compute function) as numpy,
    honouring an indices mapping (select/shuffle)."""
    column = dataset.data.column(name)
    column = (column if compute is None else compute(column)).to_numpy()
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        column = column[indices.column(0).to_numpy()]
    return column


def is_dataset(values: Any) -> bool:
    """Whether ``values`` is a ``datasets.Dataset`` (read by column) rather than a mapping of arrays."""
    return hasattr(values, "column_names") and hasattr(values, "data")


def read_metric_values(
    metric_values: Any, metrics: Sequence[Any], num_samples: int | None, unit: str = "sample"
) -> tuple[dict[str, np.ndarray], int | None]:
    """The ``metrics``' values (``{name: 1-D array}``, booleans as ``uint8``) read from ``metric_values`` (a mapping
    ``{metric name: 1-D array}`` or a ``datasets.Dataset`` with the metric columns), each checked by
    :func:`metric_array` and to hold one value per ``unit`` (``num_samples`` of them; ``None``: as many as the first
    array), and that count."""
    dataset = is_dataset(metric_values)
    if not dataset and not isinstance(metric_values, Mapping):
        raise ValueError(
            "metric_values must be a mapping {metric name: 1-D array} or a datasets.Dataset with the metric "
            f"columns, got {type(metric_values).__name__}."
        )
    available = list(metric_values.column_names if dataset else metric_values.keys())
    values: dict[str, np.ndarray] = {}
    source = "the dataset"
    for m in metrics:
        if m.name not in available:
            raise ValueError(
                f"metric_values has no column/array for curriculum metric {m.name!r}; available: {available}. "
                "Compute it with hf_data_efficiency.compute_metrics or pass it in metric_values."
            )
        raw = dataset_column(metric_values, m.name) if dataset else metric_values[m.name]
        arr = metric_array(raw, f"metric_values[{m.name!r}]")
        if arr.dtype.kind == "b":
            arr = arr.astype(np.uint8)
        if num_samples is None:
            num_samples, source = len(arr), f"metric_values[{m.name!r}]"
        elif len(arr) != num_samples:
            raise ValueError(
                f"metric_values[{m.name!r}] has {len(arr)} values but {source} has {num_samples} {unit}s; "
                f"every metric needs exactly one value per {unit}."
            )
        values[m.name] = arr
    return values, num_samples


def curriculum_schedules(
    config: CurriculumConfig | None, schedule_fns: Mapping[str, Callable[[int], float]] | None = None
) -> tuple[dict[str, DifficultySchedule], DifficultySchedule | None]:
    """The schedules of ``config``'s sampling metrics, and apart that of its sequence-length transform (``None``
    without one); ``schedule_fns`` holds the callables of ``custom`` schedules. No curriculum: ``({}, None)``."""
    if config is None:
        return {}, None
    schedule_fns = schedule_fns or {}
    names = [m.name for m in config.metrics]
    unknown = sorted(set(schedule_fns) - set(names))
    if unknown:
        raise ValueError(f"schedule_fns has no curriculum metric named {unknown}; configured metrics: {names}.")
    schedules = {}
    for m in config.metrics:
        fn = schedule_fns.get(m.name, m.schedule_fn)
        if m.name in schedule_fns and m.schedule_type != "custom":
            raise ValueError(
                f"schedule_fns[{m.name!r}] is given but curriculum metric {m.name!r} has schedule_type="
                f"{m.schedule_type!r}; set schedule_type='custom' to use a callable."
            )
        if m.schedule_type == "custom" and not callable(fn):
            raise ValueError(
                f"curriculum metric {m.name!r} has schedule_type='custom' but no callable: pass "
                f"schedule_fns={{{m.name!r}: fn}} or set CurriculumMetricConfig.schedule_fn (fn: step -> difficulty)."
            )
        schedules[m.name] = DifficultySchedule(
            m.min_difficulty, m.max_difficulty, m.schedule_type, dict(m.schedule_config), fn
        )
    transform = schedules.pop(config.transform.name) if config.transform is not None else None
    return schedules, transform


class CurriculumQueries:
    """The per-step queries every curriculum-paced draw (map-style or streamed) answers alike, from ``config``, the
    sampling metrics' ``_pacing``, the transform's ``_transform_schedule`` and the draw's ``_level(step)``."""

    config: CurriculumConfig | None
    _pacing: DifficultyPacing
    _transform_schedule: DifficultySchedule | None

    def _level(self, step: int) -> int:
        """The level in force at 1-based ``step``. Levels that become known here (custom schedules), whoever asks
        (:meth:`difficulty_at` too), go to the draw's ``_new_levels`` at once."""
        known = len(self._pacing.steps)
        level = int(self._pacing.levels_at([step])[0])
        if len(self._pacing.steps) != known:
            self._new_levels()
        return level

    @property
    def transform(self) -> Any:
        """The curriculum's sequence-length transform config (``None`` without one)."""
        return self.config.transform if self.config is not None else None

    def max_tokens_at(self, step: int) -> int | None:
        """Max tokens per row of the sequence-length transform at 1-based ``step`` (``None`` without one)."""
        return int(self._transform_schedule(step)) if self._transform_schedule is not None else None

    def difficulty_at(self, step: int) -> dict[str, float]:
        """``{metric: difficulty}`` used for the batch of 1-based optimizer ``step``.

        Sampling metrics report their effective (running-maximum) difficulty, the seqlen transform its
        schedule value (max tokens per row).
        """
        level = self._level(step)
        out = {name: diffs[level] for name, diffs in self._pacing.diffs.items()}
        if self._transform_schedule is not None:
            out[self.transform.name] = self._transform_schedule(step)
        return out


class EpochStreamSampler(Sampler):
    """A sampler read as one stream of positions across epochs: epoch ``e`` starts at position ``e * len(self)``.
    Subclasses set ``epoch_length`` and ``_position``; accelerate's loaders call :meth:`set_epoch` on every pass."""

    epoch_length: int
    _position: int

    def __len__(self) -> int:
        return self.epoch_length

    @property
    def position(self) -> int:
        """Stream positions yielded so far (across epochs); the next entry is at this position."""
        return self._position

    def set_epoch(self, epoch: int) -> None:
        """Position the stream at the start of ``epoch`` (``epoch * len(self)``)."""
        self._position = whole_number(epoch, "epoch") * self.epoch_length


class CurriculumSampler(CurriculumQueries, EpochStreamSampler):
    """Curriculum-learning sampler: the batch of optimizer step ``k`` holds only samples eligible at step ``k``.

    Args:
        metric_values: ``{metric name: 1-D array}`` or a ``datasets.Dataset`` with one column per sampling
            metric (``curriculum_config.sampling_metrics`` with ``clustering_type='schedule_based'``;
            ``single_cluster`` metrics and the ``seqlen_truncate``/``seqlen_reshape`` transforms need none).
        curriculum_config: the ``CurriculumConfig``.
        batch_size: per-device micro-batch size. The global batch is ``batch_size * world_size *
            gradient_accumulation_steps``.
        world_size, gradient_accumulation_steps: data-parallel size and gradient accumulation.
        seed: stream seed (a non-negative int); ``None`` takes ``curriculum_config.seed``.
        schedule_fns: ``{metric name: callable step -> difficulty}`` for ``custom`` schedules
            (``CurriculumMetricConfig.schedule_fn`` works too).
        num_samples: dataset length, needed only when no metric array is needed (e.g. a transform-only
            curriculum given an empty mapping).
        return_max_tokens: yield ``(index, max_tokens)`` pairs instead of indices, where ``max_tokens`` is
            the ``seqlen_truncate``/``seqlen_reshape`` difficulty of the step that index is drawn for; wrap
            the dataset in ``CurriculumDataset`` and the collator in ``SeqlenTransform`` to apply it.

    Semantics:
        * Eligibility: ``value`` -> ``metric <= difficulty``; ``percentile`` -> the stable rank by metric is
          below ``percentile_count(N, difficulty)``. Several metrics: eligible under all of them. Each
          metric's difficulty is the running maximum of its schedule, so samples once admitted stay
          admitted, as in DeepSpeed (all built-in schedules except a decreasing ``fixed_discrete`` are
          non-decreasing anyway); ``difficulty_at`` reports that effective difficulty. The rule lives in
          ``curriculum/eligibility.py``, shared with the ``hf-data-efficiency analyze`` preview.
        * ``len(sampler)`` is ``N`` rounded down to a multiple of the global batch, so every epoch is a
          whole number of optimizer steps and the stream never needs padding. Epoch ``e`` (``set_epoch``)
          yields stream positions ``e * len ... (e + 1) * len - 1``: the curriculum continues across epochs.
        * Iterating starts at ``position`` (set by ``set_epoch`` or ``load_state_dict``) and runs to the end
          of that epoch; iterating again without ``set_epoch`` continues with the next epoch.
    """

    _fingerprint_changes = "the metric values or the curriculum config"

    def __init__(
        self,
        metric_values: Mapping[str, Any] | Any,
        curriculum_config: CurriculumConfig,
        batch_size: int,
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        seed: int | None = None,
        *,
        schedule_fns: Mapping[str, Callable[[int], float]] | None = None,
        num_samples: int | None = None,
        return_max_tokens: bool = False,
    ) -> None:
        if not isinstance(curriculum_config, CurriculumConfig):
            raise ValueError(
                f"curriculum_config must be a CurriculumConfig, got {type(curriculum_config).__name__} "
                "(use DataEfficiencyConfig.from_deepspeed(...).curriculum)."
            )
        self.batch_size, self.world_size, self.gradient_accumulation_steps, self.global_batch_size = batch_geometry(
            batch_size, world_size, gradient_accumulation_steps
        )
        self.seed = whole_number(curriculum_config.seed if seed is None else seed, "seed")
        self.config = curriculum_config

        schedules, self._transform_schedule = curriculum_schedules(curriculum_config, schedule_fns)
        if return_max_tokens and self._transform_schedule is None:
            raise ValueError(
                "return_max_tokens=True needs a seqlen_truncate or seqlen_reshape metric in the curriculum config; "
                f"configured metrics: {[m.name for m in curriculum_config.metrics]}."
            )
        self.return_max_tokens = bool(return_max_tokens)
        self._clustered = filtering_metrics(curriculum_config.sampling_metrics)
        self._values = self._read_metrics(metric_values, num_samples)
        n = self.num_samples
        if self.global_batch_size > n:
            raise ValueError(
                f"global batch size {self.global_batch_size} (batch_size={self.batch_size} x world_size="
                f"{self.world_size} x gradient_accumulation_steps={self.gradient_accumulation_steps}) is larger "
                f"than the data ({n} samples); it must be <= {n}."
            )
        self.epoch_length = n // self.global_batch_size * self.global_batch_size
        self.block_steps = max(1, _DRAWS_PER_BLOCK // self.global_batch_size)
        self._index_dtype = np.int32 if n < 2**31 else np.int64
        meta = {
            "version": STATE_VERSION,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
            "block_steps": self.block_steps,
            "metrics": [m.to_dict() for m in self.config.sampling_metrics],
        }
        self._fingerprint = state_fingerprint(meta, (self._values[name] for name in sorted(self._values)))

        self._pacing = DifficultyPacing(schedules)
        self._pacing.extend(self.block_steps)
        self._order = np.empty(n, dtype=self._index_dtype)
        self._walk = np.empty(n, dtype=self._index_dtype)
        self._wrap = np.empty(0, dtype=np.int64)
        self._consumed = np.empty(0, dtype=np.int64)
        self._build_clusters()
        self._check_first_step()
        if self._pacing.complete:
            self._values = {}  # no longer needed: the clusters are final
        self._draw_block = 0  # self._consumed counts the draws of blocks < self._draw_block
        self._cached_block: tuple[int, list] | None = None
        self._position = 0
        logger.info(
            f"CurriculumSampler: {n} samples, global batch {self.global_batch_size}, "
            f"{len(self._pacing.steps)} difficulty levels, {int(self._sizes[0])} samples eligible at step 1."
        )

    # ------------------------------------------------------------------ construction
    def _read_metrics(self, metric_values: Any, num_samples: int | None) -> dict[str, np.ndarray]:
        if is_dataset(metric_values):
            length = len(metric_values)
            if num_samples is not None and num_samples != length:
                raise ValueError(f"num_samples={num_samples} but the dataset has {length} samples.")
            num_samples = length
        values, num_samples = read_metric_values(metric_values, self._clustered, num_samples)
        if num_samples is None:
            raise ValueError(
                "no metric array is needed by this curriculum, so pass num_samples=len(dataset) "
                "(or the dataset itself as metric_values)."
            )
        if num_samples < 1:
            raise ValueError(f"the dataset is empty (num_samples={num_samples}); it needs at least one sample.")
        self.num_samples = int(num_samples)
        return values

    def _build_clusters(self) -> None:
        """Group the samples by cluster into ``self._order`` (a chunked, stable counting sort)."""
        old_levels = len(self._wrap)
        cid = admission_levels(self._values, self._clustered, self._pacing, self.num_samples)
        levels = len(self._pacing.steps)
        sizes = np.bincount(cid, minlength=levels + 1).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        cursor = offsets[:-1].copy()
        for start in range(0, self.num_samples, CHUNK_SAMPLES):
            chunk = cid[start : start + CHUNK_SAMPLES]
            idx = np.argsort(chunk, kind="stable").astype(self._index_dtype)
            idx += start
            counts = np.bincount(chunk, minlength=levels + 1)
            group_start = np.cumsum(counts) - counts
            present = np.flatnonzero(counts)
            if len(present) <= 1024:  # copy whole groups
                for c in present:
                    self._order[cursor[c] : cursor[c] + counts[c]] = idx[group_start[c] : group_start[c] + counts[c]]
            else:  # scatter element-wise
                sorted_c = chunk[idx - start]
                self._order[cursor[sorted_c] + (np.arange(len(chunk)) - group_start[sorted_c])] = idx
            cursor += counts
        del cid
        self._sizes = sizes[:levels]  # excludes the never/not-yet-eligible tail
        self._offsets = offsets[:levels]
        self._cum = np.cumsum(self._sizes)
        self._steps = np.asarray(self._pacing.steps, dtype=np.int64)
        # earlier clusters keep their members and their place, so their cached shuffles stay valid
        self._wrap = np.concatenate([self._wrap, np.full(levels - old_levels, -1, dtype=np.int64)])
        self._consumed = np.concatenate([self._consumed, np.zeros(levels - old_levels, dtype=np.int64)])

    def _check_first_step(self) -> None:
        if self._sizes[0] > 0:
            return
        first = {name: diffs[0] for name, diffs in self._pacing.diffs.items()}
        for m in self._clustered:
            vals, d = self._values[m.name], first[m.name]
            if m.difficulty_type == "value" and not (vals <= d).any():
                raise ValueError(
                    f"curriculum metric {m.name!r}: the difficulty at step 1 ({d}, from min_difficulty="
                    f"{m.min_difficulty}) admits no sample; the smallest {m.name} value is {vals.min()}. "
                    f"Set min_difficulty >= {vals.min()}."
                )
            if m.difficulty_type == "percentile" and percentile_count(self.num_samples, d) == 0:
                raise ValueError(
                    f"curriculum metric {m.name!r}: percentile difficulty {d} at step 1 admits floor({self.num_samples}"
                    f" * {d} / 100) = 0 samples; min_difficulty must be >= {100 / self.num_samples:.6g}."
                )
        raise ValueError(
            f"no sample is eligible under all of the curriculum metrics {[m.name for m in self._clustered]} at "
            f"their step-1 difficulties {first}; raise their min_difficulty values."
        )

    def _ensure_horizon(self, step: int) -> None:
        if self._pacing.extend(step):
            self._build_clusters()

    # ------------------------------------------------------------------ public queries
    @property
    def cluster_sizes(self) -> list[int]:
        """Sizes of the clusters known so far, in creation order (empty ones included)."""
        return self._sizes.tolist()

    @property
    def cluster_steps(self) -> list[int]:
        """The step each of ``cluster_sizes`` is created (becomes eligible) at."""
        return self._steps.tolist()

    @property
    def nbytes(self) -> int:
        """Bytes of sampler state held in numpy arrays (about 8 per sample)."""
        arrays = (self._order, self._walk, self._wrap, self._consumed, self._sizes, self._offsets, self._cum)
        return int(sum(a.nbytes for a in arrays) + sum(v.nbytes for v in self._values.values()))

    def _level(self, step: int) -> int:
        if step < 1:
            raise ValueError(f"step={step} must be a 1-based optimizer step (>= 1).")
        self._ensure_horizon(step)
        return int(np.searchsorted(self._steps, step, side="right")) - 1

    def num_eligible(self, step: int) -> int:
        """Number of samples eligible at ``step``."""
        return int(self._cum[self._level(step)])

    def step_indices(self, step: int) -> list:
        """The global batch of 1-based optimizer ``step`` (``G`` entries, as ``__iter__`` yields them), without moving
        the stream position: every entry is eligible at ``step``."""
        step = whole_number(step, "step", 1, STEP_ALLOWED)
        g = self.global_batch_size
        block, offset = divmod((step - 1) * g, self.block_steps * g)
        return self._block_indices(block)[offset : offset + g]

    # ------------------------------------------------------------------ stream
    def _block_draws(self, block: int) -> np.ndarray:
        """Cluster id of every slot of the ``block_steps`` global batches of ``block``, shape (steps, G)."""
        first_step = block * self.block_steps + 1
        self._ensure_horizon(first_step + self.block_steps - 1)
        steps = np.arange(first_step, first_step + self.block_steps)
        active = np.searchsorted(self._steps, steps, side="right")
        totals = self._cum[active - 1]
        rng = np.random.default_rng([self.seed, _RNG_DRAW, block])
        picks = rng.integers(0, totals[:, None], size=(self.block_steps, self.global_batch_size))
        return np.searchsorted(self._cum, picks, side="right")

    def _seek(self, block: int) -> None:
        """Bring the per-cluster walk counters to the start of ``block`` (replaying only the draws)."""
        if block < self._draw_block:
            self._consumed[:] = 0
            self._draw_block = 0
        while self._draw_block < block:
            draws = self._block_draws(self._draw_block)
            self._consumed += np.bincount(draws.ravel(), minlength=len(self._consumed))
            self._draw_block += 1

    def _take(self, cluster: int, start: int, count: int) -> np.ndarray:
        """Walk positions ``start ... start + count - 1`` of ``cluster`` (wrapping onto fresh shuffles)."""
        size, offset = int(self._sizes[cluster]), int(self._offsets[cluster])
        if size == 1:
            return np.full(count, self._order[offset], dtype=self._index_dtype)
        first, last = start // size, (start + count - 1) // size
        pieces = []
        for wrap in range(first, last + 1):
            if self._wrap[cluster] != wrap:  # shuffle the cluster's walk buffer for this wrap
                seg = self._walk[offset : offset + size]
                seg[:] = self._order[offset : offset + size]
                np.random.default_rng([self.seed, _RNG_WALK, cluster, wrap]).shuffle(seg)
                self._wrap[cluster] = wrap
            lo = start - wrap * size if wrap == first else 0
            hi = min(size, start + count - wrap * size)
            piece = self._walk[offset + lo : offset + hi]
            pieces.append(piece if first == last else piece.copy())  # the next wrap reuses the buffer
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _block_indices(self, block: int) -> list:
        """The stream of ``block`` (``block_steps * G`` entries) as a list of ints or (int, max_tokens) pairs."""
        if self._cached_block is not None and self._cached_block[0] == block:
            return self._cached_block[1]
        self._seek(block)
        draws = self._block_draws(block)
        flat = draws.ravel()
        counts = np.bincount(flat, minlength=len(self._consumed))
        grouped = np.argsort(flat.astype(np.int16 if len(counts) < 2**15 else np.int32), kind="stable")
        out = np.empty(flat.size, dtype=self._index_dtype)
        done = 0
        for cluster in np.flatnonzero(counts):
            n = int(counts[cluster])
            out[grouped[done : done + n]] = self._take(int(cluster), int(self._consumed[cluster]), n)
            done += n
        self._consumed += counts
        self._draw_block = block + 1
        shuffle = np.random.default_rng([self.seed, _RNG_SHUFFLE, block]).random(draws.shape).argsort(axis=1)
        out = np.take_along_axis(out.reshape(draws.shape), shuffle, axis=1).ravel().tolist()
        if self.return_max_tokens:
            g = self.global_batch_size
            first_step = block * self.block_steps + 1
            max_tokens = [self.max_tokens_at(first_step + j) for j in range(self.block_steps)]
            out = [(index, max_tokens[j // g]) for j, index in enumerate(out)]
        self._cached_block = (block, out)
        return out

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        end = (self._position // self.epoch_length + 1) * self.epoch_length
        per_block = self.block_steps * self.global_batch_size
        while self._position < end:
            block, offset = divmod(self._position, per_block)
            for item in self._block_indices(block)[offset : min(end - block * per_block, per_block)]:
                self._position += 1
                yield item

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """JSON-able state. ``position`` overrides the yielded count, e.g. ``completed_steps * global_batch_size``
        when a prefetching DataLoader has run the sampler ahead of training."""
        return sampler_state(self, STATE_VERSION, _STATE_KEYS[2:-1], position)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream of ``state``: the next iteration starts at its position and runs to that epoch's end."""
        check_sampler_state(self, state, "sampler", _STATE_KEYS, STATE_VERSION, _STATE_KEYS[2:-1])
        self._position = whole_number(state["position"], "sampler state position")
