"""``DataEfficiencyTrainingArguments``: ``TrainingArguments`` plus flags for curriculum learning and random-LTD.

Where the settings come from, and the one precedence rule
----------------------------------------------------------
1. A config file: ``--data_efficiency_config PATH`` (our JSON/YAML layout, a DeepSpeed ds_config or only its
   ``data_efficiency`` block), or a ``data_efficiency`` block (or legacy top-level ``curriculum_learning`` block)
   inside ``--deepspeed ds_config.json``. Giving both is an error: keep the settings in one place.
2. Flags. **A flag that is given overrides the same setting of the file; everything else in the file stays.**
   Each override is logged. A flag is "given" when it is not ``None`` (or ``True`` for the switches
   ``--random_ltd`` / ``--layer_token_lr_schedule``, which can only turn a part on).

Without a file the flags build the whole configuration. Flags that belong to a part that is off (e.g.
``--random_ltd_min_kept`` without ``--random_ltd``) are contradictory and raise a ``ValueError``.

The ``data_efficiency`` block of a DeepSpeed config is removed from the config DeepSpeed receives, so the
DeepSpeed engine never sees it (it would otherwise need ``deepspeed.initialize(training_data=...)`` and its own
patched layers); this package implements it instead.
"""

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from transformers import TrainingArguments
from transformers.utils import logging

from .config import (
    DIFFICULTY_TYPES,
    CurriculumConfig,
    CurriculumMetricConfig,
    DataEfficiencyConfig,
    LayerTokenLRConfig,
    RandomLTDConfig,
)

logger = logging.get_logger(__name__)

#: Keys of a DeepSpeed config that hold data-efficiency settings; they are removed before DeepSpeed sees them.
DEEPSPEED_DATA_EFFICIENCY_KEYS = ("data_efficiency", "curriculum_learning")
FLAG_SCHEDULE_TYPES = ("fixed_linear", "fixed_root")

_CURRICULUM_LIST_FLAGS = {
    # flag -> (CurriculumMetricConfig attribute or schedule_config key, where it goes)
    "curriculum_difficulty_type": ("difficulty_type", "metric"),
    "curriculum_schedule": ("schedule_type", "metric"),
    "curriculum_min_difficulty": ("min_difficulty", "metric"),
    "curriculum_max_difficulty": ("max_difficulty", "metric"),
    "curriculum_total_steps": ("total_curriculum_step", "schedule"),
    "curriculum_difficulty_step": ("difficulty_step", "schedule"),
    "curriculum_root_degree": ("root_degree", "schedule"),
}
_SEQLEN_FLAGS = {
    "seqlen_curriculum_min": ("min_difficulty", "metric"),
    "seqlen_curriculum_max": ("max_difficulty", "metric"),
    "seqlen_curriculum_schedule": ("schedule_type", "metric"),
    "seqlen_curriculum_total_steps": ("total_curriculum_step", "schedule"),
    "seqlen_curriculum_step": ("difficulty_step", "schedule"),
    "seqlen_curriculum_root_degree": ("root_degree", "schedule"),
}
_RANDOM_LTD_FLAGS = {
    "random_ltd_layers": "random_ltd_layer_id",
    "random_ltd_min_kept": "min_value",
    "random_ltd_max_kept": "max_value",
    "random_ltd_total_steps": "require_steps",
    "random_ltd_step_size": "seq_per_step",
    "random_ltd_schedule": "schedule_type",
    "random_ltd_root_degree": "root_degree",
    "random_ltd_keep_positions": "keep_positions",
}
_LR_FLAGS = {
    "layer_token_lr_warmup_tokens": "warmup_layer_tokens",
    "layer_token_lr_total_tokens": "total_layer_tokens",
}


def _plain(value: Any) -> Any:
    """Integral floats become ints (``8.0`` -> ``8``), so flags and files give equal configs."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def split_deepspeed_config(ds_config: dict[str, Any]) -> dict[str, Any] | None:
    """Remove the data-efficiency keys from ``ds_config`` **in place**; return them (``None`` if there were none).

    The removed part is what :meth:`DataEfficiencyConfig.from_deepspeed` reads; the rest is what DeepSpeed gets.
    """
    removed = {key: ds_config.pop(key) for key in DEEPSPEED_DATA_EFFICIENCY_KEYS if key in ds_config}
    return removed or None


def config_from_deepspeed_keys(removed: dict[str, Any]) -> DataEfficiencyConfig:
    """Parse what :func:`split_deepspeed_config` removed (a ``data_efficiency`` block and/or a legacy
    top-level ``curriculum_learning`` block)."""
    return DataEfficiencyConfig.from_deepspeed(removed)


@dataclass
class DataEfficiencyTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with curriculum-learning and random-LTD options (see the module docstring for the
    precedence rule). :meth:`get_data_efficiency_config` returns the resolved :class:`DataEfficiencyConfig`."""

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "data_efficiency_config"]

    data_efficiency_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Data-efficiency config: a JSON/YAML file (our layout, a DeepSpeed ds_config or its "
            "'data_efficiency' block), a directory holding data_efficiency_config.json, or a dict / JSON string. "
            "Flags given explicitly override the same settings of this file."
        },
    )
    # ----- curriculum learning (data sampling) -------------------------------------------------
    curriculum_metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "Curriculum metrics deciding which samples are eligible (e.g. seqlen vocab_rarity "
            "seqlen_vocab_rarity, or any dataset column). Missing columns are computed. The curriculum_* flags "
            "below take one value for all metrics or one per metric."
        },
    )
    curriculum_difficulty_type: list[str] | None = field(
        default=None,
        metadata={
            "help": "Difficulty type per metric: 'value' (metric <= difficulty) or 'percentile' (default value)."
        },
    )
    curriculum_schedule: list[str] | None = field(
        default=None,
        metadata={"help": "Pacing schedule per metric: fixed_linear or fixed_root (default fixed_linear)."},
    )
    curriculum_min_difficulty: list[float] | None = field(
        default=None, metadata={"help": "Starting difficulty per metric (a value, or a percentile in (0, 100])."}
    )
    curriculum_max_difficulty: list[float] | None = field(
        default=None, metadata={"help": "Final difficulty per metric (a value, or a percentile in (0, 100])."}
    )
    curriculum_total_steps: list[int] | None = field(
        default=None, metadata={"help": "Optimizer steps until the maximum difficulty is reached, per metric."}
    )
    curriculum_difficulty_step: list[float] | None = field(
        default=None,
        metadata={"help": "Difficulty grows in multiples of this, per metric (default 1)."},
    )
    curriculum_root_degree: list[float] | None = field(
        default=None, metadata={"help": "Root degree of a fixed_root schedule, per metric."}
    )
    curriculum_metrics_num_proc: int | None = field(
        default=None, metadata={"help": "Worker processes for computing missing metric columns (datasets.map)."}
    )
    # ----- sequence-length curriculum (batch transform) ----------------------------------------
    seqlen_curriculum: Literal["truncate", "reshape"] | None = field(
        default=None,
        metadata={
            "help": "Sequence-length curriculum applied to each batch: 'truncate' drops the tokens beyond the "
            "current max length, 'reshape' keeps them as extra rows (DeepSpeed seqlen_truncate/seqlen_reshape)."
        },
    )
    seqlen_curriculum_min: int | None = field(
        default=None, metadata={"help": "Max tokens per row at the start of the sequence-length curriculum."}
    )
    seqlen_curriculum_max: int | None = field(
        default=None, metadata={"help": "Max tokens per row at the end of the sequence-length curriculum."}
    )
    seqlen_curriculum_total_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps until the sequence-length curriculum reaches its maximum."}
    )
    seqlen_curriculum_step: int | None = field(
        default=None, metadata={"help": "The max length grows in multiples of this (default 8)."}
    )
    seqlen_curriculum_schedule: Literal["fixed_linear", "fixed_root"] | None = field(
        default=None, metadata={"help": "Pacing of the sequence-length curriculum (default fixed_linear)."}
    )
    seqlen_curriculum_root_degree: float | None = field(
        default=None, metadata={"help": "Root degree of a fixed_root sequence-length schedule."}
    )
    # ----- random-LTD (data routing) -------------------------------------------------------------
    random_ltd: bool = field(
        default=False,
        metadata={"help": "Turn on random layerwise token dropping (random-LTD) in the middle layers."},
    )
    random_ltd_layers: list[int] | None = field(
        default=None,
        metadata={"help": "0-based ids of the layers that drop tokens (default: all but the first and the last)."},
    )
    random_ltd_min_kept: int | None = field(
        default=None, metadata={"help": "Kept sequence length at step 0 (random-LTD min_value)."}
    )
    random_ltd_max_kept: int | None = field(
        default=None, metadata={"help": "Final kept sequence length, usually the full sequence length (max_value)."}
    )
    random_ltd_total_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps until the kept length reaches its maximum (require_steps)."}
    )
    random_ltd_step_size: int | None = field(
        default=None, metadata={"help": "The kept length grows in multiples of this (seq_per_step, default 16)."}
    )
    random_ltd_schedule: Literal["fixed_linear", "fixed_root"] | None = field(
        default=None, metadata={"help": "Pacing of the kept length (default fixed_linear)."}
    )
    random_ltd_root_degree: float | None = field(
        default=None, metadata={"help": "Root degree of a fixed_root kept-length schedule."}
    )
    random_ltd_keep_positions: list[int] | None = field(
        default=None,
        metadata={
            "help": "Positions every random-LTD layer always keeps (default: per architecture, CLS for BERT/ViT)."
        },
    )
    layer_token_lr_schedule: bool = field(
        default=False,
        metadata={
            "help": "Measure LR warmup and decay in consumed layer-tokens instead of steps (needs random-LTD; "
            "decay follows --lr_scheduler_type: linear, cosine or constant)."
        },
    )
    layer_token_lr_warmup_tokens: int | None = field(
        default=None,
        metadata={"help": "Warmup length in layer-tokens (default: the layer-tokens of the warmup steps)."},
    )
    layer_token_lr_total_tokens: int | None = field(
        default=None,
        metadata={"help": "Layer-tokens at which the decay ends (default: the layer-tokens of all training steps)."},
    )

    def __post_init__(self) -> None:
        self._normalize_flag_values()
        super().__post_init__()
        self._deepspeed_data_efficiency = self._strip_deepspeed_block()
        self._de_config = self._resolve()

    # ----- public -----------------------------------------------------------------------------------------
    def get_data_efficiency_config(self) -> DataEfficiencyConfig:
        """The resolved configuration (file, DeepSpeed block and flags merged). ``.enabled`` is False when off."""
        return self._de_config

    # ----- internals --------------------------------------------------------------------------------------
    def _normalize_flag_values(self) -> None:
        """Accept scalars for list flags (YAML/JSON recipes, Python) and a DataEfficiencyConfig object."""
        for name in [*_CURRICULUM_LIST_FLAGS, "curriculum_metrics", "random_ltd_layers", "random_ltd_keep_positions"]:
            value = getattr(self, name)
            if value is not None and not isinstance(value, (list, tuple)):
                setattr(self, name, [value])
            elif isinstance(value, tuple):
                setattr(self, name, list(value))
        if isinstance(self.data_efficiency_config, DataEfficiencyConfig):
            cfg = self.data_efficiency_config
            if cfg.curriculum is not None and any(m.schedule_fn is not None for m in cfg.curriculum.metrics):
                raise ValueError(
                    "data_efficiency_config: a 'custom' schedule callable cannot be stored in the training "
                    "arguments (they are saved as training_args.bin); pass schedule_fns to CurriculumSampler in a "
                    "custom loop, or use fixed_linear/fixed_root/fixed_discrete."
                )
            self.data_efficiency_config = cfg.to_dict()

    def _strip_deepspeed_block(self) -> dict[str, Any] | None:
        """Remove the data-efficiency keys from the DeepSpeed config that accelerate will hand to DeepSpeed."""
        plugin = getattr(self, "deepspeed_plugin", None)
        hf_ds_config = getattr(plugin, "hf_ds_config", None) if plugin is not None else None
        if hf_ds_config is None or not isinstance(getattr(hf_ds_config, "config", None), dict):
            return None
        removed = split_deepspeed_config(hf_ds_config.config)
        if removed is not None:
            logger.info(
                f"Removed {sorted(removed)} from the DeepSpeed config: hf-data-efficiency implements them, and "
                "DeepSpeed's engine would otherwise ignore or misapply them under the HF Trainer."
            )
        return removed

    def _load_file_config(self) -> DataEfficiencyConfig | None:
        src = self.data_efficiency_config
        if src is None:
            return None
        if isinstance(src, Mapping):
            return DataEfficiencyConfig.from_dict(copy.deepcopy(dict(src)))
        if isinstance(src, str) and src.lstrip().startswith("{"):
            return DataEfficiencyConfig.from_dict(json.loads(src))
        if isinstance(src, (str, os.PathLike)):
            return DataEfficiencyConfig.from_pretrained(src)
        raise ValueError(f"data_efficiency_config must be a path, a dict or a JSON string, got {type(src).__name__}.")

    def _resolve(self) -> DataEfficiencyConfig:
        base = self._load_file_config()
        if self._deepspeed_data_efficiency is not None:
            ds_cfg = config_from_deepspeed_keys(self._deepspeed_data_efficiency)
            if base is not None and ds_cfg.enabled:
                raise ValueError(
                    "data-efficiency settings are given twice: in --data_efficiency_config and in the "
                    "'data_efficiency'/'curriculum_learning' block of --deepspeed; keep only one of them."
                )
            base = base or ds_cfg
        source = "the config file" if base is not None else None
        seed = self.data_seed if self.data_seed is not None else self.seed
        if base is None:
            base = DataEfficiencyConfig(seed=seed)
        curriculum = self._resolve_curriculum(base.curriculum, seed, source)
        random_ltd = self._resolve_random_ltd(base.random_ltd, source)
        return DataEfficiencyConfig(curriculum=curriculum, random_ltd=random_ltd, seed=base.seed)

    def _log_override(self, flag: str, old: Any, new: Any, source: str | None) -> None:
        if source is not None and old != new:
            logger.warning(f"--{flag}={new!r} overrides {old!r} from {source} (explicit flags take precedence).")

    def _per_metric(self, flag: str, n: int) -> list[Any] | None:
        values = getattr(self, flag)
        if values is None:
            return None
        if len(values) == 1:
            return list(values) * n
        if len(values) != n:
            raise ValueError(
                f"--{flag} has {len(values)} values but there are {n} curriculum metrics; give one value for all "
                f"metrics or one per metric (in the order of --curriculum_metrics)."
            )
        return list(values)

    def _resolve_curriculum(
        self, base: CurriculumConfig | None, seed: int, source: str | None
    ) -> CurriculumConfig | None:
        given = [f for f in _CURRICULUM_LIST_FLAGS if getattr(self, f) is not None]
        seqlen_given = [f for f in _SEQLEN_FLAGS if getattr(self, f) is not None]
        sampling = list(base.sampling_metrics) if base is not None else []
        transform = base.transform if base is not None else None

        # sampling metrics
        if self.curriculum_metrics is not None:
            bad = [m for m in self.curriculum_metrics if m in ("seqlen_truncate", "seqlen_reshape")]
            if bad:
                raise ValueError(
                    f"--curriculum_metrics {bad}: sequence-length transforms are set with --seqlen_curriculum "
                    "{truncate,reshape} and the seqlen_curriculum_* flags."
                )
            if sampling and [m.name for m in sampling] != list(self.curriculum_metrics):
                raise ValueError(
                    f"--curriculum_metrics {self.curriculum_metrics} contradicts the curriculum metrics "
                    f"{[m.name for m in sampling]} of {source}; drop the flag or edit the file."
                )
        if given and not sampling and self.curriculum_metrics is None:
            raise ValueError(
                f"{['--' + f for f in given]} given without --curriculum_metrics (and no curriculum in a config "
                "file); add --curriculum_metrics, e.g. --curriculum_metrics seqlen."
            )
        if self.curriculum_metrics is not None and not sampling:
            sampling = self._metrics_from_flags(self.curriculum_metrics)
        elif given:
            sampling = self._override_metrics(sampling, source)

        # sequence-length transform
        if self.seqlen_curriculum is not None:
            name = f"seqlen_{self.seqlen_curriculum}"
            if transform is not None and transform.name != name:
                raise ValueError(
                    f"--seqlen_curriculum {self.seqlen_curriculum} contradicts {transform.name} in {source}; "
                    "drop the flag or edit the file."
                )
            if transform is None:
                transform = self._seqlen_from_flags(name)
            else:
                transform = self._override_one(transform, _SEQLEN_FLAGS, None, source)
        elif seqlen_given:
            if transform is None:
                raise ValueError(
                    f"{['--' + f for f in seqlen_given]} given without --seqlen_curriculum {{truncate,reshape}}; "
                    "add --seqlen_curriculum to turn the sequence-length curriculum on."
                )
            transform = self._override_one(transform, _SEQLEN_FLAGS, None, source)

        metrics = sampling + ([transform] if transform is not None else [])
        if not metrics:
            return None
        if base is not None:
            return replace(base, metrics=metrics)
        return CurriculumConfig(metrics=metrics, seed=seed)

    def _metrics_from_flags(self, names: list[str]) -> list[CurriculumMetricConfig]:
        n = len(names)
        for flag in ("curriculum_min_difficulty", "curriculum_max_difficulty", "curriculum_total_steps"):
            if getattr(self, flag) is None:
                raise ValueError(f"--curriculum_metrics {names} needs --{flag} (one value, or one per metric).")
        vals = {f: self._per_metric(f, n) for f in _CURRICULUM_LIST_FLAGS}
        metrics = []
        for i, name in enumerate(names):
            schedule = (vals["curriculum_schedule"] or ["fixed_linear"] * n)[i]
            dtype = (vals["curriculum_difficulty_type"] or ["value"] * n)[i]
            self._check_flag_choice("curriculum_schedule", schedule, FLAG_SCHEDULE_TYPES)
            self._check_flag_choice("curriculum_difficulty_type", dtype, DIFFICULTY_TYPES)
            sc: dict[str, Any] = {
                "total_curriculum_step": int(vals["curriculum_total_steps"][i]),
                "difficulty_step": _plain((vals["curriculum_difficulty_step"] or [1] * n)[i]),
            }
            if schedule == "fixed_root":
                if vals["curriculum_root_degree"] is None:
                    raise ValueError("--curriculum_schedule fixed_root needs --curriculum_root_degree.")
                sc["root_degree"] = _plain(vals["curriculum_root_degree"][i])
            elif vals["curriculum_root_degree"] is not None and len(set(vals["curriculum_schedule"] or [])) <= 1:
                raise ValueError(
                    "--curriculum_root_degree is only used by --curriculum_schedule fixed_root; drop one of them."
                )
            metrics.append(
                CurriculumMetricConfig(
                    name=name,
                    min_difficulty=_plain(vals["curriculum_min_difficulty"][i]),
                    max_difficulty=_plain(vals["curriculum_max_difficulty"][i]),
                    schedule_type=schedule,
                    schedule_config=sc,
                    difficulty_type=dtype,
                )
            )
        return metrics

    @staticmethod
    def _check_flag_choice(flag: str, value: Any, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise ValueError(f"--{flag}={value!r} is not supported; allowed values: {', '.join(allowed)}.")

    def _override_metrics(
        self, metrics: list[CurriculumMetricConfig], source: str | None
    ) -> list[CurriculumMetricConfig]:
        n = len(metrics)
        vals = {f: self._per_metric(f, n) for f in _CURRICULUM_LIST_FLAGS}
        return [
            self._override_one(m, _CURRICULUM_LIST_FLAGS, {f: v[i] for f, v in vals.items() if v}, source)
            for i, m in enumerate(metrics)
        ]

    def _override_one(
        self,
        metric: CurriculumMetricConfig,
        flags: dict[str, tuple[str, str]],
        values: dict[str, Any] | None,
        source: str | None,
    ) -> CurriculumMetricConfig:
        d = metric.to_dict()
        sc = dict(d["schedule_config"])
        for flag, (key, where) in flags.items():
            value = values.get(flag) if values is not None else getattr(self, flag)
            if value is None:
                continue
            value = _plain(value)
            if flag.endswith("_schedule"):
                self._check_flag_choice(flag, value, FLAG_SCHEDULE_TYPES)
            if flag.endswith("_difficulty_type"):
                self._check_flag_choice(flag, value, DIFFICULTY_TYPES)
            old = d[key] if where == "metric" else sc.get(key)
            self._log_override(flag, old, value, source)
            if where == "metric":
                d[key] = value
            else:
                sc[key] = value
        if d["schedule_type"] != metric.schedule_type and d["schedule_type"] in FLAG_SCHEDULE_TYPES:
            sc = {k: v for k, v in sc.items() if k in ("total_curriculum_step", "difficulty_step", "root_degree")}
            if d["schedule_type"] == "fixed_linear":
                sc.pop("root_degree", None)
        d["schedule_config"] = sc
        return CurriculumMetricConfig(**d)

    def _seqlen_from_flags(self, name: str) -> CurriculumMetricConfig:
        for flag in ("seqlen_curriculum_min", "seqlen_curriculum_max", "seqlen_curriculum_total_steps"):
            if getattr(self, flag) is None:
                raise ValueError(f"--seqlen_curriculum needs --{flag}.")
        schedule = self.seqlen_curriculum_schedule or "fixed_linear"
        self._check_flag_choice("seqlen_curriculum_schedule", schedule, FLAG_SCHEDULE_TYPES)
        sc: dict[str, Any] = {
            "total_curriculum_step": int(self.seqlen_curriculum_total_steps),
            "difficulty_step": int(self.seqlen_curriculum_step or 8),
        }
        if schedule == "fixed_root":
            if self.seqlen_curriculum_root_degree is None:
                raise ValueError("--seqlen_curriculum_schedule fixed_root needs --seqlen_curriculum_root_degree.")
            sc["root_degree"] = _plain(self.seqlen_curriculum_root_degree)
        elif self.seqlen_curriculum_root_degree is not None:
            raise ValueError(
                "--seqlen_curriculum_root_degree is only used by --seqlen_curriculum_schedule fixed_root; "
                "drop one of them."
            )
        return CurriculumMetricConfig(
            name=name,
            min_difficulty=int(self.seqlen_curriculum_min),
            max_difficulty=int(self.seqlen_curriculum_max),
            schedule_type=schedule,
            schedule_config=sc,
        )

    def _resolve_random_ltd(self, base: RandomLTDConfig | None, source: str | None) -> RandomLTDConfig | None:
        given = [f for f in _RANDOM_LTD_FLAGS if getattr(self, f) is not None]
        lr_given = [f for f in _LR_FLAGS if getattr(self, f) is not None]
        if base is None and not self.random_ltd:
            if given:
                raise ValueError(
                    f"{['--' + f for f in given]} given but random-LTD is off; add --random_ltd (or a random_ltd "
                    "section in the config file)."
                )
            if self.layer_token_lr_schedule or lr_given:
                raise ValueError(
                    "--layer_token_lr_schedule (and its layer_token_lr_* flags) needs random-LTD: add --random_ltd."
                )
            return None
        if base is None:
            for flag in ("random_ltd_min_kept", "random_ltd_max_kept", "random_ltd_total_steps"):
                if getattr(self, flag) is None:
                    raise ValueError(f"--random_ltd needs --{flag}.")
            d: dict[str, Any] = {"min_value": 0, "max_value": 0, "require_steps": 0}
        else:
            d = base.to_dict()
        lr = dict(d.get("layer_token_lr_schedule") or {})
        for flag, key in _RANDOM_LTD_FLAGS.items():
            value = getattr(self, flag)
            if value is None:
                continue
            if base is not None:
                self._log_override(flag, d.get(key), value, source)
            d[key] = _plain(value)
        if d.get("schedule_type") == "fixed_root" and d.get("root_degree") is None:
            raise ValueError("--random_ltd_schedule fixed_root needs --random_ltd_root_degree.")
        if self.layer_token_lr_schedule:
            if base is not None:
                self._log_override("layer_token_lr_schedule", lr.get("enabled", False), True, source)
            lr["enabled"] = True
        for flag, key in _LR_FLAGS.items():
            value = getattr(self, flag)
            if value is None:
                continue
            if not lr.get("enabled"):
                raise ValueError(
                    f"--{flag} given but the layer-token LR schedule is off; add --layer_token_lr_schedule."
                )
            if base is not None:
                self._log_override(flag, lr.get(key), value, source)
            lr[key] = value
        d["layer_token_lr_schedule"] = LayerTokenLRConfig(**lr)
        return RandomLTDConfig(**d)
