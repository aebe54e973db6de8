"""The data path changes no number: map-style and streamed data, fixed batches and token budgets, with and without
a curriculum, through the Trainer and through the plain accelerate loop. Each case's per-micro-batch samples and
widths, the ``num_items_in_batch`` the Trainer computed, the LR every optimizer step used, the losses and the logged
counters equal the figures recorded from main before the structure change (``tests/data/golden_matrix.json``).

Re-record only for a change that is meant to change numbers: ``HFDE_RECORD_GOLDEN=1 pytest tests/test_golden_matrix.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import training_kwargs
from tiny import (
    CURRICULUM_FLAGS,
    RANDOM_LTD_FLAGS,
    SEQLEN_METRIC,
    TRUNCATE_METRIC,
    RecordingTrainer,
    collate,
    make_dataset,
    tiny_model,
)
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hf_data_efficiency import DataEfficiencyTrainingArguments

GOLDEN = Path(__file__).parent / "data" / "golden_matrix.json"
RECORD = bool(os.environ.get("HFDE_RECORD_GOLDEN"))
BUDGET = {"dynamic_batching": True, "dynamic_batching_max_tokens": 160, "dynamic_batching_lr_scaling_method": "sqrt"}
TRAINER_CASES = {
    "map_budget": {**BUDGET, **RANDOM_LTD_FLAGS},
    "map_budget_curriculum": {**BUDGET, **CURRICULUM_FLAGS},
    "map_budget_curriculum_seqlen_order": {
        **BUDGET,
        **CURRICULUM_FLAGS,
        "dynamic_batching_sequence_picking_order": "seqlen",
        "dynamic_batching_lr_scaling_method": "linear",
    },
    "map_budget_truncate_long": {
        **BUDGET,
        "dynamic_batching_max_tokens": 60,
        "dynamic_batching_min_batch_size": 2,
        "dynamic_batching_truncate_long_samples": True,
    },
    "stream_curriculum": {**CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS},
    "stream_budget_curriculum": {**BUDGET, **CURRICULUM_FLAGS},
    "stream_budget_truncate_long": {
        **BUDGET,
        **CURRICULUM_FLAGS,
        "dynamic_batching_max_tokens": 60,
        "dynamic_batching_min_batch_size": 2,
        "dynamic_batching_truncate_long_samples": True,
    },
}
PER_STEP = ("loss", "learning_rate")
PREFIXES = ("curriculum/", "random_ltd/", "dynamic_batching/", "data_efficiency/")


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
    return a == b


def _compare(got, expected) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.keys() == e.keys(), (g, e)
        assert all(_close(g[k], e[k]) for k in e), (g, e)


def _golden(case: str, got: dict) -> dict:
    data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if RECORD:
        data[case] = got
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data[case]


def _shards(folder: Path) -> list[str]:
    data, files = make_dataset(), []
    for s in range(3):
        files.append(str(folder / f"part-{s}.json"))
        data.shard(3, s, contiguous=True).to_json(files[-1])
    return files


def trainer_run(case: str, tmp_path: Path) -> dict:
    import datasets

    torch.set_num_threads(1)
    args = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path / "out"), **TRAINER_CASES[case])
    if case.startswith("stream"):
        train = datasets.load_dataset("json", data_files=_shards(tmp_path), split="train", streaming=True)
    else:
        train = make_dataset()
    used_lr: list[float] = []
    hook = register_optimizer_step_pre_hook(lambda opt, *_: used_lr.append(opt.param_groups[0]["lr"]))
    try:
        trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=train, data_collator=collate)
        trainer.train()
    finally:
        hook.remove()
    steps = [
        {k: v for k, v in h.items() if k in PER_STEP or k.startswith(PREFIXES)}
        for h in trainer.state.log_history
        if "loss" in h
    ]
    micro = [
        {k: r[k] for k in ("step", "indices", "width", "kept_length", "num_items_in_batch")} for r in trainer.records
    ]
    return {"steps": steps, "micro_batches": micro, "used_lr": used_lr}


@pytest.mark.parametrize("case", sorted(TRAINER_CASES))
def test_trainer_data_paths_equal_recorded_main(case, tmp_path):
    got = trainer_run(case, tmp_path)
    expected = _golden(f"trainer/{case}", got)
    assert got["micro_batches"] == expected["micro_batches"]
    _compare(got["steps"], expected["steps"])
    assert len(got["used_lr"]) == len(expected["used_lr"]) == 8
    assert all(_close(g, e) for g, e in zip(got["used_lr"], expected["used_lr"]))


def _loop_config(budget: bool) -> dict:
    sampling = {
        "enabled": True,
        "curriculum_learning": {
            "enabled": True,
            "curriculum_metrics": {"seqlen": SEQLEN_METRIC, "seqlen_truncate": TRUNCATE_METRIC},
        },
    }
    if budget:
        sampling["dynamic_batching"] = {"enabled": True, "max_tokens": 160, "lr_scaling_method": "linear"}
    return {"data_efficiency": {"enabled": True, "seed": 7, "data_sampling": sampling}}


LOOP_CASES = {
    "map_budget_curriculum": (True, []),
    "stream_curriculum": (False, ["--streaming"]),
    "stream_budget_curriculum": (True, ["--streaming"]),
}


@pytest.mark.parametrize("case", sorted(LOOP_CASES))
def test_accelerate_loop_data_paths_equal_recorded_main(case, tmp_path):
    budget, extra = LOOP_CASES[case]
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(_loop_config(budget)))
    out = tmp_path / "nt"
    script = Path(__file__).parents[1] / "scripts" / "examples" / "train_no_trainer.py"
    cmd = [sys.executable, str(script), "--config", str(path), "--output_dir", str(out), "--max_steps", "6"]
    cmd += ["--gradient_accumulation_steps", "2", "--per_device_batch_size", "4", "--max_length", "40", "--cpu"]
    subprocess.run(
        cmd + extra, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    got = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = _golden(f"loop/{case}", got)
    assert len(expected) == 6
    _compare(got, expected)
