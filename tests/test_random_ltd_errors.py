"""random-LTD bad input (clear errors naming the field), refusals, fallbacks and the layer registry."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as tf
from torch import nn

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


def test_packed_kwargs_keep_per_document_and_are_recomputed_for_the_kept_tokens():
    """A packed row with cu_seq_lens (documents of 5, 3 and 2 tokens, kept 4): each document keeps min(len, 4) of its
    own positions, and the layer receives cu_seq_lens/max_length of the kept tokens."""
    hfde.register_random_ltd_layer(ToyBlock, hidden_states_arg="x", mask_args=("mask",), sequence_args=("pos",))
    seen = []

    class Recording(ToyBlock):
        def forward(self, x, mask=None, pos=None, **kwargs):
            seen.append({k: kwargs[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")})
            return super().forward(x, mask, pos)

    hfde.register_random_ltd_layer(Recording, hidden_states_arg="x", mask_args=("mask",), sequence_args=("pos",))
    torch.manual_seed(0)
    model = ToyModel().train()
    model.blocks = nn.ModuleList(Recording() for _ in range(4))
    handle = hfde.apply_random_ltd(model, {"min_value": 16, "max_value": 64, "require_steps": 5})
    handle.kept_length, handle.record_indices = 4, True
    x, pos = torch.randn(1, 10, 8), torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]])
    cu = torch.tensor([0, 5, 8, 10], dtype=torch.int32)
    model(x, None, pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=5, max_length_k=5)
    for layer_id in handle.layer_ids:  # layers 1 and 2
        idx = handle.last_indices[layer_id][0]
        per_doc = [int(((idx >= a) & (idx < b)).sum()) for a, b in ((0, 5), (5, 8), (8, 10))]
        assert per_doc == [4, 3, 2] and (idx.diff() > 0).all()
    kept = {"cu_seq_lens_q": [0, 4, 7, 9], "cu_seq_lens_k": [0, 4, 7, 9], "max_length_q": 4, "max_length_k": 4}
    for call in (seen[1], seen[2]):
        got = {k: v.tolist() if torch.is_tensor(v) else v for k, v in call.items()}
        assert got == kept and call["cu_seq_lens_q"].dtype == torch.int32
    assert seen[0]["max_length_q"] == seen[3]["max_length_q"] == 5  # unpatched layers see the whole row
    assert handle.kept_tokens_seen == 2 * 9 and handle.full_tokens_seen == 2 * 10


def test_unrestrictable_mask_shape():
    idx = torch.tensor([[0, 2]])
    with pytest.raises(ValueError, match=r"cannot restrict attention_mask of shape \(1, 4, 4\)"):
        rl.restrict_mask(torch.ones(1, 4, 4), idx, 4)
    with pytest.raises(ValueError, match=r"cannot restrict attention_mask of shape \(1, 1, 4, 6\)"):
        rl.restrict_mask(torch.ones(1, 1, 4, 6), idx, 4)
