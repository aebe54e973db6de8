"""The config schema: every bad input is a clear error naming its field, flags are generated from the config
dataclasses (and documented from them), deprecated names still work, dynamic batching reads like DeepSpeed, and
config files are bounded."""

import copy
import dataclasses
import json
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from deepspeed.runtime.data_pipeline.config import get_data_efficiency_config
from transformers import HfArgumentParser, TrainingArguments
from transformers.testing_utils import CaptureLogger

import hf_data_efficiency.config as config_module
import hf_data_efficiency.training_args as ta
from hf_data_efficiency import DataEfficiencyConfig, DataEfficiencyTrainingArguments, DifficultySchedule
from hf_data_efficiency._validation import rule_of
from hf_data_efficiency.config import (
    CurriculumConfig,
    CurriculumMetricConfig,
    DynamicBatchingConfig,
    RandomLTDConfig,
    SeqlenTransformConfig,
    load_config_file,
)
from hf_data_efficiency.schedules import ROOT_SCHEDULE_KEYS

README = Path(__file__).resolve().parents[1] / "README.md"

SEQLEN = {
    "min_difficulty": 8,
    "max_difficulty": 64,
    "schedule_type": "fixed_linear",
    "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
}
DISCRETE = {
    "min_difficulty": 8,
    "max_difficulty": 64,
    "schedule_type": "fixed_discrete",
    "schedule_config": {"difficulty": [8, 16, 64], "max_step": [5, 10]},
}
RANDOM_LTD = {
    "enabled": True,
    "random_ltd_schedule": {
        "min_value": 8,
        "max_value": 64,
        "schedule_config": {"require_steps": 10, "seq_per_step": 8},
    },
}
DYNAMIC = {"enabled": True, "max_tokens": 512}


def block(metrics=None, random_ltd=None, dynamic=None, **sampling):
    """A DeepSpeed data_efficiency block with the given parts."""
    out = {"enabled": True, "data_sampling": {"enabled": True, **sampling}, "data_routing": {"enabled": True}}
    if metrics is not None:
        out["data_sampling"]["curriculum_learning"] = {"enabled": True, "curriculum_metrics": metrics}
    if dynamic is not None:
        out["data_sampling"]["dynamic_batching"] = dynamic
    if random_ltd is not None:
        out["data_routing"]["random_ltd"] = random_ltd
    return out


def with_key(base, path, value):
    """``base`` (deep-copied) with ``value`` at the dotted ``path``."""
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


def seqlen_with(path, value):
    return block({"seqlen": with_key(SEQLEN, path, value)})


def discrete_with(path, value):
    return block({"seqlen": with_key(DISCRETE, path, value)})


def ltd_with(path, value):
    return block(random_ltd=with_key(RANDOM_LTD, path, value))


def dyn_with(key, value):
    return block(dynamic={**DYNAMIC, key: value})


def ds(b):
    return lambda tmp_path: DataEfficiencyConfig.from_deepspeed(b)


def flags(**kw):
    return lambda tmp_path: DataEfficiencyTrainingArguments(output_dir=str(tmp_path), report_to=[], **kw)


def ours(d):
    return lambda tmp_path: DataEfficiencyConfig.from_dict(d)


RANDOM_LTD_FLAGS = {
    "random_ltd": True,
    "random_ltd_min_value": 8,
    "random_ltd_max_value": 64,
    "random_ltd_require_steps": 10,
    "random_ltd_seq_per_step": 8,
}
CURRICULUM_FLAGS = {
    "curriculum_metrics": ["seqlen"],
    "curriculum_min_difficulty": [8],
    "curriculum_max_difficulty": [64],
    "curriculum_total_curriculum_step": [10],
}

# (id, build, the field the message must name). Every case must raise a ValueError naming that field.
BAD_INPUTS = [
    # --- nested schedule configs (silently accepted before) ---
    ("discrete string difficulty", ds(discrete_with("schedule_config.difficulty", [8, "16", 64])), "difficulty[1]"),
    ("discrete decreasing max_step", ds(discrete_with("schedule_config.max_step", [10, 5])), "max_step"),
    ("discrete repeated max_step", ds(discrete_with("schedule_config.max_step", [5, 5])), "max_step"),
    ("discrete difficulty above max", ds(discrete_with("schedule_config.difficulty", [8, 16, 65])), "difficulty[2]"),
    ("discrete difficulty below min", ds(discrete_with("schedule_config.difficulty", [4, 16, 64])), "difficulty[0]"),
    ("discrete float max_step", ds(discrete_with("schedule_config.max_step", [5.5, 10])), "max_step[0]"),
    ("discrete max_step not a list", ds(discrete_with("schedule_config.max_step", 5)), "max_step"),
    ("discrete lengths", ds(discrete_with("schedule_config.max_step", [5])), "max_step"),
    ("schedule_config unknown key", ds(seqlen_with("schedule_config.total_steps", 10)), "total_steps"),
    ("schedule_config root_degree on linear", ds(seqlen_with("schedule_config.root_degree", 2)), "root_degree"),
    ("schedule_config a list", ds(seqlen_with("schedule_config", [10, 8])), "schedule_config"),
    ("schedule_config a string", ds(seqlen_with("schedule_config", "linear")), "schedule_config"),
    ("total steps a string", ds(seqlen_with("schedule_config.total_curriculum_step", "10")), "total_curriculum_step"),
    (
        "total steps a fraction",
        ds(seqlen_with("schedule_config.total_curriculum_step", 10.5)),
        "total_curriculum_step",
    ),
    ("difficulty_step NaN", ds(seqlen_with("schedule_config.difficulty_step", float("nan"))), "difficulty_step"),
    ("difficulty_step a bool", ds(seqlen_with("schedule_config.difficulty_step", True)), "difficulty_step"),
    ("min_difficulty a string", ds(seqlen_with("min_difficulty", "8")), "min_difficulty"),
    ("max_difficulty infinite", ds(seqlen_with("max_difficulty", float("inf"))), "max_difficulty"),
    ("min_difficulty a bool", ds(seqlen_with("min_difficulty", True)), "min_difficulty"),
    ("schedule_type a list", ds(seqlen_with("schedule_type", ["fixed_linear"])), "schedule_type"),
    ("difficulty_type misspelled", ds(seqlen_with("difficulty_type", "percentil")), "difficulty_type"),
    (
        "DifficultySchedule list config",
        lambda tmp_path: DifficultySchedule.from_dict([SEQLEN]),
        "curriculum metric config",
    ),
    # --- DeepSpeed blocks ---
    ("curriculum_metrics a list", ds(block([SEQLEN])), "curriculum_metrics"),
    ("metric entry a list", ds(block({"seqlen": [1, 2]})), "curriculum_metrics.seqlen"),
    ("metric entry misspelled key", ds(block({"seqlen": {**SEQLEN, "max_dificulty": 3}})), "max_dificulty"),
    ("data_sampling a list", ds({"enabled": True, "data_sampling": [1]}), "data_sampling"),
    ("data_routing a string", ds({"enabled": True, "data_routing": "on"}), "data_routing"),
    ("enabled a string", ds({"enabled": "yes"}), "data_efficiency.enabled"),
    ("seed a string", ds({"enabled": True, "seed": "42"}), "seed"),
    ("num_epochs zero", ds(block({"seqlen": SEQLEN}, num_epochs=0)), "num_epochs"),
    ("pin_memory a string", ds(block({"seqlen": SEQLEN}, pin_memory="no")), "pin_memory"),
    ("random_ltd a list", ds(block(random_ltd=[RANDOM_LTD])), "random_ltd"),
    ("layer id a fraction", ds(ltd_with("random_ltd_layer_id", [1.5])), "random_ltd_layer_id[0]"),
    ("layer id a string", ds(ltd_with("random_ltd_layer_id", ["1"])), "random_ltd_layer_id[0]"),
    ("layer ids not a list", ds(ltd_with("random_ltd_layer_id", 1)), "random_ltd_layer_id"),
    ("min_value a bool", ds(ltd_with("random_ltd_schedule.min_value", True)), "min_value"),
    ("max_value a string", ds(ltd_with("random_ltd_schedule.max_value", "64")), "max_value"),
    (
        "require_steps NaN",
        ds(ltd_with("random_ltd_schedule.schedule_config.require_steps", float("nan"))),
        "require_steps",
    ),
    (
        "min_value below seq_per_step",
        ds(ltd_with("random_ltd_schedule.schedule_config.seq_per_step", 16)),
        "min_value",
    ),
    ("random_ltd_schedule a list", ds(ltd_with("random_ltd_schedule", [8, 64])), "random_ltd_schedule"),
    ("schedule_config unknown key", ds(ltd_with("random_ltd_schedule.schedule_config.seq_step", 8)), "seq_step"),
    ("keep_positions names", ds(ltd_with("keep_positions", ["cls"])), "keep_positions[0]"),
    ("lr schedule a string", ds(ltd_with("layer_token_lr_schedule", "linear")), "layer_token_lr_schedule"),
    (
        "lr warmup a fraction",
        ds(ltd_with("layer_token_lr_schedule", {"warmup_layer_tokens": 0.5})),
        "warmup_layer_tokens",
    ),
    ("lr enabled a number", ds(ltd_with("layer_token_lr_schedule", {"enabled": 1})), "enabled"),
    ("dynamic max_tokens missing", ds(block(dynamic={"enabled": True})), "max_tokens"),
    ("dynamic max_tokens zero", ds(dyn_with("max_tokens", 0)), "max_tokens"),
    ("dynamic max_tokens negative", ds(dyn_with("max_tokens", -5)), "max_tokens"),
    ("dynamic max_tokens a string", ds(dyn_with("max_tokens", "512")), "max_tokens"),
    ("dynamic min > max", ds(block(dynamic={**DYNAMIC, "min_batch_size": 8, "max_batch_size": 4})), "min_batch_size"),
    ("dynamic lr_scaling_method", ds(dyn_with("lr_scaling_method", "cubic")), "lr_scaling_method"),
    ("dynamic picking order", ds(dyn_with("sequence_picking_order", "length")), "sequence_picking_order"),
    ("dynamic sentence_picking_order", ds(dyn_with("sentence_picking_order", "seqlen")), "sequence_picking_order"),
    ("dynamic verbose a string", ds(dyn_with("verbose", "yes")), "verbose"),
    ("dynamic unknown key", ds(dyn_with("max_token", 3)), "max_token"),
    ("dynamic a list", ds(block(dynamic=[DYNAMIC])), "dynamic_batching"),
    # --- our own layout ---
    ("ours: unknown top key", ours({"curriculm": {}}), "curriculm"),
    ("ours: curriculum a list", ours({"curriculum": [1]}), "curriculum"),
    ("ours: metric a string", ours({"curriculum": {"sampling_metrics": ["seqlen"]}}), "sampling_metrics[0]"),
    ("ours: transform bad name", ours({"curriculum": {"transform": {"name": "seqlen", **SEQLEN}}}), "transform.name"),
    ("ours: random_ltd unknown key", ours({"random_ltd": {"min_value": 8, "max_valu": 9}}), "max_valu"),
    ("ours: dynamic missing max_tokens", ours({"dynamic_batching": {"min_batch_size": 2}}), "max_tokens"),
    ("ours: seed negative", ours({"seed": -1}), "seed"),
    (
        "python: layer ids a fraction",
        lambda tmp_path: RandomLTDConfig(min_value=8, max_value=16, require_steps=4, random_ltd_layer_id=[1.5]),
        "random_ltd_layer_id[0]",
    ),
    (
        "python: keep_positions strings",
        lambda tmp_path: RandomLTDConfig(min_value=8, max_value=16, require_steps=4, keep_positions=["cls"]),
        "keep_positions[0]",
    ),
    (
        "python: transform min below 1",
        lambda tmp_path: SeqlenTransformConfig(name="seqlen_truncate", **{**SEQLEN, "min_difficulty": 0}),
        "min_difficulty",
    ),
    # --- Trainer flags ---
    ("flag: min_value a fraction", flags(**{**RANDOM_LTD_FLAGS, "random_ltd_min_value": 8.5}), "random_ltd_min_value"),
    ("flag: layer ids", flags(**{**RANDOM_LTD_FLAGS, "random_ltd_layer_id": ["x"]}), "random_ltd_layer_id"),
    ("flag: keep_positions", flags(**{**RANDOM_LTD_FLAGS, "random_ltd_keep_positions": ["cls"]}), "keep_positions"),
    (
        "flag: schedule type",
        flags(**{**RANDOM_LTD_FLAGS, "random_ltd_schedule_type": "fixed_discrete"}),
        "schedule_type",
    ),
    (
        "flag: curriculum min NaN",
        flags(**{**CURRICULUM_FLAGS, "curriculum_min_difficulty": [float("nan")]}),
        "min_difficulty",
    ),
    (
        "flag: curriculum steps fraction",
        flags(**{**CURRICULUM_FLAGS, "curriculum_total_curriculum_step": [2.5]}),
        "total_curriculum_step",
    ),
    ("flag: clustering type", flags(**{**CURRICULUM_FLAGS, "curriculum_clustering_type": ["one"]}), "clustering_type"),
    ("flag: seqlen mode", flags(seqlen_curriculum="cut"), "seqlen_curriculum"),
    ("flag: switch a string", flags(random_ltd="yes"), "--random_ltd"),
    ("flag: metric names numbers", flags(**{**CURRICULUM_FLAGS, "curriculum_metrics": [1]}), "curriculum_metrics[0]"),
    ("flag: metric names empty", flags(**{**CURRICULUM_FLAGS, "curriculum_metrics": []}), "curriculum_metrics"),
    ("flag: num_proc zero", flags(curriculum_metrics_num_proc=0), "curriculum_metrics_num_proc"),
    ("flag: dynamic without switch", flags(dynamic_batching_max_tokens=512), "dynamic_batching_max_tokens"),
    ("flag: dynamic without max_tokens", flags(dynamic_batching=True), "dynamic_batching_max_tokens"),
    ("flag: dynamic max_tokens zero", flags(dynamic_batching=True, dynamic_batching_max_tokens=0), "max_tokens"),
    (
        "flag: dynamic picking order",
        flags(dynamic_batching=True, dynamic_batching_max_tokens=9, dynamic_batching_sequence_picking_order="len"),
        "sequence_picking_order",
    ),
    (
        "flag: root degree without fixed_root",
        flags(**{**CURRICULUM_FLAGS, "curriculum_root_degree": [2]}),
        "root_degree",
    ),
    (
        "flag: deprecated and new disagree",
        flags(**{**RANDOM_LTD_FLAGS, "random_ltd_min_kept": 4}),
        "random_ltd_min_kept",
    ),
    ("flag: config JSON string", flags(data_efficiency_config="{not json"), "data_efficiency_config"),
]


@pytest.mark.parametrize("build, field_name", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_are_clear_errors_naming_the_field(tmp_path, build, field_name):
    with pytest.raises(ValueError) as info:
        build(tmp_path)
    assert type(info.value) is ValueError  # not a raw TypeError/AttributeError wrapped elsewhere
    assert field_name in str(info.value), str(info.value)


def test_unknown_keys_come_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown key 'max_dificulty' \(did you mean 'max_difficulty'\?\)"):
        DataEfficiencyConfig.from_deepspeed(block({"seqlen": {**SEQLEN, "max_dificulty": 3}}))
    with pytest.raises(ValueError, match=r"did you mean 'total_curriculum_step'"):
        DataEfficiencyConfig.from_deepspeed(seqlen_with("schedule_config.total_curiculum_step", 10))
    with pytest.raises(ValueError, match=r"'percentil' is not supported \(did you mean 'percentile'\?\)"):
        DataEfficiencyConfig.from_deepspeed(seqlen_with("difficulty_type", "percentil"))


def test_integral_floats_are_integers_and_normalised():
    cfg = DataEfficiencyConfig.from_deepspeed(ltd_with("random_ltd_layer_id", [1.0, 2.0]))
    assert cfg.random_ltd.random_ltd_layer_id == [1, 2] and all(
        type(i) is int for i in cfg.random_ltd.random_ltd_layer_id
    )
    assert cfg.random_ltd.keep_positions is None
    cfg = DataEfficiencyConfig.from_deepspeed(ltd_with("keep_positions", [0, -1]))
    assert cfg.random_ltd.keep_positions == [0, -1]  # negative positions count from the end


def _log(fn):
    with CaptureLogger(config_module.logger) as cl:
        result = fn()
    return result, cl.out


def test_missing_inner_enabled_follows_deepspeed_and_is_logged():
    """The one rule: a missing inner 'enabled' is false, as in DeepSpeed (the oracle), and the decision is logged."""
    section = {k: v for k, v in RANDOM_LTD.items() if k != "enabled"}
    b = block(random_ltd=section)
    cfg, out = _log(lambda: DataEfficiencyConfig.from_deepspeed(b))
    assert (
        get_data_efficiency_config({"data_efficiency": copy.deepcopy(b)})["data_routing"]["random_ltd"]["enabled"]
        is False
    )
    assert cfg.random_ltd is None
    assert "data_efficiency.data_routing.random_ltd has settings but no 'enabled' key" in out
    assert "random_ltd.enabled=true" in out
    # the same rule one level up, for the data_efficiency block itself
    b = block({"seqlen": SEQLEN})
    del b["enabled"]
    cfg, out = _log(lambda: DataEfficiencyConfig.from_deepspeed(b))
    assert not cfg.enabled and "data_efficiency has settings but no 'enabled' key" in out
    # an explicit enabled: false is not worth a warning
    b = block(random_ltd={**RANDOM_LTD, "enabled": False})
    cfg, out = _log(lambda: DataEfficiencyConfig.from_deepspeed(b))
    assert cfg.random_ltd is None and "random_ltd" not in out


@pytest.mark.parametrize("key", ["data_efficency", "Data_Efficiency", "curriculum_learnig", "data-efficiency"])
def test_near_misses_of_the_block_names_are_warned(key):
    ds_config = {"train_batch_size": 8, key: block({"seqlen": SEQLEN})}
    cfg, out = _log(lambda: DataEfficiencyConfig.from_deepspeed(ds_config))
    assert not cfg.enabled
    assert f"top-level key {key!r}" in out and "did you mean" in out
    _, out = _log(lambda: DataEfficiencyConfig.from_deepspeed({"train_batch_size": 8, "gradient_clipping": 1.0}))
    assert "did you mean" not in out
    # through --deepspeed too: the misspelled block reaches neither us nor (silently) DeepSpeed
    _, out = _log(lambda: DataEfficiencyConfig.from_dict(ds_config))
    assert "did you mean" in out


# ----- one name per setting: flags generated from the dataclasses, documented from them -------------------------


def test_every_flaggable_setting_has_its_generated_flag_with_the_field_help():
    arg_fields = {f.name: f for f in dataclasses.fields(DataEfficiencyTrainingArguments)}
    expected = set()
    for section in ta.SECTIONS.values():
        for f in dataclasses.fields(section.config):
            rule = rule_of(f)
            if rule is not None and rule.flag:
                name = ta.flag_name(section.prefix, f.name)
                expected.add(name)
                assert rule.help in arg_fields[name].metadata["help"], name
        if section.has_schedule:
            for key, rule in ROOT_SCHEDULE_KEYS.items():
                name = section.prefix + key
                expected.add(name)
                assert rule.help in arg_fields[name].metadata["help"], name
    assert expected == set(ta.FLAGS)
    # a flag sets the field of its own name (behind the section prefix): one name per setting
    for flag in ta.FLAGS.values():
        assert flag.name.endswith(flag.key)
    # every deprecated flag points at a generated one and is itself still a field
    assert set(ta.DEPRECATED_FLAGS.values()) <= set(ta.FLAGS)
    assert set(ta.DEPRECATED_FLAGS) <= set(arg_fields)
    # the parser builds with all of them
    help_text = HfArgumentParser(DataEfficiencyTrainingArguments).format_help()
    for name in [*ta.FLAGS, *ta.DEPRECATED_FLAGS]:
        assert f"--{name}" in help_text


def test_readme_flag_table_is_the_generated_one():
    """README.md holds flag_table() verbatim: a flag missing from the table, or a help text that differs, fails."""
    text = README.read_text()
    match = re.search(r"<!-- flag-table:start -->\n(.*?)<!-- flag-table:end -->", text, re.S)
    assert match, "README.md lacks the <!-- flag-table:start/end --> markers"
    assert match.group(1) == ta.flag_table(), (
        "README flag table is stale; regenerate it with "
        "python -c 'from hf_data_efficiency.training_args import flag_table; print(flag_table())'"
    )
    ours = [f.name for f in dataclasses.fields(DataEfficiencyTrainingArguments)]
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    for name in ours:
        if name not in inherited and name not in ta.DEPRECATED_FLAGS:
            assert f"`--{name}" in match.group(1), name


def _args(tmp_path, **kw):
    return DataEfficiencyTrainingArguments(output_dir=str(tmp_path), report_to=[], seed=42, **kw)


OLD_FLAGS = {
    "curriculum_metrics": ["seqlen"],
    "curriculum_min_difficulty": [8],
    "curriculum_max_difficulty": [64],
    "curriculum_total_steps": [10],
    "curriculum_schedule": ["fixed_root"],
    "curriculum_root_degree": [2],
    "seqlen_curriculum": "reshape",
    "seqlen_curriculum_min": 8,
    "seqlen_curriculum_max": 64,
    "seqlen_curriculum_total_steps": 12,
    "seqlen_curriculum_step": 4,
    "seqlen_curriculum_schedule": "fixed_linear",
    "random_ltd": True,
    "random_ltd_layers": [1, 2],
    "random_ltd_min_kept": 8,
    "random_ltd_max_kept": 64,
    "random_ltd_total_steps": 10,
    "random_ltd_step_size": 8,
    "random_ltd_schedule": "fixed_root",
    "random_ltd_root_degree": 2,
    "layer_token_lr_schedule": True,
    "layer_token_lr_warmup_tokens": 100,
    "layer_token_lr_total_tokens": 1000,
}


def test_deprecated_flags_still_work_with_a_warning(tmp_path):
    assert set(ta.DEPRECATED_FLAGS) <= set(OLD_FLAGS)
    new = {ta.DEPRECATED_FLAGS.get(k, k): v for k, v in OLD_FLAGS.items()}
    expected = _args(tmp_path, **new).get_data_efficiency_config()
    # the oracle: the same settings written as a DeepSpeed block
    ds_block = block(
        {
            "seqlen": {
                **SEQLEN,
                "schedule_type": "fixed_root",
                "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 1, "root_degree": 2},
            },
            "seqlen_reshape": {
                "min_difficulty": 8,
                "max_difficulty": 64,
                "schedule_type": "fixed_linear",
                "schedule_config": {"total_curriculum_step": 12, "difficulty_step": 4},
            },
        },
        random_ltd={
            "enabled": True,
            "random_ltd_layer_id": [1, 2],
            "random_ltd_schedule": {
                "min_value": 8,
                "max_value": 64,
                "schedule_type": "fixed_root",
                "schedule_config": {"require_steps": 10, "seq_per_step": 8, "root_degree": 2},
            },
            "layer_token_lr_schedule": {"enabled": True, "warmup_layer_tokens": 100, "total_layer_tokens": 1000},
        },
    )
    ds_block["seed"] = 42
    assert expected == DataEfficiencyConfig.from_deepspeed(ds_block)
    with pytest.warns(FutureWarning) as record:
        old = _args(tmp_path, **OLD_FLAGS)
    assert old.get_data_efficiency_config() == expected
    messages = " ".join(str(w.message) for w in record)
    for name, replacement in ta.DEPRECATED_FLAGS.items():
        assert f"--{name} is deprecated; use --{replacement}" in messages
    assert old.random_ltd_min_kept is None and old.random_ltd_min_value == 8  # saved args hold the new name only


# ----- the seqlen transform is its own config ---------------------------------------------------------------------


def test_transform_is_split_from_the_sampling_metrics_and_old_json_loads(tmp_path):
    cfg = DataEfficiencyConfig.from_deepspeed(block({"seqlen": SEQLEN, "seqlen_truncate": SEQLEN}))
    cur = cfg.curriculum
    assert [type(m) for m in cur.sampling_metrics] == [CurriculumMetricConfig]
    assert isinstance(cur.transform, SeqlenTransformConfig) and cur.transform.name == "seqlen_truncate"
    assert (cur.transform.min_difficulty, cur.transform.max_difficulty, cur.transform.schedule_type) == (
        8,
        64,
        "fixed_linear",
    )
    assert cur.transform.schedule_config == SEQLEN["schedule_config"]
    assert [m.name for m in cur.metrics] == ["seqlen", "seqlen_truncate"]
    new_json = cfg.to_dict()
    assert new_json["curriculum"]["transform"]["name"] == "seqlen_truncate"
    assert [m["name"] for m in new_json["curriculum"]["sampling_metrics"]] == ["seqlen"]
    # the JSON a previous version saved: one "metrics" list, the transform inside with the metric keys
    old_json = copy.deepcopy(new_json)
    old_cur = old_json["curriculum"]
    transform = old_cur.pop("transform")
    old_cur["metrics"] = old_cur.pop("sampling_metrics") + [
        {
            **transform,
            "difficulty_type": "value",
            "clustering_type": "schedule_based",
            "index_to_sample_path": None,
            "index_to_metric_path": None,
        }
    ]
    path = tmp_path / "data_efficiency_config.json"
    path.write_text(json.dumps(old_json))
    with pytest.warns(FutureWarning, match="transform"):
        assert DataEfficiencyConfig.from_pretrained(tmp_path) == cfg
    # and the old Python spelling
    with pytest.warns(FutureWarning):
        legacy = CurriculumConfig(
            metrics=[
                CurriculumMetricConfig(name="seqlen", **SEQLEN),
                CurriculumMetricConfig(name="seqlen_truncate", **SEQLEN),
            ]
        )
    assert legacy == CurriculumConfig(sampling_metrics=cur.sampling_metrics, transform=cur.transform)
    with pytest.raises(ValueError, match="transform.*percentile|difficulty_type"):
        CurriculumConfig(sampling_metrics=[{"name": "seqlen_truncate", **SEQLEN, "difficulty_type": "percentile"}])


# ----- dynamic batching --------------------------------------------------------------------------------------------


def test_dynamic_batching_reads_like_deepspeed_and_round_trips(tmp_path):
    for given in (
        {"enabled": True, "max_tokens": 2048},
        {
            "enabled": True,
            "max_tokens": 1024,
            "min_batch_size": 2,
            "max_batch_size": 16,
            "lr_scaling_method": "sqrt",
            "sequence_picking_order": "seqlen",
            "metrics_path": "/tmp/m",
            "verbose": True,
        },
    ):
        b = block(dynamic=given)
        cfg = DataEfficiencyConfig.from_deepspeed(b)
        oracle = get_data_efficiency_config({"data_efficiency": copy.deepcopy(b)})["data_sampling"]["dynamic_batching"]
        assert cfg.enabled and cfg.curriculum is None and cfg.random_ltd is None
        ours_ds = cfg.dynamic_batching.to_deepspeed()
        for key, value in oracle.items():  # DeepSpeed 0.19's parsed values and defaults, key by key
            assert ours_ds[key] == value, key
        assert set(ours_ds) - set(oracle) <= {"metrics_path", "truncate_long_samples"}
        assert cfg.dynamic_batching.truncate_long_samples is False
        assert DataEfficiencyConfig.from_dict(cfg.to_dict()) == cfg
        assert DataEfficiencyConfig.from_deepspeed(cfg.to_deepspeed()) == cfg
        cfg.save_pretrained(tmp_path)
        assert DataEfficiencyConfig.from_pretrained(tmp_path) == cfg
    # the same settings as flags
    args = _args(
        tmp_path,
        dynamic_batching=True,
        dynamic_batching_max_tokens=1024,
        dynamic_batching_min_batch_size=2,
        dynamic_batching_max_batch_size=16,
        dynamic_batching_lr_scaling_method="sqrt",
        dynamic_batching_sequence_picking_order="seqlen",
        dynamic_batching_metrics_path="/tmp/m",
        dynamic_batching_verbose=True,
        dynamic_batching_truncate_long_samples=True,
    )
    assert args.get_data_efficiency_config().dynamic_batching == dataclasses.replace(
        cfg.dynamic_batching, truncate_long_samples=True
    )
    # an explicit flag overrides the file's value, and says so
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"data_efficiency": block(dynamic={"enabled": True, "max_tokens": 64})}))
    with CaptureLogger(ta.logger) as cl:
        args = _args(tmp_path, data_efficiency_config=str(path), dynamic_batching_max_tokens=128)
    assert args.get_data_efficiency_config().dynamic_batching == DynamicBatchingConfig(max_tokens=128)
    assert "--dynamic_batching_max_tokens=128 overrides 64" in cl.out
    # off: no section
    assert (
        DataEfficiencyConfig.from_deepspeed(block(dynamic={"enabled": False, "max_tokens": 8})).dynamic_batching
        is None
    )


# ----- bounded config files ----------------------------------------------------------------------------------------

ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
data_efficiency: {enabled: true, data_sampling: {enabled: true, curriculum_learning: {enabled: true,
  curriculum_metrics: {seqlen: {min_difficulty: 8, max_difficulty: 64, schedule_type: fixed_linear,
  schedule_config: {total_curriculum_step: *i, difficulty_step: 8}}}}}}
"""


def test_yaml_alias_bomb_is_refused_quickly_and_small(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB.encode()) < 1024
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb\.yaml: line 2: YAML aliases"):
        DataEfficiencyConfig.from_pretrained(path)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 100 * 2**20


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("bad.yaml", "data_efficiency:\n  enabled: true\n   seed: [1\n", r"bad\.yaml: line \d+: not valid YAML"),
        (
            "bad.json",
            '{\n  "data_efficiency": {\n    "enabled": true,\n  }\n}\n',
            r"bad\.json: not valid JSON \(.* at line 4,",
        ),
        ("list.json", "[1, 2]", r"list\.json must hold a JSON/YAML object"),
        ("deep.json", '{"a": ' * 40 + "1" + "}" * 40, r"deep\.json: nested more than 32 levels"),
        ("deeper.json", '{"a": ' * 100_000 + "1" + "}" * 100_000, r"deeper\.json: nested more than 32 levels"),
        ("deep.yaml", "a: " + "[" * 50 + "]" * 50, r"deep\.yaml: nested more than 32 levels"),
    ],
)
def test_malformed_or_unbounded_files_name_the_file(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config_file(path)
