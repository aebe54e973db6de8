"""The engine refactor changes no number: a short fixed-seed run's per-step losses, kept lengths, sampler indices and
logged counters equal those recorded from the main branch before the refactor (``tests/data/golden_run.json``).

Re-record only for a change that is meant to change numbers: ``HFDE_RECORD_GOLDEN=1 pytest tests/test_golden.py``.
"""

import json
import math
import os
import sys
from pathlib import Path

import torch
from _helpers import training_kwargs
from tiny import CURRICULUM_FLAGS, RANDOM_LTD_FLAGS, RecordingTrainer, collate, make_dataset, tiny_model

from hf_data_efficiency import DataEfficiencyTrainingArguments

GOLDEN = Path(__file__).parent / "data" / "golden_run.json"
LOGGED = (
    "loss",
    "curriculum/difficulty_seqlen",
    "random_ltd/kept_length",
    "data_efficiency/consumed_samples",
    "data_efficiency/effective_tokens",
    "data_efficiency/layer_tokens",
)


def golden_run(out_dir: str) -> dict:
    torch.set_num_threads(1)
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(out_dir, max_steps=10),
        **CURRICULUM_FLAGS,
        **{**RANDOM_LTD_FLAGS, "random_ltd_layer_id": [0, 1]},
    )
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    trainer.train()
    logs = [{k: h[k] for k in LOGGED if k in h} for h in trainer.state.log_history if "loss" in h]
    micro = [
        {k: r[k] for k in ("step", "indices", "width", "kept_length", "num_items_in_batch")} for r in trainer.records
    ]
    return {"logs": logs, "micro_batches": micro}


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
    return a == b


def test_run_equals_recorded_main(tmp_path):
    got = golden_run(str(tmp_path))
    if os.environ.get("HFDE_RECORD_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert got["micro_batches"] == expected["micro_batches"]
    assert len(got["logs"]) == len(expected["logs"]) == 10
    for g, e in zip(got["logs"], expected["logs"]):
        assert g.keys() == e.keys()
        assert all(_close(g[k], e[k]) for k in e), (g, e)


NO_TRAINER_CONFIG = {
    "data_efficiency": {
        "enabled": True,
        "seed": 7,
        "data_sampling": {
            "enabled": True,
            "curriculum_learning": {
                "enabled": True,
                "curriculum_metrics": {
                    "seqlen": {
                        "min_difficulty": 16,
                        "max_difficulty": 64,
                        "schedule_type": "fixed_linear",
                        "schedule_config": {"total_curriculum_step": 5, "difficulty_step": 8},
                    },
                    "seqlen_truncate": {
                        "min_difficulty": 8,
                        "max_difficulty": 64,
                        "schedule_type": "fixed_linear",
                        "schedule_config": {"total_curriculum_step": 5, "difficulty_step": 8},
                    },
                },
            },
        },
        "data_routing": {
            "enabled": True,
            "random_ltd": {
                "enabled": True,
                "random_ltd_layer_id": [1, 2],
                "random_ltd_schedule": {
                    "min_value": 16,
                    "max_value": 64,
                    "schedule_type": "fixed_linear",
                    "schedule_config": {"require_steps": 6, "seq_per_step": 16},
                },
            },
        },
    }
}


def test_accelerate_loop_equals_recorded_main(tmp_path):
    import subprocess

    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(NO_TRAINER_CONFIG))
    out = tmp_path / "nt"
    script = Path(__file__).parents[1] / "scripts" / "examples" / "train_no_trainer.py"
    cmd = [sys.executable, str(script), "--config", str(path), "--output_dir", str(out), "--max_steps", "8"]
    cmd += ["--gradient_accumulation_steps", "2", "--per_device_batch_size", "4", "--cpu"]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    keys = {k: k for k in ("step", "loss", "lr", "max_width", "max_real_tokens")}
    keys.update({"difficulty_seqlen": "curriculum/difficulty_seqlen", "kept_length": "random_ltd/kept_length"})
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    got = [{k: r[src] for k, src in keys.items()} for r in rows]
    golden = GOLDEN.with_name("golden_no_trainer.json")
    if os.environ.get("HFDE_RECORD_GOLDEN"):
        golden.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(golden.read_text())
    assert len(got) == len(expected) == 8
    for g, e in zip(got, expected):
        assert all(_close(g[k], e[k]) for k in e), (g, e)
