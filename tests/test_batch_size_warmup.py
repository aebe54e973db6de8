"""Batch-size warmup against independent oracles: the per-step batch sizes against Megatron's ramp recomputed here
(exact arithmetic), each step's samples against the draw it is cut from, the ramped token budget, the LR each step
used against the scheduler's times the factor, exact resume, and the errors."""

from __future__ import annotations

from fractions import Fraction

import pytest
from _helpers import training_kwargs
from tiny import CURRICULUM_FLAGS, RecordingTrainer, collate, make_dataset, sample_lengths, tiny_model
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hf_data_efficiency import DataEfficiencyEngine, DataEfficiencyTrainingArguments
from hf_data_efficiency.batching.warmup import BatchSizeWarmup, WarmupBatchSampler
from hf_data_efficiency.config import BatchSizeWarmupConfig, DynamicBatchingConfig


def megatron_ramp(start: int, increment: int, samples: int, full: int, per_step: int, steps: int) -> list[int]:
    """Per-device batch of each step by Megatron's rule, recomputed: ``n = (full - start) / increment`` increments,
    one every ``samples / n`` consumed samples; full once more than ``samples`` are consumed. ``per_step``: samples a
    step consumes per unit of per-device batch (world x GA)."""
    n = (full - start) // increment
    consumed, out = 0, []
    for _ in range(steps):
        size = full if consumed > samples else start + int(Fraction(consumed) / Fraction(samples, n)) * increment
        out.append(size)
        consumed += size * per_step
    return out


@pytest.mark.parametrize(
    "start, increment, samples, full, world, ga",
    [(1, 1, 24, 4, 1, 2), (2, 3, 50, 8, 2, 1), (4, 4, 37, 16, 1, 1), (3, 2, 13, 9, 2, 2)],
)
def test_batch_sizes_follow_the_megatron_ramp(start, increment, samples, full, world, ga):
    warmup = BatchSizeWarmup(BatchSizeWarmupConfig(start=start, increment=increment, samples=samples), full)
    sampler = WarmupBatchSampler(2000, warmup, world_size=world, gradient_accumulation_steps=ga, seed=3)
    steps = 20
    expected = megatron_ramp(start, increment, samples, full, world * ga, steps)
    assert expected[0] == start and expected[-1] == full
    plans = [sampler.plan(k) for k in range(1, steps + 1)]
    assert [sorted({len(mb) for mb in p.micro_batches}) for p in plans] == [[b] for b in expected]
    assert all(len(p.micro_batches) == world * ga for p in plans)
    # a pass without a draw: consecutive slices of the permutation, each sample once within the pass
    used = [i for p in plans for mb in p.micro_batches for i in mb]
    assert len(used) == len(set(used))
    assert [sampler.step_logs(k)["batch_size_warmup/batch_size"] for k in range(1, steps + 1)] == expected


def test_with_a_draw_each_step_is_a_prefix_of_its_full_batch_draw():
    """With a curriculum, step k takes the first b_k x world x GA samples of the curriculum's draw of step k (the
    full-batch steps once the ramp is over), cut into micro-batches of b_k."""
    engine = DataEfficiencyEngine(
        {"curriculum": _curriculum(), "batch_size_warmup": {"start": 2, "increment": 2, "samples": 40}},
        batch_size=6,
        world_size=2,
        gradient_accumulation_steps=1,
    )
    batch_sampler = engine.build_warmup_sampler(make_dataset())
    expected = megatron_ramp(2, 2, 40, 6, 2, 10)
    for k, size in enumerate(expected, start=1):
        draw = engine.sampler.step_indices(k)
        plan = batch_sampler.plan(k)
        assert [len(mb) for mb in plan.micro_batches] == [size, size]
        assert [i for mb in plan.micro_batches for i in mb] == draw[: 2 * size]


def _curriculum() -> dict:
    from tiny import SEQLEN_METRIC

    return {"sampling_metrics": [{"name": "seqlen", **SEQLEN_METRIC}]}


def test_token_budget_ramps_with_the_batch():
    """With dynamic batching each step's micro-batches fit max_tokens x b / B (b: the ramp's per-device batch after
    the samples the budget's earlier steps held), never below min_batch_size x the longest sample."""
    lengths = sample_lengths()
    config = DynamicBatchingConfig(max_tokens=320)
    warmup = BatchSizeWarmup(BatchSizeWarmupConfig(start=1, increment=1, samples=60), 8)
    from hf_data_efficiency.batching.sampler import TokenBudgetBatchSampler

    sampler = TokenBudgetBatchSampler(lengths, config, reference_batch_size=8, seed=1, warmup=warmup)
    consumed = 0
    for k in range(1, 25):
        size = 8 if consumed > 60 else 1 + consumed * 7 // 60
        budget = max(320 * size // 8, int(lengths.max()))
        plan = sampler.plan(k)
        assert sampler.step_logs(k)["batch_size_warmup/max_tokens"] == budget
        for mb in plan.lengths:
            assert len(mb) * max(mb) <= budget
        consumed += plan.samples
    assert sampler.step_logs(24)["batch_size_warmup/max_tokens"] == 320


def _lrs_used(trainer):
    seen = []

    def hook(optimizer, args, kwargs):
        seen.append(optimizer.param_groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(hook)
    try:
        trainer.train()
    finally:
        handle.remove()
    return seen


WARMUP = {
    "batch_size_warmup_start": 1,
    "batch_size_warmup_increment": 1,
    "batch_size_warmup_samples": 24,
    "batch_size_warmup_lr_scaling_method": "linear",
}


def test_trainer_micro_batches_and_lr_follow_the_ramp(tmp_path):
    """A Trainer run (batch 4, GA 2): every micro-batch of step k holds the ramp's b_k samples, the LR the optimizer
    used is the scheduler's times b_k / 4 (linear), and the logs say so."""
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=8, lr_scheduler_type="constant"), **WARMUP
    )
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    lrs = _lrs_used(trainer)
    expected = megatron_ramp(1, 1, 24, 4, 2, 8)
    sizes = {}
    for record in trainer.records:
        sizes.setdefault(record["step"], set()).add(len(record["indices"]))
    assert [sizes[k] for k in range(1, 9)] == [{b} for b in expected]
    assert lrs == pytest.approx([1e-3 * b / 4 for b in expected])
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["batch_size_warmup/batch_size"] for h in logs] == expected
    assert logs[-1]["data_efficiency/consumed_samples"] == 2 * sum(expected)


@pytest.mark.parametrize(
    "flags",
    [WARMUP, {**WARMUP, "mixing_column": "domain", "mixing_strategy": "online", **CURRICULUM_FLAGS}],
    ids=["warmup", "warmup_online_mixing_curriculum"],
)
def test_warmup_resumes_exactly(tmp_path, flags):
    data = make_dataset().add_column("domain", ["a" if i % 3 else "b" for i in range(96)])

    def run(resume=None):
        args = DataEfficiencyTrainingArguments(
            **training_kwargs(tmp_path / "out", max_steps=7, save_strategy="steps", save_steps=3), **flags
        )
        trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=data, data_collator=collate)
        lrs = _lrs_used(trainer) if resume is None else None
        if resume is not None:
            lrs = _lrs_used_resumed(trainer, resume)
        return trainer, lrs

    full, full_lrs = run()
    resumed, resumed_lrs = run(str(tmp_path / "out" / "checkpoint-3"))
    tail = [(r["step"], r["indices"]) for r in full.records if r["step"] > 3]
    assert [(r["step"], r["indices"]) for r in resumed.records] == tail
    assert resumed_lrs == pytest.approx(full_lrs[3:])
    losses = {h["step"]: h["loss"] for h in full.state.log_history if "loss" in h}
    for h in resumed.state.log_history:
        if "loss" in h:
            assert h["loss"] == pytest.approx(losses[h["step"]], rel=1e-6)


def _lrs_used_resumed(trainer, checkpoint):
    seen = []

    def hook(optimizer, args, kwargs):
        seen.append(optimizer.param_groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(hook)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize(
    "config, batch_size, message",
    [
        ({"start": 20, "increment": 4, "samples": 100}, 16, r"start=20 is above .*allowed: 1 <= start <= 16"),
        ({"start": 4, "increment": 5, "samples": 100}, 16, r"16 - 4 = 12 is not a multiple of .*increment=5"),
        ({"start": 0, "increment": 4, "samples": 100}, 16, r"batch_size_warmup.start=0 is not allowed"),
        ({"start": 4, "increment": 4, "samples": 0}, 16, r"batch_size_warmup.samples=0 is not allowed"),
        ({"start": 4, "increment": 4}, 16, r"batch_size_warmup is missing the required key 'samples'"),
        ({"start": 4, "increment": 4, "samples": 9, "lr_scaling_method": "cube"}, 16, "allowed values: linear"),
    ],
)
def test_bad_warmup_settings_name_the_field(config, batch_size, message):
    with pytest.raises(ValueError, match=message):
        DataEfficiencyEngine({"batch_size_warmup": config}, batch_size=batch_size)


def test_warmup_refusals_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"lr_scaling_method='sqrt' cannot be combined with dynamic batching"):
        DataEfficiencyEngine(
            {
                "batch_size_warmup": {"start": 1, "increment": 1, "samples": 9, "lr_scaling_method": "sqrt"},
                "dynamic_batching": {"max_tokens": 100},
            },
            batch_size=4,
        )
    engine = DataEfficiencyEngine({"batch_size_warmup": {"start": 1, "increment": 1, "samples": 9}}, batch_size=4)
    with pytest.raises(ValueError, match="batch-size warmup needs map-style data"):
        engine.train_loader(make_dataset().to_iterable_dataset())
    with pytest.raises(ValueError, match="--batch_size_warmup_start needs --batch_size_warmup_increment"):
        DataEfficiencyTrainingArguments(output_dir=str(tmp_path), report_to=[], batch_size_warmup_start=2)
    args = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, auto_find_batch_size=True), **WARMUP)
    with pytest.raises(ValueError, match="auto_find_batch_size=True cannot be combined with batch-size warmup"):
        RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    flat = BatchSizeWarmup(BatchSizeWarmupConfig(start=4, increment=4, samples=100), 4)  # start = B: no ramp
    assert [flat.batch_size_at(c) for c in (0, 50, 101)] == [4, 4, 4]
