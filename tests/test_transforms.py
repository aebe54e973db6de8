"""seqlen_truncate / seqlen_reshape against a from-scratch recomputation, through real DataLoader workers."""

import logging
import math
from itertools import islice

import datasets
import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from torch.utils.data import BatchSampler, DataLoader

from hf_data_efficiency import CurriculumSampler, SeqlenTransform, seqlen_reshape, seqlen_truncate
from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig, SeqlenTransformConfig
from hf_data_efficiency.curriculum.transforms import (
    MAX_TOKENS_KEY,
    POSITION_KEY,
    CurriculumDataset,
    PositionTaggedSampler,
    SeededCollation,
)

logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
PAD = 0
N = 120
LENGTHS = np.random.default_rng(0).integers(3, 41, N)


def tokens(i):
    """Sample i's tokens encode (sample, position), so any misplaced token is visible."""
    return [i * 100 + p + 1 for p in range(LENGTHS[i])]


class PadCollator:
    """Pads to the longest example, on either side (a stand-in for DataCollatorWithPadding)."""

    def __init__(self, side):
        self.side = side

    def __call__(self, features):
        width = max(len(f["input_ids"]) for f in features)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            for key, real, filler in (("input_ids", f["input_ids"], PAD), ("labels", f["input_ids"], -100)):
                out[key].append([filler] * pad + real if self.side == "left" else real + [filler] * pad)
            ones = [1] * len(f["input_ids"])
            out["attention_mask"].append([0] * pad + ones if self.side == "left" else ones + [0] * pad)
        batch = {k: torch.tensor(v) for k, v in out.items()}
        batch["idx"] = torch.tensor([f["idx"] for f in features])
        return batch


def expected_batch(indices, max_tokens, mode, side):
    """The transformed batch recomputed from the raw token lists (no tensors, no slicing of the batch)."""
    width = max(LENGTHS[i] for i in indices)
    rows = []  # (sample, kept tokens)
    if width <= max_tokens:
        rows = [(i, tokens(i)) for i in indices]
    elif mode == "seqlen_truncate":
        rows = [(i, tokens(i)[:max_tokens]) for i in indices]
        width = max_tokens
    else:
        rows = [(i, tokens(i)[s : s + max_tokens]) for i in indices for s in range(0, LENGTHS[i], max_tokens)]
        width = max_tokens
    out = {"input_ids": [], "attention_mask": [], "labels": [], "idx": []}
    for i, toks in rows:
        pad = width - len(toks)
        left = side == "left"
        out["input_ids"].append([PAD] * pad + toks if left else toks + [PAD] * pad)
        out["labels"].append([-100] * pad + toks if left else toks + [-100] * pad)
        out["attention_mask"].append([0] * pad + [1] * len(toks) if left else [1] * len(toks) + [0] * pad)
        out["idx"].append(i)
    return out


def metric(name, lo, hi, total, step):
    cls = SeqlenTransformConfig if name.startswith("seqlen_") else CurriculumMetricConfig
    return cls(
        name=name,
        min_difficulty=lo,
        max_difficulty=hi,
        schedule_type="fixed_linear",
        schedule_config={"total_curriculum_step": total, "difficulty_step": step},
    )


def ds_difficulty(m, step):
    cfg = {
        "min_difficulty": m.min_difficulty,
        "max_difficulty": m.max_difficulty,
        "schedule_type": m.schedule_type,
        "schedule_config": m.schedule_config,
    }
    return CurriculumScheduler(cfg).update_difficulty(step)


@pytest.mark.parametrize("mode", ["seqlen_truncate", "seqlen_reshape"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_each_batch_uses_its_own_steps_max_tokens_through_workers(mode, side):
    transform = metric(mode, 4, 40, total=12, step=4)
    cfg = CurriculumConfig(sampling_metrics=[metric("seqlen", 20, 40, total=8, step=4)], transform=transform, seed=3)
    micro, world, ga = 4, 2, 2
    g = micro * world * ga
    dataset = datasets.Dataset.from_dict(
        {"idx": list(range(N)), "input_ids": [tokens(i) for i in range(N)], "seqlen": LENGTHS}
    )

    def make(**kw):
        return CurriculumSampler(dataset, cfg, micro, world, ga, **kw)

    plain = make()  # the same stream without tags: the oracle for which samples each batch holds
    epochs = 2
    reference = []
    for epoch in range(epochs):
        plain.set_epoch(epoch)
        reference.extend(plain)
    assert len(reference) == epochs * len(plain)
    steps_seen = set()
    for rank in range(world):
        sampler = make(return_max_tokens=True)
        loader = DataLoader(
            CurriculumDataset(dataset),
            batch_sampler=BatchSamplerShard(BatchSampler(sampler, micro, drop_last=False), world, rank),
            collate_fn=SeqlenTransform(mode, PadCollator(side), pad_token_id=PAD),
            num_workers=2,
            prefetch_factor=2,  # the sampler runs well ahead of the consumer
        )
        i = 0
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for batch in loader:
                position = (i * world + rank) * micro
                step = position // g + 1
                max_tokens = int(ds_difficulty(transform, step))
                indices = reference[position : position + micro]
                want = expected_batch(indices, max_tokens, mode, side)
                got = {k: batch[k].tolist() for k in want}
                assert got == want, f"rank {rank} batch {i} (step {step}, max_tokens {max_tokens})"
                steps_seen.add(step)
                i += 1
    assert len(steps_seen) >= 12  # the difficulty grew while batches were in flight


def test_truncate_and_reshape_units():
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]])
    mask = (ids != 0).long()
    embeds = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    batch = {"input_ids": ids, "attention_mask": mask, "inputs_embeds": embeds, "cls": torch.tensor([7, 9]), "n": 3}
    t = seqlen_truncate(batch, 2)
    assert t["input_ids"].tolist() == [[1, 2], [6, 7]] and t["inputs_embeds"].shape == (2, 2, 3)
    assert torch.equal(t["inputs_embeds"], embeds[:, :2]) and t["cls"].tolist() == [7, 9] and t["n"] == 3
    assert seqlen_truncate(batch, 5)["input_ids"] is ids  # short enough: unchanged
    r = seqlen_reshape(batch, 2, pad_values={"inputs_embeds": -1.0})
    assert r["input_ids"].tolist() == [[1, 2], [3, 4], [5, 0], [6, 7], [8, 0]]  # the all-padding piece is dropped
    assert r["cls"].tolist() == [7, 7, 7, 9, 9]
    assert r["inputs_embeds"][2, 1].tolist() == [-1.0, -1.0, -1.0]
    assert torch.equal(r["inputs_embeds"][1], embeds[0, 2:4])
    pos = {"input_ids": torch.arange(1, 8)[None], "position_ids": torch.arange(7)[None]}
    rp = seqlen_reshape(pos, 3, pad_token_id=99)  # no mask: nothing dropped, positions restart per row
    assert rp["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6], [7, 99, 99]]
    assert rp["position_ids"].tolist() == [[0, 1, 2]] * 3
    # with a mask, each new row is its own sequence: positions count its real tokens from 0 (padding reads 0)
    right = {"input_ids": ids, "attention_mask": mask, "position_ids": torch.arange(5).expand(2, 5)}
    assert seqlen_reshape(right, 2)["position_ids"].tolist() == [[0, 1], [0, 1], [0, 0], [0, 1], [0, 0]]
    left_ids = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 6, 7, 8]])
    left = {
        "input_ids": left_ids,
        "attention_mask": (left_ids != 0).long(),
        "position_ids": torch.arange(5).expand(2, 5),
    }
    rl = seqlen_reshape(left, 2)
    assert rl["input_ids"].tolist() == [[1, 2], [3, 4], [0, 5], [6, 7], [0, 8]]
    assert rl["position_ids"].tolist() == [[0, 1], [0, 1], [0, 0], [0, 1], [0, 0]]


def test_transform_passes_untagged_batches_and_rejects_bad_input():
    collator = PadCollator("right")
    features = [{"idx": 0, "input_ids": tokens(0)}, {"idx": 1, "input_ids": tokens(1)}]
    wrapped = SeqlenTransform("seqlen_truncate", collator)
    assert {k: v.tolist() for k, v in wrapped(features).items()} == {
        k: v.tolist() for k, v in collator(features).items()
    }  # evaluation batches carry no tag and are left alone
    tagged = [{**features[0], MAX_TOKENS_KEY: 4}, {**features[1], MAX_TOKENS_KEY: 8}]
    with pytest.raises(ValueError, match="mixes"):
        wrapped(tagged)
    with pytest.raises(
        ValueError, match="mode='truncate' is not supported; allowed values: seqlen_truncate, seqlen_reshape"
    ):
        SeqlenTransform("truncate", collator)
    with pytest.raises(ValueError, match="padding_side='middle'"):
        seqlen_truncate({"input_ids": torch.ones(2, 4)}, 2, padding_side="middle")
    with pytest.raises(ValueError, match="max_tokens=0"):
        seqlen_truncate({"input_ids": torch.ones(2, 4)}, 0)
    with pytest.raises(ValueError, match="no \\[batch, seq\\] tensor"):
        seqlen_reshape({"pixel_values": torch.ones(2, 3)}, 2)
    with pytest.raises(ValueError, match="needs examples that are mappings"):
        CurriculumDataset([(1, 2)])[(0, 4)]


def test_reshape_pads_with_the_collators_tokenizer_pad_id():
    class Tokenizer:
        pad_token_id = 77

    collator = PadCollator("right")
    collator.tokenizer = Tokenizer()
    features = [{"idx": 0, "input_ids": [5, 6, 7], MAX_TOKENS_KEY: 2}, {"idx": 1, "input_ids": [8], MAX_TOKENS_KEY: 2}]
    batch = SeqlenTransform("seqlen_reshape", collator)(features)
    # [5, 6, 7] and [8, PAD, PAD] cut into rows of 2; the new padding column reads the tokenizer's pad id
    assert batch["input_ids"].tolist() == [[5, 6], [7, 77], [8, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0], [1, 0]]
    assert batch["labels"].tolist() == [[5, 6], [7, -100], [8, -100]]


def test_dataset_wrapper_tags_and_forwards():
    dataset = datasets.Dataset.from_dict({"idx": list(range(5)), "input_ids": [tokens(i) for i in range(5)]})
    wrapped = CurriculumDataset(dataset)
    assert len(wrapped) == 5 and wrapped.column_names == ["idx", "input_ids"]
    assert wrapped[2] == dataset[2]
    assert wrapped[(2, 16)] == {**dataset[2], MAX_TOKENS_KEY: 16}
    assert wrapped.__getitems__([(0, 8), 3]) == [{**dataset[0], MAX_TOKENS_KEY: 8}, dataset[3]]


def test_sampler_tags_follow_the_schedule_over_long_runs():
    transform = metric("seqlen_reshape", 8, 64, total=100, step=8)
    cfg = CurriculumConfig(transform=transform)
    sampler = CurriculumSampler({}, cfg, 4, world_size=2, num_samples=50, return_max_tokens=True)
    sampler.set_epoch(7)
    start = 7 * len(sampler)
    for offset, (_, max_tokens) in enumerate(islice(iter(sampler), len(sampler))):
        assert max_tokens == ds_difficulty(transform, (start + offset) // 8 + 1)
    assert math.isclose(sampler.difficulty_at(1)["seqlen_reshape"], 8)


def noise_collator(features):
    """A collator with randomness (as MLM masking): one torch draw per batch, plus the sample ids."""
    return {"noise": torch.rand(4), "idx": [f["idx"] for f in features]}


def test_seeded_collation_is_a_function_of_the_stream_position_only():
    cfg = CurriculumConfig(sampling_metrics=[metric("seqlen", 20, 40, total=8, step=4)], seed=3)
    data = [{"idx": i} for i in range(N)]
    micro = 4

    def loader(position=None):
        sampler = CurriculumSampler({"seqlen": LENGTHS}, cfg, micro, gradient_accumulation_steps=2)
        if position is not None:
            sampler.load_state_dict(sampler.state_dict(position=position))
        tagged = PositionTaggedSampler(sampler)
        return (
            sampler,
            tagged,
            DataLoader(
                CurriculumDataset(data),
                batch_size=micro,
                sampler=tagged,
                collate_fn=SeededCollation(noise_collator, 11),
            ),
        )

    sampler, tagged, full = loader()
    stream = list(sampler)
    sampler.set_epoch(0)
    # every index carries its own stream position, counted from where the iteration starts
    assert list(tagged) == [(index, {POSITION_KEY: p}) for p, index in enumerate(stream)]
    sampler.set_epoch(0)
    batches = list(full)
    assert [i for b in batches for i in b["idx"]] == stream
    noises = [tuple(b["noise"].tolist()) for b in batches]
    assert len(set(noises)) == len(noises)  # each micro-batch has its own randomness
    # a loader resumed 5 micro-batches in draws the same randomness for the same batches, whatever the global RNG
    torch.manual_seed(1234)
    _, _, resumed = loader(position=5 * micro)
    assert [tuple(b["noise"].tolist()) for b in resumed] == noises[5:]
    # without position tags (no curriculum), the key is the epoch and the sample indices
    collate = SeededCollation(noise_collator, 11)
    tagged_by_index = CurriculumDataset(data, tag_index=True)
    batch = tagged_by_index.__getitems__([3, 5, 8, 13])
    before = torch.get_rng_state()
    first = collate(batch)["noise"]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left as it was
    assert torch.equal(collate(batch)["noise"], first)
    assert not torch.equal(collate(tagged_by_index.__getitems__([3, 5, 8, 14]))["noise"], first)
    collate.epoch = 1
    assert not torch.equal(collate(batch)["noise"], first)


# ----- packed rows (padding-free collators): the transform applies to each document ------------------------------
def test_packed_rows_are_truncated_per_document_through_the_trainer(tmp_path):
    """With DataCollatorWithFlattening the seqlen curriculum cuts each document to the step's max tokens before the
    documents are concatenated (cutting the row would cut whole documents off): recomputed from each document's
    index tokens, its length and DeepSpeed's schedule."""
    from _helpers import training_kwargs
    from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
    from tiny import BASE, CURRICULUM_FLAGS, RADIX, TRUNCATE_METRIC, make_dataset, sample_lengths, tiny_model
    from transformers import DataCollatorWithFlattening

    from hf_data_efficiency import DataEfficiencyTrainer, DataEfficiencyTrainingArguments

    flags = {k: v for k, v in CURRICULUM_FLAGS.items() if k.startswith("seqlen_curriculum")}
    args = DataEfficiencyTrainingArguments(**training_kwargs(tmp_path, max_steps=6), **flags)
    rows = []

    class Recording(DataEfficiencyTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            rows.append(
                (self.state.global_step + 1, inputs["input_ids"][0].tolist(), inputs["position_ids"][0].tolist())
            )
            return super().training_step(model, inputs, num_items_in_batch)

    data = make_dataset().remove_columns("attention_mask")
    Recording(model=tiny_model(), args=args, train_dataset=data, data_collator=DataCollatorWithFlattening()).train()
    lengths, schedule = sample_lengths(), CurriculumScheduler(TRUNCATE_METRIC)
    assert len(rows) == 12
    for step, ids, positions in rows:
        starts = [i for i, p in enumerate(positions) if p == 0]
        docs = [ids[a:b] for a, b in zip(starts, [*starts[1:], len(ids)])]
        assert len(docs) == 4  # every sample of the micro-batch is still there
        for doc in docs:
            index = (doc[0] - BASE) * RADIX + (doc[1] - BASE)
            assert len(doc) == min(int(lengths[index]), schedule.get_difficulty(step))


def test_packed_rows_are_reshaped_per_document():
    """Reshape on a packed row: each document is cut into pieces of at most max_tokens, each piece a document of its
    own (positions restart); no token is lost and no piece mixes documents."""
    from transformers import DataCollatorWithFlattening

    from hf_data_efficiency.curriculum.transforms import MAX_TOKENS_KEY, SeqlenTransform

    lengths = [11, 3, 8]
    features = [{"input_ids": list(range(100 * d, 100 * d + n)), MAX_TOKENS_KEY: 4} for d, n in enumerate(lengths)]
    batch = SeqlenTransform("seqlen_reshape", DataCollatorWithFlattening())(features)
    ids, positions = batch["input_ids"][0].tolist(), batch["position_ids"][0].tolist()
    assert ids == [t for f in features for t in f["input_ids"]]
    starts = [i for i, p in enumerate(positions) if p == 0]
    pieces = [ids[a:b] for a, b in zip(starts, [*starts[1:], len(ids)])]
    assert [len(p) for p in pieces] == [4, 4, 3, 3, 4, 4]
    assert all(len({t // 100 for t in p}) == 1 for p in pieces)
    truncated = SeqlenTransform("seqlen_truncate", DataCollatorWithFlattening())(features)
    assert truncated["input_ids"][0].tolist() == [t for f in features for t in f["input_ids"][:4]]
