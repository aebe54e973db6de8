"""Configuration dataclasses, DeepSpeed ``data_efficiency`` import/export and validation.

``DataEfficiencyConfig`` is the single source of truth for curriculum learning, dynamic batching and random-LTD.

One name per setting: a field's name is its key in our JSON and (with a section prefix) its Trainer flag; the rule
declared with the field (:func:`~hf_data_efficiency._validation.setting`) checks it and gives the flag its help.
DeepSpeed's layout (nested ``random_ltd_schedule``, ``curriculum_metrics`` keyed by name, ...) is read and written
only by the ``from_deepspeed``/``to_deepspeed`` methods, with DeepSpeed's defaults.

Enabled sections, one rule: a DeepSpeed section is on only when it and every enclosing section say
``enabled: true``; a missing ``enabled`` means false, as in DeepSpeed. A section that holds settings but ends up off
this way is logged as a warning that names the key to set.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from transformers.utils import logging

from ._validation import (
    UnreadableFileError,
    check_bool,
    check_fields,
    check_int,
    check_keys,
    check_list,
    check_number,
    check_str,
    did_you_mean,
    expect_mapping,
    from_mapping,
    read_json,
    setting,
)
from .fileio import atomic_write_text
from .schedules import ROOT_SCHEDULE_TYPES, SCHEDULE_TYPES, validate_schedule

logger = logging.get_logger(__name__)

CONFIG_NAME = "data_efficiency_config.json"
DIFFICULTY_TYPES = ("value", "percentile")
CLUSTERING_TYPES = ("schedule_based", "single_cluster")
#: The sequence-length batch transforms (DeepSpeed lists them among the curriculum metrics).
SEQLEN_TRANSFORMS = ("seqlen_truncate", "seqlen_reshape")
#: Kept-length pacing of random-LTD (DeepSpeed has fixed_linear; fixed_root is ours).
RANDOM_LTD_SCHEDULE_TYPES = ROOT_SCHEDULE_TYPES
LR_WARMUP_TYPES = ("linear", "constant")
LR_SCALING_METHODS = ("linear", "sqrt", "none")
SEQUENCE_PICKING_ORDERS = ("dataloader", "random", "seqlen")
#: What a streaming curriculum does when its buffer is full of samples not yet eligible.
BUFFER_FULL_POLICIES = ("drop", "hold", "error")
#: How group mixing weighs the groups (see :class:`MixingConfig`).
MIXING_STRATEGIES = ("stratified", "natural", "fixed", "online")
DEFAULT_SEED = 1234
#: Largest nesting of a config file; real configs use about 6 levels.
MAX_CONFIG_DEPTH = 32
#: Largest config file read, in bytes.
MAX_CONFIG_BYTES = 16 * 2**20
#: Top-level DeepSpeed keys that hold data-efficiency settings.
DEEPSPEED_KEYS = ("data_efficiency", "curriculum_learning")
#: The curriculum metric scored by a reference model (``CurriculumMetricConfig.reference_model``).
REFERENCE_LOSS_METRIC = "reference_loss"
#: Token-selection methods: RHO-1's excess loss (training loss minus reference loss).
TOKEN_SELECTION_METHODS = ("excess_loss",)
_NO_BLOCK = "The DeepSpeed config has no 'data_efficiency' or 'curriculum_learning' block."


def _deprecated(message: str) -> None:
    warnings.warn(message, FutureWarning, stacklevel=3)


_S = TypeVar("_S", bound="_Section")


class _Section:
    """What the flat config sections share: their rules are checked on construction, and ``to_dict``/``from_dict``
    write and read our layout; errors name the section's path, given once as ``class X(_Section, path=...)``."""

    _path: str

    def __init_subclass__(cls, path: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._path = path or cls._path  # a user's subclass of a section keeps its path

    def __post_init__(self) -> None:
        check_fields(self, self._path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[_S], d: Mapping[str, Any]) -> _S:
        """Inverse of :meth:`to_dict`; unknown and missing keys are refused."""
        return from_mapping(cls, copy.deepcopy(dict(expect_mapping(d, cls._path))), cls._path)


@dataclass
class _ScheduledMetric:
    """What a sampling metric and the seqlen transform share: a name and a difficulty schedule (the fields and
    rules of a sampling metric; the transform narrows some of them)."""

    name: str = setting(kind="str", help="Metric name (a dataset column or a registered metric).", flag=False)
    min_difficulty: float = setting(
        kind="number", help="Starting difficulty per metric (a value, or a percentile in (0, 100])."
    )
    max_difficulty: float = setting(
        kind="number", help="Final difficulty per metric (a value, or a percentile in (0, 100])."
    )
    schedule_type: str = setting(
        "fixed_linear",
        kind="str",
        choices=SCHEDULE_TYPES,
        help="Pacing schedule per metric: fixed_linear or fixed_root (files also take fixed_discrete and custom).",
    )
    schedule_config: dict[str, Any] = setting(
        default_factory=dict, kind="mapping", help="Schedule parameters (DeepSpeed's keys).", flag=False
    )
    schedule_fn: Callable[[int], float] | None = field(default=None, compare=False, repr=False)

    @property
    def path(self) -> str:
        """Where this entry sits in a DeepSpeed config, for error messages."""
        return f"curriculum_metrics.{self.name}"

    def __post_init__(self) -> None:
        check_fields(self, self.path)
        self.schedule_config = validate_schedule(
            self.schedule_type,
            self.schedule_config,
            self.min_difficulty,
            self.max_difficulty,
            has_fn=True,  # a custom schedule's callable may be attached later; the sampler checks it
            where=self.path,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "schedule_fn"}

    def _entry(self) -> dict[str, Any]:
        """:meth:`to_dict` less the name: DeepSpeed keys the entry by it."""
        return {k: v for k, v in self.to_dict().items() if k != "name"}


@dataclass
class CurriculumMetricConfig(_ScheduledMetric):
    """One sampling metric: how difficult a sample is, and how fast the allowed difficulty grows.

    ``name`` is a dataset column, a registered metric, or a metric computed from the data (``seqlen``,
    ``vocab_rarity``, ...). The sequence-length batch transforms are :class:`SeqlenTransformConfig`.
    """

    difficulty_type: str = setting(
        "value",
        kind="str",
        choices=DIFFICULTY_TYPES,
        help="Difficulty type per metric: 'value' (metric <= difficulty) or 'percentile' (rank within the first "
        "difficulty percent).",
    )
    clustering_type: str = setting(
        "schedule_based",
        kind="str",
        choices=CLUSTERING_TYPES,
        help="Clustering per metric: schedule_based (samples admitted as the difficulty grows) or single_cluster "
        "(the metric does not filter samples).",
    )
    index_to_sample_path: str | None = setting(
        None, kind="str", nullable=True, help="DeepSpeed index_to_sample file prefix.", flag=False
    )
    index_to_metric_path: str | None = setting(
        None, kind="str", nullable=True, help="DeepSpeed index_to_metric file prefix.", flag=False
    )
    reference_model: str | None = setting(
        None,
        kind="str",
        nullable=True,
        help="Reference model (a local path) scoring the 'reference_loss' metric: each sample's mean token loss "
        "under it, computed once with datasets.map and cached by the model's fingerprint.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference_model is not None and self.name != REFERENCE_LOSS_METRIC:
            raise ValueError(
                f"{self.path}.reference_model={self.reference_model!r}: only the {REFERENCE_LOSS_METRIC!r} metric "
                f"reads a reference model; drop it, or name the metric {REFERENCE_LOSS_METRIC!r}."
            )
        if self.difficulty_type == "percentile":
            for key in ("min_difficulty", "max_difficulty"):
                value = getattr(self, key)
                if not 0 < value <= 100:
                    raise ValueError(
                        f"{self.path}.{key}={value} must lie in (0, 100] for difficulty_type='percentile'."
                    )

    @property
    def is_transform(self) -> bool:
        """True for the legacy spelling of a seqlen transform as a metric (see :class:`CurriculumConfig`)."""
        return self.name in SEQLEN_TRANSFORMS

    def to_deepspeed(self) -> dict[str, Any]:
        return {k: v for k, v in self._entry().items() if v is not None}

    @classmethod
    def from_deepspeed(cls, name: str, entry: Mapping[str, Any]) -> CurriculumMetricConfig:
        """Build from one DeepSpeed ``curriculum_metrics`` entry (the metric name is its key)."""
        return from_mapping(cls, entry, f"curriculum_metrics.{name}", name=name)


@dataclass
class SeqlenTransformConfig(_ScheduledMetric):
    """The sequence-length curriculum: each batch is cut to at most ``difficulty`` tokens per row.

    ``name`` is ``seqlen_truncate`` (drop the tokens beyond the limit) or ``seqlen_reshape`` (keep them as extra
    rows). It acts on the batch of each step, not on which samples are drawn.
    """

    name: str = setting(kind="str", choices=SEQLEN_TRANSFORMS, help="seqlen_truncate or seqlen_reshape.", flag=False)
    min_difficulty: int = setting(
        kind="int", minimum=1, help="Max tokens per row at the start of the sequence-length curriculum."
    )
    max_difficulty: int = setting(
        kind="int", minimum=1, help="Max tokens per row at the end of the sequence-length curriculum."
    )
    schedule_type: str = setting(
        "fixed_linear",
        kind="str",
        choices=SCHEDULE_TYPES,
        help="Pacing of the sequence-length curriculum: fixed_linear or fixed_root.",
    )

    #: Always value-based: the difficulty is a number of tokens.
    difficulty_type = "value"

    def to_deepspeed(self) -> dict[str, Any]:
        """DeepSpeed's entry: a value-based, single-cluster metric (DeepSpeed needs no index files for it)."""
        return {**self._entry(), "difficulty_type": "value", "clustering_type": "single_cluster"}

    @classmethod
    def from_deepspeed(cls, name: str, entry: Mapping[str, Any]) -> SeqlenTransformConfig:
        """Build from DeepSpeed's ``curriculum_metrics.seqlen_truncate``/``seqlen_reshape`` entry."""
        path = f"curriculum_metrics.{name}"
        entry = dict(expect_mapping(entry, path))
        check_str(entry.pop("difficulty_type", "value"), f"{path}.difficulty_type", ("value",))
        check_str(entry.pop("clustering_type", "single_cluster"), f"{path}.clustering_type", CLUSTERING_TYPES)
        return from_mapping(cls, entry, path, name=name)


def _metric_entry(entry: Any, path: str) -> CurriculumMetricConfig | SeqlenTransformConfig:
    """One entry of a metric list, typed; a dict with ``name`` is read like a DeepSpeed entry of that name."""
    if isinstance(entry, CurriculumMetricConfig) and entry.is_transform:
        transform = SeqlenTransformConfig.from_deepspeed(entry.name, entry.to_deepspeed())
        transform.schedule_fn = entry.schedule_fn
        return transform
    if isinstance(entry, (CurriculumMetricConfig, SeqlenTransformConfig)):
        return entry
    entry = dict(expect_mapping(entry, path))
    name = check_str(entry.pop("name", None), f"{path}.name")
    if name in SEQLEN_TRANSFORMS:
        for key in ("index_to_sample_path", "index_to_metric_path"):  # written as null by older versions
            if key in entry and entry[key] is None:
                del entry[key]
        return SeqlenTransformConfig.from_deepspeed(name, entry)
    return CurriculumMetricConfig.from_deepspeed(name, entry)


def _split_metrics(entries: Any, path: str) -> tuple[list[CurriculumMetricConfig], SeqlenTransformConfig | None]:
    """Type the entries of one metric list and split them into sampling metrics and the (one) seqlen transform."""
    typed = check_list(entries, path, _metric_entry)
    transforms = [m for m in typed if isinstance(m, SeqlenTransformConfig)]
    if len(transforms) > 1:
        raise ValueError(
            f"{path}: only one of {SEQLEN_TRANSFORMS} may be used, got {[t.name for t in transforms]}; "
            "allowed: one sequence-length transform."
        )
    return [m for m in typed if isinstance(m, CurriculumMetricConfig)], (transforms[0] if transforms else None)


@dataclass
class StreamingConfig(_Section, path="curriculum.streaming"):
    """The curriculum over an ``IterableDataset`` (see :mod:`hf_data_efficiency.curriculum.streaming`)."""

    buffer_size: int = setting(
        4096, kind="int", minimum=1, help="Samples a streaming curriculum buffers per process (>= the global batch)."
    )
    warmup_samples: int = setting(
        1024,
        kind="int",
        minimum=0,
        help="Stream prefix that estimates token counts and percentile references when metrics_dir has none.",
    )
    buffer_full: str = setting(
        "drop",
        kind="str",
        choices=BUFFER_FULL_POLICIES,
        help="Buffer full of samples not yet eligible: drop the hardest (counted), hold them (the step takes the "
        "samples closest to eligibility, counted) or error.",
    )
    chunk_size: int = setting(256, kind="int", minimum=1, help="Samples read and measured at a time.")
    metrics_dir: str | None = setting(
        None,
        kind="str",
        nullable=True,
        help="An hf-data-efficiency analyze folder: token_counts.npy and <metric>.npy percentile references.",
    )


@dataclass
class CurriculumConfig:
    """Curriculum learning (DeepSpeed ``data_sampling.curriculum_learning``).

    ``sampling_metrics`` decide which samples are eligible at each step; ``transform`` (optional) cuts each batch to
    the sequence-length difficulty of its step. ``metrics`` lists both, the transform last. The old single list
    (``CurriculumConfig(metrics=[...])``, or a transform among ``sampling_metrics``) is still accepted with a
    deprecation warning and split into the two fields.
    """

    sampling_metrics: list[CurriculumMetricConfig] = field(default_factory=list)
    transform: SeqlenTransformConfig | None = None
    seed: int = setting(DEFAULT_SEED, kind="int", minimum=0, help="Seed of the curriculum stream.", flag=False)
    num_epochs: int = setting(1000, kind="int", minimum=1, help="DeepSpeed data_sampling.num_epochs.", flag=False)
    num_workers: int = setting(0, kind="int", minimum=0, help="DeepSpeed data_sampling.num_workers.", flag=False)
    pin_memory: bool = setting(False, kind="bool", help="DeepSpeed data_sampling.pin_memory.", flag=False)
    data_cluster_path: str | None = setting(
        None, kind="str", nullable=True, help="DeepSpeed data_cluster_path (accepted, unused).", flag=False
    )
    #: Settings of the curriculum over an ``IterableDataset`` (``None``: the defaults).
    streaming: StreamingConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self, "curriculum")
        if self.streaming is not None and not isinstance(self.streaming, StreamingConfig):
            self.streaming = StreamingConfig.from_dict(self.streaming)
        self.sampling_metrics, transform = _split_metrics(self.sampling_metrics, "curriculum.sampling_metrics")
        if transform is not None:
            _deprecated(
                "A seqlen_truncate/seqlen_reshape entry among the sampling metrics is deprecated: give it as "
                "CurriculumConfig(transform=SeqlenTransformConfig(...))."
            )
            if self.transform is not None:
                raise ValueError(
                    f"curriculum: only one of {SEQLEN_TRANSFORMS} may be used, got {transform.name} among the "
                    f"sampling metrics and transform={self.transform.name}."
                )
            self.transform = transform
        if self.transform is not None and not isinstance(self.transform, SeqlenTransformConfig):
            entry = dict(expect_mapping(self.transform, "curriculum.transform"))
            name = check_str(entry.pop("name", None), "curriculum.transform.name", SEQLEN_TRANSFORMS)
            self.transform = from_mapping(SeqlenTransformConfig, entry, f"curriculum_metrics.{name}", name=name)
        if not self.metrics:
            raise ValueError("curriculum_learning.curriculum_metrics is empty; give at least one metric.")
        names = [m.name for m in self.sampling_metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"curriculum_learning.curriculum_metrics has duplicate names: {names}.")

    @property
    def metrics(self) -> list[CurriculumMetricConfig | SeqlenTransformConfig]:
        """Every metric: the sampling metrics, then the transform (if any)."""
        return [*self.sampling_metrics, *([self.transform] if self.transform is not None else [])]

    def metric(self, name: str) -> CurriculumMetricConfig | SeqlenTransformConfig:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"no curriculum metric named {name!r}; configured: {[m.name for m in self.metrics]}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        out["sampling_metrics"] = [m.to_dict() for m in self.sampling_metrics]
        out["transform"] = self.transform.to_dict() if self.transform is not None else None
        if self.streaming is None:
            del out["streaming"]
        else:
            out["streaming"] = self.streaming.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CurriculumConfig:
        """Inverse of :meth:`to_dict`; an old dict with one ``metrics`` list (transform included) loads too."""
        d = copy.deepcopy(dict(expect_mapping(d, "curriculum")))
        if "metrics" in d:
            if "sampling_metrics" in d or "transform" in d:
                raise ValueError("curriculum: give sampling_metrics/transform or the deprecated metrics, not both.")
            _deprecated(
                "curriculum.metrics (one list holding the transform too) is deprecated: write "
                "curriculum.sampling_metrics and curriculum.transform, as to_dict does."
            )
            d["sampling_metrics"], d["transform"] = _split_metrics(d.pop("metrics"), "curriculum.metrics")
        return from_mapping(cls, d, "curriculum")


def _curriculum_init(init: Callable[..., None]) -> Callable[..., None]:
    """Accept the deprecated ``metrics=`` argument of ``CurriculumConfig`` (it becomes ``sampling_metrics``)."""

    def __init__(self: CurriculumConfig, *args: Any, metrics: Any = None, **kwargs: Any) -> None:
        if metrics is not None:
            if args or "sampling_metrics" in kwargs or "transform" in kwargs:
                raise ValueError("curriculum: give sampling_metrics/transform or the deprecated metrics, not both.")
            _deprecated("CurriculumConfig(metrics=...) is deprecated; use sampling_metrics=... and transform=...")
            kwargs["sampling_metrics"], kwargs["transform"] = _split_metrics(metrics, "curriculum.metrics")
        init(self, *args, **kwargs)

    __init__.__doc__ = init.__doc__
    return __init__


CurriculumConfig.__init__ = _curriculum_init(CurriculumConfig.__init__)  # type: ignore[method-assign]


@dataclass
class DynamicBatchingConfig(_Section, path="dynamic_batching"):
    """Token-budget batching (DeepSpeed ``data_sampling.dynamic_batching``); defaults are DeepSpeed 0.19's.

    A micro-batch holds as many samples as fit ``max_tokens`` per device, within ``[min_batch_size,
    max_batch_size]``; the LR of each step is scaled from its batch size by ``lr_scaling_method``.
    """

    max_tokens: int = setting(kind="int", minimum=1, help="Token budget of one micro-batch on one device.")
    min_batch_size: int = setting(1, kind="int", minimum=1, help="Fewest samples in a micro-batch.")
    max_batch_size: int | None = setting(
        None, kind="int", minimum=1, nullable=True, help="Most samples in a micro-batch (default: no limit)."
    )
    lr_scaling_method: str = setting(
        "linear",
        kind="str",
        choices=LR_SCALING_METHODS,
        help="How the LR follows each step's batch size relative to the reference batch: linear, sqrt or none.",
    )
    sequence_picking_order: str = setting(
        "dataloader",
        kind="str",
        choices=SEQUENCE_PICKING_ORDERS,
        help="Order in which samples are packed into micro-batches: dataloader, random or seqlen (ascending).",
    )
    metrics_path: str | None = setting(
        None, kind="str", nullable=True, help="Folder of DeepSpeed's seqlen metric files (optional)."
    )
    verbose: bool = setting(False, kind="bool", help="Log the composition of every batch.")
    truncate_long_samples: bool = setting(
        False,
        kind="bool",
        help="Cut samples longer than max_tokens to max_tokens (and count them) instead of refusing them.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_batch_size is not None and self.min_batch_size > self.max_batch_size:
            raise ValueError(
                f"dynamic_batching.min_batch_size={self.min_batch_size} is larger than "
                f"dynamic_batching.max_batch_size={self.max_batch_size}; allowed: min_batch_size <= max_batch_size."
            )

    @classmethod
    def from_deepspeed(cls, section: Mapping[str, Any]) -> DynamicBatchingConfig:
        """Build from DeepSpeed's ``dynamic_batching`` section (its ``enabled`` is read by the caller)."""
        path = "data_efficiency.data_sampling.dynamic_batching"
        section = {k: v for k, v in expect_mapping(section, path).items() if k != "enabled"}
        if "sentence_picking_order" in section:
            raise ValueError(
                f"{path}.sentence_picking_order is not a DeepSpeed key (DeepSpeed's README names it, its code ignores "
                f"it); use {path}.sequence_picking_order ({', '.join(SEQUENCE_PICKING_ORDERS)})."
            )
        return from_mapping(cls, section, path)

    def to_deepspeed(self) -> dict[str, Any]:
        """DeepSpeed's section (it passes ``truncate_long_samples``, our own key, through unread)."""
        return {"enabled": True, **self.to_dict()}


@dataclass
class MixingConfig(_Section, path="mixing"):
    """Group mixing: each step's samples are drawn group by group (the group a sample belongs to is the value of its
    ``column``) with per-group weights set by ``strategy``; see :mod:`hf_data_efficiency.curriculum.mixing` for the
    draw, the pass rule and the online rule."""

    column: str = setting(
        kind="str",
        help="Dataset column (or streamed field) naming each sample's group; turns group mixing on.",
    )
    strategy: str = setting(
        "stratified",
        kind="str",
        choices=MIXING_STRATEGIES,
        help="How the groups are weighted: stratified (each group equally likely), natural (in proportion to the "
        "group sizes), fixed (--mixing_weights) or online (learned from each group's training-loss progress).",
    )
    weights: dict[str, float] | None = setting(
        None,
        kind="mapping",
        nullable=True,
        help="strategy 'fixed': a JSON object group -> weight (>= 0, not all zero, normalised), one per group.",
    )
    groups: list[str] | None = setting(
        None,
        kind="str_list",
        nullable=True,
        help="The group names (default: the column's values on map-style data, else the weights' keys); a stream "
        "needs them (or weights).",
    )
    online_delay: int = setting(
        2,
        kind="int",
        minimum=1,
        help="strategy 'online': the draw of step k uses the weights learned from the losses up to step k - delay "
        "(the DataLoader draws ahead of training: at least 2, more with DataLoader workers; the error says how many).",
    )
    online_fast_smoothing: float = setting(
        0.8, kind="number", minimum=0, help="strategy 'online': EMA factor of the fast per-group loss average."
    )
    online_slow_smoothing: float = setting(
        0.95, kind="number", minimum=0, help="strategy 'online': EMA factor of the slow per-group loss average."
    )
    online_min_weight: float = setting(
        0.02,
        kind="number",
        minimum=0,
        help="strategy 'online': the least weight of every group (an exploration floor, at most 1 / groups).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.column:
            raise ValueError("mixing.column='' is not allowed; allowed: the name of a dataset column.")
        for key in ("online_fast_smoothing", "online_slow_smoothing"):
            check_number(getattr(self, key), f"mixing.{key}", minimum=0, maximum=0.999999)
        if self.online_fast_smoothing >= self.online_slow_smoothing:
            raise ValueError(
                f"mixing.online_fast_smoothing={self.online_fast_smoothing} must be below mixing.online_slow_smoothing="
                f"{self.online_slow_smoothing} (the fast average follows the loss more closely than the slow one)."
            )
        if self.strategy == "fixed" and self.weights is None:
            raise ValueError(
                "mixing.strategy='fixed' needs mixing.weights (--mixing_weights '{\"group\": weight, ...}')."
            )
        if self.weights is not None:
            if self.strategy != "fixed":
                raise ValueError(
                    f"mixing.weights is read only with mixing.strategy='fixed', but the strategy is "
                    f"{self.strategy!r}; drop the weights or set the strategy to 'fixed'."
                )
            self.weights = _group_weights(self.weights)
        if self.groups is not None:
            if len(set(self.groups)) != len(self.groups):
                raise ValueError(f"mixing.groups={self.groups} has duplicates; allowed: distinct group names.")
            if self.weights is not None and set(self.weights) != set(self.groups):
                check_groups(self.weights, self.groups, "mixing.weights")
        groups = self.groups or (list(self.weights) if self.weights is not None else None)
        if groups is not None and self.strategy == "online" and self.online_min_weight * len(groups) > 1:
            raise ValueError(
                f"mixing.online_min_weight={self.online_min_weight} x {len(groups)} groups exceeds 1; allowed: at most "
                f"1 / {len(groups)} = {1 / len(groups):.4g}."
            )


def _group_weights(weights: Mapping[Any, Any]) -> dict[str, float]:
    """``mixing.weights`` checked: a non-empty mapping of group names to finite numbers >= 0, not all zero."""
    weights = expect_mapping(weights, "mixing.weights")
    if not weights:
        raise ValueError("mixing.weights={} is empty; allowed: one weight (>= 0) per group, not all zero.")
    out = {str(k): float(check_number(v, f"mixing.weights[{str(k)!r}]", minimum=0)) for k, v in weights.items()}
    if not any(out.values()):
        raise ValueError(f"mixing.weights={out} are all zero; allowed: weights >= 0 with at least one above 0.")
    return out


def check_groups(named: Mapping[str, Any], groups: list[str], field: str) -> None:
    """Refuse a ``field`` mapping whose keys are not exactly ``groups``: unknown ones first, then missing ones."""
    unknown = [g for g in named if g not in groups]
    if unknown:
        raise ValueError(
            f"{field} names the group(s) {unknown}{did_you_mean(unknown[0], groups)}, which are not among the "
            f"groups; allowed: {groups}."
        )
    missing = [g for g in groups if g not in named]
    if missing:
        raise ValueError(f"{field} has no weight for the group(s) {missing}; give one (0 leaves a group out).")


@dataclass
class BatchSizeWarmupConfig(_Section, path="batch_size_warmup"):
    """Batch-size warmup with Megatron's ``--rampup-batch-size`` rule, on per-device batch sizes: the per-device
    batch starts at ``start`` and grows by ``increment`` every ``samples / increments`` consumed (global) samples up to
    ``per_device_train_batch_size`` (see :mod:`hf_data_efficiency.batching.warmup`)."""

    start: int = setting(
        kind="int", minimum=1, help="Per-device batch size of the first steps; turns batch-size warmup on."
    )
    increment: int = setting(kind="int", minimum=1, help="Per-device batch size added at each increment.")
    samples: int = setting(
        kind="int",
        minimum=1,
        help="Samples (all processes) over which the batch grows to per_device_train_batch_size; one increment "
        "every samples / increments consumed samples.",
    )
    lr_scaling_method: str = setting(
        "none",
        kind="str",
        choices=LR_SCALING_METHODS,
        help="LR factor of each step from its batch relative to the full batch: linear, sqrt or none.",
    )


@dataclass
class LayerTokenLRConfig(_Section, path="random_ltd.layer_token_lr_schedule"):
    """LR warmup/decay measured in consumed layer-tokens (DeepSpeed ``layer_token_lr_schedule``)."""

    enabled: bool = setting(False, kind="bool", help="Measure LR warmup and decay in layer-tokens.", flag=False)
    total_layer_tokens: int | None = setting(
        None,
        kind="int",
        minimum=1,
        nullable=True,
        help="Layer-tokens at which the decay ends (default: the layer-tokens of all training steps).",
    )
    warmup_type: str = setting("linear", kind="str", choices=LR_WARMUP_TYPES, help="Warmup shape: linear or constant.")
    warmup_layer_tokens: int = setting(
        0,
        kind="int",
        minimum=0,
        help="Warmup length in layer-tokens (0: the layer-tokens of the Trainer's warmup steps).",
    )


def _bookkeeping(kind: str, **rule: Any) -> Any:
    """A DeepSpeed random_ltd key that is read, checked and written back, but not used."""
    return setting(None, kind=kind, nullable=True, help="DeepSpeed bookkeeping (unused).", flag=False, **rule)


@dataclass
class RandomLTDConfig(_Section, path="random_ltd"):
    """Random layerwise token dropping (DeepSpeed ``data_routing.random_ltd``).

    The kept length grows from ``min_value`` to ``max_value`` over ``require_steps`` steps in multiples of
    ``seq_per_step``. ``random_ltd_layer_id=None`` means every layer but the first and the last.
    ``keep_positions=None`` uses the architecture default (e.g. CLS at 0 for BERT and ViT).
    """

    min_value: int = setting(kind="int", minimum=1, help="Kept sequence length at step 0.")
    max_value: int = setting(
        kind="int", minimum=1, help="Final kept sequence length, usually the full sequence length."
    )
    require_steps: int = setting(
        kind="int", minimum=1, help="Optimizer steps until the kept length reaches its maximum."
    )
    seq_per_step: int = setting(16, kind="int", minimum=1, help="The kept length grows in multiples of this.")
    schedule_type: str = setting(
        "fixed_linear", kind="str", choices=RANDOM_LTD_SCHEDULE_TYPES, help="Pacing of the kept length."
    )
    root_degree: float | None = setting(
        None, kind="number", above=0, nullable=True, help="Root degree of a fixed_root kept-length schedule."
    )
    random_ltd_layer_id: list[int] | None = setting(
        None,
        kind="int_list",
        minimum=0,
        nullable=True,
        help="0-based ids of the layers that drop tokens (default: all but the first and the last).",
    )
    random_ltd_layer_num: int | None = setting(
        None, kind="int", minimum=1, nullable=True, help="Number of random-LTD layers (checked).", flag=False
    )
    total_layer_num: int | None = setting(
        None, kind="int", minimum=1, nullable=True, help="Number of layers of the model (checked).", flag=False
    )
    keep_positions: list[int] | None = setting(
        None,
        kind="int_list",
        nullable=True,
        help="Positions every random-LTD layer always keeps (default: per architecture, CLS for BERT/ViT).",
    )
    layer_token_lr_schedule: LayerTokenLRConfig = field(default_factory=LayerTokenLRConfig)
    global_batch_size: int | None = _bookkeeping("int", minimum=1)
    micro_batch_size: int | None = _bookkeeping("int", minimum=1)
    model_mask_name: str | None = _bookkeeping("str")
    model_type: str | None = _bookkeeping("str")
    hidden_state_order: str | None = _bookkeeping("str")

    def __post_init__(self) -> None:
        if not isinstance(self.layer_token_lr_schedule, LayerTokenLRConfig):
            self.layer_token_lr_schedule = LayerTokenLRConfig.from_dict(self.layer_token_lr_schedule)
        super().__post_init__()
        w = "random_ltd"
        if self.min_value > self.max_value:
            raise ValueError(
                f"{w}.min_value={self.min_value} is larger than max_value={self.max_value}; "
                "allowed: min_value <= max_value."
            )
        if self.schedule_type == "fixed_root" and self.root_degree is None:
            raise ValueError(
                f"{w}.root_degree=None is not allowed for schedule_type='fixed_root'; allowed: a number > 0."
            )
        ids = self.random_ltd_layer_id
        if ids is not None:
            if len(set(ids)) != len(ids):
                raise ValueError(f"{w}.random_ltd_layer_id={ids} has duplicates; allowed: distinct layer ids.")
            if self.random_ltd_layer_num is not None and self.random_ltd_layer_num != len(ids):
                raise ValueError(
                    f"{w}.random_ltd_layer_num={self.random_ltd_layer_num} disagrees with "
                    f"len(random_ltd_layer_id)={len(ids)}."
                )
            if self.total_layer_num is not None and any(i >= self.total_layer_num for i in ids):
                raise ValueError(
                    f"{w}.random_ltd_layer_id={ids} has ids >= total_layer_num={self.total_layer_num}; "
                    f"allowed: 0 ... {self.total_layer_num - 1}."
                )
        if self.min_value < self.seq_per_step:
            raise ValueError(
                f"{w}: min_value={self.min_value} with seq_per_step={self.seq_per_step} gives a kept length of "
                f"{self.min_value - self.min_value % self.seq_per_step} at step 0 (kept lengths are rounded down to a "
                "multiple of seq_per_step, as in DeepSpeed); allowed: min_value >= seq_per_step."
            )

    @classmethod
    def from_deepspeed(cls, section: Mapping[str, Any]) -> RandomLTDConfig:
        """Build from DeepSpeed's ``random_ltd`` section (its ``enabled`` is read by the caller)."""
        path = "data_efficiency.data_routing.random_ltd"
        section = dict(expect_mapping(section, path))
        check_keys(
            section,
            ["enabled", "random_ltd_schedule", "layer_token_lr_schedule", *_RANDOM_LTD_TOP_LEVEL],
            path,
            required=["random_ltd_schedule"],
        )
        sched = expect_mapping(section["random_ltd_schedule"], f"{path}.random_ltd_schedule")
        check_keys(
            sched,
            ["min_value", "max_value", "schedule_type", "schedule_config"],
            f"{path}.random_ltd_schedule",
            required=["min_value", "max_value", "schedule_config"],
        )
        sc_path = f"{path}.random_ltd_schedule.schedule_config"
        sc = expect_mapping(sched["schedule_config"], sc_path)
        check_keys(sc, ["require_steps", "seq_per_step", "root_degree"], sc_path, required=["require_steps"])
        lr = from_mapping(
            LayerTokenLRConfig, section.get("layer_token_lr_schedule", {}), f"{path}.layer_token_lr_schedule"
        )
        return cls(
            **{k: sched[k] for k in ("min_value", "max_value", "schedule_type") if k in sched},
            **dict(sc),
            **{k: copy.deepcopy(section[k]) for k in _RANDOM_LTD_TOP_LEVEL if k in section},
            layer_token_lr_schedule=lr,
        )

    @classmethod
    def load(cls, section: RandomLTDConfig | Mapping[str, Any]) -> RandomLTDConfig:
        """The section from itself, DeepSpeed's ``random_ltd`` section or our flat :meth:`to_dict` layout."""
        if isinstance(section, RandomLTDConfig):
            return section
        if isinstance(section, Mapping):
            return cls.from_deepspeed(section) if "random_ltd_schedule" in section else cls.from_dict(section)
        raise ValueError(
            f"random_ltd config must be a RandomLTDConfig or a DeepSpeed 'random_ltd' dict, got {type(section).__name__}."
        )

    def to_deepspeed(self) -> dict[str, Any]:
        sc: dict[str, Any] = {"require_steps": self.require_steps, "seq_per_step": self.seq_per_step}
        if self.root_degree is not None:
            sc["root_degree"] = self.root_degree
        out: dict[str, Any] = {
            "enabled": True,
            "random_ltd_schedule": {
                "min_value": self.min_value,
                "max_value": self.max_value,
                "schedule_type": self.schedule_type,
                "schedule_config": sc,
            },
            "layer_token_lr_schedule": self.layer_token_lr_schedule.to_dict(),
        }
        for key in _RANDOM_LTD_TOP_LEVEL:
            if getattr(self, key) is not None:
                out[key] = copy.deepcopy(getattr(self, key))
        return out


#: RandomLTDConfig fields that sit at the top of DeepSpeed's random_ltd section, besides its layer_token_lr_schedule
#: (the rest is random_ltd_schedule).
_RANDOM_LTD_TOP_LEVEL = tuple(
    f.name
    for f in fields(RandomLTDConfig)
    if f.name not in ("min_value", "max_value", "require_steps", "seq_per_step", "schedule_type", "root_degree")
    and f.name != "layer_token_lr_schedule"
)


@dataclass
class TokenSelectionConfig(_Section, path="token_selection"):
    """Model-based token selection (RHO-1, Lin et al. 2024): each micro-batch's loss keeps the ``ratio`` of its label
    tokens with the highest *excess loss*, the training model's token loss minus a reference model's.

    The reference losses come from ``reference_model`` (a path; or a model passed to the Trainer as
    ``reference_model=``), run without gradients on every micro-batch (online), or from ``reference_column``, the
    per-token losses ``ReferenceLoss(..., token_losses=True)`` stored with the data (offline). See docs/selection.md.
    """

    method: str = setting(
        "excess_loss",
        kind="str",
        choices=TOKEN_SELECTION_METHODS,
        help="Token-selection method: excess_loss (training loss minus reference loss).",
        flag=False,
    )
    ratio: float = setting(
        0.6,
        kind="number",
        above=0,
        maximum=1,
        help="Fraction of each micro-batch's label tokens the loss keeps (those of highest excess loss), in (0, 1].",
    )
    reference_model: str | None = setting(
        None,
        kind="str",
        nullable=True,
        help="Reference model (a local path) run without gradients on every micro-batch, on the training device and "
        "dtype (online selection); or pass reference_model= to the Trainer.",
    )
    reference_column: str | None = setting(
        None,
        kind="str",
        nullable=True,
        help="Offline selection: the dataset column of per-token reference losses written by "
        "ReferenceLoss(..., token_losses=True), used instead of a reference model.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference_model is not None and self.reference_column is not None:
            raise ValueError(
                f"token_selection.reference_model={self.reference_model!r} and token_selection.reference_column="
                f"{self.reference_column!r} are both given; allowed: one of them (online or offline selection)."
            )

    @property
    def offline(self) -> bool:
        """Whether the reference losses are read from a dataset column instead of a reference forward."""
        return self.reference_column is not None

    @classmethod
    def from_deepspeed(cls, section: Mapping[str, Any]) -> TokenSelectionConfig:
        """Build from the ``token_selection`` section of a ``data_efficiency`` block (our own key; its ``enabled`` is
        read by the caller)."""
        path = "data_efficiency.token_selection"
        return from_mapping(cls, {k: v for k, v in expect_mapping(section, path).items() if k != "enabled"}, path)


@dataclass
class DataEfficiencyConfig:
    """All data-efficiency techniques; each part may be ``None`` (off)."""

    curriculum: CurriculumConfig | None = None
    random_ltd: RandomLTDConfig | None = None
    seed: int = DEFAULT_SEED
    dynamic_batching: DynamicBatchingConfig | None = None
    mixing: MixingConfig | None = None
    batch_size_warmup: BatchSizeWarmupConfig | None = None
    token_selection: TokenSelectionConfig | None = None

    def __post_init__(self) -> None:
        self.seed = check_int(self.seed, "seed", minimum=0)
        for name, cls in _PARTS.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise ValueError(f"{name} must be a {cls.__name__} or None, got {type(value).__name__}.")
        selection, curriculum = self.token_selection, self.curriculum
        if selection is not None and selection.offline and curriculum is not None and curriculum.transform is not None:
            if curriculum.transform.name == "seqlen_reshape":
                raise ValueError(
                    f"token_selection.reference_column={selection.reference_column!r} holds reference losses computed "
                    "with each sample's whole context, which seqlen_reshape cuts into rows with less context; allowed: "
                    "online selection (token_selection.reference_model) or seqlen_truncate."
                )

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) is not None for name in _PARTS)

    # ----- the one loader ---------------------------------------------------------------
    @classmethod
    def load(cls, source: Any = None, *, deepspeed: dict[str, Any] | None = None) -> DataEfficiencyConfig:
        """The config from any source; every integration loads its config here.

        ``source``: ``None`` (everything off), a ``DataEfficiencyConfig``, a dict (our :meth:`to_dict` layout, or a
        DeepSpeed one: a whole ds_config, its ``data_efficiency`` block or a legacy ``curriculum_learning`` block), a
        JSON string, or a path (a JSON/YAML file in either layout, or a directory holding
        ``data_efficiency_config.json``).

        ``deepspeed``: the DeepSpeed config DeepSpeed itself will receive (accelerate's ``hf_ds_config.config``). Its
        data-efficiency keys are **removed in place**, so DeepSpeed never sees them, and read; a top-level key that
        looks like a misspelled one is warned about, as :meth:`from_deepspeed` does. Settings given in ``source``
        and in an enabled block of ``deepspeed`` are an error. Trainer flags are merged on top of the result by
        :class:`~hf_data_efficiency.DataEfficiencyTrainingArguments`."""
        cfg = cls._from_source(source)
        if deepspeed is None:
            return cfg
        _warn_near_misses(deepspeed)
        block = {key: deepspeed.pop(key) for key in DEEPSPEED_KEYS if key in deepspeed}
        if not block:
            return cfg
        logger.info(
            f"Removed {sorted(block)} from the DeepSpeed config: hf-data-efficiency implements them, and DeepSpeed's "
            "engine would otherwise ignore or misapply them under the HF Trainer."
        )
        ds_cfg = cls.from_deepspeed(block)
        if source is not None and ds_cfg.enabled:
            raise ValueError(
                "data-efficiency settings are given twice: in the data-efficiency config and in the DeepSpeed "
                "config's 'data_efficiency'/'curriculum_learning' block; keep only one of them."
            )
        return cfg if source is not None else ds_cfg

    @classmethod
    def _from_source(cls, source: Any) -> DataEfficiencyConfig:
        if source is None:
            return cls()
        if isinstance(source, DataEfficiencyConfig):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(copy.deepcopy(dict(source)))
        if isinstance(source, str) and source.lstrip().startswith("{"):
            try:
                return cls.from_dict(json.loads(source))
            except json.JSONDecodeError as e:
                raise ValueError(f"data efficiency config: not valid JSON: {e}.") from None
        if isinstance(source, (str, os.PathLike)):
            return cls.from_pretrained(source)
        raise ValueError(
            f"data efficiency config must be a DataEfficiencyConfig, a dict, a JSON string or a path, got "
            f"{type(source).__name__}."
        )

    # ----- our own JSON form -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.seed}
        for name in _PARTS:
            part = getattr(self, name)
            if part is not None or name not in _OPTIONAL_PARTS:
                out[name] = part.to_dict() if part is not None else None
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataEfficiencyConfig:
        """Inverse of :meth:`to_dict`. A DeepSpeed layout is detected and routed to :meth:`from_deepspeed`."""
        d = expect_mapping(d, "data efficiency config")
        if any(key in d for key in ("data_sampling", "data_routing", "curriculum_type", *DEEPSPEED_KEYS)) or any(
            _near_deepspeed_key(key) for key in d
        ):
            return cls.from_deepspeed(d)
        check_keys(d, ["seed", *_PARTS], "data efficiency config")
        parts = {name: _PARTS[name].from_dict(d[name]) if d.get(name) else None for name in _PARTS}
        return cls(**parts, seed=d.get("seed", DEFAULT_SEED))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``data_efficiency_config.json`` atomically into ``save_directory``; returns its path."""
        path = Path(save_directory) / CONFIG_NAME
        atomic_write_text(path, self.to_json_string())
        return str(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DataEfficiencyConfig:
        """Load from a directory holding ``data_efficiency_config.json`` or from a JSON/YAML file
        (our layout or a DeepSpeed one)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ValueError(
                f"data efficiency config not found: {path} (expected a directory with {CONFIG_NAME} or a file)."
            )
        return cls.from_dict(load_config_file(path))

    # ----- DeepSpeed JSON ----------------------------------------------------------------
    @classmethod
    def from_deepspeed(cls, ds_config: Mapping[str, Any] | str | os.PathLike) -> DataEfficiencyConfig:
        """Read a whole ds_config (dict or JSON/YAML path) or only its ``data_efficiency`` block.

        A legacy top-level ``curriculum_learning`` block (``curriculum_type: seqlen``) becomes a
        ``seqlen_truncate`` transform. Sections follow the enabled rule of the module docstring; a top-level key
        that looks like a misspelled ``data_efficiency``/``curriculum_learning`` is warned about.
        """
        if not isinstance(ds_config, Mapping):
            ds_config = load_config_file(ds_config)
        ds_config = copy.deepcopy(dict(expect_mapping(ds_config, "ds_config")))
        block_keys = ("enabled", "seed", "data_sampling", "data_routing", "token_selection")
        if "curriculum_type" in ds_config:  # the legacy block on its own
            legacy, block = ds_config, {}
        elif any(k in ds_config for k in DEEPSPEED_KEYS) or not set(block_keys) & set(ds_config):
            _warn_near_misses(ds_config)
            legacy = ds_config.get("curriculum_learning")
            block = expect_mapping(ds_config.get("data_efficiency", {}), "data_efficiency")
            if legacy is None and not block and not any(_near_deepspeed_key(key) for key in ds_config):
                logger.warning(_NO_BLOCK)
        else:  # only the data_efficiency block
            legacy, block = None, ds_config
        check_keys(block, block_keys, "data_efficiency")
        seed = check_int(block.get("seed", DEFAULT_SEED), "data_efficiency.seed", minimum=0)
        on = _section_on(block, "data_efficiency", None)
        sampling = expect_mapping(block.get("data_sampling", {}), "data_efficiency.data_sampling")
        curriculum, dynamic_batching = _sampling_from_deepspeed(sampling, seed, on)
        routing_path = "data_efficiency.data_routing"
        routing = expect_mapping(block.get("data_routing", {}), routing_path)
        check_keys(routing, ("enabled", "random_ltd"), routing_path)
        routing_on = _section_on(routing, routing_path, (on, "data_efficiency"))
        ltd = _subsection(routing, "random_ltd", routing_path, routing_on)
        random_ltd = RandomLTDConfig.from_deepspeed(ltd) if ltd is not None else None
        selection = _subsection(block, "token_selection", "data_efficiency", on)
        token_selection = TokenSelectionConfig.from_deepspeed(selection) if selection is not None else None
        if legacy is not None and _section_on(
            expect_mapping(legacy, "curriculum_learning"), "curriculum_learning", None
        ):
            if curriculum is not None:
                raise ValueError(
                    "Both the legacy top-level 'curriculum_learning' block and data_efficiency.data_sampling."
                    "curriculum_learning are enabled; keep only one."
                )
            curriculum = _curriculum_from_legacy(legacy, seed)
        return cls(
            curriculum=curriculum,
            random_ltd=random_ltd,
            seed=seed,
            dynamic_batching=dynamic_batching,
            token_selection=token_selection,
        )

    def to_deepspeed(self) -> dict[str, Any]:
        """The ``data_efficiency`` block DeepSpeed would read for this config (group mixing and batch-size warmup
        have no DeepSpeed form: refused rather than dropped)."""
        ours = [name for name in ("mixing", "batch_size_warmup") if getattr(self, name) is not None]
        if ours:
            raise ValueError(
                f"{ours} have no DeepSpeed data_efficiency form; keep this config in our layout (to_dict, "
                "save_pretrained) instead."
            )
        sampling: dict[str, Any] = {"enabled": self.curriculum is not None or self.dynamic_batching is not None}
        if self.curriculum is not None:
            c = self.curriculum
            cl: dict[str, Any] = {
                "enabled": True,
                "curriculum_metrics": {m.name: m.to_deepspeed() for m in c.metrics},
            }
            if c.data_cluster_path is not None:
                cl["data_cluster_path"] = c.data_cluster_path
            sampling.update(
                num_epochs=c.num_epochs, num_workers=c.num_workers, pin_memory=c.pin_memory, curriculum_learning=cl
            )
        if self.dynamic_batching is not None:
            sampling["dynamic_batching"] = self.dynamic_batching.to_deepspeed()
        routing: dict[str, Any] = {"enabled": self.random_ltd is not None}
        if self.random_ltd is not None:
            routing["random_ltd"] = self.random_ltd.to_deepspeed()
        out = {"enabled": self.enabled, "seed": self.seed, "data_sampling": sampling, "data_routing": routing}
        if self.token_selection is not None:  # our own key: DeepSpeed has no token selection
            out["token_selection"] = {"enabled": True, **self.token_selection.to_dict()}
        return out


#: The parts of a DataEfficiencyConfig, by their key in our JSON.
_PARTS: dict[str, Any] = {
    "curriculum": CurriculumConfig,
    "random_ltd": RandomLTDConfig,
    "dynamic_batching": DynamicBatchingConfig,
    "mixing": MixingConfig,
    "batch_size_warmup": BatchSizeWarmupConfig,
    "token_selection": TokenSelectionConfig,
}
#: Parts written by ``to_dict`` only when on (added after configs were first saved, so older dicts stay equal).
_OPTIONAL_PARTS = ("token_selection",)


def _near_deepspeed_key(key: Any) -> str:
    """`` (did you mean ...)`` when ``key`` looks like a misspelled ``data_efficiency``/``curriculum_learning``."""
    if not isinstance(key, str) or key in DEEPSPEED_KEYS:
        return ""
    return did_you_mean(key.lower(), DEEPSPEED_KEYS, cutoff=0.8)


def _warn_near_misses(ds_config: Mapping[str, Any]) -> None:
    """Warn about top-level keys that look like a misspelled data-efficiency block (DeepSpeed ignores them), and, when
    there is one but no real block, that the config has none."""
    near = [key for key in ds_config if _near_deepspeed_key(key)]
    for key in near:
        logger.warning(
            f"The DeepSpeed config has a top-level key {key!r}{_near_deepspeed_key(key)}; it is not read as "
            "data-efficiency settings."
        )
    if near and not any(key in ds_config for key in DEEPSPEED_KEYS):
        logger.warning(_NO_BLOCK)


def _section_on(section: Mapping[str, Any], path: str, parent: tuple[bool, str] | None) -> bool:
    """The one enabled rule (module docstring): on only when ``section`` and all its parents say enabled=true."""
    on = check_bool(section["enabled"], f"{path}.enabled") if "enabled" in section else False
    parent_on, parent_path = parent if parent is not None else (True, "")
    settings = [k for k in section if k != "enabled"]
    if parent_on and "enabled" not in section and settings:
        logger.warning(
            f"{path} has settings but no 'enabled' key, so it is off (a missing 'enabled' means false, as in "
            f"DeepSpeed); set {path}.enabled=true to use it."
        )
    if on and not parent_on:
        logger.warning(f"{path}.enabled is true but {parent_path} is off, so {path} is off too.")
    return on and parent_on


def _subsection(parent: Mapping[str, Any], key: str, path: str, parent_on: bool) -> Mapping[str, Any] | None:
    """``parent[key]`` (``path`` names ``parent``) when the enabled rule turns it on, else ``None``."""
    section = expect_mapping(parent.get(key, {}), f"{path}.{key}")
    return section if _section_on(section, f"{path}.{key}", (parent_on, path)) else None


def _sampling_from_deepspeed(
    sampling: Mapping[str, Any], seed: int, parent_on: bool
) -> tuple[CurriculumConfig | None, DynamicBatchingConfig | None]:
    path = "data_efficiency.data_sampling"
    check_keys(
        sampling,
        ("enabled", "num_epochs", "num_workers", "pin_memory", "curriculum_learning", "dynamic_batching"),
        path,
    )
    on = _section_on(sampling, path, (parent_on, "data_efficiency"))
    db = _subsection(sampling, "dynamic_batching", path, on)
    dynamic = DynamicBatchingConfig.from_deepspeed(db) if db is not None else None
    cl_path = f"{path}.curriculum_learning"
    cl = _subsection(sampling, "curriculum_learning", path, on)
    if cl is None:
        return None, dynamic
    check_keys(cl, ("enabled", "curriculum_metrics", "data_cluster_path"), cl_path, required=["curriculum_metrics"])
    metrics_path = f"{cl_path}.curriculum_metrics"
    entries = expect_mapping(cl["curriculum_metrics"], metrics_path)
    if not entries:
        raise ValueError(f"{metrics_path} is empty; give at least one metric.")
    sampling_metrics, transform = _split_metrics(
        [{**expect_mapping(e, f"{metrics_path}.{n}"), "name": n} for n, e in entries.items()], metrics_path
    )
    curriculum = CurriculumConfig(
        sampling_metrics=sampling_metrics,
        transform=transform,
        seed=seed,
        num_epochs=sampling.get("num_epochs", 1000),
        num_workers=sampling.get("num_workers", 0),
        pin_memory=sampling.get("pin_memory", False),
        data_cluster_path=cl.get("data_cluster_path"),
    )
    return curriculum, dynamic


def _curriculum_from_legacy(legacy: Mapping[str, Any], seed: int) -> CurriculumConfig:
    keys = ("min_difficulty", "max_difficulty", "schedule_type", "schedule_config")
    check_keys(legacy, ("enabled", "curriculum_type", *keys), "curriculum_learning (legacy)")
    check_str(legacy.get("curriculum_type"), "curriculum_learning.curriculum_type", ("seqlen",))
    entry = {k: legacy[k] for k in keys if k in legacy}
    return CurriculumConfig(transform=SeqlenTransformConfig.from_deepspeed("seqlen_truncate", entry), seed=seed)


def _yaml_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses aliases, so a small file cannot expand into a huge object."""
    import yaml

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ValueError(
                    f"line {mark.line + 1}: YAML aliases (*name) are not allowed in config files; "
                    "write the value out instead."
                )
            return super().compose_node(parent, index)

    return _NoAliasLoader


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict, with bounded size, nesting and no YAML aliases.

    Malformed files, aliases, a nesting deeper than ``MAX_CONFIG_DEPTH`` or a top level that is not a mapping
    give a ``ValueError`` naming the file (and the line where the parser knows it), read as state files are
    (:func:`~hf_data_efficiency._validation.read_json`).
    """
    import yaml

    def parse_yaml(text: str) -> Any:
        try:
            return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark is not None else ""
            raise UnreadableFileError(path, f"{line}not valid YAML: {getattr(e, 'problem', None) or e}") from None
        except ValueError as e:  # aliases
            raise UnreadableFileError(path, str(e)) from None

    yaml_file = Path(path).suffix in (".yaml", ".yml")
    data = read_json(
        path, max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH, parse=parse_yaml if yaml_file else json.loads
    )
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON/YAML object at the top level, got {type(data).__name__}.")
    return data
