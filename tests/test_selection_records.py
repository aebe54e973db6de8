"""The selection study's tables in docs/benchmarks.md, recomputed from the committed run records
(docs/bench_records/selection/), and the study's equal-compute premise checked on every record."""

import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "bench_records" / "selection"
SECTION = (ROOT / "docs" / "benchmarks.md").read_text().split("## Model-based selection")[1].split("\n## ")[0]
CORPORA = {"ptb": "PTB", "bbc": "BBC News", "noisy": "noisy BBC News"}
ARMS = ("baseline", "ltd", "select", "select_ltd", "filter", "filter_ltd")


def records(corpus: str, arm: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((RECORDS / corpus).glob(f"{arm}_s*.json"))]


def table(corpus: str) -> str:
    return SECTION.split(f"#### {CORPORA[corpus]}\n")[1].split("####")[0]


@pytest.mark.parametrize("corpus", list(CORPORA))
def test_table_rows_are_the_records(corpus):
    rows = table(corpus).splitlines()
    budget = statistics.mean(r["curve"][-1]["effective_tokens"] for r in records(corpus, "baseline"))
    for arm in ARMS:
        runs = records(corpus, arm)
        if not runs:
            assert not any(row.startswith(f"| {arm} |") for row in rows), arm
            continue
        assert len(runs) == 3, (corpus, arm)  # every arm that ran has 3 seeds
        losses = [r["final"]["validation"]["loss"] for r in runs]
        cell = f"{statistics.mean(losses):.3f} ± {statistics.stdev(losses):.3f}"
        line = next(row for row in rows if row.startswith(f"| {arm} | {len(runs)} | {runs[0]['bench']['steps']} |"))
        assert cell in line, (line, cell)
        for r in runs:  # equal compute, the reference forwards included: within 1% of the baseline's
            assert r["curve"][-1]["effective_tokens"] == pytest.approx(budget, rel=0.01), (arm, r["bench"]["seed"])
            if arm.startswith("select"):  # one reference forward per training token, at a third
                reference = r["curve"][-1]["reference_effective_tokens"]
                assert reference == pytest.approx(r["bench"]["steps"] * 8 * 128 / 3)
