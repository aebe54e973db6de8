"""CurriculumSampler against from-scratch recomputation, DeepSpeed's scheduler and accelerate's sharding."""

import json
import logging
import math
from decimal import Decimal
from itertools import islice

import datasets
import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, skip_first_batches
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader

from hf_data_efficiency import CurriculumSampler
from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig


def metric(name, lo, hi, total=40, step=1, kind="value", schedule="fixed_linear", **extra):
    sc = {"total_curriculum_step": total, "difficulty_step": step, **extra}
    if schedule == "fixed_discrete":
        sc = extra
    return {
        "name": name,
        "min_difficulty": lo,
        "max_difficulty": hi,
        "schedule_type": schedule,
        "schedule_config": sc,
        "difficulty_type": kind,
    }


def config(*metrics, seed=1234):
    return CurriculumConfig(sampling_metrics=[CurriculumMetricConfig(**m) for m in metrics], seed=seed)


def ds_difficulty(m, step):
    """DeepSpeed's own scheduler, fresh at every step (the oracle for the schedules)."""
    keys = ("min_difficulty", "max_difficulty", "schedule_type", "schedule_config")
    return CurriculumScheduler({k: m[k] for k in keys}).update_difficulty(step)


def stream(sampler, n):
    """The first ``n`` stream positions, iterating across epochs as a training loop would."""
    sampler.set_epoch(0)
    out = []
    while len(out) < n:
        out.extend(islice(iter(sampler), n - len(out)))
    return out


def percentile_rank(values):
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks


def admitted(n, p):
    return int(Decimal(n) * Decimal(str(p)) / 100)  # floor for positive numbers


logging.getLogger("DeepSpeed").setLevel(logging.ERROR)  # its tensor-core hint about difficulty_step
RNG = np.random.default_rng(0)
N = 3000
SEQLEN = RNG.integers(1, 129, N)
RARITY = RNG.gamma(2.0, 10.0, N)
M_SEQ = metric("seqlen", 16, 128, total=50, step=8)
M_RAR = metric("vocab_rarity", 10, 100, total=40, step=5, kind="percentile", schedule="fixed_root", root_degree=2)


@pytest.mark.parametrize("metrics", [(M_SEQ,), (M_RAR,), (M_SEQ, M_RAR)], ids=["value", "percentile", "both"])
def test_every_batch_is_eligible_at_its_step(metrics):
    cfg = config(*metrics)
    sampler = CurriculumSampler({"seqlen": SEQLEN, "vocab_rarity": RARITY}, cfg, batch_size=8, world_size=2)
    g = sampler.global_batch_size
    assert g == 16 and len(sampler) == N // 16 * 16
    steps = 80
    seq = np.array(stream(sampler, steps * g))
    ranks = percentile_rank(RARITY)
    for k in range(1, steps + 1):
        batch = seq[(k - 1) * g : k * g]
        diff = sampler.difficulty_at(k)
        ok = np.ones(g, dtype=bool)
        for m in metrics:
            assert diff[m["name"]] == ds_difficulty(m, k)
            if m["difficulty_type"] == "value":
                ok &= SEQLEN[batch] <= diff[m["name"]]
            else:
                ok &= ranks[batch] < admitted(N, diff[m["name"]])
        assert ok.all(), f"step {k}: ineligible samples {batch[~ok]}"
    # the curriculum really moves: late batches use samples the first step could not
    first = sampler.difficulty_at(1)
    late = seq[-20 * g :]
    if "seqlen" in first:
        assert (SEQLEN[late] > first["seqlen"]).any()


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("ga", [1, 2])
def test_ranks_get_disjoint_slices_of_one_global_stream(world, ga):
    micro, n = 4, 1000
    cfg = config(metric("seqlen", 16, 128, total=30, step=8))

    def make():
        return CurriculumSampler({"seqlen": SEQLEN[:n]}, cfg, micro, world_size=world, gradient_accumulation_steps=ga)

    single = make()
    epochs = 2
    global_seq = stream(single, epochs * len(single))
    seen = []
    for rank in range(world):
        sampler = make()  # every rank builds its own sampler, with no communication
        shard = BatchSamplerShard(BatchSampler(sampler, micro, drop_last=False), world, rank)
        i = 0
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for batch in shard:
                start = (i * world + rank) * micro  # micro-batch i of this rank is global micro-batch i*world+rank
                assert batch == global_seq[start : start + micro]
                seen.extend(range(start, start + micro))
                i += 1
        assert i * micro * world == len(global_seq)
    assert sorted(seen) == list(range(len(global_seq)))  # disjoint, and together the whole global stream


def test_every_eligible_sample_is_drawn_after_the_max_difficulty():
    n, g = 500, 16
    values = RNG.integers(1, 101, n)
    m = metric("seqlen", 10, 80, total=20, step=5)
    sampler = CurriculumSampler({"seqlen": values}, config(m), g)
    final = 20
    draws = 10 * n
    seq = np.array(stream(sampler, final * g + draws))
    eligible = set(np.flatnonzero(values <= 80).tolist())
    assert set(seq.tolist()) <= eligible  # nothing above max_difficulty, ever
    assert set(seq[final * g :].tolist()) == eligible


def cluster_oracle(metrics, values, n, final, keep_empty=False):
    """DeepSpeed's clustering recomputed from scratch: newly eligible samples at each difficulty change."""
    ranks = {k: percentile_rank(v) for k, v in values.items()}
    previous, union, clusters = None, np.zeros(n, dtype=bool), []
    for k in range(1, final + 1):
        diffs = tuple(ds_difficulty(m, k) for m in metrics)
        if diffs == previous:
            continue
        previous = diffs
        eligible = np.ones(n, dtype=bool)
        for m, d in zip(metrics, diffs):
            if m["difficulty_type"] == "value":
                eligible &= values[m["name"]] <= d
            else:
                eligible &= ranks[m["name"]] < admitted(n, d)
        new = eligible & ~union
        union |= new
        if new.any() or keep_empty:
            clusters.append((k, np.flatnonzero(new)))
    return clusters


def reference_stream(clusters, seed, g, block_steps, steps):
    """The documented stream, one slot at a time: per block, slot draws from rng([seed, 0, block]), the w-th
    shuffle of cluster c from rng([seed, 1, c, w]), the batch shuffle from rng([seed, 2, block])."""
    created = np.array([k for k, _ in clusters])
    cum = np.cumsum([len(m) for _, m in clusters])
    consumed = [0] * len(clusters)
    out = []
    for block in range(math.ceil(steps / block_steps)):
        first = block * block_steps + 1
        active = np.searchsorted(created, np.arange(first, first + block_steps), side="right")
        picks = np.random.default_rng([seed, 0, block]).integers(0, cum[active - 1][:, None], size=(block_steps, g))
        rows = []
        for row in np.searchsorted(cum, picks, side="right"):
            batch = []
            for c in row:
                members = clusters[c][1]
                wrap, offset = divmod(consumed[c], len(members))
                batch.append(np.random.default_rng([seed, 1, int(c), wrap]).permutation(members)[offset])
                consumed[c] += 1
            rows.append(batch)
        order = np.random.default_rng([seed, 2, block]).random((block_steps, g)).argsort(axis=1)
        out.extend(np.take_along_axis(np.array(rows), order, axis=1).ravel().tolist())
    return out[: steps * g]


TINY = np.concatenate([[1, 1, 1], RNG.integers(2, 101, 397)])  # a 3-sample first cluster, smaller than a batch


@pytest.mark.parametrize(
    "metrics,values,g",
    [
        ((M_SEQ,), {"seqlen": SEQLEN}, 16),
        ((M_SEQ, M_RAR), {"seqlen": SEQLEN, "vocab_rarity": RARITY}, 24),
        ((metric("seqlen", 1, 100, total=200, step=1),), {"seqlen": TINY}, 16),
        ((M_SEQ,), {"seqlen": SEQLEN - 0.5}, 16),  # float values: no value table
        ((metric("seqlen", 1, 4000, total=4000, step=1),), {"seqlen": np.append(RNG.integers(1, 4001, 4999), 1)}, 32),
    ],
    ids=["value", "both", "tiny-cluster", "float-values", "thousands-of-levels"],
)
def test_stream_equals_the_documented_reference(metrics, values, g):
    n = len(next(iter(values.values())))
    sampler = CurriculumSampler(values, config(*metrics, seed=5), g)
    steps = sampler.block_steps + 40  # crosses a block boundary
    final = max(sampler.cluster_steps)
    clusters = cluster_oracle(metrics, values, n, max(final, steps), keep_empty=True)
    assert [k for k, _ in clusters] == sampler.cluster_steps
    assert stream(sampler, steps * g) == reference_stream(clusters, 5, g, sampler.block_steps, steps)


@pytest.mark.parametrize("metrics", [(M_SEQ,), (M_RAR,), (M_SEQ, M_RAR)], ids=["value", "percentile", "both"])
def test_clusters_match_deepspeed_semantics_and_draw_proportionally(metrics):
    values = {"seqlen": SEQLEN, "vocab_rarity": RARITY}
    sampler = CurriculumSampler(values, config(*metrics), 16)
    expected = cluster_oracle(metrics, values, N, 60)
    got = [(s, n) for s, n in zip(sampler.cluster_steps, sampler.cluster_sizes) if n]
    assert got == [(k, len(members)) for k, members in expected]
    # after the last change, each cluster is drawn in proportion to its size
    start, steps = 60, 400
    seq = np.array(stream(sampler, (start + steps) * 16))[start * 16 :]
    member_of = np.full(N, -1)
    for c, (_, members) in enumerate(expected):
        member_of[members] = c
    share = np.bincount(member_of[seq], minlength=len(expected)) / len(seq)
    sizes = np.array([len(m) for _, m in expected])
    np.testing.assert_allclose(share, sizes / sizes.sum(), atol=0.02)


def test_clusters_wrap_without_short_batches():
    n, g = 400, 16
    values = TINY
    m = metric("seqlen", 1, 100, total=200, step=1)
    sampler = CurriculumSampler({"seqlen": values}, config(m), g)
    steps = 120
    seq = np.array(stream(sampler, steps * g))
    clusters = cluster_oracle((m,), {"seqlen": values}, n, steps)
    assert [len(c) for _, c in clusters][0] == 3
    counts = np.zeros(n, dtype=np.int64)
    for k in range(1, steps + 1):
        batch = seq[(k - 1) * g : k * g]
        assert len(batch) == g and (values[batch] <= sampler.difficulty_at(k)["seqlen"]).all()
        np.add.at(counts, batch, 1)
        # each cluster is walked permutation by permutation: its members' counts differ by at most one
        for _, members in clusters:
            assert counts[members].max() - counts[members].min() <= 1, f"step {k}"


def test_resume_through_set_epoch_and_skip_first_batches():
    micro, n = 4, 1000
    cfg = config(M_SEQ)

    def make():
        return CurriculumSampler({"seqlen": SEQLEN[:n]}, cfg, micro, gradient_accumulation_steps=4)

    reference = make()
    per_epoch = []
    for epoch in range(3):
        reference.set_epoch(epoch)
        per_epoch.append(list(BatchSampler(reference, micro, drop_last=False)))
    resumed = make()
    loader = DataLoader(list(range(n)), batch_sampler=BatchSampler(resumed, micro, drop_last=False))
    resumed.set_epoch(1)  # what the Trainer does on resume: set_epoch, then skip the consumed batches
    skipped = [b.tolist() for b in skip_first_batches(loader, num_batches=37)]
    assert skipped == per_epoch[1][37:]
    resumed.set_epoch(2)
    assert [b.tolist() for b in loader] == per_epoch[2]
    far = make()
    far.set_epoch(40)  # jumping far ahead replays the draws only; equal to walking there
    reference.set_epoch(3)
    for _ in range(3, 40):
        list(reference)
    assert list(far) == list(reference)


def test_resume_through_state_dict():
    cfg = config(M_SEQ, M_RAR)
    values = {"seqlen": SEQLEN, "vocab_rarity": RARITY}
    a = CurriculumSampler(values, cfg, 8, world_size=2)
    a.set_epoch(1)
    list(islice(iter(a), 333))
    state = json.loads(json.dumps(a.state_dict()))
    b = CurriculumSampler(values, cfg, 8, world_size=2)
    b.load_state_dict(state)
    uninterrupted = CurriculumSampler(values, cfg, 8, world_size=2)
    uninterrupted.set_epoch(1)
    epoch1 = list(uninterrupted)
    assert list(b) == list(a) == epoch1[333:]  # the rest of the interrupted epoch, to its end
    assert list(b) == list(a) == list(uninterrupted)  # and all go on with the next epoch
    c = CurriculumSampler(values, cfg, 8, world_size=2)
    c.load_state_dict(a.state_dict(position=5 * 16))  # a consumer-side position (5 completed steps)
    assert list(islice(iter(c), 64)) == stream(a, 5 * 16 + 64)[5 * 16 :]
    other = CurriculumSampler({"seqlen": SEQLEN[::-1].copy(), "vocab_rarity": RARITY}, cfg, 8, world_size=2)
    with pytest.raises(ValueError, match="fingerprint"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="seed=1234 but this run has seed=7"):
        CurriculumSampler(values, cfg, 8, world_size=2, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_size"):
        CurriculumSampler(values, cfg, 8).load_state_dict(state)


def test_decreasing_discrete_schedule_keeps_admitted_samples():
    """The difficulty is the running maximum of the schedule (as in DeepSpeed): samples admitted at a high
    difficulty stay admitted after a fixed_discrete schedule comes down again."""
    n, g = 400, 8
    values = np.random.default_rng(7).integers(1, 101, n)
    m = metric("seqlen", 10, 100, schedule="fixed_discrete", difficulty=[20, 60, 30], max_step=[5, 10])
    sampler = CurriculumSampler({"seqlen": values}, config(m), g)
    steps = 200
    seq = np.array(stream(sampler, steps * g))
    running_max = 0
    for k in range(1, steps + 1):
        running_max = max(running_max, ds_difficulty(m, k))
        assert sampler.difficulty_at(k)["seqlen"] == running_max, f"step {k}"
        assert (values[seq[(k - 1) * g : k * g]] <= running_max).all(), f"step {k}"
    assert sampler.num_eligible(steps) == int((values <= 60).sum())
    assert set(seq[10 * g :].tolist()) == set(np.flatnonzero(values <= 60).tolist())


def test_percentile_admits_the_right_fraction():
    n = 997
    values = RNG.normal(size=n)
    percents = [12.5, 29, 50, 100]
    m = metric(
        "score", 12.5, 100, kind="percentile", schedule="fixed_discrete", difficulty=percents, max_step=[3, 6, 9]
    )
    sampler = CurriculumSampler({"score": values}, config(m), 16)
    ranks = percentile_rank(values)
    seq = np.array(stream(sampler, 12 * 16))
    for k in range(1, 13):
        p = percents[min((k - 1) // 3, 3)]
        assert sampler.difficulty_at(k)["score"] == p
        assert sampler.num_eligible(k) == admitted(n, p) == (ranks < admitted(n, p)).sum()
        assert (ranks[seq[(k - 1) * 16 : k * 16]] < admitted(n, p)).all()
    assert sampler.num_eligible(10) == n


def test_determinism_seeds_and_global_rng_untouched():
    cfg = config(M_SEQ)
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    a = stream(CurriculumSampler({"seqlen": SEQLEN}, cfg, 16), 4000)
    b = stream(CurriculumSampler({"seqlen": SEQLEN}, cfg, 16, seed=1234), 4000)
    c = stream(CurriculumSampler({"seqlen": SEQLEN}, cfg, 16, seed=99), 4000)
    d = stream(CurriculumSampler({"seqlen": SEQLEN}, config(M_SEQ, seed=99), 16), 4000)
    assert a == b and a != c and c == d
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # DeepSpeed#8405: no global RNG


def test_dataset_input_with_indices_mapping():
    order = RNG.permutation(N)[:2000]
    ds = datasets.Dataset.from_dict({"seqlen": SEQLEN, "text": ["x"] * N}).select(order)
    cfg = config(M_SEQ)
    from_ds = CurriculumSampler(ds, cfg, 16)
    from_array = CurriculumSampler({"seqlen": SEQLEN[order]}, cfg, 16)
    assert stream(from_ds, 3000) == stream(from_array, 3000)


def test_custom_schedule_beyond_the_first_horizon():
    n, g = 300, 8
    values = RNG.integers(1, 2001, n)

    def fn(step):
        return 100 + step

    m = {**metric("seqlen", 100, 2000), "schedule_type": "custom", "schedule_config": {}}

    def make():
        return CurriculumSampler({"seqlen": values}, config(m), g, schedule_fns={"seqlen": fn})

    walked = make()
    steps = 1400  # past the first lazily enumerated horizon (1024 steps)
    seq = np.array(stream(walked, steps * g))
    for k in range(1, steps + 1, 7):
        assert walked.difficulty_at(k)["seqlen"] == fn(k)
        assert (values[seq[(k - 1) * g : k * g]] <= fn(k)).all()
    jumped = make()
    epoch = 1300 * g // len(jumped)
    jumped.set_epoch(epoch)
    start = epoch * len(jumped)
    assert list(islice(iter(jumped), 200)) == seq[start : start + 200].tolist()


def test_transform_only_and_single_cluster_metrics():
    n = 200
    trunc = metric("seqlen_truncate", 16, 128, total=10, step=8)
    sampler = CurriculumSampler({}, config(trunc), 8, num_samples=n, return_max_tokens=True)
    pairs = stream(sampler, 20 * 8)
    for pos, (index, max_tokens) in enumerate(pairs):
        assert 0 <= index < n and max_tokens == ds_difficulty(trunc, pos // 8 + 1)
    single = {**M_SEQ, "clustering_type": "single_cluster"}
    s = CurriculumSampler({}, config(single), 8, num_samples=n)  # does not filter, needs no values
    assert set(stream(s, 100 * 8)) == set(range(n))
    assert s.difficulty_at(1)["seqlen"] == 16


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(20, 300),
    micro=st.integers(1, 8),
    world=st.integers(1, 3),
    ga=st.integers(1, 2),
    kind=st.sampled_from(["value", "percentile"]),
    lo=st.integers(1, 60),
    total=st.integers(1, 30),
    step=st.integers(1, 5),
    seed=st.integers(0, 2**31),
)
def test_property_full_eligible_deterministic_batches(n, micro, world, ga, kind, lo, total, step, seed):
    values = np.random.default_rng(seed).integers(1, 61, n)
    if kind == "percentile":
        lo = max(lo, math.ceil(100 / n))
    m = metric("m", lo, 100 if kind == "percentile" else 60, total=total, step=step, kind=kind)
    g = micro * world * ga
    if g > n:
        with pytest.raises(ValueError, match="larger than the data"):
            CurriculumSampler({"m": values}, config(m), micro, world, ga, seed=seed)
        return
    d1 = ds_difficulty(m, 1)
    if kind == "value" and d1 < values.min():
        with pytest.raises(ValueError, match=f"smallest m value is {values.min()}"):
            CurriculumSampler({"m": values}, config(m), micro, world, ga, seed=seed)
        return
    sampler = CurriculumSampler({"m": values}, config(m), micro, world, ga, seed=seed)
    steps = 40
    seq = np.array(stream(sampler, steps * g))
    ranks = percentile_rank(values)
    for k in range(1, steps + 1):
        d = ds_difficulty(m, k)
        batch = seq[(k - 1) * g : k * g]
        assert len(batch) == g
        assert ((values[batch] <= d) if kind == "value" else (ranks[batch] < admitted(n, d))).all()
    again = CurriculumSampler({"m": values}, config(m), micro, world, ga, seed=seed)
    again.set_epoch(1)
    length = len(sampler)
    assert list(again) == stream(sampler, 2 * length)[length:]


def test_bad_input():
    cfg2 = config(M_SEQ, M_RAR)
    with pytest.raises(
        ValueError, match=r"metric_values\['vocab_rarity'\] has 12 values but metric_values\['seqlen'\] has 10"
    ):
        CurriculumSampler({"seqlen": SEQLEN[:10], "vocab_rarity": RARITY[:12]}, cfg2, 2)
    with pytest.raises(ValueError, match=r"has 10 values but the dataset has 11 samples"):
        CurriculumSampler({"seqlen": SEQLEN[:10]}, config(M_SEQ), 2, num_samples=11)
    bad = RARITY[:50].copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match=r"'vocab_rarity'.*NaN.*index 7"):
        CurriculumSampler({"seqlen": SEQLEN[:50], "vocab_rarity": bad}, cfg2, 2)
    with pytest.raises(
        ValueError, match=r"no column/array for curriculum metric 'vocab_rarity'; available: \['seqlen'\]"
    ):
        CurriculumSampler({"seqlen": SEQLEN}, cfg2, 2)
    ds = datasets.Dataset.from_dict({"text": ["a"] * 5})
    with pytest.raises(ValueError, match=r"available: \['text'\]"):
        CurriculumSampler(ds, config(M_SEQ), 2)
    with pytest.raises(ValueError, match=r"smallest seqlen value is 20"):
        CurriculumSampler({"seqlen": np.arange(20, 60)}, config(M_SEQ), 2)
    with pytest.raises(ValueError, match=r"admits floor\(10 \* 5 / 100\) = 0 samples"):
        CurriculumSampler(
            {"vocab_rarity": RARITY[:10]},
            config(
                {
                    **M_RAR,
                    "min_difficulty": 5,
                    "schedule_config": {**M_RAR["schedule_config"], "total_curriculum_step": 10**6},
                }
            ),
            2,
        )
    with pytest.raises(ValueError, match=r"global batch size 64 .* larger than the data \(40 samples\)"):
        CurriculumSampler({"seqlen": SEQLEN[:40]}, config(M_SEQ), 8, world_size=4, gradient_accumulation_steps=2)
    for kwargs, name in (
        ({"world_size": 0}, "world_size"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation"),
    ):
        with pytest.raises(ValueError, match=name):
            CurriculumSampler({"seqlen": SEQLEN}, config(M_SEQ), 2, **kwargs)
    with pytest.raises(ValueError, match="batch_size=0"):
        CurriculumSampler({"seqlen": SEQLEN}, config(M_SEQ), 0)
    custom = {**M_SEQ, "schedule_type": "custom", "schedule_config": {}}
    with pytest.raises(ValueError, match=r"'seqlen' has schedule_type='custom' but no callable"):
        CurriculumSampler({"seqlen": SEQLEN}, config(custom), 2)
    with pytest.raises(ValueError, match=r"schedule_fns has no curriculum metric named \['nope'\]"):
        CurriculumSampler({"seqlen": SEQLEN}, config(M_SEQ), 2, schedule_fns={"nope": abs})
    with pytest.raises(ValueError, match="return_max_tokens=True needs a seqlen_truncate or seqlen_reshape"):
        CurriculumSampler({"seqlen": SEQLEN}, config(M_SEQ), 2, return_max_tokens=True)
    with pytest.raises(ValueError, match="must be numeric"):
        CurriculumSampler({"seqlen": np.array(["a"] * 10)}, config(M_SEQ), 2)
    with pytest.raises(ValueError, match="epoch=-1"):
        CurriculumSampler({"seqlen": SEQLEN}, config(M_SEQ), 2).set_epoch(-1)
    with pytest.raises(ValueError, match="seed=-1"):
        CurriculumSampler({"seqlen": SEQLEN}, config(M_SEQ), 2, seed=-1)


def test_non_finite_metric_values_are_refused_with_the_sample_index():
    values = RARITY[:50].copy()
    values[11] = np.inf
    values[30] = np.nan
    with pytest.raises(
        ValueError, match=r"metric_values\['vocab_rarity'\] has a non-finite value \(inf\) at sample index 11 \(2 "
    ):
        CurriculumSampler({"vocab_rarity": values}, config(M_RAR), 2)
    column = np.arange(1.0, 41.0)
    column[2] = -np.inf
    ds = datasets.Dataset.from_dict({"seqlen": column}).select([3, 2, 1, 0, *range(4, 40)])  # an indices mapping
    with pytest.raises(ValueError, match=r"'seqlen'\] has a non-finite value \(-inf\) at sample index 1 "):
        CurriculumSampler(ds, config(M_SEQ), 2)  # the index is the row of the dataset as given


def test_torch_tensor_values_and_len():
    s = CurriculumSampler({"seqlen": torch.as_tensor(SEQLEN[:100])}, config(M_SEQ), 3, world_size=2)
    assert len(s) == 96 and len(list(s)) == 96 and s.position == 96
    assert s.nbytes <= 16 * 100 + 64 * len(s.cluster_sizes)
