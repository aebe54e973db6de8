"""Bad inputs found by the second hardening probe: each gives a clear error (or skips a bad checkpoint with a warning)
that names the file, field or column and what is allowed, instead of an error from deep inside a dependency."""

import json

import datasets
import numpy as np
import pytest
import torch
from _helpers import training_kwargs
from safetensors.torch import save_file
from tiny import CURRICULUM_FLAGS, collate, make_dataset, tiny_model
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.testing_utils import CaptureLogger

import hf_data_efficiency as hfde
from hf_data_efficiency import checkpoints
from hf_data_efficiency.checkpoints import TRAINER_STATE_NAME, checkpoint_problems, resolve_resume_checkpoint
from hf_data_efficiency.curriculum.index import load_metric_summary, save_metric
from hf_data_efficiency.curriculum.metrics import count_tokens
from hf_data_efficiency.engine import STATE_NAME, ResumeError

# ---------------------------------------------------------------------------------------------
# 1. token ids of the wrong type
# ---------------------------------------------------------------------------------------------
BAD_TOKEN_COLUMNS = {
    "one int per row": ([1, 2, 3], "int"),
    "float token ids": ([[1.0, 2.0], [3.0]], "float"),
    "fractional float token ids": ([[1.5, 2.0], [3.0]], "float"),
    "string token ids": ([["a", "b"], ["c"]], "string"),
    "nested lists": ([[[1, 2]], [[3]]], "list"),
}


@pytest.mark.parametrize("column", ["input_ids", "tokens"])
@pytest.mark.parametrize("case", BAD_TOKEN_COLUMNS)
def test_compute_metrics_refuses_token_ids_of_the_wrong_type(case, column):
    values, found = BAD_TOKEN_COLUMNS[case]
    ds = datasets.Dataset.from_dict({column: values})
    with pytest.raises(ValueError, match=rf"'{column}'.*{found}.*integer token ids") as e:
        hfde.compute_metrics(ds, metrics=("seqlen", "vocab_rarity"), input_column=column)
    assert "tokenize" in str(e.value).lower()
    with pytest.raises(ValueError, match=rf"'{column}'.*{found}.*integer token ids"):
        count_tokens(ds, input_column=column)


def test_float_token_ids_are_refused_even_when_integral_and_the_message_says_how_to_cast():
    ds = datasets.Dataset.from_dict({"input_ids": [[1.0, 2.0], [3.0]]})
    with pytest.raises(ValueError, match="integral") as e:
        hfde.compute_metrics(ds, metrics=("seqlen",))
    assert "cast_column" in str(e.value)


def test_null_token_ids_inside_a_row_are_named():
    ds = datasets.Dataset.from_dict({"input_ids": [[1, None, 3], [4]]})
    with pytest.raises(ValueError, match=r"'input_ids' has 1 null value"):
        hfde.compute_metrics(ds, metrics=("seqlen", "vocab_rarity"))


def test_valid_integer_token_ids_of_any_width_still_work():
    for dtype in ("int8", "uint16", "int32", "int64"):
        ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 2], [3]]}).cast_column(
            "input_ids", datasets.List(datasets.Value(dtype))
        )
        out = hfde.compute_metrics(ds, metrics=("seqlen", "vocab_rarity"))
        assert out["seqlen"] == [3, 1]


def test_trainer_computing_missing_metric_columns_refuses_float_token_ids(tmp_path):
    rng = np.random.default_rng(0)
    data = datasets.Dataset.from_dict(
        {"input_ids": [rng.integers(0, 60, 8).astype(float).tolist() for _ in range(16)]}
    )
    args = hfde.DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=1), **CURRICULUM_FLAGS)
    trainer = hfde.DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=data, data_collator=collate)
    with pytest.raises(ValueError, match=r"'input_ids'.*float.*integer token ids"):
        trainer.get_train_dataloader()


# ---------------------------------------------------------------------------------------------
# 2. a checkpoint state file nested too deeply (and other unreadable JSON state)
# ---------------------------------------------------------------------------------------------
def make_checkpoint(out, step, *, weights=True):
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / STATE_NAME).write_text(json.dumps({"global_step": step}))
    (folder / TRAINER_STATE_NAME).write_text(json.dumps({"global_step": step}))
    if weights:
        save_file({"w": torch.arange(64, dtype=torch.float32)}, str(folder / "model.safetensors"))
    return folder


def skipped_warnings(out):
    with CaptureLogger(checkpoints.logger) as cl:
        found = resolve_resume_checkpoint(True, out)
    return found, cl.out


def test_deeply_nested_state_file_is_an_incomplete_checkpoint(tmp_path):
    make_checkpoint(tmp_path, 2)
    bad = make_checkpoint(tmp_path, 4)
    (bad / STATE_NAME).write_text("[" * 200_000 + "]" * 200_000)
    found, logs = skipped_warnings(tmp_path)
    assert found == str(tmp_path / "checkpoint-2")
    assert str(bad) in logs and STATE_NAME in logs and "nested" in logs
    assert checkpoint_problems(bad)[STATE_NAME].startswith("corrupt")
    with pytest.raises(ValueError, match=rf"{STATE_NAME} corrupt.*nested.*checkpoint-2"):
        resolve_resume_checkpoint(str(bad), tmp_path)


@pytest.mark.parametrize(
    "content, why",
    [
        (b'{"global_step": 4, "x": "\xff\xfe"}', "UTF-8"),
        ('{"global_step": 4, "x": ' + "[" * 80 + "]" * 80 + "}", "nested"),  # parses, but deeper than allowed
    ],
)
def test_unreadable_state_json_is_named(tmp_path, content, why):
    make_checkpoint(tmp_path, 2)
    bad = make_checkpoint(tmp_path, 4)
    (bad / STATE_NAME).write_bytes(content if isinstance(content, bytes) else content.encode())
    found, logs = skipped_warnings(tmp_path)
    assert found == str(tmp_path / "checkpoint-2")
    assert STATE_NAME in logs and why in logs


def test_deeply_nested_trainer_state_and_metric_summary_are_named(tmp_path):
    make_checkpoint(tmp_path, 2)
    bad = make_checkpoint(tmp_path, 4)
    (bad / TRAINER_STATE_NAME).write_text("[" * 200_000 + "]" * 200_000)
    found, logs = skipped_warnings(tmp_path)
    assert found == str(tmp_path / "checkpoint-2") and TRAINER_STATE_NAME in logs and "nested" in logs

    save_metric(tmp_path / "metrics", "seqlen", np.arange(4))
    summary = next((tmp_path / "metrics").rglob("*.json"))
    summary.write_text("{" + '"a":{' * 100_000 + "}" * 100_001)
    with pytest.raises(ValueError, match=rf"{summary.name}.*nested"):
        load_metric_summary(tmp_path / "metrics", "seqlen")


# ---------------------------------------------------------------------------------------------
# 3. an unreadable weights file
# ---------------------------------------------------------------------------------------------
def test_truncated_model_safetensors_is_an_incomplete_checkpoint(tmp_path):
    make_checkpoint(tmp_path, 2)
    bad = make_checkpoint(tmp_path, 4)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # data cut short
    found, logs = skipped_warnings(tmp_path)
    assert found == str(tmp_path / "checkpoint-2")
    assert str(bad) in logs and "model.safetensors" in logs
    with pytest.raises(ValueError, match=r"model\.safetensors.*checkpoint-2"):
        resolve_resume_checkpoint(str(bad), tmp_path)
    weights.write_bytes(b"\x10\x00")  # header cut short
    assert "model.safetensors" in checkpoint_problems(bad)
    assert "model.safetensors" in checkpoint_problems(bad, trainer=False)  # a plain loop's checkpoint too


def test_sharded_weights_need_every_listed_shard_readable(tmp_path):
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64))
    make_checkpoint(tmp_path, 2, weights=False)
    bad = make_checkpoint(tmp_path, 4, weights=False)
    for folder in (tmp_path / "checkpoint-2", bad):
        model.save_pretrained(folder, max_shard_size="50KB")  # what the Trainer writes: shards and their index
    shards = sorted(bad.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (bad / "model.safetensors.index.json").is_file()
    assert checkpoint_problems(bad) == {}

    shards[1].write_bytes(shards[1].read_bytes()[:100])
    found, logs = skipped_warnings(tmp_path)
    assert found == str(tmp_path / "checkpoint-2") and shards[1].name in logs

    shards[1].unlink()
    problems = checkpoint_problems(bad)
    assert shards[1].name in problems and "missing" in problems[shards[1].name]
    assert "model.safetensors.index.json" in problems[shards[1].name]


# ---------------------------------------------------------------------------------------------
# 4. a filled KV cache in train mode under random-LTD
# ---------------------------------------------------------------------------------------------
TINY_DECODERS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64)),
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=64,
            max_position_embeddings=64,
        )
    ),
}


@pytest.mark.parametrize("layers", [None, [1, 2]], ids=["middle-layer", "last-layers"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("arch", TINY_DECODERS)
def test_filled_cache_in_train_mode_gets_the_documented_error(arch, padded, layers):
    torch.manual_seed(0)
    model = TINY_DECODERS[arch]()
    ltd = hfde.RandomLTDConfig(min_value=2, max_value=8, require_steps=10, seq_per_step=1, random_ltd_layer_id=layers)
    handle = hfde.apply_random_ltd(model, ltd)
    handle.kept_length = 2
    model.train()
    mask = {"attention_mask": torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6])} if padded else {}
    cache = model(torch.randint(0, 64, (2, 6)), past_key_values=DynamicCache(config=model.config), **mask)
    past = cache.past_key_values
    assert past.get_seq_length() == 6  # filled by the layer(s) random-LTD does not patch
    mask = {"attention_mask": torch.ones(2, 10, dtype=torch.long)} if padded else {}
    with pytest.raises(ValueError, match=r"random-LTD drops tokens only without past key values.*6 past tokens"):
        model(torch.randint(0, 64, (2, 4)), past_key_values=past, **mask)
    # an eval-mode cache is refused the same way in train mode, and eval mode is untouched
    model.eval()
    with torch.no_grad():
        past = model(torch.randint(0, 64, (2, 6)), use_cache=True).past_key_values
        model(torch.randint(0, 64, (2, 1)), past_key_values=past)
    model.train()
    with pytest.raises(ValueError, match="past key values"):
        model(torch.randint(0, 64, (2, 4)), past_key_values=past)


# ---------------------------------------------------------------------------------------------
# 5. a custom schedule with leftover schedule_config keys
# ---------------------------------------------------------------------------------------------
CUSTOM = {
    "min_difficulty": 8,
    "max_difficulty": 64,
    "schedule_type": "custom",
    "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
}


def deepspeed_config(metric):
    curriculum = {"enabled": True, "curriculum_metrics": {"seqlen": metric}}
    return {
        "data_efficiency": {"enabled": True, "data_sampling": {"enabled": True, "curriculum_learning": curriculum}}
    }


def test_custom_schedule_with_leftover_keys_says_it_takes_none(tmp_path):
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(deepspeed_config(CUSTOM)))
    for source in (deepspeed_config(CUSTOM), str(path)):
        with pytest.raises(ValueError) as e:
            hfde.DataEfficiencyConfig.from_deepspeed(source)
        message = str(e.value)
        assert "curriculum_metrics.seqlen.schedule_config" in message
        assert "custom schedule takes no schedule_config keys" in message
        assert "'total_curriculum_step'" in message and "allowed keys: ." not in message
        assert "schedule_fns" in message

    with pytest.raises(ValueError) as e:
        hfde.DifficultySchedule.from_dict(CUSTOM)
    message = str(e.value)
    assert "custom schedule takes no schedule_config keys" in message and "'total_curriculum_step'" in message
    assert "schedule_fn=" in message  # no callable given: say what is needed
    with pytest.raises(ValueError, match="custom schedule takes no schedule_config keys") as e:
        hfde.DifficultySchedule.from_dict(CUSTOM, schedule_fn=lambda step: 8)
    # the callable is there, so the message does not ask for it
    assert "schedule_fn=" not in str(e.value)
    schedule = hfde.DifficultySchedule.from_dict({**CUSTOM, "schedule_config": {}}, schedule_fn=lambda step: 8)
    assert schedule(3) == 8


# ---------------------------------------------------------------------------------------------
# 6. configs through every path, checkpoint state bounds, and the plain-Trainer checkpoint hint
# ---------------------------------------------------------------------------------------------
TYPO_BLOCK = {"enabled": True, "data_routing": {"enabled": True, "random_ltd": {"enabled": True}}}


def config_warnings(fn):
    from hf_data_efficiency import config as config_module

    with CaptureLogger(config_module.logger) as cl:
        fn()
    return cl.out.splitlines()


def test_misspelled_block_under_deepspeed_warns_as_from_deepspeed_does(tmp_path):
    """``data_efficency`` in the ds_config given to --deepspeed was accepted silently (data efficiency off) while
    ``from_deepspeed`` warned: both now go through one loader and warn the same."""
    ds = {"zero_optimization": {"stage": 2}, "data_efficency": TYPO_BLOCK}
    direct = config_warnings(lambda: hfde.DataEfficiencyConfig.from_deepspeed(json.loads(json.dumps(ds))))
    flags = config_warnings(
        lambda: hfde.DataEfficiencyTrainingArguments(output_dir=str(tmp_path), report_to=[], deepspeed=ds)
    )
    assert direct == flags and len(flags) == 2
    assert "'data_efficency' (did you mean 'data_efficiency'?)" in flags[0] and "has no 'data_efficiency'" in flags[1]


def test_non_utf8_config_file_is_named(tmp_path):
    path = tmp_path / "de.json"
    path.write_bytes(b'{"seed": 1, "random_ltd": "\xff\xfe"}')
    with pytest.raises(ValueError, match=r"de\.json: not UTF-8 text.*must be UTF-8"):
        hfde.DataEfficiencyConfig.load(str(path))
    with pytest.raises(ValueError, match=r"de\.json: not UTF-8"):
        hfde.DataEfficiencyTrainingArguments(output_dir=str(tmp_path), report_to=[], data_efficiency_config=str(path))


def trained_engine_state(tmp_path):
    engine = hfde.DataEfficiencyEngine(
        {"random_ltd": {"min_value": 8, "max_value": 40, "require_steps": 4, "seq_per_step": 8}}, batch_size=2
    )
    engine.attach(tiny_model())
    engine.reset()
    engine.save_state(tmp_path, 0)
    return engine, json.loads((tmp_path / STATE_NAME).read_text())


@pytest.mark.parametrize("tokens", [1e30, 10**30, 2**63])
def test_state_counters_out_of_bounds_are_refused(tmp_path, tokens):
    engine, state = trained_engine_state(tmp_path)
    state["counters"]["tokens"] = tokens
    (tmp_path / STATE_NAME).write_text(json.dumps(state))
    with pytest.raises(ResumeError) as e:
        engine.read_state(tmp_path)
    assert "state.counters.tokens" in str(e.value) and "9223372036854775807" in str(e.value)


def test_deeply_nested_state_given_by_path_is_named_not_a_recursion_error(tmp_path):
    engine, _ = trained_engine_state(tmp_path)
    (tmp_path / STATE_NAME).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ResumeError, match=rf"{STATE_NAME} is corrupt \(nested more than"):
        engine.read_state(tmp_path)


def test_resume_true_over_plain_trainer_checkpoints_says_how_to_resume(tmp_path):
    """A checkpoint written by a plain Trainer (no data-efficiency state): resume_from_checkpoint=True names it and
    says how to continue (--ignore_data_skip), as an explicit path already did."""
    out = tmp_path / "out"
    make_checkpoint(out, 3)
    (out / "checkpoint-3" / STATE_NAME).unlink()
    args = hfde.DataEfficiencyTrainingArguments(**training_kwargs(out, max_steps=4), **CURRICULUM_FLAGS)
    trainer = hfde.DataEfficiencyTrainer(
        model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate
    )
    with pytest.raises(ValueError, match=r"checkpoint-3 has every file but .*not written by DataEfficiencyTrainer"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"ignore_data_skip"):
        trainer.train(resume_from_checkpoint=True)


# ---------------------------------------------------------------------------------------------
# 7. packed rows: varlen kwargs that do not describe the row
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cu", [[0, 5, 9], [0, 6, 3, 10], [1, 5, 10]], ids=["short", "decreasing", "not-from-0"])
def test_cu_seq_lens_that_do_not_describe_the_packed_row_are_named(cu):
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64)).train()
    handle = hfde.apply_random_ltd(model, {"min_value": 8, "max_value": 16, "require_steps": 4, "seq_per_step": 8})
    handle.kept_length = 2
    ids = torch.randint(0, 64, (1, 10))
    cu = torch.tensor(cu, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"cu_seq_lens_q=\[.*\] does not describe a packed row of 10 tokens"):
        model(ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=5, max_length_k=5, use_cache=False)
