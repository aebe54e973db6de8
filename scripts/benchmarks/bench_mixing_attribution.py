"""Online mixing's per-micro-batch loss attribution (``group_loss_sums``) against the plain way of getting the same
sums, side by side in one process: one cross-entropy over all of a causal LM's logits, then per-row sums.

Both must give the same sums to the bit; the attribution reads the logits in cache-sized chunks (the shifted token
losses of :func:`hf_data_efficiency.curriculum.reference.shifted_token_losses`). The shapes default to the mixing
study's micro-batch (16 rows of 128 tokens, a 4,097-token vocabulary).

Run: ``OMP_NUM_THREADS=1 python scripts/benchmarks/bench_mixing_attribution.py``
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_data_efficiency.curriculum.mixing import group_loss_sums


def plain_sums(groups: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, num_groups: int) -> torch.Tensor:
    """The reference: torch's cross-entropy over every shifted token at once, summed per row, added per group."""
    with torch.no_grad():
        shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1), ignore_index=-100, reduction="none"
        ).view(labels.shape)
        out = torch.zeros(2, num_groups, dtype=torch.float64)
        out[0].index_add_(0, groups, losses.sum(1, dtype=torch.float64))
        out[1].index_add_(0, groups, (shifted != -100).sum(1).to(torch.float64))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4097)
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.manual_seed(0)
    logits = torch.randn(args.rows, args.tokens, args.vocab)
    labels = torch.randint(0, args.vocab, (args.rows, args.tokens))
    groups = torch.randint(0, args.groups, (args.rows,))
    arms = {
        "plain cross-entropy": lambda: plain_sums(groups, logits, labels, args.groups),
        "group_loss_sums": lambda: group_loss_sums(groups, logits, labels, args.groups, causal=True),
    }
    same = torch.equal(*(f() for f in arms.values()))
    seconds = dict.fromkeys(arms, 0.0)
    for _ in range(args.repeats):  # interleaved, so machine noise hits both arms alike
        for name, f in arms.items():
            start = time.perf_counter()
            f()
            seconds[name] += time.perf_counter() - start
    base = seconds["plain cross-entropy"]
    print(f"{args.rows} x {args.tokens} tokens, vocabulary {args.vocab}; identical sums: {same}")
    for name, s in seconds.items():
        print(f"{name:>20}: {s / args.repeats * 1e3:.2f} ms per micro-batch ({s / base:.2f}x)")


if __name__ == "__main__":
    main()
