"""Checkpoint state of the random-LTD objects is validated like a config (table-driven).

``RandomLTDHandle``, ``RandomLTDScheduler`` and ``LayerTokenLRScheduler`` accept only their own keys, typed and
in range, with errors naming the key, the value and what is allowed; a refused state changes nothing.
Oracles: the object's state before the load, and the LR of an uninterrupted scheduler.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as tf
from _random_ltd_archs import build, ltd_config
from transformers.testing_utils import CaptureLogger

import hf_data_efficiency as hfde
from hf_data_efficiency.routing import lr_schedule

tf.logging.set_verbosity_warning()


def make_handle():
    handle = hfde.apply_random_ltd(build("gpt2")[0], ltd_config(min_value=20, global_batch_size=4))
    handle.update(3)  # kept lengths of this schedule lie in [16, 32]: min_value 20 rounds down to 16 at step 0
    return handle


def make_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    ltd = hfde.RandomLTDScheduler(32, 256, 40, 16, total_layer_num=12, random_ltd_layer_num=10, global_batch_size=4)
    sched = hfde.get_layer_token_lr_scheduler(opt, ltd, total_layer_tokens=200_000, warmup_layer_tokens=40_000)
    for _ in range(5):
        opt.step()
        sched.step()
    return sched


TARGETS = {
    "handle": (make_handle, lambda h: h),
    "scheduler": (make_handle, lambda h: h.scheduler),
    "lr": (make_lr, lambda s: s),
}


def edit(**changes):
    def apply(state):
        for key, value in changes.items():
            if value is KeyError:
                del state[key]
            else:
                state[key] = value
        return state

    return apply


def nested(**changes):  # the scheduler state inside the handle's state
    return lambda state: {**state, "scheduler": edit(**changes)(dict(state["scheduler"]))}


CASES = [
    # target, change to a valid state, exception, message naming key, value and the allowed values
    ("handle", lambda s: [s], TypeError, r"random_ltd state must be a mapping with keys \['kept_length'"),
    (
        "handle",
        edit(kept_lenght=16),
        ValueError,
        r"unknown keys \['kept_lenght'\] \('kept_lenght': did you mean 'kept_length'\?\)",
    ),
    ("handle", edit(full_tokens_seen=KeyError), ValueError, r"missing \['full_tokens_seen'\]"),
    ("handle", edit(kept_length=10**9), ValueError, r"kept_length=1000000000 must be an integer in \[16, 32\]"),
    ("handle", edit(kept_length=8), ValueError, r"kept_length=8 must be an integer in \[16, 32\]"),
    ("handle", edit(kept_length=True), TypeError, r"kept_length=True \(bool\) must be an integer in \[16, 32\]"),
    ("handle", edit(kept_length=16.0), TypeError, r"kept_length=16.0 \(float\) must be an integer"),
    ("handle", edit(kept_length="16"), TypeError, r"kept_length='16' \(str\) must be an integer"),
    ("handle", edit(kept_tokens_seen=-1), ValueError, r"kept_tokens_seen=-1 must be an integer >= 0"),
    ("handle", edit(full_tokens_seen=None), TypeError, r"full_tokens_seen=None \(NoneType\) must be an integer >= 0"),
    ("handle", edit(scheduler=None), ValueError, r"scheduler=None, but this handle follows a kept-length schedule"),
    (
        "handle",
        nested(current_kept_length=10**9),
        ValueError,
        r"current_kept_length=1000000000 must be an integer in \[16, 32\]",
    ),
    (
        "scheduler",
        edit(current_kept_length=15),
        ValueError,
        r"random_ltd.scheduler state: current_kept_length=15 must be an integer in \[16, 32\]",
    ),
    ("scheduler", edit(current_kept_length=None), TypeError, r"current_kept_length=None \(NoneType\)"),
    ("scheduler", edit(last_step=-2), ValueError, r"last_step=-2 must be an integer >= -1"),
    ("scheduler", edit(last_step=2.5), TypeError, r"last_step=2.5 \(float\)"),
    ("scheduler", edit(consumed_layer_tokens=-5), ValueError, r"consumed_layer_tokens=-5 must be an integer >= 0"),
    ("scheduler", edit(consumed_layer_tokens="12"), TypeError, r"consumed_layer_tokens='12' \(str\)"),
    ("scheduler", edit(extra=1), ValueError, r"unknown keys \['extra'\]"),
    ("scheduler", edit(last_step=KeyError), ValueError, r"missing \['last_step'\]"),
    ("lr", edit(base_lrs=[1e9]), ValueError, r"layer_token_lr_schedule state has unknown keys \['base_lrs'\]"),
    ("lr", edit(_last_lr=[1e9]), ValueError, r"unknown keys \['_last_lr'\]"),
    ("lr", edit(last_epoch=None), TypeError, r"last_epoch=None \(NoneType\) must be an integer >= 0"),
    ("lr", edit(last_epoch=-1), ValueError, r"last_epoch=-1 must be an integer >= 0"),
    ("lr", edit(_counted_steps=9), ValueError, r"_counted_steps=9 must be an integer in \[0, 5\]"),
    ("lr", edit(consumed_layer_tokens=-1), ValueError, r"consumed_layer_tokens=-1 must be an integer >= 0"),
    ("lr", edit(consumed_layer_tokens=True), TypeError, r"consumed_layer_tokens=True \(bool\)"),
    ("lr", edit(warmup_type=KeyError), ValueError, r"missing \['warmup_type'\]"),
]


@pytest.mark.parametrize("target, change, exc, match", CASES)
def test_bad_state_is_refused_and_changes_nothing(target, change, exc, match):
    make, pick = TARGETS[target]
    obj = pick(make())
    before = copy.deepcopy(obj.state_dict())
    lr_before = obj.get_last_lr() if target == "lr" else None
    bad = change(json.loads(json.dumps(obj.state_dict())))
    with pytest.raises(exc, match=match):
        obj.load_state_dict(bad)
    assert obj.state_dict() == before
    if target == "lr":
        assert obj.get_last_lr() == lr_before
        assert [g["lr"] for g in obj.optimizer.param_groups] == lr_before


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_valid_state_round_trips_through_json(target):
    make, pick = TARGETS[target]
    source = pick(make())
    fresh = pick(make())
    state = json.loads(json.dumps(source.state_dict()))
    fresh.load_state_dict(state)
    assert fresh.state_dict() == source.state_dict()


def test_lr_state_restores_progress_but_this_runs_settings_win():
    """A resumed run with another total keeps its own settings (as a rebuilt LambdaLR would) and logs the change;
    base LRs always come from this run's optimizer."""
    saved = make_lr().state_dict()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    ltd = hfde.RandomLTDScheduler(32, 256, 40, 16, total_layer_num=12, random_ltd_layer_num=10, global_batch_size=4)
    resumed = hfde.get_layer_token_lr_scheduler(opt, ltd, total_layer_tokens=300_000, warmup_layer_tokens=40_000)
    with CaptureLogger(tf.utils.logging.get_logger(lr_schedule.__name__)) as cl:
        resumed.load_state_dict(saved)
    assert "total_layer_tokens': 200000" in cl.out and "total_layer_tokens': 300000" in cl.out
    assert resumed.total_layer_tokens == 300_000 and resumed.base_lrs == [0.5]
    consumed = sum(ltd.layer_tokens_at(j) for j in range(5))
    assert resumed.consumed_layer_tokens == consumed
    expected = 0.5 * lr_schedule.layer_token_lr_factor(
        consumed, total_layer_tokens=300_000, warmup_layer_tokens=40_000
    )
    assert resumed.get_last_lr() == pytest.approx([expected], rel=1e-12)


def test_handle_without_scheduler_refuses_a_scheduler_state():
    handle = make_handle()
    state = handle.state_dict()
    handle.scheduler = None
    with pytest.raises(ValueError, match="scheduler=a scheduler state, but this handle has no scheduler"):
        handle.load_state_dict(state)
    handle.load_state_dict({**state, "scheduler": None, "kept_length": 5})
    assert handle.kept_length == 5
