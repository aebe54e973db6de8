"""random-LTD bad input (clear errors naming the field), refusals, fallbacks and the layer registry."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as tf
from torch import nn
from transformers.testing_utils import CaptureLogger

import hf_data_efficiency as hfde
from hf_data_efficiency.config import RandomLTDConfig
from hf_data_efficiency.routing import random_ltd as rl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
tf.logging.set_verbosity_warning()


def gpt2(**kw):
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=4, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **kw
    )
    return tf.GPT2LMHeadModel(cfg).train()


def ltd(**kw) -> RandomLTDConfig:
    base = dict(min_value=16, max_value=32, require_steps=10, seq_per_step=16)
    base.update(kw)
    return RandomLTDConfig(**base)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_kept_length_must_be_positive_int(value):
    handle = hfde.apply_random_ltd(gpt2(), ltd())
    with pytest.raises(ValueError, match=r"kept_length=.*positive integer"):
        handle.kept_length = value


def test_schedule_that_rounds_to_zero_is_refused():
    with pytest.raises(ValueError, match=r"min_value=8 with seq_per_step=16 gives a kept length of 0"):
        hfde.apply_random_ltd(gpt2(), ltd(min_value=8))


def test_max_value_above_model_positions():
    with pytest.raises(ValueError, match=r"max_value=64 is larger than the model's maximum sequence length 32"):
        hfde.apply_random_ltd(gpt2(), ltd(max_value=64))


def test_layer_ids_out_of_range():
    with pytest.raises(ValueError, match=r"random_ltd_layer_id=\[1, 4\] has ids \[4\].*allowed ids: 0\.\.3"):
        hfde.apply_random_ltd(gpt2(), ltd(random_ltd_layer_id=[1, 4]))


def test_total_layer_num_disagrees_with_model():
    with pytest.raises(ValueError, match=r"total_layer_num=24 disagrees with the model, which has 4 GPT2Block layers"):
        hfde.apply_random_ltd(gpt2(), ltd(total_layer_num=24))


def test_layer_num_disagrees_with_default_ids():
    with pytest.raises(ValueError, match=r"random_ltd_layer_num=3 disagrees with the 2 layers"):
        hfde.apply_random_ltd(gpt2(), ltd(random_ltd_layer_num=3))


def test_default_layers_need_three_layers():
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(ValueError, match=r"has only 2 layers; give random_ltd_layer_id"):
        hfde.apply_random_ltd(model, ltd())


def test_unsupported_model_lists_classes_and_registration():
    with pytest.raises(ValueError) as err:
        hfde.apply_random_ltd(nn.Sequential(nn.Linear(4, 4)), ltd())
    msg = str(err.value)
    assert "Sequential has no layer that random-LTD supports" in msg
    for name in (
        "GPT2Block",
        "BertLayer",
        "ViTLayer",
        "LlamaDecoderLayer",
        "Qwen2DecoderLayer",
        "MistralDecoderLayer",
    ):
        assert name in msg
    assert "register_random_ltd_layer" in msg


def test_bad_config_type():
    with pytest.raises(ValueError, match="RandomLTDConfig or a DeepSpeed 'random_ltd' dict"):
        hfde.apply_random_ltd(gpt2(), 128)


def test_double_patch_refused():
    model = gpt2()
    hfde.apply_random_ltd(model, ltd())
    with pytest.raises(ValueError, match="already patched"):
        hfde.apply_random_ltd(model, ltd())


def test_keep_positions_longer_than_kept_length():
    model = gpt2()
    handle = hfde.apply_random_ltd(model, ltd(keep_positions=[0, 1, 2]))
    handle.kept_length = 2
    with pytest.raises(ValueError, match=r"kept_length=2 is smaller than the number of keep_positions \[0, 1, 2\]"):
        model(torch.randint(0, 64, (2, 16)))


def test_cross_attention_refused():
    model = gpt2(add_cross_attention=True)
    handle = hfde.apply_random_ltd(model, ltd())
    handle.kept_length = 8
    with pytest.raises(ValueError, match="encoder_hidden_states \\(cross-attention\\)"):
        model(torch.randint(0, 64, (2, 16)), encoder_hidden_states=torch.randn(2, 5, 32))


def test_past_key_values_in_training_refused():
    model = gpt2()
    handle = hfde.apply_random_ltd(model, ltd())
    ids = torch.randint(0, 64, (2, 12))
    model.eval()
    past = model(ids, use_cache=True).past_key_values
    model.train()
    handle.kept_length = 8
    with pytest.raises(ValueError, match="holds 12 past tokens"):
        model(torch.randint(0, 64, (2, 12)), past_key_values=past, use_cache=True)


class ToyBlock(nn.Module):
    """A batch-first block whose output depends on its mask and positions, with custom argument names."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x, mask=None, pos=None, **kwargs):
        w = mask.float() if mask is not None else torch.ones(x.shape[:2])
        pooled = (x * w[..., None]).sum(1, keepdim=True) / w.sum(1, keepdim=True)[..., None]
        out = x + torch.tanh(self.lin(x)) + pooled + 0.01 * pos[..., None].float()
        return (out, "aux")


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ToyBlock() for _ in range(4))

    def forward(self, x, mask, pos, **kwargs):
        for block in self.blocks:
            x = block(x, mask, pos=pos, **kwargs)[0]
        return x


def test_registered_custom_layer_matches_oracle():
    hfde.register_random_ltd_layer(ToyBlock, hidden_states_arg="x", mask_args=("mask",), sequence_args=("pos",))
    torch.manual_seed(0)
    model = ToyModel().train()
    handle = hfde.apply_random_ltd(model, {"min_value": 16, "max_value": 64, "require_steps": 5})
    handle.kept_length = 5
    handle.record_indices = True
    x, pos = torch.randn(3, 12, 8), torch.arange(12).expand(3, 12)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, 9:] = False
    layer = handle.layers[0]
    out, aux = layer(x, mask, pos=pos)
    idx = handle.last_indices[1]
    assert aux == "aux"
    ar = torch.arange(3)[:, None]
    expected, _ = ToyBlock.forward(layer, x[ar, idx], mask[ar, idx], pos[ar, idx])
    assert torch.equal(out[ar, idx], expected)
    dropped = torch.ones(3, 12, dtype=torch.bool)
    dropped[ar, idx] = False
    assert torch.equal(out[dropped], x[dropped])


def test_packed_kwargs_fall_back_to_full_length_with_one_warning():
    hfde.register_random_ltd_layer(ToyBlock, hidden_states_arg="x", mask_args=("mask",), sequence_args=("pos",))
    torch.manual_seed(0)
    model = ToyModel().train()
    handle = hfde.apply_random_ltd(model, {"min_value": 16, "max_value": 64, "require_steps": 5})
    handle.kept_length = 4
    x, pos, mask = torch.randn(2, 10, 8), torch.arange(10).expand(2, 10), torch.ones(2, 10, dtype=torch.bool)
    logger = tf.utils.logging.get_logger(rl.__name__)
    with CaptureLogger(logger) as cl:
        out = model(x, mask, pos, cu_seq_lens_q=torch.tensor([0, 10]), cu_seq_lens_k=torch.tensor([0, 10]))
        model(x, mask, pos, cu_seq_lens_q=torch.tensor([0, 10]), cu_seq_lens_k=torch.tensor([0, 10]))
    assert cl.out.count("packed sequences") == 1
    # two forwards of 2 x 10 tokens through all 4 layers, every one at full length: counted as run, not as kept
    assert handle.actual_layer_tokens == 2 * (2 * 10) * 4
    assert handle.kept_tokens_seen == handle.full_tokens_seen == 2 * (2 * 10) * 2
    handle.remove()
    assert torch.equal(out, model(x, mask, pos, cu_seq_lens_q=None))


def test_unrestrictable_mask_shape():
    idx = torch.tensor([[0, 2]])
    with pytest.raises(ValueError, match=r"cannot restrict attention_mask of shape \(1, 4, 4\)"):
        rl.restrict_mask(torch.ones(1, 4, 4), idx, 4)
    with pytest.raises(ValueError, match=r"cannot restrict attention_mask of shape \(1, 1, 4, 6\)"):
        rl.restrict_mask(torch.ones(1, 1, 4, 6), idx, 4)
