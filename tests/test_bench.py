"""The benchmark suite in CPU mode (tiny shapes): it runs, checks before timing, and its
results folder, table and README section come out well-formed -- so it cannot rot
between GPU runs."""
import json
import os
import sys

import pytest
import torch

import pydl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import report  # noqa: E402
from bench.run import main as bench_main  # noqa: E402


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # every family but the training step, which has its own test below (its Triton rows
    # would run whole networks under the interpreter)
    rc = bench_main(["--device", "cpu", "--shapes", "tiny", "--mode", "fwd,bwd",
                     "--op", "activation,pool,batchnorm,conv,optim",
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
        assert r["host_ms"] > 0  # on the CPU the call's own time is the measured time
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
    report.update_readme([str(out), str(out)], str(readme))  # several folders: a table each
    assert readme.read_text().count("| relu |") == 2 * text.count("| relu |")
    report.update_readme(None, str(readme))
    assert "No GPU run is recorded yet" in readme.read_text()


def test_host_bound_rows_are_marked(results):
    """On a GPU, a row whose host time (the call's CPU time) is most of the measured time
    is marked: the GPU waited on Python and launch overhead, not on kernels. CPU rows never
    are (there the host time is the measured time)."""
    out, res = results
    assert "\u2020" not in report.markdown(res)
    # a CPU sweep on a machine that has a GPU (the environment names it) is a CPU run
    on_gpu_machine = json.loads(json.dumps(res))
    on_gpu_machine["env"]["gpu"] = "NVIDIA Test GPU"
    assert res["device"] == "cpu" and "\u2020" not in report.markdown(on_gpu_machine)
    gpu = json.loads(json.dumps(on_gpu_machine))
    gpu["device"] = "cuda"
    ok = [r for r in gpu["rows"] if r["status"] == "ok"]
    for i, r in enumerate(ok):
        r["host_ms"] = r["median_ms"] * (0.9 if i == 0 else 0.1)
    table = report.markdown(gpu)
    marked = [line for line in table.splitlines() if "\u2020" in line and line.startswith("|")]
    assert len(marked) == 1 and f"| {ok[0]['op']} | {ok[0]['layer']} |" in marked[0]
    assert "host-bound" in table


def test_plots(results):
    pytest.importorskip("matplotlib")
    out, res = results
    files = report.plots(res, str(out / "plots"))
    assert files and all(os.path.getsize(f) > 1000 for f in files)


def test_training_step_rows_time_and_peak_memory(tmp_path):
    """A whole training step (forward, loss, backward, Adam) of LeNet-5 and a small ResNet,
    pydl against torch: checked against float64 first, timed, and its peak memory recorded
    -- and pydl's peak is not above torch's, with torch's default Adam or its fused one
    (issue: reliability, memory). On the CPU the peak counts every tensor crossing an op
    boundary (bench/harness.py)."""
    rc = bench_main(["--device", "cpu", "--shapes", "tiny", "--op", "train_step", "--backend", "cpu",
                     "--dtype", "f32,bf16", "--layout", "contiguous,channels_last", "--repeats", "2",
                     "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    res = json.load(open(tmp_path / "results.json"))
    groups = {}
    for r in res["rows"]:
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and r["peak_MB"] > 0
        groups.setdefault((r["layer"], r["dtype"], r["layout"]), {})[r["impl"]] = r["peak_MB"]
    assert {k[0] for k in groups} == {"lenet5", "resnet.tiny"} and len(groups) == 8
    for key, peaks in groups.items():
        assert set(peaks) == {"pydl-cpu", "torch", "torch fused"}, key
        assert peaks["pydl-cpu"] <= min(peaks["torch"], peaks["torch fused"]), (key, peaks)
    assert "Training steps: time and peak memory" in (tmp_path / "table.md").read_text()


def test_budget_and_first(tmp_path):
    """--first puts the named ops first; --budget-s stops starting cases once spent and
    lists the rest (a GPU lease is short: the rows that matter most come first)."""
    rc = bench_main(["--device", "cpu", "--op", "relu,sigmoid", "--first", "sigmoid", "--backend", "cpu",
                     "--repeats", "2", "--mode", "fwd", "--budget-s", "0.001", "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    res = json.load(open(tmp_path / "results.json"))
    assert {r["op"] for r in res["rows"]} == {"sigmoid"}
    assert res["not_run_budget"] and any(k.startswith("relu|") for k in res["not_run_budget"])
    assert "were not run" in (tmp_path / "table.md").read_text()


def test_geomeans_per_backend_and_best():
    """The geometric mean of x torch over a network's layers, per backend and for each
    layer's fastest backend, over the layers where both ran; shown under the table."""
    def row(layer, impl, ms, status="ok"):
        return {"op": "conv2d", "layer": layer, "dtype": "bfloat16", "layout": "channels_last",
                "mode": "fwd", "impl": impl, "median_ms": ms, "status": status}
    rows = [row("resnet50.a", "torch", 1.0), row("resnet50.a", "pydl-cuda", 2.0),
            row("resnet50.a", "pydl-triton", 0.5),
            row("resnet50.b", "torch", 1.0), row("resnet50.b", "pydl-cuda", 0.5),
            row("resnet50.b", "pydl-triton", 4.0),
            row("resnet50.c", "torch", 1.0), row("resnet50.c", "pydl-cuda", 1.0, "error: x"),
            row("resnet50.c", "pydl-triton", 1.0),
            row("vgg16.a", "torch", 1.0), row("vgg16.a", "pydl-cuda", 1.0)]
    got = {(g["net"], g["impl"]): (round(g["geomean"], 6), g["n"]) for g in report.geomeans(rows)}
    assert got[("resnet50", "cuda")] == (1.0, 2)                    # sqrt(0.5 * 2)
    assert got[("resnet50", "triton")] == (round((2 * 0.25 * 1) ** (1 / 3), 6), 3)
    assert got[("resnet50", "best")] == (round((2 * 2 * 1) ** (1 / 3), 6), 3)
    assert got[("vgg16", "cuda")] == (1.0, 1)
    env = {"gpu": "X", "date": "d", "commit": "c", "torch": "t"}
    md = report.markdown({"env": env, "ceilings": {}, "rows": rows, "args": {}})
    assert "| conv2d | resnet50 | bfloat16 | channels_last | fwd | best | 1.59 | 3 |" in md


def test_first_order_by_op_and_mode():
    """--first "conv2d:fwd,train_step,conv2d" (gpu_validate.sh's): every conv forward row,
    then the training steps, then the conv backward rows, then the rest, each group in its
    usual order."""
    from types import SimpleNamespace as C
    from bench.run import first_order
    cases = [C(op="conv2d", family="conv", mode=m, layer=l) for l in ("a", "b") for m in ("fwd", "bwd")]
    cases += [C(op="relu", family="activation", mode="fwd", layer="a"),
              C(op="train_step", family="train", mode="step", layer="a")]
    got = [(c.op, c.layer, c.mode) for c in first_order(cases, "conv2d:fwd,train_step,conv2d")]
    assert got == [("conv2d", "a", "fwd"), ("conv2d", "b", "fwd"), ("train_step", "a", "step"),
                   ("conv2d", "a", "bwd"), ("conv2d", "b", "bwd"), ("relu", "a", "fwd")]
    assert [c.op for c in first_order(cases, "activation")][0] == "relu"  # a family name


def test_timer_caps_a_slow_row():
    """A row is timed for about max_time_s: fewer repeats for a slow call, never below 5;
    repeats the user chose explicitly are kept."""
    import time
    from bench.harness import Timer

    def slow():
        time.sleep(0.004)
    assert len(Timer("cpu", warmup=0, repeats=30, max_time_s=0.04)(slow).repeats_ms) in range(5, 11)
    assert len(Timer("cpu", warmup=0, repeats=30, max_time_s=0.001)(slow).repeats_ms) == 5
    assert len(Timer("cpu", warmup=0, repeats=12, max_time_s=0.001, explicit=True)(slow).repeats_ms) == 12
    assert len(Timer("cpu", warmup=0, repeats=12)(slow).repeats_ms) == 12  # no cap by default
    assert len(Timer("cpu", warmup=0, repeats=30, max_time_s=0.04).with_repeats(8)(slow).repeats_ms) \
        in range(5, 9)


def test_host_overhead_tool(tmp_path, capsys):
    """bench/host_overhead.py: host time per call of each op, pydl and torch, forward alone
    and with its backward, and of an optimizer step (small so CI stays fast)."""
    from bench import host_overhead
    out = tmp_path / "host.json"
    assert host_overhead.main(["--device", "cpu", "--repeats", "5", "--json", str(out)]) == 0
    rows = json.load(open(out))["rows"]
    assert {r["mode"] for r in rows} == {"fwd", "fwd+graph", "fwd+bwd", "step"}
    assert {"conv2d 3x3", "batch_norm train", "max_pool2d 3x3 s2", "relu",
            "Adam step (161 tensors)", "SGD step (161 tensors)"} <= {r["op"] for r in rows}
    assert all(r["torch_us"] > 0 and r["pydl_us"] > 0 for r in rows)
    # the op-entry split: the backend ops alone, for the forward and step rows
    assert all((r["op_entry_us"] is not None) == (r["mode"] in ("fwd", "step")) for r in rows)
    assert all(r["op_entry_us"] > 0 for r in rows if r["op_entry_us"] is not None)
    out = capsys.readouterr().out
    assert "| conv2d 3x3 | fwd |" in out and "op entry us |" in out


def test_op_entry_calls_repeat_the_ops():
    """host_overhead.op_entry_calls: the pydl ops one call made, repeated at their entry
    points below autograd -- the same ops (a batch-norm forward's: bn_fwd_train), none of
    the Python around them (the running statistics' update is not repeated)."""
    from bench import host_overhead
    x = torch.randn(2, 3, 4, 4)
    rm, rv = torch.zeros(3), torch.ones(3)
    run = host_overhead.op_entry_calls(lambda: pydl.functional.batch_norm(x, rm, rv, training=True))
    assert run is not None
    before = rm.clone()
    seen = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    with Spy():
        run()
    assert [n for n in seen if n.startswith("pydl")] in (["pydl::bn_fwd_train"],
                                                         ["pydl_triton::bn_fwd_train"])
    assert torch.equal(rm, before)
    assert host_overhead.op_entry_calls(lambda: torch.relu(x)) is None


def test_cpu_conv_speed_tool(tmp_path, capsys):
    """bench/cpu_conv_speed.py: each pass of the CPU conv on every layer timed beside torch's
    (two rounds, each row's fastest kept), and a saved table shown as the 'before' column."""
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    from bench import cpu_conv_speed
    out = tmp_path / "cpu.json"
    assert cpu_conv_speed.main(["--repeats", "2", "--rounds", "2", "--no-train-step", "--json", str(out)]) == 0
    rows = json.load(open(out))
    assert {r["pass"] for r in rows} == {"fwd", "bwd_input", "bwd_weight"}
    assert len(rows) == 3 * len(cpu_conv_speed.LAYERS)
    assert all(r["pydl_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
    assert "fastest of 2 rounds" in capsys.readouterr().out
    assert cpu_conv_speed.main(["--repeats", "1", "--no-train-step", "--before", str(out)]) == 0
    assert "before ms" in capsys.readouterr().out


def test_cpu_ops_speed_tool(tmp_path, capsys):
    """bench/cpu_ops_speed.py: forward and backward of the CPU batch norm, pools and
    activations beside torch's, every shape x dtype x layout, and optimizer steps, through
    cpu_conv_speed.run's table; --only picks families."""
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    from bench import cpu_ops_speed as tool
    out = tmp_path / "ops.json"
    assert tool.main(["--repeats", "1", "--only", "bn,pool,act", "--json", str(out)]) == 0
    rows = json.load(open(out))
    assert len(rows) == 2 * len(tool.CASES) * (len(tool.BN_SHAPES) + len(tool.POOLS) + len(tool.ACTS))
    assert {r["pass"] for r in rows} == {"fwd", "bwd"}
    assert all(r["pydl_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
    assert "bf16 CL" in capsys.readouterr().out
    assert tool.main(["--repeats", "1", "--only", "optim", "--json", str(out)]) == 0
    assert [r["layer"].split()[0] for r in json.load(open(out))] == [n for n, _ in tool.OPTIMS]
    with pytest.raises(SystemExit):
        tool.main(["--only", "nope"])


@pytest.mark.skipif(not pydl._dispatch.triton_interpreted(),
                    reason="the interpreter smoke run (on a GPU machine bench/gpu_validate.sh configs "
                           "runs the tool for real)")
def test_conv_configs_tool(tmp_path, capsys):
    """bench/conv_configs.py: each Triton conv configuration timed alone beside torch, for
    the forward, input gradient and weight gradient, with its error against torch's result
    (under the interpreter on the tiny layers: the script works; timings mean nothing)."""
    from bench import conv_configs
    out = tmp_path / "cc.json"
    assert conv_configs.main(["--device", "cpu", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.load(open(out))["rows"]
    for which in conv_configs.PASSES:
        mine = [r for r in rows if r["which"] == which and r["config"] != "torch"]
        assert mine and any(r["config"].startswith("autotuned") for r in mine)
        assert all(r["rel_err"] < 2e-2 for r in mine)   # bf16 results against torch's bf16
        assert any(r["config"] == "torch" for r in rows if r["which"] == which)
    assert "| tiny.3x3 | dgrad |" in capsys.readouterr().out


def test_xdist_workers_share_the_cores():
    """Under pytest-xdist each worker's torch gets an equal share of the cores, at least one
    thread (tests/conftest.py): 12 workers on the GPU machine's 16 cores get one each."""
    from conftest import threads_per_worker
    assert threads_per_worker(16, 12) == 1 and threads_per_worker(16, 4) == 4
    assert threads_per_worker(2, 12) == 1 and threads_per_worker(8, 1) == 8
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1:
        assert torch.get_num_threads() == threads_per_worker(os.cpu_count(), workers)


@pytest.mark.skipif(not pydl._dispatch.triton_interpreted(),
                    reason="the interpreter smoke run (on a GPU machine bench/gpu_validate.sh runs "
                           "the tool for real)")
def test_warm_triton_tool(capsys):
    """bench/warm_triton.py runs bench/host_overhead.py's calls, then each of the sweep's
    cases, once on the Triton backend, in the sweep's order (--first), in spawned worker
    processes; at its budget it stops the pool and still exits 0 (under the interpreter
    nothing is compiled: the machinery works)."""
    from bench import warm_triton
    args = ["--device", "cpu", "--shapes", "tiny", "--op", "conv2d,relu", "--mode", "fwd,bwd",
            "--dtype", "f32", "--layout", "channels_last", "--first", "conv2d:bwd", "--jobs", "1"]
    assert warm_triton.main(args + ["--budget-s", "300"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("warmed 9 of 9 cases")
    lines = [line for line in out[:-1] if not line.startswith("warmed")]
    assert len(lines) == 9 and all(line.endswith(" s") for line in lines), out  # no errors
    assert lines[0].startswith(warm_triton.HOST_OVERHEAD + ":")
    assert [line.split("|")[-1].split(":")[0] for line in lines[1:3]] == ["bwd", "bwd"]  # --first
    assert lines[1].startswith("conv2d|")
    assert warm_triton.main(args + ["--budget-s", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("warmed 0 of 9 cases")


# ------------------------------------------------------- bench/gpu_validate.sh, dry run
_FAKE_PY = """#!/usr/bin/env bash
# stands in for python on the GPU machine: logs each call, answers the few it must
echo "$* [OMP_NUM_THREADS=${OMP_NUM_THREADS:-}]" >> "$FAKE_LOG"
case "$*" in
  "-c import xdist") [ -n "${FAKE_XDIST:-}" ] || exit 1 ;;
  "-m pydl info") echo "pydl (fake)" ;;
esac
exit 0
"""


def test_gpu_validate_dry_run(tmp_path):
    """bench/gpu_validate.sh (the one command a scarce GPU session runs) with python,
    nvidia-smi and compute-sanitizer stubbed: `all` runs build, tests, the three sanitizer
    tools, host overhead for both backends and the sweep with the conv-target order, in that
    order, packs everything into $OUT/results.tar.gz and exits 0; `configs` runs the
    configuration probe. Catches a broken script here instead of on the GPU."""
    import shutil
    import subprocess
    import tarfile
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {"fakepy": _FAKE_PY,
             "nvidia-smi": "#!/usr/bin/env bash\necho 'NVIDIA H100 80GB HBM3'\n",
             "compute-sanitizer": "#!/usr/bin/env bash\necho \"compute-sanitizer $* "
                                  "[OMP_NUM_THREADS=$OMP_NUM_THREADS]\" >> \"$FAKE_LOG\"\n"
                                  "echo '========= ERROR SUMMARY: 0 errors'\n"}
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log, out, res = tmp_path / "calls.log", tmp_path / "out", tmp_path / "res"
    out.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(bin_dir / "fakepy"),
               FAKE_LOG=str(log), OUT=str(out), PYDL_COMMIT="abc1234")
    env.pop("OMP_NUM_THREADS", None)
    script = os.path.join(ROOT, "bench", "gpu_validate.sh")
    run = subprocess.run(["bash", script, "all", str(res)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"results in {res}" in run.stdout
    calls = log.read_text().splitlines()
    order = [next(i for i, c in enumerate(calls) if key in c) for key in (
        "pip install --no-build-isolation", "-m pytest", "--tool memcheck",
        "--tool racecheck", "--tool synccheck", "host_overhead.py --backend cuda",
        "host_overhead.py --backend triton", "-m bench --out")]
    assert order == sorted(order), calls
    # the Triton compiles ahead of the sweep, once, beside the sanitizer (in the background:
    # after the tests, before host_overhead.py times anything), for the sweep's cases in its order
    warm = [i for i, c in enumerate(calls) if c.startswith("-m bench.warm_triton")]
    assert len(warm) == 1 and order[1] < warm[0] < order[5], calls
    for part in ("--first conv2d:fwd,train_step,conv2d", "--budget-s 100", "--shapes resnet50"):
        assert part in calls[warm[0]], calls[warm[0]]
    assert sum(c.startswith("compute-sanitizer --tool") for c in calls) == 3
    assert all(c.endswith("[OMP_NUM_THREADS=4]") for c in calls if c.startswith("compute-sanitizer"))
    assert any("--tool memcheck" in c and "gpu_sanitize.py --backend cuda,triton" in c for c in calls)
    assert any("--tool racecheck" in c and "gpu_sanitize.py --backend cuda --quick" in c for c in calls)
    sweep = next(c for c in calls if c.startswith("-m bench --out"))
    for part in ("--first conv2d:fwd,train_step,conv2d", "--budget-s 120", "--dtype bf16",
                 "--layout channels_last", "--shapes resnet50", "--no-compile"):
        assert part in sweep, sweep
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "res/sanitizer.txt" in names and "res/build.log" in names, names
    assert "ERROR SUMMARY: 0 errors" in (res / "sanitizer.txt").read_text()
    # the configuration probe, on the same (already built) machine
    log.unlink()
    run = subprocess.run(["bash", script, "configs", str(res)], env=dict(env, CONF_S="60"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert any("bench/conv_configs.py --budget-s 60" in c for c in log.read_text().splitlines())
    # with pytest-xdist there: 12 workers, each (and what it starts) on one OpenMP thread;
    # the steps after the tests keep torch's default
    log.unlink()
    run = subprocess.run(["bash", script, "all", str(res)], env=dict(env, FAKE_XDIST="1"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    calls = log.read_text().splitlines()
    pytest_call = next(c for c in calls if "-m pytest" in c)
    assert "-n 12 --dist loadgroup" in pytest_call and pytest_call.endswith("[OMP_NUM_THREADS=1]")
    assert next(c for c in calls if c.startswith("-m bench --out")).endswith("[OMP_NUM_THREADS=]")
    # the bench step alone compiles first, then times
    log.unlink()
    run = subprocess.run(["bash", script, "bench", str(res)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    calls = log.read_text().splitlines()
    steps = [next(i for i, c in enumerate(calls) if key in c)
             for key in ("-m bench.warm_triton", "host_overhead.py", "-m bench --out")]
    assert steps == sorted(steps), calls
