"""The engine decides the training data path once (map-style data or a stream, fixed batches or a token budget), and
the defects found by running HF's example scripts with our classes: the LR reference of dynamic batching is logged,
a resumed stream does not claim to fast-forward, ``effective_tokens`` has one type, and a launch that trains as
single processes is warned about."""

import logging
import math

import datasets
import pytest
from _helpers import training_kwargs
from tiny import CURRICULUM_FLAGS, RANDOM_LTD_FLAGS, RecordingTrainer, collate, make_dataset, tiny_model
from transformers.testing_utils import CaptureLogger

from hf_data_efficiency import DataEfficiencyConfig, DataEfficiencyTrainingArguments
from hf_data_efficiency import engine as engine_module
from hf_data_efficiency import trainer as trainer_module
from hf_data_efficiency.batching.sampler import TokenBudgetBatchSampler
from hf_data_efficiency.batching.stream import MicroBatchCollator
from hf_data_efficiency.curriculum.sampler import CurriculumSampler
from hf_data_efficiency.curriculum.streaming import StreamingCurriculum
from hf_data_efficiency.engine import DataEfficiencyEngine

SEQLEN = {"min_difficulty": 12, "max_difficulty": 40, "schedule_type": "fixed_linear"}
SEQLEN["schedule_config"] = {"total_curriculum_step": 6, "difficulty_step": 4}


def config(curriculum: bool, budget: bool, method: str = "sqrt") -> dict:
    sampling = {"enabled": True}
    if curriculum:
        sampling["curriculum_learning"] = {"enabled": True, "curriculum_metrics": {"seqlen": SEQLEN}}
    if budget:
        sampling["dynamic_batching"] = {"enabled": True, "max_tokens": 160, "lr_scaling_method": method}
    return {"data_efficiency": {"enabled": True, "seed": 3, "data_sampling": sampling}}


def stream(n_shards: int = 2) -> datasets.IterableDataset:
    return make_dataset().to_iterable_dataset(num_shards=n_shards)


@pytest.mark.parametrize("curriculum, budget, streamed", [(1, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 1), (1, 1, 1)])
def test_train_loader_describes_each_path_and_its_loader_yields_the_samplers_batches(curriculum, budget, streamed):
    engine = DataEfficiencyEngine(config(curriculum, budget), batch_size=4, gradient_accumulation_steps=2)
    plan = engine.train_loader(stream() if streamed else make_dataset())
    assert plan.per_process == bool(streamed) and plan.micro_batches == bool(budget and streamed)
    assert (plan.batch_sampler is not None) == bool(budget and not streamed)
    assert (plan.lr_factor is not None) == bool(budget)
    if streamed:
        assert isinstance(plan.dataset, StreamingCurriculum) and plan.batch_size == (1 if budget else 4)
        assert isinstance(plan.collate_fn(collate), MicroBatchCollator) == bool(budget)
    elif budget:
        assert isinstance(plan.batch_sampler, TokenBudgetBatchSampler) and plan.batch_size is None
    else:
        assert isinstance(engine.sampler, CurriculumSampler) and plan.batch_size == 4
    if budget:
        assert plan.lr_factor == engine.batch_sampler.lr_factor
    loader = iter(plan.dataloader(engine.wrap_collator(collate)))
    first = [next(loader)["input_ids"] for _ in range(2)]  # the first optimizer step (GA 2)
    if budget and not streamed:  # the oracle: the batch sampler's plan of step 1
        rows = [int(b.shape[0]) for b in first]
        assert rows == [len(mb) for mb in engine.batch_sampler.plan(1).micro_batches]
    elif not budget and not streamed:  # the curriculum sampler's first global batch
        assert sum(int(b.shape[0]) for b in first) == engine.sampler.global_batch_size
    for batch in first:
        assert batch.shape[0] >= 1


def test_train_loader_refusals_name_the_setting():
    with pytest.raises(ValueError, match="curriculum learning, dynamic batching, group mixing or batch-size warmup"):
        DataEfficiencyEngine(None, batch_size=4).train_loader(make_dataset())
    plan = DataEfficiencyEngine(config(True, False), batch_size=4).train_loader(stream())
    with pytest.raises(ValueError, match=r"dataloader_num_workers=2.*allowed: 0"):
        plan.dataloader(collate, num_workers=2)


def _logs(fn, *loggers, level=logging.INFO):
    """``fn()`` and what ``loggers`` wrote meanwhile, at ``level`` and above."""
    from contextlib import ExitStack

    before = [logger.level for logger in loggers]
    try:
        with ExitStack() as stack:
            for logger in loggers:
                logger.setLevel(level)
            captures = [stack.enter_context(CaptureLogger(logger)) for logger in loggers]
            result = fn()
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)
    return result, "".join(c.out for c in captures)


@pytest.mark.parametrize("method", ["linear", "sqrt"])
def test_lr_reference_and_the_factor_range_are_logged_and_a_far_reference_warned(method):
    """A user moving from per_device_train_batch_size 16 to a budget that packs about 8 samples per step: the log
    names the reference (16 samples per step) and the factors, recomputed here from the planned steps."""
    engine = DataEfficiencyEngine(config(False, True, method), batch_size=16)
    plan, out = _logs(lambda: engine.train_loader(make_dataset()), engine_module.logger)
    steps = min(engine.batch_sampler.steps_per_epoch, 32)
    ratios = [engine.batch_sampler.plan(k).samples / 16 for k in range(1, steps + 1)]
    factors = [r if method == "linear" else math.sqrt(r) for r in ratios]
    assert "16 samples per step (per-device batch 16 x 1 process(es) x 1 accumulation step(s))" in out
    assert f"LR factors over steps 1-{steps}: {min(factors):.3g} to {max(factors):.3g}" in out
    mean = sum(factors) / len(factors)
    assert mean < 0.75  # this budget holds about 5 samples a step: the LR drops without a word on main
    assert f"scaled by {mean:.3g} on average" in out and "per_device_train_batch_size" in out
    # a reference the budget matches: logged, not warned
    engine = DataEfficiencyEngine(config(False, True, method), batch_size=5)
    _, out = _logs(lambda: engine.train_loader(make_dataset()), engine_module.logger)
    assert "LR factors over steps" in out and "on average" not in out


def test_effective_tokens_is_a_float_with_and_without_random_ltd(tmp_path):
    for flags in (CURRICULUM_FLAGS, {**CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS}):
        args = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=2), **flags)
        trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
        trainer.train()
        logged = [h["data_efficiency/effective_tokens"] for h in trainer.state.log_history if "loss" in h]
        assert len(logged) == 2 and all(type(v) is float for v in logged)


def test_a_resumed_stream_logs_that_it_skips_nothing(tmp_path):
    """The Trainer's fast-forward log must tell the truth: the stream resumes by position, so nothing is skipped
    (main logged "past 0 epochs and 4 batches")."""
    import transformers.trainer as hf_trainer

    def build():
        args = DataEfficiencyTrainingArguments(
            **training_kwargs(tmp_path / "out", max_steps=4, save_strategy="steps", save_steps=2), **CURRICULUM_FLAGS
        )
        return RecordingTrainer(model=tiny_model(), args=args, train_dataset=stream(), data_collator=collate)

    full = build()
    full.train()
    resumed = build()
    checkpoint = str(tmp_path / "out" / "checkpoint-2")
    _, out = _logs(lambda: resumed.train(resume_from_checkpoint=checkpoint), hf_trainer.logger, trainer_module.logger)
    assert "resumes at the stream position saved after step 2: no batch is skipped or read again" in out
    assert "Fast-forwarding the dataloader past 0 epochs and 0 batches" in out
    tail = [(r["step"], r["indices"]) for r in full.records if r["step"] > 2]
    assert [(r["step"], r["indices"]) for r in resumed.records] == tail


def test_a_launch_that_trains_as_single_processes_is_warned(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    warn = trainer_module._warn_if_launch_ignored
    _, out = _logs(lambda: warn(1), trainer_module.logger, level=logging.WARNING)
    assert "WORLD_SIZE=2" in out and "each of the 2 trains alone" in out and "--use_cpu" in out
    assert _logs(lambda: warn(2), trainer_module.logger, level=logging.WARNING)[1] == ""
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _logs(lambda: warn(1), trainer_module.logger, level=logging.WARNING)[1] == ""


def test_the_loader_config_is_one_object_for_every_source(tmp_path):
    """``DataEfficiencyConfig.load`` gives the same config from an object, a dict in either layout, a JSON string, a
    file and a directory."""
    import json

    cfg = DataEfficiencyConfig.from_deepspeed(config(True, True))
    (tmp_path / "ds.json").write_text(json.dumps(config(True, True)))
    cfg.save_pretrained(tmp_path)
    sources = [cfg, cfg.to_dict(), config(True, True), json.dumps(cfg.to_dict()), str(tmp_path / "ds.json"), tmp_path]
    assert all(DataEfficiencyConfig.load(s) == cfg for s in sources)
    ds = {"train_batch_size": 8, **config(True, True)}
    assert DataEfficiencyConfig.load(None, deepspeed=ds) == cfg and ds == {"train_batch_size": 8}
    with pytest.raises(ValueError, match="given twice"):
        DataEfficiencyConfig.load(cfg, deepspeed={**config(True, False)})
    assert DataEfficiencyConfig.load(None) == DataEfficiencyConfig() and not DataEfficiencyConfig.load(None).enabled
