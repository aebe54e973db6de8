"""``--data_efficiency_recipe``: what auto and paper choose for a run, that the Trainer trains with exactly that, that
a part the user configured is kept, and the errors."""

import math

import pytest
from _helpers import training_kwargs
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from tiny import RANDOM_LTD_FLAGS, RecordingTrainer, collate, make_dataset, sample_lengths, tiny_model

from hf_data_efficiency import DataEfficiencyTrainer, DataEfficiencyTrainingArguments
from hf_data_efficiency.recipe import recipe_sections

STEPS = 8


def args_for(tmp_path, **overrides):
    kwargs = {"gradient_accumulation_steps": 1, "max_steps": STEPS, **overrides}
    return DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, **kwargs))


def fixed_linear_kept(step0: int, lo: int, hi: int, steps: int, size: int) -> int:
    """DeepSpeed's fixed_linear random-LTD kept length at a 0-based step, from scratch."""
    value = math.floor(step0 / steps * (hi - lo) + lo)
    return min(hi, value - value % size)


def test_auto_trains_with_random_ltd_on_the_middle_layers_from_a_quarter_of_the_sequence(tmp_path):
    args = args_for(tmp_path, data_efficiency_recipe="auto")
    assert not args.get_data_efficiency_config().enabled
    model, seq = tiny_model(), int(max(sample_lengths(96, 0)))
    trainer = RecordingTrainer(model=model, args=args, train_dataset=make_dataset(), data_collator=collate)
    cfg = args.get_data_efficiency_config()
    assert trainer.data_efficiency_config == cfg and cfg.curriculum is None
    rl = cfg.random_ltd
    # the documented rule: every layer but the first and last, seq/4 in steps of min(16, seq // 8), full at 70%
    step = min(16, seq // 8)
    assert rl.random_ltd_layer_id == list(range(1, model.config.n_layer - 1))
    assert (rl.min_value, rl.max_value, rl.seq_per_step) == (seq // 4 // step * step, seq, step)
    assert rl.require_steps == round(0.7 * STEPS)
    trainer.train()
    assert trainer.random_ltd_handle.num_layers == model.config.n_layer - 2
    kept = {r["step"]: r["kept_length"] for r in trainer.records}
    assert kept == {
        k: fixed_linear_kept(k - 1, rl.min_value, seq, rl.require_steps, step) for k in range(1, STEPS + 1)
    }
    assert kept[1] < seq and kept[STEPS] == seq


def test_paper_adds_the_scaled_curriculum_and_its_first_batches_are_truncated(tmp_path):
    args = args_for(tmp_path, data_efficiency_recipe="paper")
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    cfg = args.get_data_efficiency_config()
    seq = int(max(sample_lengths(96, 0)))
    transform, (rarity,) = cfg.curriculum.transform, cfg.curriculum.sampling_metrics
    total = round(110_000 / 286_000 * STEPS)
    assert (transform.name, transform.min_difficulty, transform.max_difficulty) == ("seqlen_truncate", 8, seq)
    assert transform.schedule_config == {"total_curriculum_step": total, "difficulty_step": 8}
    assert (rarity.name, rarity.difficulty_type, rarity.min_difficulty, rarity.max_difficulty) == (
        "vocab_rarity",
        "percentile",
        1,
        100,
    )
    assert rarity.schedule_type == "fixed_root" and rarity.schedule_config["root_degree"] == 2
    assert cfg.random_ltd.min_value == max(cfg.random_ltd.seq_per_step, seq * 128 // 2048)
    trainer.train()
    truncate = CurriculumScheduler(transform.to_deepspeed())  # DeepSpeed's own pacing of the chosen schedule
    assert truncate.get_difficulty(1) < seq
    for r in trainer.records:
        assert r["width"] <= truncate.get_difficulty(r["step"])


def test_a_part_the_user_configured_is_kept_whole(tmp_path):
    args = args_for(tmp_path, data_efficiency_recipe="paper", **RANDOM_LTD_FLAGS)
    mine = args.get_data_efficiency_config().random_ltd
    DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    cfg = args.get_data_efficiency_config()
    assert cfg.random_ltd == mine and cfg.curriculum is not None


def test_the_run_length_comes_from_the_epochs_without_max_steps(tmp_path):
    args = args_for(tmp_path, data_efficiency_recipe="auto", max_steps=-1, num_train_epochs=2)
    DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
    assert args.get_data_efficiency_config().random_ltd.require_steps == round(0.7 * 2 * math.ceil(96 / 4))


def test_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"--data_efficiency_recipe='fast'.*auto, paper"):
        DataEfficiencyTrainingArguments(output_dir="x", data_efficiency_recipe="fast", use_cpu=True)
    with pytest.raises(ValueError, match="data_efficiency_recipe='fast'.*auto, paper"):
        recipe_sections("fast", num_layers=6, seq_len=128, steps=10)
    args = DataEfficiencyTrainingArguments(output_dir="x", data_efficiency_recipe="auto", use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="data_efficiency_recipe needs the model"):
        DataEfficiencyTrainer(model_init=tiny_model, args=args, train_dataset=make_dataset(), data_collator=collate)


def test_too_shallow_a_model_gets_no_random_ltd():
    assert "random_ltd" not in recipe_sections("auto", num_layers=2, seq_len=128, steps=10)


def test_auto_with_a_reference_model_adds_no_selection_and_says_why(tmp_path):
    """The selection study found model-based selection paying only on noisy data, which auto cannot know: a
    reference model passed to the Trainer leaves token selection off, and the log says so and where to read why."""
    from transformers.testing_utils import CaptureLogger

    from hf_data_efficiency import recipe

    args = args_for(tmp_path, data_efficiency_recipe="auto")
    with CaptureLogger(recipe.logger) as cl:
        DataEfficiencyTrainer(
            model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate,
            reference_model=tiny_model(),
        )  # fmt: skip
    cfg = args.get_data_efficiency_config()
    assert cfg.token_selection is None and cfg.random_ltd is not None
    assert "a reference model is given, but no token selection" in cl.out and "docs/selection.md" in cl.out
