"""Configuration dataclasses, DeepSpeed ``data_efficiency`` import/export and validation.

``DataEfficiencyConfig`` is the single source of truth for both techniques. It reads DeepSpeed's
JSON layout (a whole ds_config or just its ``data_efficiency`` block) with DeepSpeed's defaults,
and has its own flat JSON form for ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .fileio import atomic_write_text
from .schedules import SCHEDULE_TYPES, validate_schedule

logger = logging.get_logger(__name__)

CONFIG_NAME = "data_efficiency_config.json"
DIFFICULTY_TYPES = ("value", "percentile")
CLUSTERING_TYPES = ("schedule_based", "single_cluster")
#: Curriculum "metrics" that are batch transforms on the sequence length, not per-sample metrics.
SEQLEN_TRANSFORMS = ("seqlen_truncate", "seqlen_reshape")
RANDOM_LTD_SCHEDULE_TYPES = ("fixed_linear", "fixed_root")
LR_WARMUP_TYPES = ("linear", "constant")


def _check_keys(given: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(allowed)}.")


def _check_choice(value: Any, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise ValueError(f"{where}={value!r} is not supported; allowed values: {', '.join(allowed)}.")


@dataclass
class CurriculumMetricConfig:
    """One curriculum metric: how difficult a sample is, and how fast the allowed difficulty grows.

    ``name`` is a built-in metric (``seqlen``, ``vocab_rarity``, ``seqlen_vocab_rarity``), a
    dataset column / user metric of that name, or one of the sequence-length batch transforms
    ``seqlen_truncate`` / ``seqlen_reshape`` (difficulty = max tokens per row).
    """

    name: str
    min_difficulty: float
    max_difficulty: float
    schedule_type: str = "fixed_linear"
    schedule_config: dict[str, Any] = field(default_factory=dict)
    difficulty_type: str = "value"
    clustering_type: str = "schedule_based"
    index_to_sample_path: str | None = None
    index_to_metric_path: str | None = None
    schedule_fn: Callable[[int], float] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"curriculum_metrics.{self.name}"
        _check_choice(self.schedule_type, SCHEDULE_TYPES, f"{where}.schedule_type")
        _check_choice(self.difficulty_type, DIFFICULTY_TYPES, f"{where}.difficulty_type")
        _check_choice(self.clustering_type, CLUSTERING_TYPES, f"{where}.clustering_type")
        validate_schedule(
            self.schedule_type,
            self.schedule_config,
            self.min_difficulty,
            self.max_difficulty,
            has_fn=True,  # a custom schedule's callable may be attached later; the sampler checks it
            where=where,
        )
        if self.difficulty_type == "percentile":
            for key in ("min_difficulty", "max_difficulty"):
                value = getattr(self, key)
                if not 0 < value <= 100:
                    raise ValueError(f"{where}.{key}={value} must lie in (0, 100] for difficulty_type='percentile'.")
        if self.is_transform and self.difficulty_type != "value":
            raise ValueError(f"{where}.difficulty_type must be 'value' for the {self.name} batch transform.")
        if self.is_transform and self.min_difficulty < 1:
            raise ValueError(f"{where}.min_difficulty={self.min_difficulty} must be >= 1 token per row.")

    @property
    def is_transform(self) -> bool:
        """True for ``seqlen_truncate``/``seqlen_reshape``, which act on batches, not on sampling."""
        return self.name in SEQLEN_TRANSFORMS

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "schedule_fn"}
        return out

    def to_deepspeed(self) -> dict[str, Any]:
        out = self.to_dict()
        out.pop("name")
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_deepspeed(cls, name: str, entry: Mapping[str, Any]) -> CurriculumMetricConfig:
        allowed = {f.name for f in fields(cls)} - {"name"}
        _check_keys(entry, allowed, f"curriculum_metrics.{name}")
        for key in ("min_difficulty", "max_difficulty", "schedule_type"):
            if key not in entry:
                raise ValueError(f"curriculum_metrics.{name} is missing the required key '{key}'.")
        return cls(name=name, **copy.deepcopy(dict(entry)))


@dataclass
class CurriculumConfig:
    """Curriculum learning (DeepSpeed ``data_sampling.curriculum_learning``)."""

    metrics: list[CurriculumMetricConfig]
    seed: int = 1234
    num_epochs: int = 1000
    num_workers: int = 0
    pin_memory: bool = False
    data_cluster_path: str | None = None

    def __post_init__(self) -> None:
        self.metrics = [
            m if isinstance(m, CurriculumMetricConfig) else CurriculumMetricConfig(**m) for m in self.metrics
        ]
        if not self.metrics:
            raise ValueError("curriculum_learning.curriculum_metrics is empty; give at least one metric.")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"curriculum_learning.curriculum_metrics has duplicate names: {names}.")
        transforms = [m.name for m in self.metrics if m.is_transform]
        if len(transforms) > 1:
            raise ValueError(
                f"curriculum_learning.curriculum_metrics: only one of {SEQLEN_TRANSFORMS} may be used, got {transforms}."
            )
        if self.num_epochs < 1:
            raise ValueError(f"data_sampling.num_epochs={self.num_epochs} must be >= 1.")

    @property
    def sampling_metrics(self) -> list[CurriculumMetricConfig]:
        """Metrics that decide which samples are eligible."""
        return [m for m in self.metrics if not m.is_transform]

    @property
    def transform(self) -> CurriculumMetricConfig | None:
        """The sequence-length batch transform, if any."""
        return next((m for m in self.metrics if m.is_transform), None)

    def metric(self, name: str) -> CurriculumMetricConfig:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"no curriculum metric named {name!r}; configured: {[m.name for m in self.metrics]}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "metrics"}
        out["metrics"] = [m.to_dict() for m in self.metrics]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CurriculumConfig:
        _check_keys(d, {f.name for f in fields(cls)}, "curriculum")
        d = copy.deepcopy(dict(d))
        d["metrics"] = [CurriculumMetricConfig(**m) for m in d.get("metrics", [])]
        return cls(**d)


@dataclass
class LayerTokenLRConfig:
    """LR warmup/decay measured in consumed layer-tokens (DeepSpeed ``layer_token_lr_schedule``)."""

    enabled: bool = False
    total_layer_tokens: int | None = None
    warmup_type: str = "linear"
    warmup_layer_tokens: int = 0

    def __post_init__(self) -> None:
        _check_choice(self.warmup_type, LR_WARMUP_TYPES, "layer_token_lr_schedule.warmup_type")
        if self.warmup_layer_tokens < 0:
            raise ValueError(f"layer_token_lr_schedule.warmup_layer_tokens={self.warmup_layer_tokens} must be >= 0.")
        if self.total_layer_tokens is not None and self.total_layer_tokens <= 0:
            raise ValueError(f"layer_token_lr_schedule.total_layer_tokens={self.total_layer_tokens} must be > 0.")


@dataclass
class RandomLTDConfig:
    """Random layerwise token dropping (DeepSpeed ``data_routing.random_ltd``).

    ``min_value``/``max_value`` are kept sequence lengths; the kept length grows from ``min_value``
    to ``max_value`` over ``require_steps`` steps in multiples of ``seq_per_step``.
    ``random_ltd_layer_id=None`` means every layer but the first and the last.
    ``keep_positions=None`` uses the architecture default (e.g. CLS at 0 for BERT and ViT).
    """

    min_value: int
    max_value: int
    require_steps: int
    seq_per_step: int = 16
    schedule_type: str = "fixed_linear"
    root_degree: float | None = None
    random_ltd_layer_id: list[int] | None = None
    random_ltd_layer_num: int | None = None
    total_layer_num: int | None = None
    keep_positions: list[int] | None = None
    layer_token_lr_schedule: LayerTokenLRConfig = field(default_factory=LayerTokenLRConfig)
    global_batch_size: int | None = None
    micro_batch_size: int | None = None
    model_mask_name: str | None = None
    model_type: str | None = None
    hidden_state_order: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer_token_lr_schedule, Mapping):
            self.layer_token_lr_schedule = LayerTokenLRConfig(**self.layer_token_lr_schedule)
        w = "random_ltd.random_ltd_schedule"
        _check_choice(self.schedule_type, RANDOM_LTD_SCHEDULE_TYPES, f"{w}.schedule_type")
        if self.min_value <= 0:
            raise ValueError(f"{w}.min_value={self.min_value} must be a kept length > 0.")
        if self.min_value > self.max_value:
            raise ValueError(f"{w}.min_value={self.min_value} is larger than max_value={self.max_value}.")
        if self.require_steps <= 0:
            raise ValueError(f"{w}.schedule_config.require_steps={self.require_steps} must be > 0.")
        if self.seq_per_step <= 0:
            raise ValueError(f"{w}.schedule_config.seq_per_step={self.seq_per_step} must be > 0.")
        if self.schedule_type == "fixed_root" and not (self.root_degree and self.root_degree > 0):
            raise ValueError(f"{w}.schedule_config.root_degree={self.root_degree} must be > 0 for fixed_root.")
        if self.random_ltd_layer_id is not None:
            self.random_ltd_layer_id = [int(i) for i in self.random_ltd_layer_id]
            if len(set(self.random_ltd_layer_id)) != len(self.random_ltd_layer_id):
                raise ValueError(f"random_ltd.random_ltd_layer_id={self.random_ltd_layer_id} has duplicates.")
            if any(i < 0 for i in self.random_ltd_layer_id):
                raise ValueError(f"random_ltd.random_ltd_layer_id={self.random_ltd_layer_id} has negative ids.")
            if self.random_ltd_layer_num is not None and self.random_ltd_layer_num != len(self.random_ltd_layer_id):
                raise ValueError(
                    f"random_ltd.random_ltd_layer_num={self.random_ltd_layer_num} disagrees with "
                    f"len(random_ltd_layer_id)={len(self.random_ltd_layer_id)}."
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RandomLTDConfig:
        _check_keys(d, {f.name for f in fields(cls)}, "random_ltd")
        return cls(**copy.deepcopy(dict(d)))

    @classmethod
    def from_deepspeed(cls, section: Mapping[str, Any]) -> RandomLTDConfig:
        """Build from DeepSpeed's ``random_ltd`` section (``enabled`` is ignored here)."""
        allowed = {
            "enabled",
            "random_ltd_schedule",
            "random_ltd_layer_id",
            "random_ltd_layer_num",
            "total_layer_num",
            "layer_token_lr_schedule",
            "global_batch_size",
            "micro_batch_size",
            "model_mask_name",
            "model_type",
            "hidden_state_order",
            "keep_positions",
        }
        _check_keys(section, allowed, "random_ltd")
        if "random_ltd_schedule" not in section:
            raise ValueError("random_ltd is missing the required key 'random_ltd_schedule'.")
        sched = section["random_ltd_schedule"]
        _check_keys(sched, {"min_value", "max_value", "schedule_type", "schedule_config"}, "random_ltd_schedule")
        for key in ("min_value", "max_value", "schedule_config"):
            if key not in sched:
                raise ValueError(f"random_ltd.random_ltd_schedule is missing the required key '{key}'.")
        sc = sched["schedule_config"]
        _check_keys(sc, {"require_steps", "seq_per_step", "root_degree"}, "random_ltd_schedule.schedule_config")
        if "require_steps" not in sc:
            raise ValueError("random_ltd.random_ltd_schedule.schedule_config is missing 'require_steps'.")
        lr = dict(section.get("layer_token_lr_schedule", {}))
        _check_keys(lr, {f.name for f in fields(LayerTokenLRConfig)}, "random_ltd.layer_token_lr_schedule")
        return cls(
            min_value=sched["min_value"],
            max_value=sched["max_value"],
            require_steps=sc["require_steps"],
            seq_per_step=sc.get("seq_per_step", 16),
            schedule_type=sched.get("schedule_type", "fixed_linear"),
            root_degree=sc.get("root_degree"),
            random_ltd_layer_id=section.get("random_ltd_layer_id"),
            random_ltd_layer_num=section.get("random_ltd_layer_num"),
            total_layer_num=section.get("total_layer_num"),
            keep_positions=section.get("keep_positions"),
            layer_token_lr_schedule=LayerTokenLRConfig(**lr),
            global_batch_size=section.get("global_batch_size"),
            micro_batch_size=section.get("micro_batch_size"),
            model_mask_name=section.get("model_mask_name"),
            model_type=section.get("model_type"),
            hidden_state_order=section.get("hidden_state_order"),
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
            "layer_token_lr_schedule": asdict(self.layer_token_lr_schedule),
        }
        for key in (
            "random_ltd_layer_id",
            "random_ltd_layer_num",
            "total_layer_num",
            "keep_positions",
            "global_batch_size",
            "micro_batch_size",
            "model_mask_name",
            "model_type",
            "hidden_state_order",
        ):
            if getattr(self, key) is not None:
                out[key] = copy.deepcopy(getattr(self, key))
        return out


@dataclass
class DataEfficiencyConfig:
    """Both data-efficiency techniques; either part may be ``None`` (off)."""

    curriculum: CurriculumConfig | None = None
    random_ltd: RandomLTDConfig | None = None
    seed: int = 1234

    @property
    def enabled(self) -> bool:
        return self.curriculum is not None or self.random_ltd is not None

    # ----- our own JSON form -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "curriculum": self.curriculum.to_dict() if self.curriculum else None,
            "random_ltd": self.random_ltd.to_dict() if self.random_ltd else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataEfficiencyConfig:
        """Inverse of :meth:`to_dict`. A DeepSpeed layout is detected and routed to :meth:`from_deepspeed`."""
        if "data_efficiency" in d or "data_sampling" in d or "data_routing" in d:
            return cls.from_deepspeed(d)
        _check_keys(d, {"seed", "curriculum", "random_ltd"}, "data efficiency config")
        return cls(
            curriculum=CurriculumConfig.from_dict(d["curriculum"]) if d.get("curriculum") else None,
            random_ltd=RandomLTDConfig.from_dict(d["random_ltd"]) if d.get("random_ltd") else None,
            seed=d.get("seed", 1234),
        )

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
        """Read a whole ds_config (dict or JSON path) or only its ``data_efficiency`` block.

        A legacy top-level ``curriculum_learning`` block (``curriculum_type: seqlen``) becomes a
        ``seqlen_truncate`` transform. A block with ``enabled: false`` yields an empty config and a
        warning; options this project cannot honour raise a ``ValueError``.
        """
        if not isinstance(ds_config, Mapping):
            ds_config = load_config_file(ds_config)
        ds_config = copy.deepcopy(dict(ds_config))
        block_keys = {"enabled", "seed", "data_sampling", "data_routing"}
        if "curriculum_type" in ds_config:  # the legacy block on its own
            legacy, block = ds_config, {}
        elif "data_efficiency" in ds_config or "curriculum_learning" in ds_config or not block_keys & set(ds_config):
            # a whole ds_config
            legacy, block = ds_config.get("curriculum_learning"), ds_config.get("data_efficiency", {})
            if legacy is None and not block:
                logger.warning("The DeepSpeed config has no 'data_efficiency' or 'curriculum_learning' block.")
        else:  # only the data_efficiency block
            legacy, block = None, ds_config
        _check_keys(block, block_keys, "data_efficiency")
        seed = int(block.get("seed", 1234))
        curriculum = random_ltd = None
        if block and not block.get("enabled", False):
            if _any_enabled(block):
                logger.warning(
                    "data_efficiency.enabled is false, so its data_sampling/data_routing sections are ignored "
                    "(set data_efficiency.enabled=true to use them)."
                )
        elif block:
            curriculum = _curriculum_from_deepspeed(block.get("data_sampling", {}), seed)
            random_ltd = _random_ltd_from_deepspeed(block.get("data_routing", {}))
        if legacy and legacy.get("enabled", False):
            if curriculum is not None:
                raise ValueError(
                    "Both the legacy top-level 'curriculum_learning' block and data_efficiency.data_sampling."
                    "curriculum_learning are enabled; keep only one."
                )
            curriculum = _curriculum_from_legacy(legacy, seed)
        return cls(curriculum=curriculum, random_ltd=random_ltd, seed=seed)

    def to_deepspeed(self) -> dict[str, Any]:
        """The ``data_efficiency`` block DeepSpeed would read for this config."""
        sampling: dict[str, Any] = {"enabled": self.curriculum is not None}
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
        routing: dict[str, Any] = {"enabled": self.random_ltd is not None}
        if self.random_ltd is not None:
            routing["random_ltd"] = self.random_ltd.to_deepspeed()
        return {"enabled": self.enabled, "seed": self.seed, "data_sampling": sampling, "data_routing": routing}


def _any_enabled(block: Mapping[str, Any]) -> bool:
    return bool(block.get("data_sampling", {}).get("enabled") or block.get("data_routing", {}).get("enabled"))


def _curriculum_from_deepspeed(sampling: Mapping[str, Any], seed: int) -> CurriculumConfig | None:
    allowed = {"enabled", "num_epochs", "num_workers", "pin_memory", "curriculum_learning", "dynamic_batching"}
    _check_keys(sampling, allowed, "data_efficiency.data_sampling")
    if sampling.get("dynamic_batching", {}).get("enabled", False):
        raise ValueError(
            "data_sampling.dynamic_batching.enabled=true is not supported by hf-data-efficiency; "
            "set it to false (allowed: false)."
        )
    cl = sampling.get("curriculum_learning", {})
    if not sampling.get("enabled", False) or not cl.get("enabled", False):
        if cl.get("enabled", False):
            logger.warning(
                "curriculum_learning.enabled is true but data_sampling.enabled is false; curriculum is off."
            )
        return None
    _check_keys(cl, {"enabled", "curriculum_metrics", "data_cluster_path"}, "data_sampling.curriculum_learning")
    if not cl.get("curriculum_metrics"):
        raise ValueError("curriculum_learning is enabled, so curriculum_learning.curriculum_metrics must be given.")
    return CurriculumConfig(
        metrics=[CurriculumMetricConfig.from_deepspeed(n, e) for n, e in cl["curriculum_metrics"].items()],
        seed=seed,
        num_epochs=int(sampling.get("num_epochs", 1000)),
        num_workers=int(sampling.get("num_workers", 0)),
        pin_memory=bool(sampling.get("pin_memory", False)),
        data_cluster_path=cl.get("data_cluster_path"),
    )


def _curriculum_from_legacy(legacy: Mapping[str, Any], seed: int) -> CurriculumConfig:
    allowed = {"enabled", "curriculum_type", "min_difficulty", "max_difficulty", "schedule_type", "schedule_config"}
    _check_keys(legacy, allowed, "curriculum_learning (legacy)")
    _check_choice(legacy.get("curriculum_type"), ("seqlen",), "curriculum_learning.curriculum_type")
    entry = {
        k: legacy[k] for k in ("min_difficulty", "max_difficulty", "schedule_type", "schedule_config") if k in legacy
    }
    return CurriculumConfig(metrics=[CurriculumMetricConfig.from_deepspeed("seqlen_truncate", entry)], seed=seed)


def _random_ltd_from_deepspeed(routing: Mapping[str, Any]) -> RandomLTDConfig | None:
    _check_keys(routing, {"enabled", "random_ltd"}, "data_efficiency.data_routing")
    section = routing.get("random_ltd", {})
    if not routing.get("enabled", False) or not section.get("enabled", False):
        if section.get("enabled", False):
            logger.warning("random_ltd.enabled is true but data_routing.enabled is false; random-LTD is off.")
        return None
    return RandomLTDConfig.from_deepspeed(section)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON or YAML file (``yaml.safe_load``) into a dict."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON/YAML object at the top level, got {type(data).__name__}.")
    return data
