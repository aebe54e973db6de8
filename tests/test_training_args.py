"""DataEfficiencyTrainingArguments: flags, YAML/JSON recipes, DeepSpeed blocks, precedence and contradictions."""

import dataclasses
import json
import pickle

import pytest
import yaml
from tiny import CURRICULUM_FLAGS, RANDOM_LTD_FLAGS, deepspeed_block
from transformers import HfArgumentParser, TrainingArguments
from transformers.testing_utils import CaptureLogger

import hf_data_efficiency.training_args as ta
from hf_data_efficiency import DataEfficiencyConfig, DataEfficiencyTrainingArguments

ISSUE_FLAGS = [
    "data_efficiency_config",
    "curriculum_metrics",
    "curriculum_difficulty_type",
    "curriculum_schedule",
    "curriculum_min_difficulty",
    "curriculum_max_difficulty",
    "curriculum_total_steps",
    "curriculum_difficulty_step",
    "curriculum_root_degree",
    "seqlen_curriculum",
    "random_ltd",
    "random_ltd_layers",
    "random_ltd_min_kept",
    "random_ltd_max_kept",
    "random_ltd_total_steps",
    "random_ltd_step_size",
    "layer_token_lr_schedule",
]
FLAGS = {**CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS}


def to_cli(flags: dict) -> list[str]:
    out = []
    for key, value in flags.items():
        if value is True:
            out.append(f"--{key}")
        elif isinstance(value, list):
            out += [f"--{key}", *map(str, value)]
        else:
            out += [f"--{key}", str(value)]
    return out


def make(tmp_path, **kwargs) -> DataEfficiencyTrainingArguments:
    return DataEfficiencyTrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], seed=42, **kwargs)


def test_help_lists_every_flag():
    help_text = HfArgumentParser(DataEfficiencyTrainingArguments).format_help()
    ours = [f.name for f in dataclasses.fields(DataEfficiencyTrainingArguments)]
    ours = [n for n in ours if n not in {f.name for f in dataclasses.fields(TrainingArguments)}]
    assert set(ISSUE_FLAGS) <= set(ours)
    for name in ours:
        assert f"--{name}" in help_text, name
    # every flag has help text
    for f in dataclasses.fields(DataEfficiencyTrainingArguments):
        if f.name in ours:
            assert f.metadata.get("help"), f.name


def test_flags_yaml_json_and_deepspeed_block_give_one_config(tmp_path):
    parser = HfArgumentParser(DataEfficiencyTrainingArguments)
    common = {"output_dir": str(tmp_path / "out"), "report_to": "none", "seed": 42}
    (cli,) = parser.parse_args_into_dataclasses(to_cli({**common, **FLAGS}))
    yaml_path = tmp_path / "args.yaml"
    yaml_path.write_text(yaml.safe_dump({**common, **FLAGS}))
    (from_yaml,) = parser.parse_yaml_file(str(yaml_path))
    json_path = tmp_path / "args.json"
    json_path.write_text(json.dumps({**common, **FLAGS}))
    (from_json,) = parser.parse_json_file(str(json_path))
    # scalars where lists are expected (hand-written recipes) are accepted
    scalars = {k: v[0] if isinstance(v, list) else v for k, v in FLAGS.items()}
    from_scalars = make(tmp_path, **scalars)

    expected = DataEfficiencyConfig.from_deepspeed({"data_efficiency": deepspeed_block(seed=42)})
    for args in (cli, from_yaml, from_json, from_scalars):
        assert args.get_data_efficiency_config() == expected
        assert args.get_data_efficiency_config().to_dict() == expected.to_dict()

    # the same settings as a data-efficiency config file (our layout and DeepSpeed's) and as a dict
    ours = tmp_path / "de.json"
    ours.write_text(expected.to_json_string())
    ds = tmp_path / "ds_config.json"
    ds.write_text(json.dumps({"train_batch_size": 8, "data_efficiency": deepspeed_block(seed=42)}))
    for src in (str(ours), str(ds), expected.to_dict(), expected.to_json_string(), expected):
        assert make(tmp_path, data_efficiency_config=src).get_data_efficiency_config() == expected
    # a ds_config block passed to --deepspeed; DeepSpeed itself no longer sees it
    ds_args = make(
        tmp_path,
        deepspeed={
            "train_micro_batch_size_per_gpu": "auto",
            "zero_optimization": {"stage": 2},
            "data_efficiency": deepspeed_block(seed=42),
        },
    )
    assert ds_args.get_data_efficiency_config() == expected
    assert "data_efficiency" not in ds_args.hf_deepspeed_config.config
    assert "data_efficiency" not in ds_args.deepspeed_plugin.deepspeed_config
    assert "data_efficiency" in ds_args.deepspeed  # the user's own value is left as given


def test_no_options_is_disabled_and_args_pickle(tmp_path):
    args = make(tmp_path)
    assert not args.get_data_efficiency_config().enabled
    full = make(tmp_path, **FLAGS)
    again = pickle.loads(pickle.dumps(full))
    assert again.get_data_efficiency_config() == full.get_data_efficiency_config()
    # training_args.bin-style JSON dump of the fields stays plain
    json.dumps({k: v for k, v in full.to_dict().items()})


def test_explicit_flags_override_the_file_and_are_logged(tmp_path):
    base = DataEfficiencyConfig.from_deepspeed({"data_efficiency": deepspeed_block(seed=7)})
    path = tmp_path / "de.yaml"
    path.write_text(yaml.safe_dump(base.to_dict()))
    logger = ta.logger
    with CaptureLogger(logger) as cl:
        args = make(
            tmp_path,
            data_efficiency_config=str(path),
            curriculum_max_difficulty=[32],
            seqlen_curriculum_difficulty_step=16,
            random_ltd_max_value=32,
            layer_token_lr_schedule=True,
        )
    cfg = args.get_data_efficiency_config()
    assert cfg.curriculum.metric("seqlen").max_difficulty == 32
    assert cfg.curriculum.metric("seqlen").min_difficulty == 12  # untouched file value
    assert cfg.curriculum.metric("seqlen_truncate").schedule_config["difficulty_step"] == 16
    assert cfg.random_ltd.max_value == 32 and cfg.random_ltd.min_value == 8
    assert cfg.random_ltd.layer_token_lr_schedule.enabled
    assert cfg.seed == 7  # the file's seed, not the Trainer seed
    for flag in ("curriculum_max_difficulty", "seqlen_curriculum_difficulty_step", "random_ltd_max_value"):
        assert f"--{flag}" in cl.out
    assert "precedence" in cl.out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"random_ltd_min_value": 8}, "random_ltd_min_value.*add --random_ltd"),
        ({"curriculum_min_difficulty": [8]}, "without --curriculum_metrics"),
        ({"seqlen_curriculum_min_difficulty": 8}, "without --seqlen_curriculum"),
        ({"layer_token_lr_schedule": True}, "needs random-LTD"),
        ({"random_ltd": True, "random_ltd_min_value": 8}, "--random_ltd needs --random_ltd_max_value"),
        ({"curriculum_metrics": ["seqlen"], "curriculum_min_difficulty": [8]}, "needs --curriculum_max_difficulty"),
        (
            {
                **CURRICULUM_FLAGS,
                "curriculum_metrics": ["seqlen", "vocab_rarity"],
                "curriculum_min_difficulty": [1, 2, 3],
            },
            "curriculum_min_difficulty has 3 values but there are 2",
        ),
        ({**CURRICULUM_FLAGS, "curriculum_difficulty_type": ["bogus"]}, "allowed values: value, percentile"),
        ({**CURRICULUM_FLAGS, "curriculum_schedule": ["fixed_root"]}, "needs --curriculum_root_degree"),
        ({"curriculum_metrics": ["seqlen_truncate"]}, "seqlen_curriculum"),
        ({**CURRICULUM_FLAGS, "curriculum_min_difficulty": [50]}, "min_difficulty"),
        ({**RANDOM_LTD_FLAGS, "random_ltd_schedule": "fixed_root"}, "needs --random_ltd_root_degree"),
        ({**RANDOM_LTD_FLAGS, "layer_token_lr_warmup_tokens": 10}, "add --layer_token_lr_schedule"),
    ],
)
def test_contradictory_or_incomplete_flags_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(tmp_path, **kwargs)


def test_file_and_flags_contradictions(tmp_path):
    path = tmp_path / "de.json"
    path.write_text(DataEfficiencyConfig.from_deepspeed({"data_efficiency": deepspeed_block()}).to_json_string())
    with pytest.raises(ValueError, match="contradicts the curriculum metrics"):
        make(tmp_path, data_efficiency_config=str(path), curriculum_metrics=["vocab_rarity"])
    with pytest.raises(ValueError, match="contradicts seqlen_truncate"):
        make(tmp_path, data_efficiency_config=str(path), seqlen_curriculum="reshape")
    with pytest.raises(ValueError, match="given twice"):
        make(
            tmp_path,
            data_efficiency_config=str(path),
            deepspeed={"zero_optimization": {"stage": 2}, "data_efficiency": deepspeed_block()},
        )
    with pytest.raises(ValueError, match="not found"):
        make(tmp_path, data_efficiency_config=str(tmp_path / "missing.json"))
    bad = {
        "data_efficiency": {
            **deepspeed_block(),
            "data_sampling": {"enabled": True, "dynamic_batching": {"enabled": True}},
        }
    }
    with pytest.raises(ValueError, match="dynamic_batching is missing the required key 'max_tokens'"):
        make(tmp_path, deepspeed={"zero_optimization": {"stage": 2}, **bad})


def test_legacy_curriculum_block_in_deepspeed_config(tmp_path):
    legacy = {
        "enabled": True,
        "curriculum_type": "seqlen",
        "min_difficulty": 8,
        "max_difficulty": 64,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
    }
    args = make(tmp_path, deepspeed={"zero_optimization": {"stage": 2}, "curriculum_learning": legacy})
    cfg = args.get_data_efficiency_config()
    assert cfg.curriculum.transform.name == "seqlen_truncate"
    assert cfg.curriculum.transform.max_difficulty == 64
    assert "curriculum_learning" not in args.deepspeed_plugin.deepspeed_config


def test_loading_from_a_deepspeed_config_removes_only_our_keys():
    from transformers.testing_utils import CaptureLogger

    from hf_data_efficiency import config as config_module

    cfg = {"train_batch_size": 8, "data_efficiency": {"enabled": False}, "curriculum_learning": {"enabled": False}}
    level = config_module.logger.level
    config_module.logger.setLevel("INFO")
    try:
        with CaptureLogger(config_module.logger) as cl:
            assert not DataEfficiencyConfig.load(None, deepspeed=cfg).enabled
    finally:
        config_module.logger.setLevel(level)
    assert cfg == {"train_batch_size": 8}
    assert "Removed ['curriculum_learning', 'data_efficiency']" in cl.out
    with CaptureLogger(config_module.logger) as cl:
        assert DataEfficiencyConfig.load(None, deepspeed=cfg) == DataEfficiencyConfig()
    assert cfg == {"train_batch_size": 8} and "Removed" not in cl.out


def test_accelerate_launch_deepspeed_config_file(tmp_path, monkeypatch):
    """`accelerate launch --use_deepspeed --deepspeed_config_file ds.json`: no --deepspeed flag, the file comes
    through the environment; its block is still honoured and removed (also with plain TrainingArguments)."""
    from hf_data_efficiency.trainer import resolve_trainer_config

    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "zero_optimization": {"stage": 2},
                "data_efficiency": deepspeed_block(seed=42),
            }
        )
    )
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    expected = DataEfficiencyConfig.from_deepspeed({"data_efficiency": deepspeed_block(seed=42)})
    args = make(tmp_path)
    assert args.deepspeed is None
    assert args.get_data_efficiency_config() == expected
    assert "data_efficiency" not in args.deepspeed_plugin.deepspeed_config
    plain = TrainingArguments(output_dir=str(tmp_path / "plain"), report_to=[])
    assert resolve_trainer_config(plain) == expected
    assert "data_efficiency" not in plain.deepspeed_plugin.deepspeed_config
