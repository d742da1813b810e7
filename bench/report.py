"""Turning raw runs into what a reader takes in: medians, paired ratios
against ``cp -a``, a markdown table and a bar chart.

A copy that was wrong (or failed) in any run, warm-up included, is marked
WRONG (or FAILED) and can never be a win, however fast it was: a benchmark that
rewards fast wrong answers would be worse than none.
"""

from __future__ import annotations

import statistics
from pathlib import Path

BASELINE = "cp-a"
GiB = 1 << 30
MiB = 1 << 20


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def _secs(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def summarize(doc: dict) -> None:
    """Add a ``summary`` to every contender of every dataset in ``doc``."""
    for ds in doc["datasets"].values():
        base = {r["round"]: r for r in ds["contenders"].get(BASELINE, {}).get("runs", [])
                if r["status"] == "ok" and not r["warmup"]}
        for name, c in ds["contenders"].items():
            runs = c["runs"]
            counted = [r for r in runs if not r["warmup"] and "wall" in r]
            statuses = {r["status"] for r in runs}
            if "failed" in statuses:
                status = "FAILED"
            elif "wrong" in statuses:
                status = "WRONG"
            elif "skipped" in statuses and not counted:
                status = "SKIPPED"
            else:
                status = "ok"
            s: dict = {"status": status, "n": len(counted)}
            problems = [r.get("detail") for r in runs if r["status"] != "ok"]
            if problems:
                s["detail"] = problems[0]
            if counted:
                walls = [r["wall"] for r in counted]
                med = statistics.median
                s.update(
                    wall=med(walls), wall_min=min(walls), wall_max=max(walls),
                    cpu=med([r["cpu"] for r in counted]),
                    maxrss=max(r["maxrss"] for r in counted),
                    sync_after=med([r["sync_after"] for r in counted]),
                    out_apparent=med([r["out_apparent"] for r in counted]),
                    out_allocated=med([r["out_allocated"] for r in counted]),
                )
                ratios = [r["wall"] / base[r["round"]]["wall"] for r in counted
                          if r["round"] in base and base[r["round"]]["wall"] > 0]
                if ratios:
                    s["ratios"] = ratios
                    s["ratio"] = med(ratios)
            s["win"] = status == "ok" and s.get("ratio", 1.0) < 1.0 and name != BASELINE
            c["summary"] = s


def _order(ds: dict) -> list[str]:
    """Correct contenders fastest first, then the rest."""
    def key(name: str) -> tuple[int, float]:
        s = ds["contenders"][name]["summary"]
        return (0 if s["status"] == "ok" else 1, s.get("wall", float("inf")))
    return sorted(ds["contenders"], key=key)


def _verdict(name: str, s: dict) -> str:
    if s["status"] != "ok":
        return f"**{s['status']}** (a loss)"
    if name == BASELINE:
        return "baseline"
    r = s.get("ratio")
    if r is None:
        return "-"
    if r < 1:
        return f"**{1 / r:.1f}x faster**" if r < 0.5 else f"{1 / r:.2f}x faster"
    return f"{r:.1f}x slower" if r >= 2 else f"{r:.2f}x slower"


def dataset_table(doc: dict, name: str) -> str:
    """The markdown table of one dataset."""
    ds = doc["datasets"][name]
    src = ds["source"]
    opts = ds.get("options") or doc["options"]
    lines = [
        f"### {name} (scale {ds['scale']:g}): source {_size(src['apparent'])} apparent, "
        f"{_size(src['allocated'])} allocated, "
        f"{src['files']} file{'' if src['files'] == 1 else 's'}",
        "",
        (f"**Interrupted** after {ds.get('rounds_done', 0)} of "
         f"{opts['warmup'] + opts['runs']} rounds: median of the "
         f"{max(0, ds.get('rounds_done', 0) - opts['warmup'])} counted run(s) done, after "
         if ds.get("partial") else f"Median of {opts['runs']} interleaved runs after ")
        + f"{opts['warmup']} warm-up, "
        f"{'cold' if opts['cold'] else 'warm'} page cache. "
        "Ratio = wall time / wall time of `cp -a` in the same round (median of rounds).",
        "",
        "| contender | wall s (min-max) | ratio to cp -a | verdict | CPU s | peak RSS "
        "| output apparent | output allocated | check |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for cname in _order(ds):
        s = ds["contenders"][cname]["summary"]
        if "wall" in s:
            wall = f"{_secs(s['wall'])} ({_secs(s['wall_min'])}-{_secs(s['wall_max'])})"
            cpu = _secs(s["cpu"])
        else:
            wall = cpu = "-"
        ratio = f"{s['ratio']:.3f}" if "ratio" in s else "-"
        check = "ok" if s["status"] == "ok" else f"{s['status']}: {s.get('detail', '')}"
        check = check.replace("|", "/").replace("\n", " ")[:120]
        lines.append(
            f"| {cname} | {wall} | {ratio} | {_verdict(cname, s)} | {cpu} "
            f"| {_size(s.get('maxrss'))} | {_size(s.get('out_apparent'))} "
            f"| {_size(s.get('out_allocated'))} | {check} |")
    wins = [c for c in _order(ds) if ds["contenders"][c]["summary"]["win"]]
    lines += ["", f"Faster than cp -a and correct: {', '.join(wins) if wins else 'none'}.", ""]
    return "\n".join(lines)


def machine_line(doc: dict) -> str:
    m = doc["machine"]
    mem = f"{m['memory_bytes'] / GiB:.0f} GiB" if m.get("memory_bytes") else "?"
    return (f"{m['cores']} cores ({m.get('cpu')}), {mem} RAM, Linux {m['kernel']}, "
            f"filesystem `{m.get('filesystem')}`; {m.get('cp')}; {m.get('rsync')}; "
            f"{m.get('lmdb')}; {m.get('py_lmdb')}; Python {m['python']}; "
            f"synfast {m.get('synfast')} ({m.get('synfast_git')}).")


def markdown(doc: dict) -> str:
    """The whole report: command, machine, one table per dataset."""
    parts = [
        "# synfast benchmark",
        "",
        f"Command: `{doc['command']}` (started {doc['started']}).",
        "",
        f"Machine: {machine_line(doc)}",
        "",
    ]
    for name in doc["datasets"]:
        if doc["datasets"][name]["contenders"] and all(
                "summary" in c for c in doc["datasets"][name]["contenders"].values()):
            parts.append(dataset_table(doc, name))
    return "\n".join(parts)


def footer(doc: dict, paths: dict[str, str]) -> str:
    lines = [f"Machine: {machine_line(doc)}", ""]
    for k, v in paths.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def chart(doc: dict, path: Path) -> tuple[str | None, str | None]:
    """A horizontal bar chart per dataset of time relative to cp -a (log scale,
    shorter is faster); wrong or failed copies in red and hatched.  Returns
    (path, None), or (None, why not) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, ("chart skipped: matplotlib is not installed "
                      "(pip install -e '.[bench]')")
    sets = [(n, ds) for n, ds in doc["datasets"].items()
            if any("ratio" in c.get("summary", {}) for c in ds["contenders"].values())]
    if not sets:
        return None, "chart skipped: no ratios to plot (was cp-a run?)"
    heights = [max(2, len(ds["contenders"])) * 0.38 + 0.9 for _, ds in sets]
    fig, axes = plt.subplots(len(sets), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (name, ds) in zip(axes[:, 0], sets, strict=True):
        def by_ratio(c: str, ds: dict = ds) -> tuple[int, float]:
            s = ds["contenders"][c]["summary"]
            return (0 if s["status"] == "ok" else 1, s.get("ratio", float("inf")))
        order = sorted(ds["contenders"], key=by_ratio)
        order.reverse()                     # fastest on top
        vals, colors, hatches, labels = [], [], [], []
        for c in order:
            s = ds["contenders"][c]["summary"]
            bad = s["status"] != "ok"
            vals.append(s.get("ratio"))
            colors.append("#d62728" if bad else "#7f7f7f" if c == BASELINE
                          else "#2ca02c" if s.get("ratio", 1) < 1 else "#ff7f0e")
            hatches.append("//" if bad else "")
            labels.append(f"{c} ({s['status']})" if bad else c)
        known = [v for v in vals if v is not None]
        lo, hi = min(known + [1.0]), max(known + [1.0])
        bars = ax.barh(range(len(vals)), [v if v is not None else 0 for v in vals],
                       color=colors)
        for bar, h in zip(bars, hatches, strict=True):
            bar.set_hatch(h)
        ax.set_xscale("log")
        ax.set_yticks(range(len(vals)), labels)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlim(lo / 2.5, hi * 4)
        for i, (c, v) in enumerate(zip(order, vals, strict=True)):
            status = ds["contenders"][c]["summary"]["status"]
            if v is None:
                txt, x = f"{status}: no time counted", lo / 2.2
            else:
                x = v * 1.08
                txt = (f"{1 / v:.1f}x faster" if v < 1 else f"{v:.1f}x slower" if v > 1
                       else "1x")
                if status != "ok":
                    txt += f" but {status}"
            ax.text(x, i, txt, va="center", fontsize=8,
                    color="#d62728" if status != "ok" else "black")
        src = ds["source"]
        runs = (ds.get("options") or doc["options"])["runs"]
        ax.set_title(f"{name} (scale {ds['scale']:g}, median of {runs} runs; "
                     f"{_size(src['apparent'])} apparent, "
                     f"{_size(src['allocated'])} allocated)", fontsize=10, loc="left")
    axes[-1, 0].set_xlabel("wall time relative to cp -a, same round, median "
                           "(log scale; left of the line is faster)")
    fig.suptitle(f"synfast benchmark: wall time relative to cp -a "
                 f"({doc['machine']['cores']} cores, "
                 f"{'cold' if doc['options']['cold'] else 'warm'} page cache)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path), None
