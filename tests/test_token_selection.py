"""Excess-loss token selection: one step's loss and gradient against a from-scratch recomputation (top-k by excess
loss per micro-batch, mean over the kept tokens of the whole step) under gradient accumulation, offline equal to
online, resume exactness, the compute accounting, and the clear errors."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import torchrun, training_kwargs
from tiny import (
    CURRICULUM_FLAGS,
    RANDOM_LTD_FLAGS,
    VOCAB,
    RecordingTrainer,
    collate,
    make_dataset,
    step_losses,
    tiny_model,
)

import hf_data_efficiency as hfde
from hf_data_efficiency import DataEfficiencyConfig, DataEfficiencyTrainer, DataEfficiencyTrainingArguments
from hf_data_efficiency.curriculum.reference import ReferenceLoss
from hf_data_efficiency.selection import selected_count

RATIO = 0.6


class CapturingTrainer(RecordingTrainer):
    """Keeps a copy of every training micro-batch as the model received it."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.__dict__.setdefault("batches", []).append({k: v.clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)


def oracle_step_loss(model, reference, micro_batches, ratio):
    """From scratch, token by token in float64: per micro-batch, the k = floor(ratio n + 1/2) label tokens of highest
    (training loss - reference loss); the step's loss is their training losses' mean over all micro-batches."""
    kept, total = [], 0
    for b in micro_batches:
        inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        logp = torch.log_softmax(model(**inputs).logits.double(), -1)
        with torch.no_grad():
            ref_logp = torch.log_softmax(reference(**inputs).logits.double(), -1)
        entries = []
        labels = b["labels"]
        for i in range(labels.shape[0]):
            for j in range(1, labels.shape[1]):
                if labels[i, j] != -100:
                    train = -logp[i, j - 1, labels[i, j]]
                    excess = float(train.detach()) + float(ref_logp[i, j - 1, labels[i, j]])
                    entries.append((excess, train))
        entries.sort(key=lambda e: e[0], reverse=True)
        k = max(1, math.floor(ratio * len(entries) + 0.5))
        kept += [train for _, train in entries[:k]]
        total += k
    return torch.stack(kept).sum() / total


def selection_args(out_dir, **overrides):
    return DataEfficiencyTrainingArguments(
        **training_kwargs(out_dir, **overrides), token_selection="excess_loss", token_selection_ratio=RATIO
    )


def test_one_step_loss_and_gradient_equal_the_recomputation_under_gradient_accumulation(tmp_path):
    model, reference = tiny_model(seed=0, dropout=0.0), tiny_model(seed=7, dropout=0.0)
    before = copy.deepcopy(model)
    args = selection_args(
        tmp_path,
        max_steps=1,
        gradient_accumulation_steps=3,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
    )
    trainer = CapturingTrainer(
        model=model, args=args, train_dataset=make_dataset(), data_collator=collate, reference_model=reference
    )
    trainer.train()
    batches = trainer.batches
    assert len(batches) == 3
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    assert len(set(counts)) > 1  # micro-batches of different sizes: a per-micro-batch mean would weigh them wrongly
    expected_k = sum(max(1, math.floor(RATIO * n + 0.5)) for n in counts)
    assert {r["num_items_in_batch"] for r in trainer.records} == {expected_k}
    oracle = oracle_step_loss(before, reference, batches, RATIO)
    assert trainer.state.log_history[0]["loss"] == pytest.approx(oracle.item(), rel=1e-5)
    oracle.backward()  # SGD with lr 1: the update is minus the gradient of the oracle's loss
    for (name, p0), p1 in zip(before.named_parameters(), model.parameters()):
        torch.testing.assert_close(p0.detach() - p1.detach(), p0.grad.float(), rtol=1e-4, atol=1e-6, msg=name)
    logs = trainer.state.log_history[0]
    assert logs["token_selection/selected_fraction"] == pytest.approx(expected_k / sum(counts))
    assert logs["token_selection/excess_loss_selected_mean"] > logs["token_selection/excess_loss_mean"]


def test_selected_count_rounds_to_the_nearest_token():
    cases = {(10, 0.6): 6, (11, 0.6): 7, (12, 0.6): 7, (7, 0.5): 4, (5, 1.0): 5, (1, 0.01): 1, (0, 0.6): 0}
    assert {case: selected_count(*case) for case in cases} == cases


def test_ratio_one_is_the_plain_loss(tmp_path):
    reference = tiny_model(seed=7, dropout=0.0)
    plain = DataEfficiencyTrainer(
        model=tiny_model(seed=0, dropout=0.0),
        args=DataEfficiencyTrainingArguments(**training_kwargs(tmp_path / "plain", max_steps=3), **RANDOM_LTD_FLAGS),
        train_dataset=make_dataset(),
        data_collator=collate,
    )
    plain.train()
    every = DataEfficiencyTrainer(
        model=tiny_model(seed=0, dropout=0.0),
        args=DataEfficiencyTrainingArguments(
            **training_kwargs(tmp_path / "all", max_steps=3),
            **RANDOM_LTD_FLAGS,
            token_selection="excess_loss",
            token_selection_ratio=1.0,
        ),
        train_dataset=make_dataset(),
        data_collator=collate,
        reference_model=reference,
    )
    every.train()
    a, b = step_losses(plain.state.log_history), step_losses(every.state.log_history)
    assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-5) for k in a)


def test_offline_column_selects_as_the_online_reference(tmp_path):
    reference = tiny_model(seed=7, dropout=0.0)
    data = ReferenceLoss(reference).map(make_dataset(), token_losses=True)

    def run(name, reference=None, **flags):
        trainer = DataEfficiencyTrainer(
            model=tiny_model(seed=0, dropout=0.0),
            args=DataEfficiencyTrainingArguments(
                **training_kwargs(tmp_path / name, max_steps=4),
                **CURRICULUM_FLAGS,  # rows truncated per step: the column is truncated with them
                token_selection="excess_loss",
                token_selection_ratio=RATIO,
                **flags,
            ),
            train_dataset=data,
            data_collator=collate,
            reference_model=reference,
        )
        trainer.train()
        return trainer.state.log_history

    online = run("online", reference)
    offline = run("offline", token_selection_reference_column="reference_token_loss")
    a, b = step_losses(online), step_losses(offline)
    assert len(a) == 4 and all(b[k] == pytest.approx(a[k], rel=1e-5) for k in a)
    key = "token_selection/reference_loss_mean"
    assert [h[key] for h in offline if key in h] == pytest.approx([h[key] for h in online if key in h], rel=1e-5)


def test_resume_is_exact_with_selection_curriculum_and_random_ltd(tmp_path):
    reference = tiny_model(seed=7, dropout=0.0)
    flags = {**CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS, "token_selection": "excess_loss", "token_selection_ratio": 0.5}

    def run(out, resume=None, ref=reference):
        args = DataEfficiencyTrainingArguments(
            **training_kwargs(out, max_steps=6, save_strategy="steps", save_steps=3), **flags
        )
        trainer = DataEfficiencyTrainer(
            model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate, reference_model=ref
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run(tmp_path / "whole")
    resumed = run(tmp_path / "whole_again", resume=str(tmp_path / "whole" / "checkpoint-3"))
    keep = ("loss", "data_efficiency/effective_tokens", "token_selection/reference_tokens")
    later = [{k: h[k] for k in keep} for h in whole.state.log_history if "loss" in h and h["step"] > 3]
    again = [{k: h[k] for k in keep} for h in resumed.state.log_history if "loss" in h and h["step"] > 3]
    assert later == again and len(again) == 3
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # another reference model would select other tokens: refused, naming it
    with pytest.raises(ValueError, match="not this run's reference"):
        run(tmp_path / "other", resume=str(tmp_path / "whole" / "checkpoint-3"), ref=tiny_model(seed=8))


def test_effective_tokens_count_the_reference_forwards_as_a_third(tmp_path):
    trainer = RecordingTrainer(
        model=tiny_model(seed=0),
        args=selection_args(tmp_path, max_steps=3),
        train_dataset=make_dataset(),
        data_collator=collate,
        reference_model=tiny_model(seed=7),
    )
    trainer.train()
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    tokens = sum(r["width"] * 4 for r in trainer.records)  # every micro-batch holds 4 rows
    assert last["token_selection/reference_tokens"] == tokens
    assert last["data_efficiency/reference_effective_tokens"] == pytest.approx(tokens / 3)
    assert last["data_efficiency/effective_tokens"] == pytest.approx(tokens * (1 + 1 / 3))


def test_reference_loss_curriculum_from_the_flag(tmp_path):
    reference = tiny_model(seed=7, dropout=0.0)
    reference.save_pretrained(tmp_path / "ref")
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path / "run", max_steps=2),
        curriculum_metrics=["seqlen", "reference_loss"],
        curriculum_difficulty_type=["value", "percentile"],
        curriculum_min_difficulty=[12, 50],
        curriculum_max_difficulty=[40, 100],
        curriculum_total_curriculum_step=[6],
        curriculum_difficulty_step=[1],
        curriculum_reference_model=[str(tmp_path / "ref")],  # one value: the metric that reads it gets it
    )
    cfg = args.get_data_efficiency_config()
    assert [m.reference_model for m in cfg.curriculum.sampling_metrics] == [None, str(tmp_path / "ref")]
    data = make_dataset()
    trainer = DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    scored = trainer.engine.metric_dataset(data)["reference_loss"]
    assert scored == pytest.approx(ReferenceLoss(reference)(data[:]), rel=1e-6)
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    real = sum(len(r) for r in data["input_ids"])
    assert last["curriculum/reference_scoring_tokens"] == real  # the whole dataset was scored once
    assert last["data_efficiency/reference_effective_tokens"] == pytest.approx(real / 3)


def test_engine_in_a_plain_loop_selects_like_the_oracle():
    model, reference = tiny_model(seed=0, dropout=0.0), tiny_model(seed=7, dropout=0.0)
    engine = hfde.DataEfficiencyEngine(
        {"token_selection": {"ratio": 0.3}}, batch_size=4, gradient_accumulation_steps=2
    )
    engine.attach_reference(reference, model=model)
    data = make_dataset(8)
    batches = [collate([data[i] for i in range(j, j + 4)]) for j in (0, 4)]
    num_selected = engine.selected_tokens(batches)
    loss = sum(engine.selection_loss(model, b, num_selected)[0] for b in batches)
    assert loss.item() == pytest.approx(oracle_step_loss(model, reference, batches, 0.3).item(), rel=1e-5)


def test_config_round_trips_through_every_loader(tmp_path):
    cfg = DataEfficiencyConfig.load({"token_selection": {"ratio": 0.7, "reference_model": "/ref"}})
    cfg.save_pretrained(tmp_path)
    assert DataEfficiencyConfig.from_pretrained(tmp_path) == cfg
    assert DataEfficiencyConfig.from_deepspeed(cfg.to_deepspeed()) == cfg
    assert DataEfficiencyConfig.load({"data_efficiency": cfg.to_deepspeed()}) == cfg
    assert "token_selection" not in DataEfficiencyConfig().to_dict()  # configs without it are written as before
    args = DataEfficiencyTrainingArguments(str(tmp_path), report_to=[], data_efficiency_config=str(tmp_path))
    assert args.get_data_efficiency_config() == cfg


@pytest.mark.parametrize("ratio", [0, -0.5, 1.5, float("nan")])
def test_ratio_outside_zero_one_is_refused(tmp_path, ratio):
    with pytest.raises(ValueError, match=r"token_selection_ratio=.* is not allowed; allowed: .*> 0 and <= 1"):
        DataEfficiencyTrainingArguments(
            **training_kwargs(tmp_path), token_selection="excess_loss", token_selection_ratio=ratio
        )
    with pytest.raises(ValueError, match=r"token_selection.ratio=.* is not allowed; allowed: .*> 0 and <= 1"):
        hfde.TokenSelectionConfig(ratio=ratio)


def _trainer(tmp_path, reference=None, **flags):
    return DataEfficiencyTrainer(
        model=tiny_model(),
        args=DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=1), **flags),
        train_dataset=make_dataset(),
        data_collator=collate,
        reference_model=reference,
    )


def test_clear_errors(tmp_path):
    on = {"token_selection": "excess_loss"}
    with pytest.raises(ValueError, match="needs a reference: token_selection.reference_model"):
        _trainer(tmp_path, **on)
    small = tiny_model(seed=1)
    small.resize_token_embeddings(VOCAB // 2)
    with pytest.raises(ValueError, match=f"vocabulary has {VOCAB // 2} ids but the trained model's has {VOCAB}"):
        _trainer(tmp_path, small, **on)
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="token_selection.reference_model: the reference model's vocabulary"):
        _trainer(tmp_path, **on, token_selection_reference_model=str(tmp_path / "small"))
    with pytest.raises(ValueError, match="token_selection.reference_model='/missing' does not exist"):
        _trainer(tmp_path, **on, token_selection_reference_model="/missing")
    with pytest.raises(ValueError, match="are both given; allowed: one of them"):
        _trainer(tmp_path, **on, token_selection_reference_model="/r", token_selection_reference_column="c")
    with pytest.raises(ValueError, match="token selection is off; set token_selection='excess_loss'"):
        _trainer(tmp_path, tiny_model(seed=1))
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        _trainer(tmp_path, tiny_model(seed=1), **on, label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="seqlen_reshape cuts into rows"):
        DataEfficiencyTrainingArguments(
            **training_kwargs(tmp_path),
            **{**CURRICULUM_FLAGS, "seqlen_curriculum": "reshape"},
            **on,
            token_selection_reference_column="reference_token_loss",
        )
    trainer = _trainer(tmp_path, **on, token_selection_reference_column="reference_token_loss")
    with pytest.raises(ValueError, match="the batch has no such tensor.*token_losses=True"):
        trainer.train()


def test_two_processes_select_and_normalise_as_one_process_with_accumulation(tmp_path):
    """DDP (2 processes x batch 2 x GA 2) against one process (batch 2 x GA 4) on the same micro-batches: the top-k
    runs per micro-batch and the mean over the step's selected tokens of both processes, so the losses and the
    selection statistics are those of the single process."""
    script = str(Path(__file__).parent / "distributed" / "run_trainer.py")
    flags = ["--batch_size", "2", "--max_steps", "4", "--no_random_ltd", "--deterministic", "--token_selection"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    runs = {}
    for name, prefix, ga in (("ddp", torchrun(), "2"), ("single", [sys.executable], "4")):
        out = tmp_path / name
        cmd = [*prefix, script, "--output_dir", str(out), "--record", str(out / "rec_RANK.json"), "--ga", ga, *flags]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        runs[name] = json.loads((out / "rec_0.json").read_text())
    assert runs["ddp"]["world_size"] == 2 and runs["single"]["world_size"] == 1
    for step, loss in runs["single"]["losses"].items():
        assert runs["ddp"]["losses"][step] == pytest.approx(loss, rel=1e-5), step
    keys = (
        "token_selection/selected_fraction",
        "token_selection/excess_loss_mean",
        "token_selection/reference_tokens",
    )
    logs = {n: [h for h in r["log_history"] if "loss" in h] for n, r in runs.items()}
    for a, b in zip(logs["ddp"], logs["single"]):
        assert all(a[k] == pytest.approx(b[k], rel=1e-5) for k in keys), (a, b)
