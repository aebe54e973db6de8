"""Group mixing against independent oracles: group shares against the weights (a binomial bound per group), no repeat
within a pass of a group (each pass of a group, cut from its drawn sequence, is exactly its members), the curriculum's
eligibility inside the groups, the online rule on synthetic loss curves (a noise group, whose loss is the highest
forever, gets the least weight) and in a Trainer run, the per-group losses against a recomputation, exact resume
(map-style and streamed), two processes against one, and the errors."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import torchrun, training_kwargs
from tiny import BASE, CURRICULUM_FLAGS, VOCAB, RecordingTrainer, collate, make_dataset, sample_lengths, tiny_model

from hf_data_efficiency import DataEfficiencyEngine, DataEfficiencyTrainingArguments
from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig, MixingConfig
from hf_data_efficiency.curriculum.mixing import GroupMixer, GroupMixingSampler, group_loss_sums, mixed_order

NO_TRAINER = str(Path(__file__).resolve().parents[1] / "scripts" / "examples" / "train_no_trainer.py")


def _groups(n: int = 96) -> list[str]:
    """Three groups of unequal size: 'a' (1/2), 'b' (1/3), 'c' (1/6)."""
    return ["a" if i % 6 < 3 else "b" if i % 6 < 5 else "c" for i in range(n)]


def _sampler(strategy: str = "stratified", weights=None, n: int = 96, batch: int = 8, **kw) -> GroupMixingSampler:
    names = sorted(set(_groups(n)))
    ids = np.asarray([names.index(g) for g in _groups(n)])
    mixer = GroupMixer(MixingConfig(column="domain", strategy=strategy, weights=weights), names, seed=5)
    return GroupMixingSampler(ids, mixer, batch, **kw)


def _binomial_ok(count: int, n: int, p: float, z: float = 5.0) -> bool:
    """|count - n p| within z standard deviations of a binomial(n, p) (a false failure has probability < 1e-6)."""
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize(
    "strategy, weights, expected",
    [
        ("stratified", None, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
        ("natural", None, {"a": 1 / 2, "b": 1 / 3, "c": 1 / 6}),
        ("fixed", {"a": 1, "b": 0, "c": 3}, {"a": 1 / 4, "b": 0.0, "c": 3 / 4}),
    ],
)
def test_group_shares_follow_the_weights(strategy, weights, expected):
    sampler = _sampler(strategy, weights)
    drawn = np.concatenate([sampler.step_indices(k) for k in range(1, 301)])
    groups = np.asarray(_groups())[drawn]
    for g, p in expected.items():
        count = int((groups == g).sum())
        assert (count == 0) if p == 0 else _binomial_ok(count, drawn.size, p), (g, count, drawn.size, p)
    assert sampler.logs(5) == {f"mixing/weight_{g}": pytest.approx(p) for g, p in expected.items()}


def test_no_sample_repeats_within_a_pass_of_its_group():
    """Each group's drawn sequence (steps in order, slots in order), cut into chunks of the group's size, is a
    permutation of its members in every chunk: passes never repeat a sample, and a group that runs out starts a new
    pass (the small group 'c' wraps 25 times here)."""
    sampler = _sampler("stratified")
    drawn = np.concatenate([sampler.step_indices(k) for k in range(1, 301)])
    labels = np.asarray(_groups())
    for g in "abc":
        members = np.flatnonzero(labels == g)
        seq = drawn[labels[drawn] == g]
        passes = len(seq) // members.size
        assert passes >= 5
        for p in range(passes):
            chunk = seq[p * members.size : (p + 1) * members.size]
            assert sorted(chunk.tolist()) == members.tolist(), (g, p)
        assert len(set(seq[passes * members.size :].tolist())) == len(seq) - passes * members.size  # the open pass
        orders = {tuple(seq[p * members.size : (p + 1) * members.size]) for p in range(passes)}
        assert len(orders) == passes  # every new pass is reshuffled


def test_eligibility_applies_within_the_groups_and_empty_groups_give_their_share():
    """With a seqlen curriculum, every drawn sample is eligible at its step; a group with no eligible sample gets no
    slot and the others share its weight (a binomial bound on the renormalised shares)."""
    lengths = sample_lengths()
    labels = np.asarray(["long" if n > 30 else ("x" if i % 2 else "y") for i, n in enumerate(lengths)])
    metric = CurriculumMetricConfig(
        name="seqlen",
        min_difficulty=12,
        max_difficulty=40,
        schedule_type="fixed_linear",
        schedule_config={"total_curriculum_step": 40, "difficulty_step": 1},
    )
    names = sorted(set(labels))
    mixer = GroupMixer(MixingConfig(column="d"), names, seed=1)
    sampler = GroupMixingSampler(
        np.asarray([names.index(g) for g in labels]),
        mixer,
        8,
        curriculum=CurriculumConfig(sampling_metrics=[metric]),
        metric_values={"seqlen": lengths},
    )
    from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler

    pacing = CurriculumScheduler({k: v for k, v in metric.to_dict().items() if k != "name"})
    early = []
    for k in range(1, 61):
        limit = pacing.get_difficulty(k)
        batch = sampler.step_indices(k)
        assert all(lengths[i] <= limit for i in batch), k
        if limit <= 30:
            early.extend(batch)
    shares = labels[np.asarray(early)]
    assert (shares == "long").sum() == 0
    assert _binomial_ok(int((shares == "x").sum()), len(early), 0.5)


def test_a_stream_takes_its_samples_in_the_mixers_order():
    """A stream of alternating groups, mixed 4:1: the served shares follow the weights (a binomial bound), where the
    stream's own order would give 1:1; every sample is served at most once."""
    data = make_dataset(400).add_column("domain", ["a" if i % 2 else "b" for i in range(400)])
    engine = DataEfficiencyEngine(
        {"mixing": {"column": "domain", "strategy": "fixed", "weights": {"a": 1, "b": 4}}}, batch_size=8
    )
    samples = list(itertools.islice(iter(engine.train_loader(data.to_iterable_dataset(num_shards=2)).dataset), 120))
    served = [s["domain"] for s in samples]
    assert _binomial_ok(served.count("b"), len(served), 0.8)
    ids = [tuple(s["input_ids"][:2]) for s in samples]
    assert len(set(ids)) == len(ids)


def test_every_rank_draws_the_same_global_batch():
    """Two samplers built independently (two ranks) give the same global batches; accelerate's BatchSamplerShard
    deals micro-batch i to rank i % 2, and the two ranks' micro-batches partition each step."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    ranks = [_sampler("natural", world_size=2, batch=4) for _ in range(2)]
    assert [ranks[0].step_indices(k) for k in range(1, 9)] == [ranks[1].step_indices(k) for k in range(1, 9)]
    dealt = [list(BatchSamplerShard(BatchSampler(s, 4, False), 2, r)) for r, s in enumerate(ranks)]
    for step in range(4):
        mine = dealt[0][step] + dealt[1][step]
        assert sorted(mine) == sorted(ranks[0].step_indices(step + 1))


def _online_mixer(groups, **kw) -> GroupMixer:
    return GroupMixer(MixingConfig(column="d", strategy="online", **kw), groups, seed=0)


def test_online_rule_does_not_chase_irreducible_loss():
    """Synthetic loss curves: two learnable groups whose loss falls, and a noise group whose loss is the highest and
    flat. A loss reward (ODM's) would favour the noise group; the learning-progress rule gives it the least weight.
    The weights equal an independent recomputation of the documented rule."""
    mixer = _online_mixer(["clean1", "clean2", "noise"])
    rng = np.random.default_rng(0)
    fast = slow = None
    for t in range(1, 201):
        loss = np.array([3 + 6 * math.exp(-t / 80), 4 + 5 * math.exp(-t / 60), 9.2]) + rng.normal(0, 0.05, 3)
        mixer.observe(t, (loss * 64).tolist(), [64, 64, 64])
        fast = loss if fast is None else 0.8 * fast + 0.2 * loss
        slow = loss if slow is None else 0.95 * slow + 0.05 * loss
        progress = np.maximum((slow - fast) / slow, 0)
        floor = max(0.02, min(1 / 3, math.sqrt(math.log(3) / (3 * t))))
        expected = np.full(3, 1 / 3) if progress.sum() == 0 else floor + (1 - 3 * floor) * progress / progress.sum()
        assert mixer.weights(t + 2) == pytest.approx(expected, rel=1e-9)  # the draw of step t + delay
        assert loss[2] == loss.max()  # the noise group's loss is the highest: a loss reward would pick it
    weights = mixer.weights(202)
    assert weights[2] < 1 / 3 and weights[2] < weights[0] and weights[2] < weights[1]
    assert weights[2] == pytest.approx(max(0.02, math.sqrt(math.log(3) / 600)), abs=0.03)  # about the floor


def test_group_loss_sums_match_per_row_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 6, 11), torch.randint(0, 11, (4, 6))
    labels[1, 4:] = -100
    groups = torch.tensor([0, 2, 0, 1])
    for causal in (True, False):
        got = group_loss_sums(groups, logits, labels, 3, causal=causal)
        lg, lb = (logits[:, :-1], labels[:, 1:]) if causal else (logits, labels)
        for g in range(3):
            rows = (groups == g).nonzero().flatten()
            losses = [
                torch.nn.functional.cross_entropy(lg[r], lb[r], ignore_index=-100, reduction="sum") for r in rows
            ]
            assert got[0, g].item() == pytest.approx(float(sum(losses)) if losses else 0.0, rel=1e-6)
            assert got[1, g].item() == sum(int((lb[r] != -100).sum()) for r in rows)
    with pytest.raises(ValueError, match="DataCollatorWithFlattening"):
        group_loss_sums(torch.tensor([0, 1, 0]), logits, labels, 3, causal=True)


def test_group_loss_sums_in_chunks_equal_one_cross_entropy_over_all_logits_to_the_bit():
    """A vocabulary large enough that the attribution reads the logits in several chunks: the sums are exactly those
    of one cross-entropy over every shifted token (what bench_mixing_attribution.py times against)."""
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 128, 4097), torch.randint(0, 4097, (4, 128))
    labels[2, 100:] = -100
    groups = torch.tensor([1, 0, 1, 2])
    shifted = torch.cat([labels[:, 1:], labels.new_full((4, 1), -100)], dim=1)
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 4097), shifted.reshape(-1), ignore_index=-100, reduction="none"
    ).view(4, 128)
    expected = torch.zeros(2, 3, dtype=torch.float64)
    expected[0].index_add_(0, groups, losses.sum(1, dtype=torch.float64))
    expected[1].index_add_(0, groups, (shifted != -100).sum(1).to(torch.float64))
    assert torch.equal(group_loss_sums(groups, logits, labels, 3, causal=True), expected)


def test_mixed_order_takes_the_oldest_of_each_slots_group():
    slots = np.array([0, 1, 0, 2, 1, 0])
    got = mixed_order(slots, np.array([10, 11, 12, 13, 14]), np.array([0, 0, 1, 1, 0]))
    assert got.tolist() == [10, 12, 11, 13, 14]  # group 2 has no candidate: its slot is skipped


def _learnable_and_noise(n: int = 96, length: int = 24):
    """Group 'text': counting sequences (token t + 1 follows t), learnable; group 'noise': uniform random tokens.
    Every row starts with the two tokens of its index (decode_indices)."""
    from datasets import Dataset
    from tiny import RADIX

    rng = np.random.default_rng(0)
    rows, domains = [], []
    for i in range(n):
        head = [BASE + i // RADIX, BASE + i % RADIX]
        if i % 2:
            start = int(rng.integers(BASE, VOCAB))
            body = [BASE + (start - BASE + j) % (VOCAB - BASE) for j in range(length - 2)]
            domains.append("text")
        else:
            body = rng.integers(BASE, VOCAB, size=length - 2).tolist()
            domains.append("noise")
        rows.append(head + body)
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * length] * n, "domain": domains})


ONLINE = {"mixing_column": "domain", "mixing_strategy": "online", "mixing_online_min_weight": 0.05}


def test_online_mixing_in_a_trainer_moves_weight_off_a_noise_group(tmp_path):
    args = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=40, learning_rate=1e-2), **ONLINE)
    trainer = RecordingTrainer(
        model=tiny_model(dropout=0.0), args=args, train_dataset=_learnable_and_noise(), data_collator=collate
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    last = logs[-1]
    assert last["mixing/weight_noise"] < 0.25 < last["mixing/weight_text"]
    assert last["mixing/loss_noise"] > last["mixing/loss_text"]  # the noise group has the higher loss, and loses
    noise = [i for r in trainer.records if r["step"] > 30 for i in r["indices"] if i % 2 == 0]
    late = sum(len(r["indices"]) for r in trainer.records if r["step"] > 30)
    assert len(noise) / late < 0.35


def assert_mixer_holds_the_per_group_losses(trainer, data, model) -> None:
    """The mixer's fast averages after one step equal each group's mean token loss under ``model`` (the weights the
    step trained from) over the samples the step drew, recomputed row by row."""
    sums = {"text": [0.0, 0], "noise": [0.0, 0]}
    for record in trainer.records:
        batch = collate([data[i] for i in record["indices"]])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row, i in enumerate(record["indices"]):
            loss = torch.nn.functional.cross_entropy(logits[row, :-1], batch["labels"][row, 1:], reduction="sum")
            sums[data[i]["domain"]][0] += float(loss)
            sums[data[i]["domain"]][1] += int((batch["labels"][row, 1:] != -100).sum())
    state = trainer.engine.mixer.state_dict()
    for g, (total, count) in sums.items():
        assert state["fast"][state["groups"].index(g)] == pytest.approx(total / count, rel=1e-5)


def test_online_losses_are_the_steps_per_group_token_losses(tmp_path):
    """After step 1 the mixer's averages hold step 1's mean token loss per group; recomputed here with the initial
    model (no dropout) on the samples step 1 drew (GA 2: both micro-batches see the initial weights)."""
    data = _learnable_and_noise()
    args = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=1), **ONLINE)
    trainer = RecordingTrainer(model=tiny_model(dropout=0.0), args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    reference = tiny_model(dropout=0.0)
    assert_mixer_holds_the_per_group_losses(trainer, data, reference)


def test_online_mixing_with_token_selection_trains_on_the_selected_tokens_and_learns_from_all(tmp_path, monkeypatch):
    """Both on: the step's loss is token selection's (the from-scratch top-k recomputation of
    test_token_selection), and the mixer's per-group averages are the loss over every token (recomputed with the
    initial model on the samples the step drew), from the token losses selection computed: not a second time."""
    from test_token_selection import RATIO, CapturingTrainer, oracle_step_loss

    from hf_data_efficiency.curriculum import mixing

    recomputed = []
    original = mixing.shifted_token_losses
    monkeypatch.setattr(mixing, "shifted_token_losses", lambda *a: recomputed.append(1) or original(*a))

    data = _learnable_and_noise()
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path, max_steps=1), **ONLINE, token_selection="excess_loss", token_selection_ratio=RATIO
    )
    model, reference = tiny_model(dropout=0.0), tiny_model(seed=7, dropout=0.0)
    initial = tiny_model(dropout=0.0)
    trainer = CapturingTrainer(
        model=model, args=args, train_dataset=data, data_collator=collate, reference_model=reference
    )
    trainer.train()
    oracle = oracle_step_loss(initial, reference, trainer.batches, RATIO)
    assert trainer.state.log_history[0]["loss"] == pytest.approx(oracle.item(), rel=1e-5)
    assert_mixer_holds_the_per_group_losses(trainer, data, initial)
    assert recomputed == []


def _run(tmp_path, name, flags, train, max_steps=6, resume=None, **extra):
    args = DataEfficiencyTrainingArguments(
        **training_kwargs(tmp_path / name, max_steps=max_steps, save_strategy="steps", save_steps=3), **flags, **extra
    )
    trainer = RecordingTrainer(model=tiny_model(), args=args, train_dataset=train, data_collator=collate)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("streamed", [False, True], ids=["map", "stream"])
def test_online_mixing_resumes_exactly(tmp_path, streamed):
    data = _learnable_and_noise()
    flags = {**ONLINE, **CURRICULUM_FLAGS} if streamed else ONLINE
    if streamed:
        flags = {**flags, "mixing_groups": ["noise", "text"]}
    train = data.to_iterable_dataset(num_shards=2) if streamed else data
    full = _run(tmp_path, "full", flags, train)
    resumed = _run(tmp_path, "full", flags, train, resume=str(tmp_path / "full" / "checkpoint-3"))
    tail = [(r["step"], r["indices"]) for r in full.records if r["step"] > 3]
    assert [(r["step"], r["indices"]) for r in resumed.records] == tail
    keys = [k for k in full.state.log_history[-2] if k.startswith("mixing/")]
    assert len(keys) == 6
    logged = {h["step"]: h for h in full.state.log_history if "loss" in h}
    after = [h for h in resumed.state.log_history if "loss" in h and h["step"] > 3]
    assert [h["step"] for h in after] == [4, 5, 6]
    for b in after:
        a = logged[b["step"]]
        assert {k: b[k] for k in keys} == pytest.approx({k: a[k] for k in keys}, rel=1e-9)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)


def test_two_processes_draw_the_single_process_stream(tmp_path):
    """The plain accelerate loop with online mixing on two gloo processes (batch 4, GA 1) against one process (batch
    4, GA 2), without dropout and with the weights frozen (LR 0: accelerate steps a prepared scheduler once per
    process, so the two runs' LR schedules differ): the same per-group losses and weights at every step, so both
    ranks drew the same global batch and summed the per-group losses once per step."""
    config = tmp_path / "mixing.json"
    config.write_text(json.dumps({"mixing": {"column": "domain", "strategy": "online"}}))
    common = ["--config", str(config), "--max_steps", "5", "--dropout", "0", "--learning_rate", "0"]
    common += ["--per_device_batch_size", "4", "--cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [*torchrun(), NO_TRAINER, "--output_dir", str(tmp_path / "two"), *common],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,  # a hung gloo shutdown fails the test instead of stalling the suite
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [
            sys.executable,
            NO_TRAINER,
            "--output_dir",
            str(tmp_path / "one"),
            "--gradient_accumulation_steps",
            "2",
            *common,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,  # a hung gloo shutdown fails the test instead of stalling the suite
    )
    assert one.returncode == 0, one.stderr[-3000:]
    rows = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("two", "one")]
    assert len(rows[0]) == len(rows[1]) == 5
    for a, b in zip(*rows):  # (the loop's "loss" is rank 0's own micro-batch; the mixing values are global)
        for key in ("mixing/weight_a", "mixing/weight_b", "mixing/loss_a", "mixing/loss_b"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert rows[0][-1]["mixing/weight_a"] != 0.5  # the weights moved


# ----- errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"strategy": "fixed", "weights": {"a": 1, "b": -1}},
            r"mixing.weights\['b'\]=-1 .*allowed: a finite number >= 0",
        ),
        ({"strategy": "fixed", "weights": {"a": 0, "b": 0}}, "are all zero; allowed: weights >= 0 with at least one"),
        ({"strategy": "fixed"}, "strategy='fixed' needs mixing.weights"),
        ({"weights": {"a": 1}}, "weights is read only with mixing.strategy='fixed'"),
        ({"strategy": "mixed"}, "mixing.strategy='mixed' is not supported.*allowed values: stratified, natural"),
        ({"strategy": "online", "online_fast_smoothing": 0.99}, "online_fast_smoothing=0.99 must be below"),
        ({"groups": ["a", "a"]}, "mixing.groups=.*duplicates"),
        ({"strategy": "online", "groups": ["a", "b", "c"], "online_min_weight": 0.5}, r"1 / 3 = 0.3333"),
    ],
)
def test_bad_mixing_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixingConfig(column="domain", **kwargs)


def test_weights_must_name_exactly_the_groups_of_the_data():
    data = make_dataset().add_column("domain", _groups())
    for weights, message in (
        ({"a": 1, "b": 1, "c": 1, "web": 2}, r"names the group\(s\) \['web'\].*allowed: \['a', 'b', 'c'\]"),
        ({"a": 1, "bb": 1, "c": 1}, r"\['bb'\] \(did you mean 'b'\?\)"),
        ({"a": 1, "b": 1}, r"has no weight for the group\(s\) \['c'\]"),
    ):
        engine = DataEfficiencyEngine(
            {"mixing": {"column": "domain", "strategy": "fixed", "weights": weights}}, batch_size=4
        )
        with pytest.raises(ValueError, match=message):
            engine.train_loader(data)


@pytest.mark.parametrize("key", ["batch_size", "world_size", "gradient_accumulation_steps"])
def test_a_bad_batch_geometry_is_refused_by_name(key):
    """The mixing sampler checks its geometry as the curriculum sampler does (a 0 used to divide by zero)."""
    geometry = {"batch": 8, "world_size": 1, "gradient_accumulation_steps": 1}
    geometry["batch" if key == "batch_size" else key] = 0
    with pytest.raises(ValueError, match=rf"{key}=0 must be an integer >= 1"):
        _sampler(**geometry)


def test_data_and_loader_refusals_name_the_setting():
    data = make_dataset().add_column("domain", _groups())
    engine = DataEfficiencyEngine({"mixing": {"column": "topic"}}, batch_size=4)
    with pytest.raises(ValueError, match=r"mixing.column='topic' is not a column.*allowed: one of \['input_ids'"):
        engine.train_loader(data)
    stream = data.to_iterable_dataset()
    with pytest.raises(ValueError, match="strategy='natural' needs the group sizes.*allowed with a stream"):
        DataEfficiencyEngine({"mixing": {"column": "domain", "strategy": "natural"}}, batch_size=4).train_loader(
            stream
        )
    with pytest.raises(ValueError, match="needs the group names up front.*mixing.groups"):
        DataEfficiencyEngine({"mixing": {"column": "domain"}}, batch_size=4).train_loader(stream)
    engine = DataEfficiencyEngine({"mixing": {"column": "domain", "groups": ["a", "b"]}}, batch_size=4)
    plan = engine.train_loader(stream)
    with pytest.raises(ValueError, match=r"value 'c' is not among the groups; allowed: \['a', 'b'\]"):
        next(iter(plan.dataloader(collate)))
    online = DataEfficiencyEngine({"mixing": {"column": "domain", "strategy": "online"}}, batch_size=4)
    plan = online.train_loader(data)
    with pytest.raises(ValueError, match=r"mixing.online_delay=2 is too short.*allowed: online_delay >= 6"):
        plan.dataloader(collate, num_workers=2, prefetch_factor=2)
    loader = iter(plan.dataloader(online.wrap_collator(collate)))
    for _ in range(2):  # step 1 and step 2 draw with the initial weights; step 3 needs the losses of step 1
        next(loader)
    with pytest.raises(RuntimeError, match="online_delay=2 allows .*engine.end_step"):
        next(loader)
