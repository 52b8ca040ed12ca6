"""results.json, summary.md and latency.png from one run's figures."""

from __future__ import annotations

import json
from pathlib import Path


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def summary(results: dict) -> str:
    t = results["targets"]
    kassa, framework, nobatch = (t["kassa"]["slo_rps"], t["framework"]["slo_rps"],
                                 t["kassa-nobatch"]["slo_rps"])
    core = {row["case"]: row for row in results["core"]}
    path = core.get("authorization_path", {})
    invalid = [f"{name} at {s['offered_rps']:.0f}/s" for name, target in t.items()
               for s in target["steps"] if not s["valid"]]
    lines = [
        f"# Kassa benchmark {results['started']} ({'quick' if results['quick'] else 'full'})",
        "",
        f"Commit {results['commit']}; {results['machine']['cpus']} CPUs "
        f"({results['machine']['cpu_model']}), {results['machine']['memory_gib']} GiB; "
        f"{results['workers']} server workers, {results['generators']} generator process(es) "
        f"on the same machine; PostgreSQL {results.get('postgres', '?')}; "
        f"{results['step_seconds']} s per step.",
        "",
        f"## Headline: authorizations/s at p99 <= {results['slo_p99_ms']:.0f} ms, zero errors",
        "",
        "| target | rps at SLO | capacity probe (rps) |",
        "|---|---|---|",
        *[f"| {name} | {target['slo_rps']:.0f} | {target['capacity_rps']:.0f} |"
          for name, target in t.items()],
        "",
        f"- Kassa / framework ceiling: **{_ratio(kassa, framework)}** (target >= 0.40x)",
        f"- Kassa / Kassa with batching off: **{_ratio(kassa, nobatch)}** (target >= 3x)",
        f"- Compiled core / pure core, per authorization: "
        f"**{path.get('speedup', 0):.2f}x** ({path.get('compiled_ns', 0) / 1000:.1f} us vs "
        f"{path.get('pure_ns', 0) / 1000:.1f} us; target >= 5x)",
        "",
        "Invalid steps (the generator fell behind its schedule, so the step measures the "
        "generator): " + (", ".join(invalid) or "none") + ".",
        "",
        "## Saturation sweeps (authorize)",
        "",
    ]
    for name, target in t.items():
        lines += [f"### {name}", "",
                  "| offered/s | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
                  "| errors | valid |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['offered_rps']:.0f} | {s['achieved_rps']:.0f} | {s['p50_ms']} | "
                  f"{s['p90_ms']} | {s['p99_ms']} | {s['p99.9_ms']} | {s['max_ms']} | "
                  f"{s['errors']} | {'yes' if s['valid'] else 'NO'} |" for s in target["steps"]]
        lines.append("")
    scenarios = t["kassa"].get("scenarios", {})
    if scenarios:
        lines += ["## Kassa scenarios at half the best valid authorize rate", "",
                  "| scenario | offered/s | achieved/s | p50 ms | p99 ms | errors |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {s['offered_rps']:.0f} | {s['achieved_rps']:.0f} | "
                  f"{s['p50_ms']} | {s['p99_ms']} | {s['errors']} {s['error_kinds'] or ''} |"
                  for name, s in scenarios.items()]
        lines.append("")
    lines += ["## Core micro-benchmarks (ns per call)", "",
              "| case | compiled | pure | speedup |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['compiled_ns']:.0f} | {r['pure_ns']:.0f} | "
              f"{r['speedup']:.2f}x |" for r in results["core"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = {"framework": "tab:gray", "kassa": "tab:blue", "kassa-nobatch": "tab:orange"}
    styles = {"p50_ms": ":", "p99_ms": "-", "p99.9_ms": "--"}
    for name, target in results["targets"].items():
        offered = [s["offered_rps"] for s in target["steps"]]
        for key, style in styles.items():
            ax.plot(offered, [max(s[key], 0.01) for s in target["steps"]], style, marker=".",
                    color=colors.get(name), label=f"{name} {key[:-3]}")
    ax.axhline(results["slo_p99_ms"], color="red", linewidth=0.8)
    ax.text(0.01, results["slo_p99_ms"] * 1.08, f"SLO p99 {results['slo_p99_ms']:.0f} ms",
            color="red", transform=ax.get_yaxis_transform())
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("latency from intended send time (ms)")
    ax.set_title(f"Kassa authorize: latency percentiles vs offered load ({results['commit']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(summary(results))
    plot(results, out / "latency.png")
