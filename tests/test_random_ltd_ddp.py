"""random-LTD under DistributedDataParallel (2 CPU processes, gloo): no unused parameters, synced grads.

Oracle: the DDP-averaged gradient equals the mean of the per-rank gradients that the same patched
model computes locally, with the same per-rank subsets.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import free_port


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import transformers as tf

    import hf_data_efficiency as hfde

    tf.logging.set_verbosity_error()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    cfg = tf.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=4, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    model = tf.GPT2LMHeadModel(cfg).train()
    handle = hfde.apply_random_ltd(
        model, hfde.RandomLTDConfig(min_value=16, max_value=32, require_steps=10, global_batch_size=2 * world)
    )
    handle.kept_length = 5
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False: must not be needed
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(100 + rank))
    for _ in range(2):  # a second forward raises if the first left parameters without gradients
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1000 + rank)  # ranks draw different subsets
        ddp(input_ids=ids, labels=ids).loss.backward()
    synced = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1000 + rank)  # same subsets again, without DDP
    model(input_ids=ids, labels=ids).loss.backward()
    local = {n: p.grad.clone() for n, p in model.named_parameters()}
    for grad in local.values():
        dist.all_reduce(grad)
        grad /= world
    ok = all(torch.allclose(synced[n], local[n], rtol=1e-5, atol=1e-7) for n in synced)
    handle.update(0)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(f"{ok} {handle.consumed_layer_tokens}")
    dist.destroy_process_group()


def test_ddp_two_ranks(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert all(ok == "True" for ok, _ in results)
    # counter is global: 4 sequences * (16 * 2 + 32 * 2) layer-tokens at step 0, the same on both ranks
    assert all(int(tokens) == 4 * (16 * 2 + 32 * 2) for _, tokens in results)
