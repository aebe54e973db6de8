"""Dynamic (token-budget) batching over a streaming curriculum, checked against oracles: DeepSpeed's difficulty
schedule, the buffer and the greedy packing simulated from scratch, the LR formula recomputed from each step's
samples, and an uninterrupted run for resume."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from _helpers import training_kwargs
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from test_streaming import SEQLEN, curriculum, make_rows, open_stream, write_shards
from tiny import CURRICULUM_FLAGS, SEQLEN_METRIC, TRUNCATE_METRIC, RecordingTrainer, collate, make_dataset, tiny_model

from hf_data_efficiency import DataEfficiencyTrainingArguments
from hf_data_efficiency.batching.stream import MicroBatchCollator, StreamingTokenBudget
from hf_data_efficiency.config import CurriculumConfig, DynamicBatchingConfig, SeqlenTransformConfig
from hf_data_efficiency.curriculum.transforms import MAX_TOKENS_KEY, POSITION_KEY
from hf_data_efficiency.engine import DataEfficiencyEngine

N, BATCH = 240, 4
TRUNCATE = {
    "min_difficulty": 8,
    "max_difficulty": 40,
    "schedule_type": "fixed_linear",
    "schedule_config": {"total_curriculum_step": 12, "difficulty_step": 4},
}


class TorchRows(torch.utils.data.IterableDataset):
    """A plain torch stream of rows."""

    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


def build(source, ga=2, streaming=None, metric=None, transform=None, packed=False, **budget):
    cfg = curriculum(metric, **(streaming or {}))
    if transform is not None:
        cfg = CurriculumConfig(sampling_metrics=cfg.sampling_metrics, streaming=cfg.streaming, transform=transform)
    return StreamingTokenBudget(
        source,
        cfg,
        DynamicBatchingConfig(**{"max_tokens": 120, **budget}),
        batch_size=BATCH,
        gradient_accumulation_steps=ga,
        packed=packed,
    )


def micro_batches(stream, limit=None, check=None):
    """``(step, j, samples)`` for every micro-batch yielded (step and index from the position tag), at most
    ``limit``; ``check(stream, step)`` runs as each one is yielded."""
    out, ga = [], stream.gradient_accumulation_steps
    for mb in stream:
        (position,) = {s[POSITION_KEY] for s in mb}
        out.append((position // (stream.world_size * ga) + 1, position % ga, mb))
        if check is not None:
            check(stream, out[-1][0])
        if limit is not None and len(out) >= limit:
            break
    return out


def cost(lengths, packed=False):
    return sum(lengths) if packed else len(lengths) * max(lengths)


def first_eligible_step(length, schedule):
    step = 1
    while length > schedule.get_difficulty(step):
        step += 1
    return step


def pack(order, lengths, max_tokens, ga, min_bs, max_bs):
    """Greedy consecutive packing into at most ``ga`` micro-batches, each leaving ``min_bs`` samples for those to
    come; also whether all ``ga`` are closed by a sample that does not fit."""
    batches, start = [], 0
    while len(batches) < ga and start < len(order):
        limit = len(order) - min_bs * (ga - len(batches) - 1)
        end = start
        while end < limit and (max_bs is None or end - start < max_bs):
            if cost([lengths[i] for i in order[start : end + 1]]) > max_tokens:
                break
            end += 1
        if end - start < min_bs:
            break
        batches.append(order[start:end])
        start = end
    return batches, len(batches) == ga and start < len(order)


def oracle(lengths, schedule, max_tokens, ga, fixed, buffer_size, chunk_size, min_bs=1, max_bs=None):
    """Every step's micro-batches and the drop count, from scratch: chunks of ``min(chunk_size, buffer_size - fixed +
    1)`` samples are read while the eligible ones do not close ``ga`` micro-batches; a full buffer evicts the hardest
    (latest first-eligible step, newest first) only while fewer than ``fixed`` are eligible; then the eligible samples
    in stream order are packed, else completed with those closest to eligibility."""
    chunk = min(chunk_size, buffer_size - fixed + 1)
    hardness = {i: (first_eligible_step(n, schedule), i) for i, n in enumerate(lengths)}
    buffer, read, exhausted, dropped, steps, step = [], 0, False, 0, [], 1
    while True:
        difficulty = schedule.get_difficulty(step)
        while not exhausted:
            eligible = [i for i in buffer if lengths[i] <= difficulty]
            if pack(eligible, lengths, max_tokens, ga, min_bs, max_bs)[1]:
                break
            room = buffer_size - len(buffer)
            if room < chunk:
                if len(eligible) >= fixed:
                    break
                waiting = sorted((i for i in buffer if lengths[i] > difficulty), key=hardness.get)
                evicted = set(waiting[len(waiting) - (chunk - room) :])
                buffer = [i for i in buffer if i not in evicted]
                dropped += len(evicted)
            new = list(range(read, min(read + chunk, len(lengths))))
            buffer, read, exhausted = buffer + new, read + len(new), len(new) < chunk
        eligible = [i for i in buffer if lengths[i] <= difficulty]
        waiting = sorted((i for i in buffer if lengths[i] > difficulty), key=hardness.get)
        batches, _ = pack(eligible, lengths, max_tokens, ga, min_bs, max_bs)
        if len(batches) < ga:
            batches, _ = pack(eligible + waiting, lengths, max_tokens, ga, min_bs, max_bs)
        if len(batches) < ga:
            return steps, dropped + len(buffer)
        steps.append(batches)
        taken = {i for b in batches for i in b}
        buffer = [i for i in buffer if i not in taken]
        step += 1


@pytest.mark.parametrize(
    "max_tokens,min_bs,max_bs,ga,buffer,chunk",
    [
        (120, 1, None, 2, 4096, 4096),  # the whole stream buffered at once
        (96, 2, 5, 3, 4096, 4096),
        (60, 1, None, 1, 4096, 4096),
        (120, 1, None, 2, 64, 16),  # a small buffer: chunked reads and evictions
        (100, 2, 6, 2, 40, 8),
    ],
)
@pytest.mark.parametrize("kind", ["datasets", "torch"])
def test_micro_batches_and_drops_equal_a_from_scratch_simulation(
    tmp_path, max_tokens, min_bs, max_bs, ga, buffer, chunk, kind
):
    rows = make_rows()
    in_order = [r for s in range(3) for r in rows[s::3]]  # the datasets stream reads shard after shard
    source = open_stream(write_shards(tmp_path, rows)) if kind == "datasets" else TorchRows(in_order)
    stream = build(
        source,
        ga=ga,
        streaming={"buffer_size": buffer, "chunk_size": chunk},
        max_tokens=max_tokens,
        min_batch_size=min_bs,
        max_batch_size=max_bs,
    )
    out = micro_batches(stream)
    lengths = [len(r["input_ids"]) for r in in_order]
    expected, dropped = oracle(
        lengths, CurriculumScheduler(SEQLEN), max_tokens, ga, BATCH * ga, buffer, chunk, min_bs, max_bs
    )
    expected = [[[in_order[i]["id"] for i in b] for b in step] for step in expected]
    got = [[[s["id"] for s in mb] for _, _, mb in out[k : k + ga]] for k in range(0, len(out), ga)]
    assert got == expected and len(expected) > 5
    assert [(step, j) for step, j, _ in out] == [(k + 1, j) for k in range(len(expected)) for j in range(ga)]
    assert stream.counters.dropped == dropped
    if buffer < N:
        assert dropped > 0


@pytest.mark.parametrize(
    "policy,buffer,packed,budget",
    [
        ("drop", 64, False, {"max_tokens": 120}),
        ("drop", 48, True, {"max_tokens": 100, "min_batch_size": 2, "max_batch_size": 6}),
        ("hold", 32, False, {"max_tokens": 120, "min_batch_size": 3, "max_batch_size": 5}),
    ],
)
def test_every_micro_batch_fits_and_every_sample_is_eligible_or_counted_early(
    tmp_path, policy, buffer, packed, budget
):
    rows = make_rows()
    stream = build(
        open_stream(write_shards(tmp_path, rows)),
        streaming={"buffer_size": buffer, "buffer_full": policy},
        packed=packed,
        **budget,
    )
    sizes, reading = [], set()

    def check(stream, step):
        sizes.append(stream.buffered)
        if not stream._exhausted:
            reading.add(step)  # steps formed before the end of the stream

    out = micro_batches(stream, check=check)
    schedule = CurriculumScheduler(SEQLEN)
    max_bs = budget.get("max_batch_size") or math.inf
    early = Counter()
    for step, _, mb in out:
        lengths = [len(s["input_ids"]) for s in mb]
        assert budget.get("min_batch_size", 1) <= len(mb) <= max_bs
        assert cost(lengths, packed) <= budget["max_tokens"]
        early[step] += sum(n > schedule.get_difficulty(step) for n in lengths)
    assert sum(early.values()) == stream.counters.admitted_early
    if policy == "drop":  # only the drain after the end of the stream completes steps with ineligible samples
        assert not any(early[step] for step in reading) and stream.counters.dropped > 0
    else:  # hold keeps every sample but the last few that cannot give each micro-batch min_batch_size
        assert sum(early[step] for step in reading) > 0 and stream.counters.dropped < 2 * 3
    assert max(sizes) <= buffer
    # exactly GA micro-batches per step, steps in order
    assert Counter(step for step, _, _ in out) == dict.fromkeys(range(1, out[-1][0] + 1), 2)
    # the multiset served is the input minus exactly the counted drops and exclusions
    ids = [s["id"] for _, _, mb in out for s in mb]
    c = stream.counters
    assert len(set(ids)) == len(ids) == c.served and set(ids) <= set(range(N))
    assert c.read == N and len(ids) == N - c.dropped - c.excluded
    logs = stream.stream_logs(out[-1][0])
    assert logs["curriculum/stream_dropped"] == c.dropped and logs["curriculum/stream_buffered"] == 0


def test_excluded_samples_are_counted_and_never_served(tmp_path):
    rows = make_rows()
    metric = {"max_difficulty": 20, "schedule_config": {"total_curriculum_step": 4, "difficulty_step": 2}}
    stream = build(open_stream(write_shards(tmp_path, rows)), metric=metric, streaming={"buffer_size": 4096})
    ids = [s["id"] for _, _, mb in micro_batches(stream) for s in mb]
    long = {r["id"] for r in rows if len(r["input_ids"]) > 20}
    assert stream.counters.excluded == len(long) > 0 and not long & set(ids)
    assert len(ids) == N - len(long) - stream.counters.dropped


@pytest.mark.parametrize("method", ["linear", "sqrt", "none"])
def test_lr_factor_and_logs_are_recomputed_from_each_steps_samples(tmp_path, method):
    engine = DataEfficiencyEngine(
        {"curriculum": curriculum().to_dict(), "dynamic_batching": {"max_tokens": 120, "lr_scaling_method": method}},
        batch_size=BATCH,
        gradient_accumulation_steps=2,
    )
    stream = engine.build_stream(open_stream(write_shards(tmp_path, make_rows())))
    assert engine.batch_sampler is not None and engine.sampler is stream
    by_step: dict[int, list] = {}
    for step, _, mb in micro_batches(stream):
        by_step.setdefault(step, []).append([len(s["input_ids"]) for s in mb])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    reference = BATCH * 2
    for step, batches in by_step.items():
        n = sum(len(b) for b in batches)
        factor = {"linear": n / reference, "sqrt": math.sqrt(n / reference), "none": 1.0}[method]
        assert engine.lr_factor(step - 1) == pytest.approx(factor)
        with engine.scaled_lr(optimizer, step - 1):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * factor)
        real = sum(sum(b) for b in batches)
        logs = engine.step_logs(step)
        assert logs["dynamic_batching/samples"] == n
        assert logs["dynamic_batching/real_tokens"] == real
        assert logs["dynamic_batching/padding_fraction"] == pytest.approx(1 - real / sum(cost(b) for b in batches))
        assert logs["dynamic_batching/lr_factor"] == pytest.approx(factor)
    assert len({sum(len(b) for b in bs) for bs in by_step.values()}) > 1  # the step sizes really vary


def test_seqlen_truncate_caps_the_counted_lengths_and_tags_the_step(tmp_path):
    truncate = SeqlenTransformConfig(name="seqlen_truncate", **TRUNCATE)
    stream = build(open_stream(write_shards(tmp_path, make_rows())), transform=truncate, max_tokens=64)
    schedule = CurriculumScheduler(TRUNCATE)
    out = micro_batches(stream)
    assert out
    for step, _, mb in out:
        cap = schedule.get_difficulty(step)
        assert {s[MAX_TOKENS_KEY] for s in mb} == {cap}
        assert cost([min(len(s["input_ids"]), cap) for s in mb]) <= 64
    assert any(cost([len(s["input_ids"]) for s in mb]) > 64 for _, _, mb in out)  # the cap made them fit


def test_over_long_samples_are_refused_or_truncated_and_counted(tmp_path):
    rows = make_rows()
    files = write_shards(tmp_path, rows)
    with pytest.raises(ValueError, match=r"longer than max_tokens=30 tokens.*truncate_long_samples"):
        micro_batches(build(open_stream(files), max_tokens=30))
    with pytest.raises(ValueError, match=r"max_tokens // min_batch_size = 60 // 2 = 30"):
        micro_batches(build(open_stream(files), max_tokens=60, min_batch_size=2))
    stream = build(open_stream(files), max_tokens=30, truncate_long_samples=True, streaming={"buffer_size": 4096})
    out = micro_batches(stream)
    assert stream.selection.truncated_samples == sum(len(r["input_ids"]) > 30 for r in rows) > 0
    for _, _, mb in out:
        assert {s[MAX_TOKENS_KEY] for s in mb} == {30}
        assert cost([min(len(s["input_ids"]), 30) for s in mb]) <= 30


@pytest.mark.parametrize("cut", [1, 5, 9])
def test_resume_from_a_json_state_continues_identically(tmp_path, cut):
    files = write_shards(tmp_path, make_rows())
    config = {
        "curriculum": curriculum(buffer_size=48).to_dict(),
        "dynamic_batching": {"max_tokens": 100, "max_batch_size": 8},
    }

    def engine():
        e = DataEfficiencyEngine(config, batch_size=BATCH, gradient_accumulation_steps=2)
        e.build_stream(open_stream(files))
        return e

    full = engine()
    uninterrupted = micro_batches(full.sampler)
    first = engine()
    head = micro_batches(first.sampler, limit=cut * 2 + 1)  # the loader has already started the next step
    state = json.loads(json.dumps(first.state_dict(cut)))
    resumed = engine()
    resumed.load_state_dict(state)
    tail = micro_batches(resumed.sampler)
    assert len(uninterrupted) > cut * 2 + 4 and full.sampler.counters.dropped > 0
    assert head[: cut * 2] == uninterrupted[: cut * 2] and tail == uninterrupted[cut * 2 :]
    assert resumed.sampler.counters == full.sampler.counters
    # the checkpointed step's logs are known right after the resume, before any step is formed
    again = engine()
    again.load_state_dict(state)
    assert again.step_logs(cut)["dynamic_batching/samples"] == sum(len(mb) for s, _, mb in uninterrupted if s == cut)
    positions = [mb[0][POSITION_KEY] for _, _, mb in uninterrupted]
    assert positions == list(range(len(uninterrupted)))  # unique, deterministic collation keys
    # a changed budget is refused
    other = DataEfficiencyEngine(
        {**config, "dynamic_batching": {"max_tokens": 90}}, batch_size=BATCH, gradient_accumulation_steps=2
    )
    other.build_stream(open_stream(files))
    with pytest.raises(ValueError, match="dynamic_batching"):
        other.load_state_dict(state)


def test_refusals_name_the_field(tmp_path):
    files = write_shards(tmp_path, make_rows())
    engine = DataEfficiencyEngine({"dynamic_batching": {"max_tokens": 100}}, batch_size=BATCH)
    with pytest.raises(ValueError, match="has no curriculum; add a curriculum"):
        engine.check_dataset(open_stream(files))
    with pytest.raises(
        ValueError, match=r"sequence_picking_order='seqlen' cannot be used with a stream.*'dataloader'"
    ):
        build(open_stream(files), sequence_picking_order="seqlen")
    reshape = SeqlenTransformConfig(name="seqlen_reshape", **TRUNCATE)
    with pytest.raises(ValueError, match="seqlen_reshape curriculum"):
        build(open_stream(files), transform=reshape)
    loader = torch.utils.data.DataLoader(
        build(open_stream(files)), batch_size=1, num_workers=1, collate_fn=MicroBatchCollator(collate)
    )
    with pytest.raises(ValueError, match="dataloader_num_workers=1.*allowed: 0"):
        next(iter(loader))


# ----- Trainer -------------------------------------------------------------------------------------------------------
def stream_trainer(out, files, **overrides):
    import datasets

    kwargs = training_kwargs(
        out,
        save_strategy="steps",
        save_steps=4,
        dynamic_batching=True,
        dynamic_batching_max_tokens=160,
        dynamic_batching_lr_scaling_method="sqrt",
        **overrides,
    )
    args = DataEfficiencyTrainingArguments(**kwargs, **CURRICULUM_FLAGS)
    source = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    return RecordingTrainer(model=tiny_model(), args=args, train_dataset=source, data_collator=collate)


def test_trainer_over_json_shards_trains_within_budget_logs_and_resumes(tmp_path):
    from tiny import sample_lengths

    data = make_dataset()
    files = []
    for s in range(3):
        files.append(str(tmp_path / f"part-{s}.json"))
        data.shard(3, s, contiguous=True).to_json(files[-1])
    trainer = stream_trainer(tmp_path / "out", files)
    trainer.train()
    lengths = sample_lengths()
    sampling, truncate = CurriculumScheduler(SEQLEN_METRIC), CurriculumScheduler(TRUNCATE_METRIC)
    logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert sorted(logs) == list(range(1, 9))
    for step, h in logs.items():
        recs = [r for r in trainer.records if r["step"] == step]
        assert len(recs) == 2  # GA micro-batches on the one process
        cap = truncate.get_difficulty(step)
        for r in recs:
            assert r["indices"] and len(r["indices"]) * r["width"] <= 160  # what the model saw fits the budget
            assert r["width"] == min(cap, max(lengths[i] for i in r["indices"]))
            assert all(lengths[i] <= sampling.get_difficulty(step) for i in r["indices"])
        samples = sum(len(r["indices"]) for r in recs)
        real = sum(min(int(lengths[i]), cap) for r in recs for i in r["indices"])
        computed = sum(len(r["indices"]) * r["width"] for r in recs)
        assert h["dynamic_batching/samples"] == samples
        assert h["dynamic_batching/real_tokens"] == real
        assert h["dynamic_batching/padding_fraction"] == pytest.approx(1 - real / computed)
        assert h["dynamic_batching/lr_factor"] == pytest.approx(np.sqrt(samples / 8))
        assert h["curriculum/stream_admitted_early"] == 0
    served = [i for r in trainer.records for i in r["indices"]]
    assert len(set(served)) == len(served)
    # resume from step 4: the same micro-batches and identical losses
    resumed = stream_trainer(tmp_path / "out", files)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    tail = [(r["step"], r["indices"], r["width"]) for r in trainer.records if r["step"] > 4]
    assert [(r["step"], r["indices"], r["width"]) for r in resumed.records] == tail
    full = {k: h["loss"] for k, h in logs.items() if k > 4}
    again = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h and h["step"] > 4}
    assert again == full and len(full) == 4


def test_trainer_refuses_dataloader_workers_with_a_stream(tmp_path):
    data = make_dataset()
    files = [str(tmp_path / "part.json")]
    data.to_json(files[0])
    trainer = stream_trainer(tmp_path / "out", files, dataloader_num_workers=1)
    with pytest.raises(ValueError, match="dataloader_num_workers=1.*allowed: 0"):
        trainer.get_train_dataloader()


def test_two_processes_read_disjoint_shards_agree_on_the_end_and_sum_the_lr_factor(tmp_path):
    """Shards of unequal size: one process runs dry first. Oracle: each process's shard run alone, in-process; the
    logged samples and LR factor of a step recomputed from both processes' micro-batches."""
    import os
    import subprocess

    from _helpers import torchrun
    from datasets.distributed import split_dataset_by_node
    from run_stream import stream_config
    from run_stream_dynbatch import BUDGET
    from test_streaming import ROOT

    rows = make_rows()
    files = []
    for s, (lo, hi) in enumerate([(0, 100), (100, 150), (150, 180), (180, N)]):
        files += write_shards(tmp_path / "data" / str(s), rows[lo:hi], shards=1)
    script = ROOT / "tests" / "distributed" / "run_stream_dynbatch.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [*torchrun(), str(script), str(tmp_path / "out"), *files]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    alone = []
    for rank in range(2):
        shard = split_dataset_by_node(open_stream(files), rank=rank, world_size=2)
        stream = StreamingTokenBudget(shard, stream_config(), BUDGET, batch_size=BATCH, gradient_accumulation_steps=2)
        alone.append([[s["id"] for s in mb] for _, _, mb in micro_batches(stream)])
    steps = min(len(b) for b in alone) // 2
    assert len(alone[0]) != len(alone[1]) and steps > 3  # one process really runs dry first
    served = [{i for mb in r["batches"] for i in mb} for r in results]
    assert not served[0] & served[1]  # disjoint
    for rank, r in enumerate(results):
        assert r["steps"] == steps  # the same number of steps, agreed
        assert r["batches"] == alone[rank][: 2 * steps]
    for k in range(steps):
        samples = sum(len(mb) for r in results for mb in r["batches"][2 * k : 2 * k + 2])
        for r in results:
            assert r["stats"][k]["samples"] == samples
            assert r["stats"][k]["lr_factor"] == pytest.approx(math.sqrt(samples / (BATCH * 2 * 2)))


def test_plain_accelerate_loop_streams_token_budget_batches_and_resumes(tmp_path):
    """scripts/examples/train_no_trainer.py --streaming with a curriculum and dynamic batching: the logged step sizes
    and LR factors equal those of the same stream rebuilt in-process, and a resume from step 2 gives identical
    losses."""
    import shutil

    import datasets
    from train_no_trainer import build_dataset, main, parse_args

    config = tmp_path / "de.json"
    dynamic = {"max_tokens": 96, "lr_scaling_method": "linear"}
    config.write_text(json.dumps({"curriculum": curriculum().to_dict(), "dynamic_batching": dynamic}))
    out = tmp_path / "out"
    argv = ["--config", str(config), "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2", "--cpu"]
    argv += ["--gradient_accumulation_steps", "2", "--dropout", "0", "--num_samples", "128", "--max_length", "32"]
    argv += ["--per_device_batch_size", "4", "--streaming"]
    history = main(argv)
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    data, _, _ = build_dataset(parse_args(argv))
    engine = DataEfficiencyEngine(config.read_text(), batch_size=4, gradient_accumulation_steps=2)
    stream = engine.build_stream(datasets.Dataset.to_iterable_dataset(data, num_shards=4))
    steps = {}
    for step, _, mb in micro_batches(stream, limit=8):
        lengths = [len(s["input_ids"]) for s in mb]
        assert cost(lengths) <= 96
        steps[step] = steps.get(step, 0) + len(mb)
    for row in history:
        assert row["dynamic_batching/samples"] == steps[row["step"]]
        assert row["dynamic_batching/lr_factor"] == pytest.approx(steps[row["step"]] / 8)
    assert len(set(steps.values())) > 1
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(out, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoint-4")
    again = main([*argv[:3], str(resumed_dir), *argv[4:], "--resume_from_checkpoint", "latest"])
    assert [(r["step"], r["loss"]) for r in again] == [(r["step"], r["loss"]) for r in history[2:]]


def test_trainer_with_two_processes_sums_the_step_and_resumes(tmp_path):
    """Two DDP processes (gloo) on a 4-shard stream with dynamic batching: disjoint samples, the same steps, every
    micro-batch within budget, the logged step size the sum over both processes, and a resume of both from
    checkpoint 3 sees the micro-batches the uninterrupted processes saw."""
    from test_streaming import two_stream_trainers
    from tiny import sample_lengths

    flags = ["--batch_size", "2", "--ga", "2", "--max_steps", "6", "--save_steps", "3", "--no_random_ltd"]
    flags += ["--dynamic_max_tokens", "120"]
    ranks = two_stream_trainers(tmp_path, *flags)
    seen = [[i for rec in r["records"] for i in rec["indices"]] for r in ranks]
    assert not set(seen[0]) & set(seen[1]) and all(len(set(s)) == len(s) for s in seen)
    lengths, sampling = sample_lengths(), CurriculumScheduler(SEQLEN_METRIC)
    logs = {h["step"]: h for h in ranks[0]["log_history"] if "loss" in h}
    assert sorted(logs) == list(range(1, 7))
    for step, h in logs.items():
        recs = [[rec for rec in r["records"] if rec["step"] == step] for r in ranks]
        assert [len(x) for x in recs] == [2, 2]  # GA micro-batches on each process
        for rec in recs[0] + recs[1]:
            assert len(rec["indices"]) * rec["width"] <= 120
            assert all(lengths[i] <= sampling.get_difficulty(step) for i in rec["indices"])
        samples = sum(len(rec["indices"]) for rec in recs[0] + recs[1])
        assert h["dynamic_batching/samples"] == samples
        assert h["dynamic_batching/lr_factor"] == pytest.approx(math.sqrt(samples / (2 * 2 * 2)))
    resumed = two_stream_trainers(tmp_path, *flags, "--resume", str(tmp_path / "run" / "checkpoint-3"))
    for before, after in zip(ranks, resumed):
        assert after["records"] == [rec for rec in before["records"] if rec["step"] > 3]
