"""DifficultySchedule / root_pacing parity with DeepSpeed's CurriculumScheduler (the oracle)."""

import logging

import pytest
from deepspeed.runtime.data_pipeline.curriculum_scheduler import CurriculumScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_data_efficiency import DifficultySchedule

logging.getLogger("DeepSpeed").setLevel(logging.ERROR)

N_EXAMPLES = 1000
steps = st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=8)


@st.composite
def root_configs(draw, schedule_type):
    lo = draw(st.integers(min_value=1, max_value=4096))
    hi = draw(st.integers(min_value=lo, max_value=lo + 8192))
    if draw(st.booleans()):  # DeepSpeed accepts float difficulties (e.g. vocab rarity values)
        lo, hi = lo + draw(st.floats(0, 0.99)), hi + draw(st.floats(1.0, 50.0))
    sc = {
        "total_curriculum_step": draw(st.integers(min_value=1, max_value=100_000)),
        "difficulty_step": draw(st.sampled_from([1, 2, 3, 8, 16, 64])),
    }
    if schedule_type == "fixed_root":
        sc["root_degree"] = draw(st.sampled_from([1, 2, 3, 4, 1.5]))
    return {"min_difficulty": lo, "max_difficulty": hi, "schedule_type": schedule_type, "schedule_config": sc}


@st.composite
def discrete_configs(draw):
    # valid configs: increasing max_step, difficulties within [min, max] (in any order: they may decrease)
    n = draw(st.integers(min_value=1, max_value=6))
    lo = draw(st.integers(1, 1000))
    hi = draw(st.integers(lo, 2000))
    difficulty = draw(st.lists(st.integers(lo, hi), min_size=n + 1, max_size=n + 1))
    max_step = sorted(draw(st.sets(st.integers(1, 50_000), min_size=n, max_size=n)))
    return {
        "min_difficulty": lo,
        "max_difficulty": hi,
        "schedule_type": "fixed_discrete",
        "schedule_config": {"difficulty": difficulty, "max_step": max_step},
    }


def _oracle(cfg, step, fn=None):
    sched = CurriculumScheduler(cfg)
    if fn is not None:
        sched.set_custom_get_difficulty(fn)
    return sched.update_difficulty(step)


@pytest.mark.parametrize("schedule_type", ["fixed_linear", "fixed_root"])
@settings(max_examples=N_EXAMPLES, deadline=None)
@given(data=st.data(), steps=steps)
def test_root_schedules_match_deepspeed(schedule_type, data, steps):
    cfg = data.draw(root_configs(schedule_type))
    ours = DifficultySchedule.from_dict(cfg)
    for s in steps:
        assert ours(s) == _oracle(cfg, s)


@settings(max_examples=N_EXAMPLES, deadline=None)
@given(cfg=discrete_configs(), steps=steps)
def test_fixed_discrete_matches_deepspeed(cfg, steps):
    ours = DifficultySchedule.from_dict(cfg)
    for s in steps:
        assert ours(s) == _oracle(cfg, s)


@settings(max_examples=N_EXAMPLES, deadline=None)
@given(
    lo=st.integers(1, 100),
    span=st.integers(0, 1000),
    slope=st.floats(0.001, 10.0),
    steps=steps,
)
def test_custom_matches_deepspeed(lo, span, slope, steps):
    cfg = {"min_difficulty": lo, "max_difficulty": lo + span, "schedule_type": "custom"}

    def fn(step):
        return lo + int(step * slope)

    ours = DifficultySchedule.from_dict(cfg, schedule_fn=fn)
    for s in steps:
        assert ours(s) == _oracle(cfg, s, fn)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), schedule_type=st.sampled_from(["fixed_linear", "fixed_root"]))
def test_monotone_schedules_match_a_stateful_deepspeed_run(data, schedule_type):
    """The sampler asks step 1, 2, 3, ... of one scheduler: the pure function equals that run."""
    cfg = data.draw(root_configs(schedule_type))
    cfg["schedule_config"]["total_curriculum_step"] = data.draw(st.integers(1, 300))
    oracle = CurriculumScheduler(cfg)
    ours = DifficultySchedule.from_dict(cfg)
    for s in range(1, 400):
        assert ours(s) == oracle.update_difficulty(s)


def test_final_step_reaches_max():
    cfg = {
        "min_difficulty": 8,
        "max_difficulty": 1024,
        "schedule_type": "fixed_root",
        "schedule_config": {"total_curriculum_step": 1000, "difficulty_step": 8, "root_degree": 2},
    }
    s = DifficultySchedule.from_dict(cfg)
    assert s(s.final_step()) == 1024
    assert s(s.final_step() - 1) < 1024


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"min_difficulty": 9, "max_difficulty": 8, "schedule_type": "fixed_linear"}, "min_difficulty"),
        ({"min_difficulty": 1, "max_difficulty": 8, "schedule_type": "cosine"}, "schedule_type.*allowed"),
        (
            {
                "min_difficulty": 1,
                "max_difficulty": 8,
                "schedule_type": "fixed_linear",
                "schedule_config": {"total_curriculum_step": 0, "difficulty_step": 1},
            },
            "total_curriculum_step",
        ),
        (
            {
                "min_difficulty": 1,
                "max_difficulty": 8,
                "schedule_type": "fixed_discrete",
                "schedule_config": {"difficulty": [1, 2], "max_step": [5, 10]},
            },
            "len",
        ),
        ({"min_difficulty": 1, "max_difficulty": 8, "schedule_type": "custom"}, "callable"),
        ({"max_difficulty": 8, "schedule_type": "fixed_linear"}, "min_difficulty"),
    ],
)
def test_bad_schedules_are_refused(cfg, match):
    with pytest.raises(ValueError, match=match):
        DifficultySchedule.from_dict(cfg)
