"""The benchmark suite in CPU mode (tiny shapes): it runs, checks before timing, and its
results folder, table and README section come out well-formed -- so it cannot rot
between GPU runs."""
import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import report  # noqa: E402
from bench.run import main as bench_main  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = bench_main(["--device", "cpu", "--shapes", "tiny", "--mode", "fwd,bwd",
                     "--dtype", "f32,bf16", "--repeats", "3", "--out", str(out)])
    assert rc == 0
    with open(out / "results.json") as f:
        return out, json.load(f)


def test_rows_are_checked_timed_and_scored(results):
    out, res = results
    rows = res["rows"]
    impls = {r["impl"] for r in rows}
    assert {"pydl-cpu", "torch"} <= impls
    ops = {r["op"] for r in rows}
    assert {"relu", "leaky_relu", "elu", "sigmoid", "tanh", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
            "batch_norm", "bn_relu", "bn_add_relu", "conv2d", "sgd", "adam", "adamw", "rmsprop", "adagrad"} <= ops
    for r in rows:
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and len(r["repeats_ms"]) == 3
        if r["flops"]:   # compute-bound rows (conv)
            assert r["TFLOPs"] > 0
        else:            # memory-bound rows
            assert r["GBps"] > 0 and r["pct_copy"] > 0
        if r["family"] == "optim" and r["impl"].startswith("pydl"):
            assert r["host_us"] > 0
        if r["impl"].startswith("pydl"):
            assert r["speedup_vs_torch"] > 0
    assert res["ceilings"]["copy_GBps"] > 0
    assert res["env"]["torch"] and "backends" in res["env"]


def test_wrong_kernel_is_reported_not_timed(monkeypatch, tmp_path):
    from bench import bench_activation
    bad = dict(bench_activation.OPS)
    bad["relu"] = (lambda b: (lambda x: x * 1.001), bad["relu"][1])  # a subtly wrong "kernel"
    monkeypatch.setattr(bench_activation, "OPS", bad)
    rc = bench_main(["--device", "cpu", "--op", "relu", "--backend", "cpu", "--repeats", "2",
                     "--layout", "contiguous", "--mode", "fwd", "--no-plots", "--out", str(tmp_path)])
    assert rc == 1
    rows = json.load(open(tmp_path / "results.json"))["rows"]
    wrong = [r for r in rows if r["impl"] == "pydl-cpu"]
    assert wrong and all(r["status"].startswith("WRONG") and "median_ms" not in r for r in wrong)


def test_table_and_readme_section(results, tmp_path):
    out, res = results
    table = (out / "table.md").read_text()
    assert "| op | layer |" in table and "relu" in table
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    report.update_readme(str(out), str(readme))
    text = readme.read_text()
    assert "old" not in text and "| relu |" in text and text.endswith("rest\n")
    report.update_readme(None, str(readme))
    assert "No GPU run is recorded yet" in readme.read_text()


def test_plots(results):
    pytest.importorskip("matplotlib")
    out, res = results
    files = report.plots(res, str(out / "plots"))
    assert files and all(os.path.getsize(f) > 1000 for f in files)
