"""benchmarks/selection_throughput.py at tiny sizes, so the benchmark cannot rot.

The fast tests run its ICP and cheap-scorer parts for real (a few seconds); the slow one runs ``--quick`` end to
end, the reference model and every model-based scorer included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import selection_throughput as bench  # noqa: E402


def _reference_greedy(x: np.ndarray) -> list[int]:
    """The naive walk written the plainest way (a visited mask over the full scan)."""
    n = len(x)
    visited = np.zeros(n, dtype=bool)
    cur, out = 0, []
    for t in range(n):
        out.append(cur)
        visited[cur] = True
        if t < n - 1:
            sims = x @ x[cur]
            sims[visited] = -np.inf
            cur = int(np.argmax(sims))
    return out


def test_naive_baseline_is_the_plain_greedy_walk():
    x, _, _ = bench.gaussian_topics(400, 16, 8, seed=3)
    order = bench.naive_greedy_order(x)
    assert sorted(order.tolist()) == list(range(400))
    assert order.tolist() == _reference_greedy(x)


def test_growth_exponents():
    rows = [{"n": 1000, "a_s": 2.0, "b_s": 1.0}, {"n": 10000, "a_s": 20.0, "b_s": 100.0}]
    g = bench.growth(rows, ("a_s", "b_s", "missing_s"))[0]
    assert g["n_ratio"] == 10.0 and "missing_s" not in g
    assert g["a_s"] == {"ratio": 10.0, "exponent": 1.0} and g["b_s"] == {"ratio": 100.0, "exponent": 2.0}


def test_icp_rows_exact_then_ivf_and_linear_traversal():
    """Synthetic-embedding ICP at 500 (exact kNN) and 4000 documents (IVF: exact_max 1000): the walk inspects at
    most k + 1 list entries and pops at most 1 + 2k queue entries per document at both sizes (linear in n, not
    quadratic), the emitted order keeps planted
    topics together far above the input order, and the naive baseline runs at the smaller size only."""
    args = bench.parse_args(["--icp-embed", "synthetic", "--icp-dim", "32", "--icp-exact-max", "1000",
                             "--icp-sizes", "500,4000", "--scorers", "", "--docs", "8"])
    result = bench.run_benchmark(args)
    small, large = result["icp"]["rows"]
    assert (small["knn_kind"], large["knn_kind"]) == ("exact", "ivf")
    for row in (small, large):
        assert row["kept"] + row["dropped"] == row["n"]
        assert row["inspections"] <= row["n"] * 11  # k = 10 neighbours + the end of a list, per visit
        assert row["heap_pops"] <= row["n"] * (1 + 2 * 10)  # icp.py's bound: n + 2 n k queue pops
        assert row["same_topic_icp"] > 0.9 and row["same_topic_icp"] > row["same_topic_input"] + 0.4, row
        assert row["step_s"] >= row["knn_s"] + row["traverse_s"] > 0
    assert small["same_topic_naive"] > 0.9 and small["naive_s"] > 0 and "naive_s" not in large
    assert large["naive_s_extrapolated_n2"] == pytest.approx(small["naive_s"] * 64, rel=0.01, abs=0.1)
    assert set(result["icp"]["growth"][0]) >= {"knn_s", "traverse_s", "step_s"}


def test_text_icp_and_cheap_scorers_write_json(tmp_path, capsys):
    """Text mode (the step's own run and hashing embedder), the scorers that need no checkpoint, select, the JSON
    file and the table."""
    out = tmp_path / "bench.json"
    bench.main(["--docs", "40", "--skip-model-scorers", "--icp-sizes", "300", "--icp-dim", "256", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "versions"} <= set(result["machine"]) and "faiss-cpu" in result["machine"]["versions"]
    assert set(result["scorers"]) == set(bench.CHEAP_SCORERS) and "reference_model" not in result
    for name, row in result["scorers"].items():
        assert "error" not in row, (name, row)
        assert row["scored"] == 40 and row["total_docs_per_s"] > 0
        assert row["setup_s"] + row["score_s"] <= row["total_s"] + 1e-3
    sel = result["select"]
    assert sel["kept"] < 40 and abs(sel["kept_char_share"] - 0.5) < 0.1
    (row,) = result["icp"]["rows"]
    assert row["mode"] == "text" and row["embed_s"] > 0 and row["same_topic_icp"] > row["same_topic_input"] + 0.3
    table = capsys.readouterr().out
    assert "gotd_score *" in table and "icp n" in table


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "quick.json"
    result = bench.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["scorers"].keys() == result["scorers"].keys()
    errors = {k: v["error"] for k, v in result["scorers"].items() if "error" in v}
    assert not errors, errors
    assert set(result["scorers"]) == set(bench.CHEAP_SCORERS + bench.MODEL_SCORERS)
    assert result["reference_model"]["params"] > 0 and len(result["reference_model"]["checkpoints"]) == 3
    assert [r["knn_kind"] for r in result["icp"]["rows"]] == ["exact", "ivf"]
