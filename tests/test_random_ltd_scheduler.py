"""RandomLTDScheduler against DeepSpeed's own RandomLTDScheduler (kept length and layer-token counter)."""

from __future__ import annotations

import json

import pytest
from deepspeed.runtime.data_pipeline.data_routing.scheduler import RandomLTDScheduler as DSScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_data_efficiency as hfde


def ds_section(
    min_value, max_value, require_steps, seq_per_step, total, n, gbs, schedule_type="fixed_linear", root=None
):
    sc = {"require_steps": require_steps, "seq_per_step": seq_per_step}
    if root is not None:
        sc["root_degree"] = root
    return {
        "enabled": True,
        "random_ltd_schedule": {
            "min_value": min_value,
            "max_value": max_value,
            "schedule_type": schedule_type,
            "schedule_config": sc,
        },
        "total_layer_num": total,
        "random_ltd_layer_num": n,
        "random_ltd_layer_id": list(range(1, n + 1)),
        "global_batch_size": gbs,
        # DeepSpeed raises NotImplementedError when this is enabled
        "layer_token_lr_schedule": {"enabled": False},
    }


schedules = st.builds(
    lambda sps, lo_mult, off, extra, steps, total, gbs: (
        sps * lo_mult + off % sps,
        sps * lo_mult + off % sps + extra,
        steps,
        sps,
        total,
        gbs,
    ),
    st.sampled_from([1, 8, 16, 64]),
    st.integers(1, 8),
    st.integers(0, 63),  # min_value need not be a multiple of seq_per_step
    st.integers(0, 600),
    st.integers(1, 400),
    st.integers(3, 24),
    st.integers(1, 64),
)


@settings(max_examples=60, deadline=None)
@given(schedules)
def test_fixed_linear_matches_deepspeed(params):
    min_value, max_value, steps, sps, total, gbs = params
    section = ds_section(min_value, max_value, steps, sps, total, total - 2, gbs)
    ds, ours = DSScheduler(section), hfde.RandomLTDScheduler.from_dict(section)
    assert ours.current_kept_length == ds.get_current_seq() == min_value
    for step in range(steps + 20):
        ds.update_seq(step)
        assert ours.update(step) == ds.get_current_seq()
        assert ours.kept_length(step) == ds.get_current_seq()
        assert ours.consumed_layer_tokens == ds.state["consumed_layer_tokens"]
    if min_value % sps == 0:
        assert ours.kept_length(0) == min_value
    assert ours.total_layer_tokens(steps + 20) == DSScheduler(section).get_total_layer_tokens(steps + 20)


@settings(max_examples=40, deadline=None)
@given(schedules, st.sampled_from([0.5, 1.5, 2, 3]))
def test_fixed_root_matches_deepspeed_root_formula(params, degree):
    min_value, max_value, steps, sps, total, gbs = params
    section = ds_section(min_value, max_value, steps, sps, total, total - 2, gbs, "fixed_root", degree)
    ours = hfde.RandomLTDScheduler.from_dict(section)
    ds = DSScheduler(ds_section(min_value, max_value, steps, sps, total, total - 2, gbs, root=degree))
    # DeepSpeed implements the root curve but only dispatches fixed_linear to it; call it directly as the oracle
    root_value = ds._BaseScheduler__fixed_root_get_value
    for step in range(steps + 5):
        # update_seq never moves a schedule that starts at max_value; otherwise the root curve applies
        expected = max_value if min_value == max_value else root_value(step, degree)
        assert ours.kept_length(step) == expected


def test_counter_with_repeated_and_gradient_accumulation_steps():
    section = ds_section(16, 128, 20, 16, 12, 10, 8)
    ds, ours = DSScheduler(section), hfde.RandomLTDScheduler.from_dict(section)
    for step in [0, 0, 0, 1, 1, 2, 5, 5, 9, 30, 30]:  # the same step repeated: counted once, as DeepSpeed
        ds.update_seq(step)
        ours.update(step)
        assert ours.consumed_layer_tokens == ds.state["consumed_layer_tokens"]
    # formula from scratch: global_batch * (kept * n + max * (total - n)) once per distinct step
    assert ours.layer_tokens_at(5) == 8 * (ours.kept_length(5) * 10 + 128 * 2)


def test_state_dict_resume_equals_uninterrupted_run():
    section = ds_section(16, 256, 50, 16, 12, 10, 4)
    full, first = hfde.RandomLTDScheduler.from_dict(section), hfde.RandomLTDScheduler.from_dict(section)
    values = [full.update(s) for s in range(60)]
    for s in range(25):
        first.update(s)
    resumed = hfde.RandomLTDScheduler.from_dict(section)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [resumed.update(s) for s in range(25, 60)] == values[25:]
    assert resumed.consumed_layer_tokens == full.consumed_layer_tokens
    with pytest.raises(ValueError, match="missing"):
        resumed.load_state_dict({"last_step": 3})


def test_from_config_and_flat_dict_agree():
    cfg = hfde.RandomLTDConfig(min_value=32, max_value=512, require_steps=100, seq_per_step=32, total_layer_num=6)
    a = hfde.RandomLTDScheduler.from_dict(cfg)
    b = hfde.RandomLTDScheduler.from_dict(cfg.to_dict())
    c = hfde.RandomLTDScheduler.from_dict(cfg.to_deepspeed())
    assert [a.kept_length(s) for s in range(120)] == [b.kept_length(s) for s in range(120)]
    assert [a.kept_length(s) for s in range(120)] == [c.kept_length(s) for s in range(120)]


def test_counter_needs_layer_counts():
    sched = hfde.RandomLTDScheduler(16, 64, 10)
    with pytest.raises(ValueError, match="total_layer_num and random_ltd.random_ltd_layer_num"):
        sched.update(0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule_type="cosine"), "schedule_type='cosine' is not supported"),
        (dict(schedule_type="fixed_root"), "root_degree=None is not allowed"),
        (dict(require_steps=0), "require_steps=0"),
        (dict(min_value=128, max_value=64), "min_value=128 is larger than max_value=64"),
    ],
)
def test_bad_scheduler_arguments(kwargs, match):
    base = dict(min_value=16, max_value=64, require_steps=10)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        hfde.RandomLTDScheduler(**base)
