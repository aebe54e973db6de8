"""DataEfficiencyTrainer across processes: DDP with torchrun (gloo, CPU), DeepSpeed ZeRO-2 on CPU, exact resume in a
new process, resume after SIGKILL, and the plain-accelerate script. Each run is a subprocess of
tests/distributed/run_trainer.py (or scripts/examples/train_no_trainer.py), so no distributed state leaks into
pytest."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import free_port, torchrun
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from tiny import SEQLEN_METRIC, TRUNCATE_METRIC, sample_lengths, step_losses
from transformers.trainer_utils import get_last_checkpoint

from hf_data_efficiency import CurriculumSampler, DataEfficiencyConfig

HERE = Path(__file__).resolve().parent
RUN = str(HERE / "distributed" / "run_trainer.py")
ROOT = HERE.parent
NO_TRAINER = str(ROOT / "scripts" / "examples" / "train_no_trainer.py")
TIMEOUT = 420  # a fresh machine builds DeepSpeed's CPU communication op on first use


def env(**extra) -> dict:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED"):
        out.pop(key, None)
    out.update({k: str(v) for k, v in extra.items()})
    return out


def run(cmd: list[str], **extra) -> None:
    proc = subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def trainer_run(out: Path, *flags: str) -> dict:
    run([sys.executable, RUN, "--output_dir", str(out), "--record", str(out / "rec_RANK.json"), *flags])
    return json.loads((out / "rec_0.json").read_text())


def check_curriculum(records: list[dict]) -> None:
    lengths = sample_lengths()
    sampling, truncate = CurriculumScheduler(SEQLEN_METRIC), CurriculumScheduler(TRUNCATE_METRIC)
    for r in records:
        assert all(lengths[i] <= sampling.get_difficulty(r["step"]) for i in r["indices"]), r
        assert r["width"] == min(truncate.get_difficulty(r["step"]), max(lengths[i] for i in r["indices"])), r


def kept_length_oracle(step0: int) -> int:
    value = int(step0 / 8 * (40 - 8) + 8)
    return min(40, value - value % 8)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: 16 uninterrupted steps in this process (batch 4, GA 2; 12 steps per epoch), same settings
    as run_trainer.py."""
    import torch
    from run_trainer import build_trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = build_trainer(output_dir=str(tmp_path_factory.mktemp("whole")), max_steps=16, save_steps=0)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    return {
        "records": trainer.records,
        "losses": {str(k): v for k, v in step_losses(trainer.state.log_history).items()},
        "log_history": trainer.state.log_history,
    }


def test_two_processes_shard_the_single_process_stream(tmp_path):
    """Two DDP processes (batch 2, GA 2) against one process (batch 2, GA 4) on the same global stream, without
    dropout and random-LTD (whose draws are per process): the ranks' micro-batches interleave into the stream, each
    step's global batch is partitioned between the ranks, and the per-step losses equal the single process's."""
    flags = ["--batch_size", "2", "--max_steps", "6", "--no_random_ltd", "--deterministic"]
    cmd = [*torchrun(), RUN]
    run(cmd + ["--output_dir", str(tmp_path), "--record", str(tmp_path / "rec_RANK.json"), "--ga", "2", *flags])
    ranks = [json.loads((tmp_path / f"rec_{r}.json").read_text()) for r in (0, 1)]
    single = trainer_run(tmp_path / "single", "--ga", "4", *flags)
    assert [r["world_size"] for r in ranks] == [2, 2] and single["world_size"] == 1
    seen = [[rec["indices"] for rec in r["records"]] for r in ranks]
    # micro-batch i of the global stream goes to rank i % 2: interleave the ranks' micro-batches
    interleaved = [i for pair in zip(*seen) for mb in pair for i in mb]
    cfg = DataEfficiencyConfig.from_dict(ranks[0]["config"]).curriculum
    ref = CurriculumSampler(
        {"seqlen": sample_lengths()}, cfg, batch_size=2, world_size=2, gradient_accumulation_steps=2
    )
    stream = [i for i, _ in zip(ref, range(6 * 8))]
    assert interleaved == stream == [i for rec in single["records"] for i in rec["indices"]]
    for step in range(1, 7):
        # the step's global batch (8 stream positions) is split between the ranks, 4 positions each, none twice
        mine = [[rec["indices"] for rec in r["records"] if rec["step"] == step] for r in ranks]
        assert [len(m) for m in mine] == [2, 2] and all(len(mb) == 2 for m in mine for mb in m)
        positions = [mine[i % 2][i // 2] for i in range(4)]
        assert [i for mb in positions for i in mb] == stream[(step - 1) * 8 : step * 8]
    for r in ranks:
        check_curriculum(r["records"])
    for k, loss in single["losses"].items():
        assert ranks[0]["losses"][k] == pytest.approx(loss, rel=1e-5), k
    last = [h for h in ranks[0]["log_history"] if "loss" in h][-1]
    assert last["data_efficiency/consumed_samples"] == 6 * 8
    # the token counts are summed over the ranks: both ranks' micro-batches (padding included), as one process counts
    tokens = sum(2 * rec["width"] for r in ranks for rec in r["records"])
    single_last = [h for h in single["log_history"] if "loss" in h][-1]
    assert last["data_efficiency/effective_tokens"] == single_last["data_efficiency/effective_tokens"] == tokens


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_cpu_uses_the_data_efficiency_block(tmp_path, stage):
    """ZeRO-2 (with the layer-token LR schedule, which DeepSpeed's own config never implemented) and ZeRO-3 on CPU
    from a ds_config's data_efficiency block: the same batches, kept lengths, LRs and losses as without DeepSpeed."""
    out = tmp_path / "ds"
    cmd = [sys.executable, RUN, "--output_dir", str(out), "--record", str(out / "rec_RANK.json")]
    lr = ["--layer_token_lr"] if stage == 2 else []
    run(
        cmd + ["--zero_stage", str(stage), "--max_steps", "4", *lr],
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=free_port(),
        RANK=0,
        WORLD_SIZE=1,
        LOCAL_RANK=0,
        LOCAL_WORLD_SIZE=1,
    )
    rec = json.loads((out / "rec_0.json").read_text())
    assert rec["deepspeed_engine"] == "DeepSpeedEngine" and rec["zero_stage"] == stage
    # the block is honoured by us and removed from what DeepSpeed sees
    assert rec["engine_data_efficiency"] is False
    assert "data_efficiency" not in rec["engine_config_keys"]
    assert rec["config"]["curriculum"] is not None and rec["config"]["random_ltd"] is not None
    check_curriculum(rec["records"])
    assert all(r["kept_length"] == kept_length_oracle(r["step"] - 1) for r in rec["records"])
    assert sorted(rec["losses"], key=int) == ["1", "2", "3", "4"]
    # the same run without DeepSpeed (flags instead of the block): the same losses
    plain = trainer_run(tmp_path / "plain", "--max_steps", "4", *lr)
    assert rec["records"] == plain["records"]
    for k, loss in plain["losses"].items():
        assert rec["losses"][k] == pytest.approx(loss, rel=1e-4), k
    if lr:  # warmup and decay in DeepSpeed's layer-tokens, G * (kept + 40 * 2) per step, recomputed from scratch

        def layer_tokens(step0):
            return 8 * (kept_length_oracle(step0) + 40 * 2)

        warmup, total = layer_tokens(0) + layer_tokens(1), sum(layer_tokens(j) for j in range(4))
        for h in (h for h in rec["log_history"] if "loss" in h):
            consumed = sum(layer_tokens(j) for j in range(h["step"] - 1))
            factor = consumed / warmup if consumed < warmup else 1 - (consumed - warmup) / (total - warmup)
            assert h["learning_rate"] == pytest.approx(1e-3 * factor), h


def test_sigkill_then_resume_in_a_new_process_is_exact(uninterrupted, tmp_path):
    """SIGKILL a run mid-training, resume its last checkpoint (step 14, in the second epoch) in a new process:
    steps 15-16 see identical batches and kept lengths, and the losses equal the uninterrupted run's."""
    whole = uninterrupted
    out = tmp_path / "killed"
    cmd = [sys.executable, RUN, "--output_dir", str(out), "--record", str(out / "rec_RANK.json")]
    proc = subprocess.Popen(
        cmd + ["--max_steps", "16", "--save_steps", "7", "--stall_after", "15"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.time() + TIMEOUT
        for line in proc.stdout:  # "STALLING" is printed mid-training, after checkpoint-14 was written
            if "STALLING" in line or time.time() > deadline:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "rec_0.json").exists()
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-14")
    resumed = trainer_run(out, "--max_steps", "16", "--save_steps", "7", "--resume", "last")
    assert [r["step"] for r in resumed["records"]] == [15, 15, 16, 16]
    assert resumed["records"] == [r for r in whole["records"] if r["step"] > 14]
    assert {k: v for k, v in resumed["losses"].items() if int(k) > 14} == {
        k: v for k, v in whole["losses"].items() if int(k) > 14
    }
    # the counters continue from the checkpoint (consumed samples, layer-tokens), not from zero
    resumed_last = [h for h in resumed["log_history"] if "loss" in h][-1]
    whole_last = [h for h in whole["log_history"] if "loss" in h][-1]
    assert resumed_last["step"] == whole_last["step"] == 16
    for key in ("consumed_samples", "layer_tokens", "effective_tokens"):
        assert resumed_last[f"data_efficiency/{key}"] == whole_last[f"data_efficiency/{key}"], key


def test_plain_accelerate_loop_script(tmp_path):
    ds_config = {
        "train_batch_size": 16,
        "data_efficiency": {
            "enabled": True,
            "seed": 3,
            "data_sampling": {
                "enabled": True,
                "curriculum_learning": {
                    "enabled": True,
                    "curriculum_metrics": {
                        "seqlen": {**SEQLEN_METRIC, "max_difficulty": 64},
                        "seqlen_truncate": {**TRUNCATE_METRIC, "max_difficulty": 64},
                    },
                },
            },
            "data_routing": {
                "enabled": True,
                "random_ltd": {
                    "enabled": True,
                    "random_ltd_schedule": {
                        "min_value": 16,
                        "max_value": 64,
                        "schedule_type": "fixed_linear",
                        "schedule_config": {"require_steps": 6, "seq_per_step": 16},
                    },
                },
            },
        },
    }
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(ds_config))
    out = tmp_path / "nt"
    script = NO_TRAINER
    run(
        [sys.executable, script, "--config", str(path), "--output_dir", str(out), "--max_steps", "6"]
        + ["--gradient_accumulation_steps", "2", "--per_device_batch_size", "4", "--cpu"]
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    sampling = CurriculumScheduler({**SEQLEN_METRIC, "max_difficulty": 64})
    truncate = CurriculumScheduler({**TRUNCATE_METRIC, "max_difficulty": 64})
    for r in rows:
        k = r["step"]
        assert r["curriculum/difficulty_seqlen"] == sampling.get_difficulty(k)
        assert r["max_real_tokens"] <= sampling.get_difficulty(k)
        assert r["max_width"] <= truncate.get_difficulty(k)
        value = int((k - 1) / 6 * 48 + 16)
        assert r["random_ltd/kept_length"] == min(64, value - value % 16)
    assert (out / "model.safetensors").exists()


def test_plain_accelerate_loop_resumes_after_sigkill(tmp_path):
    """The loop script saves atomically every 2 steps; SIGKILL it after step 5 and resume 'latest' (step 4, mid-epoch,
    so the sampler's saved position is what continues the stream): every row after the checkpoint equals an
    uninterrupted run, counters included."""
    from test_golden import NO_TRAINER_CONFIG

    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(NO_TRAINER_CONFIG))
    script = NO_TRAINER
    base = [sys.executable, script, "--config", str(path), "--max_steps", "8", "--cpu"]
    base += ["--gradient_accumulation_steps", "2", "--per_device_batch_size", "4"]
    run([*base, "--output_dir", str(tmp_path / "full")])
    full = [json.loads(r) for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*base, "--output_dir", str(out), "--save_steps", "2"], env=env(), cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if line.startswith("{") and json.loads(line)["step"] == 5:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    run([*base, "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    resumed = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert resumed == full


def test_fault_injection_sigkill_anywhere_then_automatic_resume(tmp_path):
    """Kill a run with saves every 2 steps (each checkpoint file write slowed down, so kills land inside saves too)
    5 times at pseudo-random points; each restart resumes the newest complete checkpoint automatically. The last
    run's weights and every logged loss equal an uninterrupted run's."""
    import random

    from hf_data_efficiency.checkpoints import checkpoint_problems, last_complete_checkpoint

    steps = ["--max_steps", "12", "--save_steps", "2"]
    whole = trainer_run(tmp_path / "whole", *steps)
    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills, incomplete_seen = 0, set()
    for i, target in enumerate(sorted(rng.sample(range(1, 12), 5))):
        # odd kills: inside a checkpoint file write at or after the target step; even kills: anywhere after it
        marker = "SAVING " if i % 2 else "STEP "
        resume = ["--resume", "last"] if last_complete_checkpoint(out) else []
        cmd = [sys.executable, RUN, "--output_dir", str(out), "--record", str(out / "rec_RANK.json"), *steps]
        proc = subprocess.Popen(
            [*cmd, *resume, "--slow_saves", "0.05"], env=env(), stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        try:
            reached = False
            for line in proc.stdout:
                reached = reached or (line.startswith("STEP ") and int(line.split()[1]) >= target)
                if reached and line.startswith(marker):
                    time.sleep(rng.uniform(0.0, 0.05 if i % 2 else 0.25))
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            proc.kill()
            proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        incomplete_seen |= {c.name for c in out.glob("checkpoint-*") if checkpoint_problems(c)}
    assert kills == 5
    assert incomplete_seen  # some kills really interrupted a save, and resuming skipped what it left
    assert not (out / "rec_0.json").exists()
    final = trainer_run(out, *steps, "--resume", "last")
    assert final["weights"] == whole["weights"]
    assert final["losses"] == whole["losses"] and len(whole["losses"]) == 12


def test_accelerate_launch_with_the_cpu_recipe(tmp_path):
    """A real `accelerate launch --config_file recipes/accelerate/cpu.yaml` of the accelerate-loop script: it runs
    through the launcher, and its rows equal a direct run's."""
    from test_golden import NO_TRAINER_CONFIG

    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(NO_TRAINER_CONFIG))
    args = [NO_TRAINER, "--config", str(path), "--max_steps", "3", "--cpu"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    run([*launcher, str(ROOT / "recipes" / "accelerate" / "cpu.yaml"), *args, "--output_dir", str(tmp_path / "a")])
    run([sys.executable, *args, "--output_dir", str(tmp_path / "b")])
    launched, direct = ((tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in "ab")
    assert len(launched) == 3 and launched == direct
