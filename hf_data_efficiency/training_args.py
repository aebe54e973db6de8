"""``DataEfficiencyTrainingArguments``: ``TrainingArguments`` plus flags for curriculum learning, random-LTD, dynamic
batching, group mixing and batch-size warmup.

The flags are generated from the config dataclasses
-----------------------------------------------------
Each setting has one name: the config field (or ``schedule_config`` key). Its flag is that name behind the
section's prefix (``--random_ltd_min_value`` sets ``RandomLTDConfig.min_value``, ``--curriculum_root_degree`` sets
``schedule_config.root_degree`` of each curriculum metric), with the field's help text and checks. A section is
turned on by its switch: ``--curriculum_metrics NAME ...``, ``--seqlen_curriculum {truncate,reshape}``,
``--random_ltd``, ``--layer_token_lr_schedule``, ``--dynamic_batching``, ``--mixing_column NAME``,
``--batch_size_warmup_start N``. The curriculum flags take one value for
all metrics or one per metric. Flags of earlier versions (:data:`DEPRECATED_FLAGS`) still work, with a warning.

Where the settings come from, and the one precedence rule
----------------------------------------------------------
1. A config file: ``--data_efficiency_config PATH`` (our JSON/YAML layout, a DeepSpeed ds_config or only its
   ``data_efficiency`` block), or a ``data_efficiency`` block (or legacy top-level ``curriculum_learning`` block)
   inside ``--deepspeed ds_config.json``. Giving both is an error: keep the settings in one place.
2. Flags. **A flag that is given overrides the same setting of the file; everything else in the file stays.**
   Each override is logged. A flag is "given" when it is not ``None`` (switches: when true; they only turn a
   part on).

Without a file the flags build the whole configuration. Flags of a part that is off (e.g. ``--random_ltd_min_value``
without ``--random_ltd``) are contradictory and raise a ``ValueError``.

The ``data_efficiency`` block of a DeepSpeed config is removed from the config DeepSpeed receives, so the
DeepSpeed engine never sees it (it would otherwise need ``deepspeed.initialize(training_data=...)`` and its own
patched layers); this package implements it instead.
"""

import copy
import dataclasses
import importlib.util
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from transformers import TrainingArguments
from transformers.utils import logging

from ._validation import Rule, check_bool, check_int, check_list, check_str, required_fields, rule_of
from .config import (
    DEEPSPEED_KEYS,
    REFERENCE_LOSS_METRIC,
    SEQLEN_TRANSFORMS,
    TOKEN_SELECTION_METHODS,
    BatchSizeWarmupConfig,
    CurriculumConfig,
    CurriculumMetricConfig,
    DataEfficiencyConfig,
    DynamicBatchingConfig,
    LayerTokenLRConfig,
    MixingConfig,
    RandomLTDConfig,
    SeqlenTransformConfig,
    StreamingConfig,
    TokenSelectionConfig,
)
from .recipe import RECIPES
from .schedules import ROOT_SCHEDULE_KEYS, ROOT_SCHEDULE_TYPES, schedule_keys

logger = logging.get_logger(__name__)

#: Values of ``--seqlen_curriculum``: the transform name without its ``seqlen_`` prefix.
SEQLEN_FLAG_CHOICES = tuple(name.removeprefix("seqlen_") for name in SEQLEN_TRANSFORMS)


@dataclass(frozen=True)
class Section:
    """A part of the config that flags can set: its flag prefix, its dataclass and the switch that turns it on."""

    name: str
    prefix: str
    config: type
    switch: str
    per_metric: bool = False
    #: values used when flags alone build the section (schedule_config keys)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_schedule(self) -> bool:
        return any(f.name == "schedule_config" for f in fields(self.config))


SECTIONS = {
    s.name: s
    for s in (
        Section(
            "curriculum", "curriculum_", CurriculumMetricConfig, "curriculum_metrics", True, {"difficulty_step": 1}
        ),
        Section(
            "seqlen_curriculum",
            "seqlen_curriculum_",
            SeqlenTransformConfig,
            "seqlen_curriculum",
            False,
            {"difficulty_step": 8},
        ),
        Section("streaming", "curriculum_stream_", StreamingConfig, "curriculum_metrics"),
        Section("random_ltd", "random_ltd_", RandomLTDConfig, "random_ltd"),
        Section("layer_token_lr", "layer_token_lr_", LayerTokenLRConfig, "layer_token_lr_schedule"),
        Section("dynamic_batching", "dynamic_batching_", DynamicBatchingConfig, "dynamic_batching"),
        Section("mixing", "mixing_", MixingConfig, "mixing_column"),
        Section("batch_size_warmup", "batch_size_warmup_", BatchSizeWarmupConfig, "batch_size_warmup_start"),
        Section("token_selection", "token_selection_", TokenSelectionConfig, "token_selection"),
    )
}


@dataclass(frozen=True, eq=False)
class Flag:
    """One generated flag: it sets ``key`` of its section (a field, or a ``schedule_config`` key)."""

    name: str
    section: Section
    key: str
    in_schedule: bool
    rule: Rule
    default: Any = None

    @property
    def help(self) -> str:
        text = self.rule.help
        default = self.section.defaults.get(self.key, self.default)
        if default is not None and default is not dataclasses.MISSING:
            text += f" Default: {default}."
        if self.section.per_metric:
            text += " One value for all metrics, or one per metric."
        return text


def flag_name(prefix: str, key: str) -> str:
    """The flag of a setting: its name behind the section prefix (not repeated when the name starts with it)."""
    return key if key.startswith(prefix) else prefix + key


def _section_flags(section: Section) -> list[Flag]:
    out = []
    for f in fields(section.config):
        rule = rule_of(f)
        if rule is not None and rule.flag:
            if f.name == "schedule_type":  # fixed_discrete needs lists and custom a callable: files only
                rule = replace(rule, choices=ROOT_SCHEDULE_TYPES)
            out.append(Flag(flag_name(section.prefix, f.name), section, f.name, False, rule, f.default))
    if section.has_schedule:
        out += [Flag(flag_name(section.prefix, k), section, k, True, r) for k, r in ROOT_SCHEDULE_KEYS.items()]
    return out


#: Every generated flag, by name.
FLAGS = {flag.name: flag for section in SECTIONS.values() for flag in _section_flags(section)}
#: Flags of earlier versions -> the flag of the same setting now; accepted with a FutureWarning.
DEPRECATED_FLAGS = {
    "curriculum_schedule": "curriculum_schedule_type",
    "curriculum_total_steps": "curriculum_total_curriculum_step",
    "seqlen_curriculum_min": "seqlen_curriculum_min_difficulty",
    "seqlen_curriculum_max": "seqlen_curriculum_max_difficulty",
    "seqlen_curriculum_total_steps": "seqlen_curriculum_total_curriculum_step",
    "seqlen_curriculum_step": "seqlen_curriculum_difficulty_step",
    "seqlen_curriculum_schedule": "seqlen_curriculum_schedule_type",
    "random_ltd_layers": "random_ltd_layer_id",
    "random_ltd_min_kept": "random_ltd_min_value",
    "random_ltd_max_kept": "random_ltd_max_value",
    "random_ltd_total_steps": "random_ltd_require_steps",
    "random_ltd_step_size": "random_ltd_seq_per_step",
    "random_ltd_schedule": "random_ltd_schedule_type",
    "layer_token_lr_warmup_tokens": "layer_token_lr_warmup_layer_tokens",
    "layer_token_lr_total_tokens": "layer_token_lr_total_layer_tokens",
}
_FLAG_TYPES = {
    "int": int,
    "number": float,
    "str": str,
    "bool": bool,
    "int_list": list[int],
    "str_list": list[str],
    "mapping": dict | str,  # a JSON object on the command line
}


def _is_list(flag: Flag) -> bool:
    return flag.section.per_metric or flag.rule.kind in ("int_list", "str_list")


def _flag_field(flag: Flag, help_text: str) -> tuple[Any, Any]:
    kind = _FLAG_TYPES[flag.rule.kind]
    typ = list[kind] if flag.section.per_metric else kind
    metadata: dict[str, Any] = {"help": help_text}
    if flag.rule.choices is not None:
        metadata["choices"] = list(flag.rule.choices)
    return typ | None, field(default=None, metadata=metadata)


def _with_generated_flags(cls: type) -> type:
    """Add one dataclass field per :data:`FLAGS` entry and per deprecated flag (applied before ``@dataclass``)."""
    for flag in FLAGS.values():
        cls.__annotations__[flag.name], default = _flag_field(flag, flag.help)
        setattr(cls, flag.name, default)
    for old, new in DEPRECATED_FLAGS.items():
        cls.__annotations__[old], default = _flag_field(FLAGS[new], f"Deprecated: use --{new}.")
        setattr(cls, old, default)
    return cls


def deepspeed_config_of(args: TrainingArguments) -> dict[str, Any] | None:
    """The DeepSpeed config accelerate will hand to DeepSpeed for ``args`` (``--deepspeed``, or ``accelerate launch``'s
    DeepSpeed config file), or ``None``: where :meth:`DataEfficiencyConfig.load` removes our block from."""
    plugin = getattr(args, "deepspeed_plugin", None)
    config = getattr(getattr(plugin, "hf_ds_config", None), "config", None)
    return config if isinstance(config, dict) else None


@dataclass
@_with_generated_flags
class DataEfficiencyTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with curriculum-learning, random-LTD and dynamic-batching options (see the module
    docstring for the naming and precedence rules). :meth:`get_data_efficiency_config` returns the resolved
    :class:`DataEfficiencyConfig`. The per-setting flags are generated from the config dataclasses."""

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "data_efficiency_config"]

    data_efficiency_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Data-efficiency config: a JSON/YAML file (our layout, a DeepSpeed ds_config or its "
            "'data_efficiency' block), a directory holding data_efficiency_config.json, or a dict / JSON string. "
            "Flags given explicitly override the same settings of this file."
        },
    )
    curriculum_metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "Curriculum metrics deciding which samples are eligible (e.g. seqlen vocab_rarity "
            "seqlen_vocab_rarity, or any dataset column). Missing columns are computed. The curriculum_* flags "
            "take one value for all metrics or one per metric."
        },
    )
    curriculum_metrics_num_proc: int | None = field(
        default=None, metadata={"help": "Worker processes for computing missing metric columns (datasets.map)."}
    )
    seqlen_curriculum: str | None = field(
        default=None,
        metadata={
            "help": "Sequence-length curriculum applied to each batch: 'truncate' drops the tokens beyond the "
            "current max length, 'reshape' keeps them as extra rows (DeepSpeed seqlen_truncate/seqlen_reshape).",
            "choices": list(SEQLEN_FLAG_CHOICES),
        },
    )
    random_ltd: bool = field(
        default=False,
        metadata={"help": "Turn on random layerwise token dropping (random-LTD) in the middle layers."},
    )
    layer_token_lr_schedule: bool = field(
        default=False,
        metadata={
            "help": "Measure LR warmup and decay in consumed layer-tokens instead of steps (needs random-LTD; "
            "decay follows --lr_scheduler_type: linear, cosine or constant)."
        },
    )
    dynamic_batching: bool = field(
        default=False,
        metadata={"help": "Turn on token-budget (dynamic) batching: micro-batches fit --dynamic_batching_max_tokens."},
    )
    token_selection: str | None = field(
        default=None,
        metadata={
            "help": "Model-based token selection: 'excess_loss' trains on the tokens whose loss exceeds a reference "
            "model's the most (RHO-1); the reference comes from --token_selection_reference_model or "
            "--token_selection_reference_column (see docs/selection.md).",
            "choices": list(TOKEN_SELECTION_METHODS),
        },
    )
    data_efficiency_recipe: str | None = field(
        default=None,
        metadata={
            "help": "Fill the data-efficiency settings left off from the model, sequence length and run length: "
            "'auto' (random-LTD, chosen from the benchmarks) or 'paper' (the paper's GPT-3 curriculum + random-LTD, "
            "scaled). A part configured explicitly is kept; every choice is logged.",
            "choices": list(RECIPES),
        },
    )
    data_efficiency_seeded_collation: bool = field(
        default=True,
        metadata={
            "help": "With data efficiency on, run the data collator under a torch RNG seeded per micro-batch from its "
            "place in training, so collator randomness (MLM masking, ...) after a resume equals the uninterrupted run."
        },
    )

    def __post_init__(self) -> None:
        self._apply_deprecated_flags()
        self._normalize_flag_values()
        if self.deepspeed and importlib.util.find_spec("deepspeed") is None:
            raise ValueError(
                f"--deepspeed={self.deepspeed!r} needs DeepSpeed, which is not installed; install the 'deepspeed' "
                "extra: pip install 'hf-data-efficiency[deepspeed]'."
            )
        super().__post_init__()
        self._de_config = self._resolve()
        self._recipe_applied = False

    # ----- public -----------------------------------------------------------------------------------------
    def get_data_efficiency_config(self) -> DataEfficiencyConfig:
        """The resolved configuration (file, DeepSpeed block and flags merged, then the recipe's choices once
        :meth:`apply_data_efficiency_recipe` ran). ``.enabled`` is False when off."""
        return self._de_config

    def apply_data_efficiency_recipe(
        self, model: Any, train_dataset: Any, reference_model: Any = None
    ) -> DataEfficiencyConfig:
        """Fill the parts left off with ``--data_efficiency_recipe``'s choices for this model and data (see
        :mod:`hf_data_efficiency.recipe`); returns the config, also what :meth:`get_data_efficiency_config` returns
        from then on. ``reference_model``: a reference passed to the Trainer (the recipe may then select tokens).
        Without a recipe, the config as it is."""
        if self.data_efficiency_recipe is None or self._recipe_applied:
            return self._de_config
        from .recipe import apply_recipe, planned_steps, sequence_length
        from .routing.architectures import find_layers

        self._de_config = apply_recipe(
            self.data_efficiency_recipe,
            self._de_config,
            layers=find_layers(model),
            seq_len=sequence_length(train_dataset, model),
            steps=planned_steps(self, train_dataset),
            reference_model=reference_model,
        )
        self._recipe_applied = True
        return self._de_config

    # ----- internals --------------------------------------------------------------------------------------
    def _apply_deprecated_flags(self) -> None:
        for old, new in DEPRECATED_FLAGS.items():
            value = getattr(self, old)
            if value is None:
                continue
            warnings.warn(f"--{old} is deprecated; use --{new} (the same setting).", FutureWarning, stacklevel=4)
            if getattr(self, new) is not None and getattr(self, new) != value:
                raise ValueError(f"--{old} (deprecated) and --{new} set the same setting to different values.")
            setattr(self, new, value)
            setattr(self, old, None)

    def _normalize_flag_values(self) -> None:
        """Accept scalars for list flags (YAML/JSON recipes, Python) and a DataEfficiencyConfig object."""
        list_flags = ["curriculum_metrics", *(name for name, flag in FLAGS.items() if _is_list(flag))]
        for name in list_flags:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, list(value) if isinstance(value, (list, tuple)) else [value])
        if self.seqlen_curriculum is not None:
            check_str(self.seqlen_curriculum, "--seqlen_curriculum", SEQLEN_FLAG_CHOICES)
        if self.data_efficiency_recipe is not None:
            check_str(self.data_efficiency_recipe, "--data_efficiency_recipe", RECIPES)
        if self.token_selection is not None:
            check_str(self.token_selection, "--token_selection", TOKEN_SELECTION_METHODS)
        for switch in ("random_ltd", "layer_token_lr_schedule", "dynamic_batching"):
            check_bool(getattr(self, switch), f"--{switch}")
        if self.curriculum_metrics is not None:
            check_list(self.curriculum_metrics, "--curriculum_metrics", check_str, nonempty=True)
        if self.curriculum_metrics_num_proc is not None:
            check_int(self.curriculum_metrics_num_proc, "--curriculum_metrics_num_proc", minimum=1)
        for name in ("mixing_weights", "data_efficiency_config"):  # before TrainingArguments parses a JSON one bare
            value = getattr(self, name)
            if isinstance(value, str) and (name == "mixing_weights" or value.lstrip().startswith("{")):
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as e:
                    example = ' such as \'{"web": 2, "code": 1}\'' if name == "mixing_weights" else " or a file path"
                    raise ValueError(
                        f"--{name}={value!r} is not valid JSON: {e}; allowed: a JSON object{example}."
                    ) from None
        if isinstance(self.data_efficiency_config, DataEfficiencyConfig):
            cfg = self.data_efficiency_config
            if cfg.curriculum is not None and any(m.schedule_fn is not None for m in cfg.curriculum.metrics):
                raise ValueError(
                    "data_efficiency_config: a 'custom' schedule callable cannot be stored in the training "
                    "arguments (they are saved as training_args.bin); pass schedule_fns to CurriculumSampler in a "
                    "custom loop, or use fixed_linear/fixed_root/fixed_discrete."
                )
            self.data_efficiency_config = cfg.to_dict()

    def _resolve(self) -> DataEfficiencyConfig:
        ds_config = deepspeed_config_of(self)
        given = self.data_efficiency_config is not None or (
            ds_config is not None and any(key in ds_config for key in DEEPSPEED_KEYS)
        )
        seed = self.data_seed if self.data_seed is not None else self.seed
        base = DataEfficiencyConfig.load(self.data_efficiency_config, deepspeed=ds_config)
        source = "the config file" if given else None
        if not given:
            base = DataEfficiencyConfig(seed=seed)
        return DataEfficiencyConfig(
            curriculum=self._resolve_curriculum(base.curriculum, seed, source),
            random_ltd=self._resolve_random_ltd(base.random_ltd, source),
            seed=base.seed,
            dynamic_batching=self._resolve_part("dynamic_batching", base.dynamic_batching, source, "dynamic batching"),
            mixing=self._resolve_mixing(base.mixing, source),
            batch_size_warmup=self._resolve_part(
                "batch_size_warmup", base.batch_size_warmup, source, "batch-size warmup"
            ),
            token_selection=self._resolve_token_selection(base.token_selection, source),
        )

    # ----- generic flag merging -----------------------------------------------------------------------------
    def _given(self, section: Section) -> dict[Flag, Any]:
        """The section's flags that are given, with their values."""
        return {f: v for f in FLAGS.values() if f.section is section and (v := getattr(self, f.name)) is not None}

    def _per_metric(self, flag: Flag, names: list[str]) -> list[Any]:
        """The values of a curriculum flag, one per metric of ``names``."""
        values, n = getattr(self, flag.name), len(names)
        if len(values) == 1 and flag.key == "reference_model":
            # one reference model for all metrics: the metric that reads one gets it
            return [values[0] if name == REFERENCE_LOSS_METRIC else None for name in names]
        if len(values) == 1:
            return list(values) * n
        if len(values) != n:
            raise ValueError(
                f"--{flag.name} has {len(values)} values but there are {n} curriculum metrics; give one value for "
                f"all metrics or one per metric (in the order of --curriculum_metrics)."
            )
        return list(values)

    def _apply(
        self, section: Section, current: dict[str, Any], values: dict[Flag, Any], source: str | None, switch: str
    ) -> Any:
        """Write flag ``values`` into ``current`` (a config dict, from the file or new) and build the section.

        Overrides of file values are logged; settings that flags alone must give are asked for by flag name.
        """
        d = copy.deepcopy(current)
        sc = dict(d.get("schedule_config") or {})
        for flag, value in values.items():
            value = flag.rule.check(value, f"--{flag.name}")
            target = sc if flag.in_schedule else d
            if source is not None and target.get(flag.key) != value:
                logger.warning(
                    f"--{flag.name}={value!r} overrides {target.get(flag.key)!r} from {source} "
                    "(explicit flags take precedence)."
                )
            target[flag.key] = value
        schedule_type = d.get("schedule_type", "fixed_linear")
        missing = [name for name in required_fields(section.config) if name not in d]
        if section.has_schedule:
            sc = {k: v for k, v in sc.items() if k in schedule_keys(schedule_type)}  # what the schedule reads
            missing += [k for k in schedule_keys(schedule_type) if k not in sc]
            d["schedule_config"] = sc
        elif schedule_type == "fixed_root" and d.get("root_degree") is None:
            missing.append("root_degree")
        if "root_degree" in missing and schedule_type == "fixed_root":
            prefix = section.prefix
            raise ValueError(f"--{prefix}schedule_type fixed_root needs --{flag_name(prefix, 'root_degree')}.")
        if missing:
            raise ValueError(f"{switch} needs --{flag_name(section.prefix, missing[0])}.")
        return section.config(**d)

    def _check_schedule_flags_used(self, section: Section, built: list[Any]) -> None:
        """A schedule flag no built schedule reads (e.g. a root degree without fixed_root) is a contradiction."""
        for flag in self._given(section):
            if flag.in_schedule and not any(flag.key in schedule_keys(m.schedule_type) for m in built):
                users = [t for t in ROOT_SCHEDULE_TYPES if flag.key in schedule_keys(t)]
                raise ValueError(
                    f"--{flag.name} is only used by --{section.prefix}schedule_type {' or '.join(users)}; "
                    "drop one of them."
                )

    def _off(self, section: Section, what: str, hint: str) -> None:
        given = self._given(section)
        if given:
            raise ValueError(
                f"{['--' + f.name for f in given]} given but {what} is off; add --{section.switch}{hint}."
            )

    # ----- sections -----------------------------------------------------------------------------------------
    def _resolve_curriculum(
        self, base: CurriculumConfig | None, seed: int, source: str | None
    ) -> CurriculumConfig | None:
        section, seq = SECTIONS["curriculum"], SECTIONS["seqlen_curriculum"]
        given = self._given(section)
        sampling = list(base.sampling_metrics) if base is not None else []
        transform = base.transform if base is not None else None
        names = self.curriculum_metrics

        if names is not None:
            bad = [m for m in names if m in SEQLEN_TRANSFORMS]
            if bad:
                raise ValueError(
                    f"--curriculum_metrics {bad}: sequence-length transforms are set with --seqlen_curriculum "
                    "{truncate,reshape} and the seqlen_curriculum_* flags."
                )
            if sampling and [m.name for m in sampling] != list(names):
                raise ValueError(
                    f"--curriculum_metrics {names} contradicts the curriculum metrics "
                    f"{[m.name for m in sampling]} of {source}; drop the flag or edit the file."
                )
        elif given and not sampling:
            raise ValueError(
                f"{['--' + f.name for f in given]} given without --curriculum_metrics (and no curriculum in a config "
                "file); add --curriculum_metrics, e.g. --curriculum_metrics seqlen."
            )
        if given or (names is not None and not sampling):
            building = not sampling
            currents = (
                [{"name": m, "schedule_config": dict(section.defaults)} for m in names]
                if building
                else [m.to_dict() for m in sampling]
            )
            values = {f: self._per_metric(f, [c["name"] for c in currents]) for f in given}
            sampling = [
                self._apply(
                    section,
                    current,
                    {f: v[i] for f, v in values.items()},
                    None if building else source,
                    f"--curriculum_metrics {list(names)}" if building else "--curriculum_metrics",
                )
                for i, current in enumerate(currents)
            ]
            self._check_schedule_flags_used(section, sampling)

        seq_given = self._given(seq)
        if self.seqlen_curriculum is not None:
            name = f"seqlen_{self.seqlen_curriculum}"
            if transform is not None and transform.name != name:
                raise ValueError(
                    f"--seqlen_curriculum {self.seqlen_curriculum} contradicts {transform.name} in {source}; "
                    "drop the flag or edit the file."
                )
        elif seq_given and transform is None:
            raise ValueError(
                f"{['--' + f.name for f in seq_given]} given without --seqlen_curriculum {{truncate,reshape}}; "
                "add --seqlen_curriculum to turn the sequence-length curriculum on."
            )
        if seq_given or (self.seqlen_curriculum is not None and transform is None):
            new = {"name": f"seqlen_{self.seqlen_curriculum}", "schedule_config": dict(seq.defaults)}
            transform = self._merge(seq, transform, source, new)
            self._check_schedule_flags_used(seq, [transform])

        if not sampling and transform is None:
            self._off(SECTIONS["streaming"], "curriculum learning", " (or a curriculum in the config file)")
            return None
        streaming = base.streaming if base is not None else None
        if self._given(SECTIONS["streaming"]):
            streaming = self._merge(SECTIONS["streaming"], streaming, source)
        if base is not None:
            return replace(base, sampling_metrics=sampling, transform=transform, streaming=streaming)
        return CurriculumConfig(sampling_metrics=sampling, transform=transform, seed=seed, streaming=streaming)

    def _merge(self, section: Section, base: Any, source: str | None, new: dict[str, Any] | None = None) -> Any:
        """``base`` (from the file; if ``None``, ``new`` or nothing) with the section's given flags merged in."""
        current, source = (dict(new or {}), None) if base is None else (base.to_dict(), source)
        return self._apply(section, current, self._given(section), source, f"--{section.switch}")

    def _resolve_part(
        self, name: str, base: Any, source: str | None, what: str, example: str = "", new: dict[str, Any] | None = None
    ) -> Any:
        """Section ``name``: off (``None``; its flags are then an error) unless the file (``base``) or its switch turns
        it on, else :meth:`_merge`'d."""
        section = SECTIONS[name]
        switch = getattr(self, section.switch)
        if base is None and (switch is None or switch is False):
            self._off(section, what, f"{example} (or a {name} section in the config file)")
            return None
        return self._merge(section, base, source, new)

    def _resolve_random_ltd(self, base: RandomLTDConfig | None, source: str | None) -> RandomLTDConfig | None:
        section, lr_section = SECTIONS["random_ltd"], SECTIONS["layer_token_lr"]
        if base is None and not self.random_ltd:
            self._off(section, "random-LTD", " (or a random_ltd section in the config file)")
            if self.layer_token_lr_schedule or self._given(lr_section):
                raise ValueError(
                    "--layer_token_lr_schedule (and its layer_token_lr_* flags) needs random-LTD: add --random_ltd."
                )
            return None
        d = base.to_dict() if base is not None else {}
        lr = dict(d.get("layer_token_lr_schedule") or {})
        if self.layer_token_lr_schedule:
            if source is not None and not lr.get("enabled", False):
                logger.warning(
                    f"--layer_token_lr_schedule overrides enabled=False from {source} (explicit flags take precedence)."
                )
            lr["enabled"] = True
        if not lr.get("enabled", False):
            self._off(lr_section, "the layer-token LR schedule", "")
        d["layer_token_lr_schedule"] = self._apply(
            lr_section, lr, self._given(lr_section), source, "--layer_token_lr_schedule"
        )
        return self._apply(section, d, self._given(section), source if base is not None else None, "--random_ltd")

    def _resolve_mixing(self, base: MixingConfig | None, source: str | None) -> MixingConfig | None:
        on = base is not None or self.mixing_column is not None
        strategy = self.mixing_strategy or (base.strategy if base is not None else "stratified")
        online = [f"--{f.name}" for f in self._given(SECTIONS["mixing"]) if f.key.startswith("online_")]
        if on and online and strategy != "online":
            raise ValueError(f"{online} apply only with --mixing_strategy online, but the strategy is {strategy!r}.")
        return self._resolve_part("mixing", base, source, "group mixing")

    def _resolve_token_selection(
        self, base: TokenSelectionConfig | None, source: str | None
    ) -> TokenSelectionConfig | None:
        if base is not None and self.token_selection is not None and base.method != self.token_selection:
            raise ValueError(
                f"--token_selection {self.token_selection} contradicts token_selection.method={base.method!r} of "
                f"{source}; drop the flag or edit the file."
            )
        new = {"method": self.token_selection}
        return self._resolve_part("token_selection", base, source, "token selection", " excess_loss", new)


def flag_table() -> str:
    """The Markdown table of every data-efficiency flag and its help (the README's flag table is this text)."""
    inherited = {f.name for f in fields(TrainingArguments)}
    rows = ["| flag | meaning |", "|---|---|"]
    for f in fields(DataEfficiencyTrainingArguments):
        if f.name in inherited or f.name in DEPRECATED_FLAGS:
            continue
        choices = f.metadata.get("choices")
        name = f"--{f.name}" + (f" {{{','.join(choices)}}}" if choices else "")
        rows.append(f"| `{name}` | {f.metadata['help'].replace('|', '/')} |")
    renamed = ", ".join(f"`--{old}` → `--{new}`" for old, new in DEPRECATED_FLAGS.items())
    return "\n".join(rows) + f"\n\nDeprecated flags, still accepted with a warning: {renamed}.\n"
