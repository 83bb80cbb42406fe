"""Turn a results folder into tables, plots and the README's benchmark section.

    python -m bench.report bench/results/<folder>       # print its markdown table
    python -m bench.report --readme [folder]            # rewrite the README section from
                                                        # the folder (default: the newest GPU run)
    python -m bench.report --plots folder               # (re)draw folder/plots/*.png
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
README = os.path.join(os.path.dirname(HERE), "README.md")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _groups(rows):
    g = OrderedDict()
    for r in rows:
        g.setdefault((r["op"], r["layer"], r["dtype"], r["layout"], r["mode"]), []).append(r)
    return g


def _best_pydl(rs):
    ok = [r for r in rs if r["impl"].startswith("pydl") and r["status"] == "ok"]
    return min(ok, key=lambda r: r["median_ms"]) if ok else None


HOST_BOUND = 0.8  # host time / measured time above which a GPU row is marked host-bound


def _host_bound(r, gpu: bool) -> bool:
    """The GPU waited on the host: the call's own CPU time was most of the measured time."""
    return gpu and r.get("host_ms") is not None and r["host_ms"] >= HOST_BOUND * r["median_ms"]


def _ms(r, gpu: bool) -> str:
    return f"{r['median_ms']:.3f}" + ("\u2020" if _host_bound(r, gpu) else "")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def geomeans(rows) -> list[dict]:
    """Per (op, network, dtype, layout, mode): the geometric mean over layers of torch's time
    over pydl's -- for each backend, and for the fastest backend of each layer ("best") --
    taken over the layers where torch and that backend both ran (`n`). The network is the
    layer name's prefix ("resnet50" of "resnet50.l1.3x3"). The conv target is stated on
    such a figure: ResNet-50's forward layers, bf16, channels_last."""
    acc = OrderedDict()
    for (op, layer, dt, lay, mode), rs in _groups(rows).items():
        if op == "train_step":
            continue
        t = next((r for r in rs if r["impl"] == "torch" and r["status"] == "ok"), None)
        if t is None:
            continue
        key = (op, layer.split(".")[0], dt, lay, mode)
        ok = [r for r in rs if r["impl"].startswith("pydl") and r["status"] == "ok"]
        for r in ok:
            acc.setdefault(key, OrderedDict()).setdefault(r["impl"][5:], []).append(
                t["median_ms"] / r["median_ms"])
        if ok:
            acc.setdefault(key, OrderedDict()).setdefault("best", []).append(
                t["median_ms"] / min(r["median_ms"] for r in ok))
    out = []
    for (op, net, dt, lay, mode), per in acc.items():
        for impl, xs in per.items():
            out.append({"op": op, "net": net, "dtype": dt, "layout": lay, "mode": mode, "impl": impl,
                        "geomean": statistics.geometric_mean(xs), "n": len(xs)})
    return out


def _on_gpu(result: dict) -> bool:
    """Whether the rows ran on the GPU (a CPU sweep on a machine with a GPU is a CPU run;
    results from before the "device" key: a GPU run when the environment names one)."""
    return result.get("device", "cuda" if result["env"].get("gpu") else "cpu") == "cuda"


def markdown(result: dict) -> str:
    env, ceil = result["env"], result["ceilings"]
    gpu = _on_gpu(result)
    dev = env.get("gpu") if gpu else f"CPU ({env.get('cpu', '')}, {env.get('cpu_threads', '?')} threads)"
    out = [f"Device: **{dev}**, {env['date']}, pydl commit `{env['commit']}`, torch {env['torch']}, "
           f"Triton {env.get('triton')}, cuDNN {env.get('cudnn')}.",
           f"Ceilings measured in this run: copy {_fmt(ceil.get('copy_GBps'), '.0f')} GB/s, "
           f"bf16 matmul {_fmt(ceil.get('matmul_bf16_TFLOPs'), '.0f')} TFLOP/s.", "",
           "| op | layer | dtype | layout | mode | pydl backends (ms) | best | torch ms | x torch "
           "| compile ms | x compile | other baselines (ms, x) | GB/s | % copy | TFLOP/s | % mm |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    problems = []
    marked = False
    for (op, layer, dt, lay, mode), rs in _groups(result["rows"]).items():
        by = {r["impl"]: r for r in rs}
        pyd = ", ".join(f"{r['impl'][5:]} {_ms(r, gpu)}" if r["status"] == "ok" else f"{r['impl'][5:]} {r['status'].split(':')[0]}"
                        for r in rs if r["impl"].startswith("pydl"))
        marked |= any(r["status"] == "ok" and _host_bound(r, gpu) for r in rs)
        best = _best_pydl(rs)
        t, c = by.get("torch"), by.get("torch.compile")
        tm = _ms(t, gpu) if t and t["status"] == "ok" else None
        cm = c["median_ms"] if c and c["status"] == "ok" else None
        others = ", ".join(
            f"{r['impl']} {r['median_ms']:.3f} ({_fmt(best and best.get('speedup_vs_' + r['impl']), '.2f')}x)"
            for r in rs if r["status"] == "ok" and r["impl"] not in ("torch", "torch.compile")
            and not r["impl"].startswith("pydl")) or "-"
        if best and best.get("host_us") is not None:
            others += f"; host {best['host_us']:.1f} us/step"
        out.append(f"| {op} | {layer} | {dt} | {lay} | {mode} | {pyd} | {best['impl'][5:] if best else '-'} "
                   f"| {tm or '-'} | {_fmt(best and best.get('speedup_vs_torch'), '.2f')} "
                   f"| {_fmt(cm, '.3f')} | {_fmt(best and best.get('speedup_vs_torch.compile'), '.2f')} "
                   f"| {others} | {_fmt(best and best.get('GBps'), '.0f')} | {_fmt(best and best.get('pct_copy'), '.0f')} "
                   f"| {_fmt(best and best.get('TFLOPs'), '.1f')} | {_fmt(best and best.get('pct_matmul'), '.0f')} |")
        problems += [f"- {r['impl']} {op} {layer} {dt} {lay} {mode}: {r['status']}" for r in rs if r["status"] != "ok"]
    gms = geomeans(result["rows"])
    if gms:
        out += ["", "Geometric means over layers of x torch (torch's time / pydl's; n: the layers "
                "where both ran; best: each layer's fastest pydl backend):", "",
                "| op | network | dtype | layout | mode | backend | geomean x torch | n |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {g['op']} | {g['net']} | {g['dtype']} | {g['layout']} | {g['mode']} | {g['impl']} "
                f"| {g['geomean']:.2f} | {g['n']} |" for g in gms]
    mem = [r for r in result["rows"] if r.get("peak_MB") is not None]
    if mem:
        out += ["", "Training steps: time and peak memory (beyond parameters and optimizer state) "
                "of one forward + loss + backward + Adam step:", "",
                "| model | dtype | layout | impl | ms / step | x torch | peak MB | peak / torch's |",
                "|---|---|---|---|---|---|---|---|"]
        for (op, layer, dt, lay, mode), rs in _groups(mem).items():
            t = next((r for r in rs if r["impl"] == "torch"), None)
            for r in rs:
                ratio = r["peak_MB"] / t["peak_MB"] if t and t["peak_MB"] else None
                out.append(f"| {layer} | {dt} | {lay} | {r['impl']} | {r['median_ms']:.2f} "
                           f"| {_fmt(r.get('speedup_vs_torch'), '.2f')} | {r['peak_MB']:.1f} | {_fmt(ratio, '.3f')} |")
    if marked:
        out += ["", f"\u2020 host-bound: the call's own CPU time (Python, dispatch, launches) was at "
                f"least {HOST_BOUND:.0%} of the measured time, so the GPU waited on the host and the "
                "figure measures overhead rather than kernels."]
    if problems:
        out += ["", "Rows not timed:"] + problems
    if result.get("not_run_budget"):
        out += ["", f"{len(result['not_run_budget'])} cases were not run: the sweep's time budget "
                f"(--budget-s {result['args'].get('budget_s')}) ran out (listed in results.json)."]
    return "\n".join(out) + "\n"


def plots(result: dict, folder: str) -> list[str]:
    """Speedup of the best pydl backend over torch per layer, and % of the copy
    bandwidth, one PNG per (family, dtype, mode). Needs matplotlib (skipped without it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return []
    os.makedirs(folder, exist_ok=True)
    series = OrderedDict()
    for (op, layer, dt, lay, mode), rs in _groups(result["rows"]).items():
        best = _best_pydl(rs)
        fam = rs[0]["family"]
        if best:
            series.setdefault((fam, dt, mode), []).append(
                (f"{op} {layer} {lay[:2]}", best.get("speedup_vs_torch"), best.get("pct_copy")))
    files = []
    for (fam, dt, mode), pts in series.items():
        fig, axes = plt.subplots(1, 2, figsize=(14, max(3, 0.28 * len(pts) + 1)))
        labels = [p[0] for p in pts]
        axes[0].barh(labels, [p[1] or 0 for p in pts], color="tab:blue")
        axes[0].axvline(1.0, color="k", lw=1)
        axes[0].set_xlabel("speedup vs torch (best pydl backend)")
        axes[1].barh(labels, [p[2] or 0 for p in pts], color="tab:green")
        axes[1].axvline(100.0, color="k", lw=1)
        axes[1].set_xlabel("% of measured copy bandwidth")
        axes[1].set_yticklabels([])
        fig.suptitle(f"{fam} {dt} {mode} — {result['env'].get('gpu') or 'CPU'}")
        fig.tight_layout()
        path = os.path.join(folder, f"{fam}_{dt}_{mode}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        files.append(path)
    return files


def latest(gpu_only: bool = True) -> str | None:
    if not os.path.isdir(RESULTS):
        return None
    found = []
    for d in sorted(os.listdir(RESULTS)):
        p = os.path.join(RESULTS, d, "results.json")
        if os.path.exists(p):
            with open(p) as f:
                result = json.load(f)
            if _on_gpu(result) or not gpu_only:
                found.append((result["env"]["date"], os.path.join(RESULTS, d)))
    return max(found)[1] if found else None


def readme_section(folder) -> str:
    """The README's benchmark section for one results folder, or several (a list: e.g. the
    sweeps of one short GPU lease, each in its own folder), one table each."""
    if isinstance(folder, (list, tuple)):
        return "\n".join(readme_section(f) for f in folder) if folder else readme_section(None)
    if folder is None:
        return ("No GPU run is recorded yet: the CUDA and Triton kernels are compiled (and Triton "
                "runs under the interpreter) in CI, but none has been timed on a GPU.\n")
    with open(os.path.join(folder, "results.json")) as f:
        result = json.load(f)
    rel = os.path.relpath(folder, os.path.dirname(README))
    pngs = sorted(os.listdir(os.path.join(folder, "plots"))) if os.path.isdir(os.path.join(folder, "plots")) else []
    return (f"From `{rel}/` (raw: `results.json`), generated by `python -m bench.report --readme`.\n\n"
            + markdown(result) + ("\nPlots: " + ", ".join(f"[{p}]({rel}/plots/{p})" for p in pngs) + "\n" if pngs else ""))


def update_readme(folder, path: str = README) -> None:
    with open(path) as f:
        text = f.read()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(head + START + "\n" + readme_section(folder) + END + tail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="*")
    ap.add_argument("--readme", action="store_true")
    ap.add_argument("--plots", action="store_true")
    args = ap.parse_args(argv)
    if args.plots:
        if not args.folder:
            raise SystemExit("--plots needs a results folder")
        for folder in args.folder:
            with open(os.path.join(folder, "results.json")) as f:
                print("\n".join(plots(json.load(f), os.path.join(folder, "plots"))))
        return 0
    if args.readme:
        update_readme(args.folder or latest())
        return 0
    folder = args.folder[0] if args.folder else latest(gpu_only=False)
    if not folder:
        raise SystemExit("no results folder")
    with open(os.path.join(folder, "results.json")) as f:
        print(markdown(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
