"""The group-mixing and batch-size-warmup study's tables in docs/benchmarks.md, recomputed from the committed run
records (docs/bench_records/mixing_warmup/) without the benchmark script's code: each arm's final clean validation
loss (mean ± std over 3 seeds) and the steps it needs to reach its control's final loss (seed-mean curves, linear
between evaluations)."""

import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "bench_records" / "mixing_warmup"
DOCS = (ROOT / "docs" / "benchmarks.md").read_text()
SEEDS = (1, 2, 3)
STUDIES = {
    "junk": ("stratified", ("stratified", "natural", "online")),
    "clean": ("stratified", ("stratified", "natural", "online")),
    "warmup": ("constant", ("constant", "ramp")),
}


def records(study: str, arm: str) -> list[dict]:
    return [json.loads((RECORDS / study / f"{arm}_s{seed}.json").read_text()) for seed in SEEDS]


def clean_loss(point: dict) -> float:
    return (point["ptb_loss"] + point["bbc_loss"]) / 2


def first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The step at which a (step, loss) curve first falls to ``target``, linear between evaluations."""
    for before, after in zip([None, *curve], curve):
        if after[1] <= target:
            if before is None:
                return after[0]
            return before[0] + (before[1] - target) / (before[1] - after[1]) * (after[0] - before[0])
    return None


def table_rows(study: str) -> dict[str, str]:
    """The docs' table rows of ``study``, by arm."""
    start = DOCS.index(f"**Mixture `{study}`**" if study != "warmup" else "**Batch-size warmup**")
    rows = {}
    for line in DOCS[start:].splitlines()[1:]:
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
        elif rows:  # the end of the table
            break
    return rows


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_final_losses_and_crossings_match_the_records(study):
    control, arms = STUDIES[study]
    rows = table_rows(study)
    base = records(study, control)
    target = statistics.mean(clean_loss(r["curve"][-1]) for r in base)
    base_steps = statistics.mean(r["curve"][-1]["step"] for r in base)
    for arm in arms:
        recs = records(study, arm)
        finals = [clean_loss(r["curve"][-1]) for r in recs]
        assert f"| {statistics.mean(finals):.3f} ± {statistics.stdev(finals):.3f} |" in rows[arm], (arm, rows[arm])
        n = min(len(r["curve"]) for r in recs)
        curve = [
            (
                statistics.mean(r["curve"][i]["step"] for r in recs),
                statistics.mean(clean_loss(r["curve"][i]) for r in recs),
            )
            for i in range(n)
        ]
        reached = first_reach(curve, target)
        cell = "not reached" if reached is None else f"{reached / base_steps:.2f}x ({reached:.0f})"
        assert f"| {cell} |" in rows[arm], (arm, cell, rows[arm])
