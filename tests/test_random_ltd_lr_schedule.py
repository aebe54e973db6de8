"""Layer-token LR schedule against a from-scratch recomputation (DeepSpeed's counter as the token source)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from deepspeed.runtime.data_pipeline.data_routing.scheduler import RandomLTDScheduler as DSScheduler

import hf_data_efficiency as hfde

SECTION = {
    "random_ltd_schedule": {
        "min_value": 32,
        "max_value": 256,
        "schedule_type": "fixed_linear",
        "schedule_config": {"require_steps": 40, "seq_per_step": 16},
    },
    "total_layer_num": 12,
    "random_ltd_layer_num": 10,
    "random_ltd_layer_id": list(range(1, 11)),
    "global_batch_size": 4,
    "layer_token_lr_schedule": {"enabled": False},
}


def reference_lrs(base, steps, warmup, total, warmup_type, decay_type, min_ratio):
    """LR of each optimizer step from DeepSpeed's counter: c_k = layer-tokens consumed before step k."""
    ds = DSScheduler(SECTION)
    lrs = []
    for k in range(steps):
        c = ds.state["consumed_layer_tokens"]
        if c < warmup:
            f = c / warmup if warmup_type == "linear" else 1.0
        elif decay_type == "constant":
            f = 1.0
        else:
            p = min(1.0, (c - warmup) / (total - warmup))
            shape = 1 - p if decay_type == "linear" else (1 + math.cos(math.pi * p)) / 2
            f = min_ratio + (1 - min_ratio) * shape
        lrs.append(base * f)
        ds.update_seq(k)
    return lrs


def make(warmup, total, warmup_type, decay_type, min_ratio, lr=0.5):
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param, torch.nn.Parameter(torch.zeros(1))], lr=lr)
    opt.param_groups[0]["lr"] = lr
    sched = hfde.get_layer_token_lr_scheduler(
        opt,
        hfde.RandomLTDScheduler.from_dict(SECTION),
        total_layer_tokens=total,
        warmup_layer_tokens=warmup,
        warmup_type=warmup_type,
        decay_type=decay_type,
        min_lr_ratio=min_ratio,
    )
    return opt, sched


def drive(opt, sched, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(
    "warmup_type, decay_type, min_ratio",
    [("linear", "linear", 0.0), ("linear", "cosine", 0.1), ("constant", "linear", 0.2), ("linear", "constant", 0.0)],
)
def test_lr_matches_from_scratch_formula(warmup_type, decay_type, min_ratio):
    warmup, total, steps = 40_000, 200_000, 60
    opt, sched = make(warmup, total, warmup_type, decay_type, min_ratio)
    got = drive(opt, sched, steps)
    want = reference_lrs(0.5, steps, warmup, total, warmup_type, decay_type, min_ratio)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert sched.consumed_layer_tokens == DSScheduler(SECTION).get_total_layer_tokens(steps)


def test_resume_through_state_dict_equals_uninterrupted():
    full_opt, full = make(30_000, 150_000, "linear", "cosine", 0.05)
    uninterrupted = drive(full_opt, full, 50)
    opt, sched = make(30_000, 150_000, "linear", "cosine", 0.05)
    drive(opt, sched, 20)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    json.dumps(sched.state_dict())  # plain numbers only
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2, sched2 = make(30_000, 150_000, "linear", "cosine", 0.05)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert sched2.consumed_layer_tokens == sched.consumed_layer_tokens > 0
    assert drive(opt2, sched2, 30) == pytest.approx(uninterrupted[20:], rel=1e-12)


def test_total_from_num_training_steps_and_callable_source():
    opt, sched = make(0, 1, "linear", "linear", 0.0)
    ltd = hfde.RandomLTDScheduler.from_dict(SECTION)
    by_steps = hfde.get_layer_token_lr_scheduler(opt, ltd, num_training_steps=30)
    assert by_steps.total_layer_tokens == DSScheduler(SECTION).get_total_layer_tokens(30)
    by_callable = hfde.get_layer_token_lr_scheduler(opt, lambda j: 100, num_training_steps=30, warmup_layer_tokens=500)
    lrs = drive(opt, by_callable, 8)
    base = opt.param_groups[0]["initial_lr"]
    assert lrs == pytest.approx(
        [base * min(100 * k / 500, 1) if k < 5 else base * (3000 - 100 * k) / 2500 for k in range(8)]
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(warmup_type="log"), "warmup_type='log'"),
        (dict(decay_type="step"), "decay_type='step'"),
        (dict(total_layer_tokens=0), "total_layer_tokens=0"),
        (dict(warmup_layer_tokens=10**9), "warmup_layer_tokens=1000000000"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio=2.0"),
    ],
)
def test_bad_lr_arguments(kwargs, match):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    base = dict(total_layer_tokens=1000)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        hfde.get_layer_token_lr_scheduler(opt, hfde.RandomLTDScheduler.from_dict(SECTION), **base)


def test_needs_total_or_steps():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="total_layer_tokens or num_training_steps"):
        hfde.get_layer_token_lr_scheduler(opt, hfde.RandomLTDScheduler.from_dict(SECTION))
