"""DataEfficiencyConfig: DeepSpeed import/export, exact round trips, validation."""

import copy
import json

import pytest
from deepspeed.runtime.data_pipeline.config import get_data_efficiency_config

from hf_data_efficiency import (
    CurriculumConfig,
    CurriculumMetricConfig,
    DataEfficiencyConfig,
    RandomLTDConfig,
)

DS_CONFIG = {
    "train_batch_size": 32,
    "data_efficiency": {
        "enabled": True,
        "seed": 42,
        "data_sampling": {
            "enabled": True,
            "num_epochs": 2,
            "num_workers": 0,
            "curriculum_learning": {
                "enabled": True,
                "data_cluster_path": "/tmp/clusters",
                "curriculum_metrics": {
                    "vocab_rarity": {
                        "index_to_sample_path": "idx_sample",
                        "index_to_metric_path": "idx_metric",
                        "difficulty_type": "percentile",
                        "clustering_type": "schedule_based",
                        "min_difficulty": 1,
                        "max_difficulty": 100,
                        "schedule_type": "fixed_root",
                        "schedule_config": {"total_curriculum_step": 1000, "difficulty_step": 1, "root_degree": 2},
                    },
                    "seqlen_truncate": {
                        "min_difficulty": 64,
                        "max_difficulty": 1024,
                        "schedule_type": "fixed_linear",
                        "schedule_config": {"total_curriculum_step": 500, "difficulty_step": 8},
                    },
                },
            },
        },
        "data_routing": {
            "enabled": True,
            "random_ltd": {
                "enabled": True,
                "total_layer_num": 24,
                "random_ltd_layer_num": 22,
                "random_ltd_layer_id": list(range(1, 23)),
                "model_mask_name": "attention_mask",
                "model_type": "decoder",
                "hidden_state_order": "seq_batch_dim",
                "random_ltd_schedule": {
                    "min_value": 128,
                    "max_value": 2048,
                    "schedule_type": "fixed_linear",
                    "schedule_config": {"require_steps": 200000, "seq_per_step": 16},
                },
            },
        },
    },
}


def test_from_deepspeed_reads_every_key_like_deepspeed():
    cfg = DataEfficiencyConfig.from_deepspeed(DS_CONFIG)
    ds = get_data_efficiency_config(copy.deepcopy(DS_CONFIG))  # DeepSpeed's own parse, as the oracle
    assert cfg.seed == ds["seed"] == 42
    cl = ds["data_sampling"]["curriculum_learning"]
    assert [m.name for m in cfg.curriculum.metrics] == list(cl["curriculum_metrics"])
    for m in cfg.curriculum.metrics:
        # DeepSpeed's defaults filled in; the transform is written as a single cluster (DeepSpeed reads no index)
        clustering = "single_cluster" if m is cfg.curriculum.transform else "schedule_based"
        assert (
            m.to_deepspeed()
            == {"clustering_type": clustering, "difficulty_type": "value"} | cl["curriculum_metrics"][m.name]
        )
    assert cfg.curriculum.num_epochs == ds["data_sampling"]["num_epochs"]
    assert cfg.curriculum.data_cluster_path == cl["data_cluster_path"]
    rl = ds["data_routing"]["random_ltd"]
    assert cfg.random_ltd.random_ltd_layer_id == rl["random_ltd_layer_id"]
    assert cfg.random_ltd.min_value == rl["random_ltd_schedule"]["min_value"]
    assert cfg.random_ltd.require_steps == rl["random_ltd_schedule"]["schedule_config"]["require_steps"]
    assert cfg.random_ltd.layer_token_lr_schedule.enabled is False
    assert cfg.curriculum.transform.name == "seqlen_truncate"
    assert [m.name for m in cfg.curriculum.sampling_metrics] == ["vocab_rarity"]


def test_block_only_equals_whole_ds_config(tmp_path):
    whole = DataEfficiencyConfig.from_deepspeed(DS_CONFIG)
    assert DataEfficiencyConfig.from_deepspeed(DS_CONFIG["data_efficiency"]) == whole
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(DS_CONFIG))
    assert DataEfficiencyConfig.from_deepspeed(path) == whole
    assert DataEfficiencyConfig.from_pretrained(path) == whole


def test_round_trips_are_exact(tmp_path):
    cfg = DataEfficiencyConfig.from_deepspeed(DS_CONFIG)
    assert DataEfficiencyConfig.from_dict(cfg.to_dict()) == cfg
    assert DataEfficiencyConfig.from_dict(json.loads(cfg.to_json_string())).to_dict() == cfg.to_dict()
    cfg.save_pretrained(tmp_path)
    assert DataEfficiencyConfig.from_pretrained(tmp_path) == cfg
    assert DataEfficiencyConfig.from_deepspeed(cfg.to_deepspeed()) == cfg


def test_optional_deepspeed_keys_and_defaults():
    block = {
        "enabled": True,
        "data_sampling": {
            "enabled": True,
            "curriculum_learning": {
                "enabled": True,
                "curriculum_metrics": {
                    "seqlen": {
                        "min_difficulty": 8,
                        "max_difficulty": 128,
                        "schedule_type": "fixed_linear",
                        "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
                    }
                },
            },
        },
        "data_routing": {
            "enabled": True,
            "random_ltd": {
                "enabled": True,
                "random_ltd_schedule": {"min_value": 16, "max_value": 128, "schedule_config": {"require_steps": 10}},
            },
        },
    }
    cfg = DataEfficiencyConfig.from_deepspeed(block)
    m = cfg.curriculum.metrics[0]
    assert (m.difficulty_type, m.clustering_type, m.index_to_sample_path) == ("value", "schedule_based", None)
    assert (cfg.seed, cfg.curriculum.num_epochs) == (1234, 1000)
    r = cfg.random_ltd
    assert (r.schedule_type, r.seq_per_step, r.random_ltd_layer_id, r.total_layer_num) == (
        "fixed_linear",
        16,
        None,
        None,
    )


def test_disabled_blocks_give_an_empty_config():
    block = copy.deepcopy(DS_CONFIG["data_efficiency"])
    block["enabled"] = False
    assert not DataEfficiencyConfig.from_deepspeed(block).enabled
    block = copy.deepcopy(DS_CONFIG["data_efficiency"])
    block["data_routing"]["enabled"] = False
    cfg = DataEfficiencyConfig.from_deepspeed(block)
    assert cfg.random_ltd is None and cfg.curriculum is not None


def test_legacy_curriculum_block_becomes_seqlen_truncate():
    ds = {
        "curriculum_learning": {
            "enabled": True,
            "curriculum_type": "seqlen",
            "min_difficulty": 8,
            "max_difficulty": 1024,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": 100, "difficulty_step": 8},
        },
        "data_efficiency": {"enabled": False},
    }
    cfg = DataEfficiencyConfig.from_deepspeed(ds)
    assert cfg.curriculum.transform.name == "seqlen_truncate"
    assert cfg.curriculum.transform.max_difficulty == 1024


def _metric(**kw):
    base = {
        "name": "seqlen",
        "min_difficulty": 8,
        "max_difficulty": 64,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
    }
    return CurriculumMetricConfig(**(base | kw))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"min_difficulty": 100}, "min_difficulty"),
        ({"schedule_type": "exponential"}, "schedule_type.*allowed values: fixed_linear"),
        ({"difficulty_type": "rank"}, "difficulty_type.*allowed values: value, percentile"),
        ({"schedule_config": {"total_curriculum_step": -1, "difficulty_step": 8}}, "total_curriculum_step"),
        ({"difficulty_type": "percentile", "min_difficulty": 0, "max_difficulty": 50}, r"\(0, 100\]"),
        ({"difficulty_type": "percentile", "min_difficulty": 1, "max_difficulty": 101}, r"\(0, 100\]"),
        (
            {"schedule_type": "fixed_discrete", "schedule_config": {"difficulty": [8, 16], "max_step": [1, 2]}},
            "fixed_discrete needs",
        ),
    ],
)
def test_bad_metric_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        _metric(**kw)


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="unknown key.*'min_difficuly'"):
        DataEfficiencyConfig.from_deepspeed(
            {
                "enabled": True,
                "data_sampling": {
                    "enabled": True,
                    "curriculum_learning": {
                        "enabled": True,
                        "curriculum_metrics": {"seqlen": {"min_difficuly": 1, "max_difficulty": 2}},
                    },
                },
            }
        )
    with pytest.raises(ValueError, match="dynamic_batching is missing the required key 'max_tokens'"):
        DataEfficiencyConfig.from_deepspeed(
            {"enabled": True, "data_sampling": {"enabled": True, "dynamic_batching": {"enabled": True}}}
        )
    with pytest.raises(ValueError, match="only one of"):
        CurriculumConfig(metrics=[_metric(name="seqlen_truncate"), _metric(name="seqlen_reshape")])
    with pytest.raises(ValueError, match="min_value"):
        RandomLTDConfig(min_value=0, max_value=8, require_steps=10)
    with pytest.raises(ValueError, match="min_value=16 is larger"):
        RandomLTDConfig(min_value=16, max_value=8, require_steps=10)
    with pytest.raises(ValueError, match="schedule_type.*fixed_root"):
        RandomLTDConfig(min_value=1, max_value=8, require_steps=10, schedule_type="cosine")
    with pytest.raises(ValueError, match="random_ltd_layer_num"):
        RandomLTDConfig(min_value=1, max_value=8, require_steps=10, random_ltd_layer_id=[1, 2], random_ltd_layer_num=3)
    with pytest.raises(ValueError, match="not found"):
        DataEfficiencyConfig.from_pretrained("/nonexistent/dir")


def test_whole_ds_config_with_only_a_legacy_block():
    ds = {
        "train_batch_size": 8,
        "curriculum_learning": {
            "enabled": True,
            "curriculum_type": "seqlen",
            "min_difficulty": 8,
            "max_difficulty": 64,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
        },
    }
    cfg = DataEfficiencyConfig.from_deepspeed(ds)
    assert cfg.curriculum.transform.name == "seqlen_truncate" and cfg.random_ltd is None
    assert DataEfficiencyConfig.from_deepspeed(ds["curriculum_learning"]) == cfg
    assert not DataEfficiencyConfig.from_deepspeed({"train_batch_size": 8}).enabled
    with pytest.raises(ValueError, match="unknown key.*data_samplin"):
        DataEfficiencyConfig.from_deepspeed({"enabled": True, "data_samplin": {}})
