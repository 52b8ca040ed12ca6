"""results.json, summary.md and latency.png from one run's figures."""

from __future__ import annotations

import json
from pathlib import Path

STRIPE_RATIO_GOAL = 0.80  # issue 15: /stripe/v1 at least 80 % of native /v1 throughput


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def closed_loop_lines(results: dict) -> list[str]:
    """The wrk ceiling, next to the open-loop figures when the run has them, and the
    warning when the open-loop framework figure is the Python generator's limit."""
    from benchmarks.closedloop import GENERATOR_LIMITED_MARGIN

    closed = results.get("closed_loop")
    if not closed:
        return []
    opened = results.get("targets", {})
    lines = [
        f"## Closed loop: `{closed['command']}` (fresh server each, same run)",
        "",
        "| target | open-loop rps at SLO | open-loop capacity probe | closed-loop rps "
        "| closed p50 ms | closed p99 ms | closed errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in closed["targets"].items():
        o = opened.get(name)
        slo, capacity = (f"{o['slo_rps']:.0f}", f"{o['capacity_rps']:.0f}") if o else ("-", "-")
        lines.append(
            f"| {name} | {slo} | {capacity} | {c['rps']:.0f} | "
            f"{c['p50_ms']} | {c['p99_ms']} | {c['errors']}"
            f"{' ' + str(c['statuses']) if c['non2xx'] else ''} |"
        )

    def times(key: str) -> str:
        value = closed.get(key)
        return f"{value:.2f}x" if value else "n/a"

    workers = closed.get("workers", 2)
    lines += [
        "",
        f"- Kassa / framework, closed loop: **{times('kassa_over_framework')}**",
    ]
    if closed.get("group_commit_on_over_off"):
        lines.append(
            f"- Group commit on / off (kassa / kassa-nobatch), closed loop: "
            f"**{times('group_commit_on_over_off')}**"
        )
    stripe_ratio = closed.get("stripe_over_kassa")
    if stripe_ratio:
        verdict = "meets" if stripe_ratio >= STRIPE_RATIO_GOAL else "does NOT meet"
        native = closed.get("stripe_native") or {}
        lines.append(
            f"- Stripe-compatible tree / native (the authorization as stripe-python sends it "
            f"to /stripe/v1, alternating with the native one on the kassa-stripe server: "
            f"{closed['targets']['kassa-stripe']['rps']:.0f}/s against "
            f"{native.get('rps', 0):.0f}/s), closed loop: "
            f"**{times('stripe_over_kassa')}** ({verdict} the {STRIPE_RATIO_GOAL:.2f}x goal)"
        )
    hooks = closed.get("webhooks")
    if hooks:
        ratio = closed.get("webhooks_over_kassa")
        verdict = "n/a" if not ratio else ("within" if ratio >= 0.9 else "NOT within")
        off = hooks.get("off")
        against = (
            f"{closed['targets']['kassa-webhooks']['rps']:.0f}/s against {off['rps']:.0f}/s "
            "with it disabled, alternating on one server"
            if off
            else "against kassa"
        )
        lines.append(
            f"- Webhooks on / off (kassa-webhooks: one endpoint subscribed to `*`, "
            f"receiver on loopback; {against}), closed loop: "
            f"**{times('webhooks_over_kassa')}** ({verdict} the 10 % goal)"
        )
        if hooks.get("cpu_ratio"):
            by_group = ", ".join(
                f"{group} {v['on'] - v['off']:+.0f} us"
                for group, v in hooks.get("cpu_us_per_authorization_by_group", {}).items()
            )
            lines.append(
                f"- Webhooks' CPU (the gateway, PostgreSQL and the receiver, per "
                f"authorization, an on-window counted until its deliveries drained): "
                f"{hooks['cpu_us_per_authorization_off']:.0f} us without, "
                f"{hooks['cpu_us_per_authorization_on']:.0f} us with: "
                f"**{hooks['cpu_ratio']:.2f}x** as a rate where CPU binds"
                + (f"; what the deliveries add, by process: {by_group}" if by_group else "")
            )
        lines.append(
            f"- Commit-to-delivery ({hooks['latency_source']}), the {hooks['events']} events "
            f"of the kassa-webhooks windows: p50 **{hooks['p50_ms']:.1f} ms**, p99 "
            f"**{hooks['p99_ms']:.1f} ms**, max {hooks['max_ms']:.1f} ms; "
            f"{hooks['pending_at_end']} deliveries pending when a window ended, drained in "
            f"{hooks['drain_s']:.1f} s"
        )
        if hooks["pending_left"] or hooks["undelivered"]:
            lines.append(
                f"- WARNING: {hooks['pending_left']} deliveries still pending after the drain "
                f"timeout, {hooks['undelivered']} of the window's events never reached the "
                "receiver: the webhook figures are of a backlog, not of steady delivery."
            )
    if closed.get("kassa_scaling"):
        lines.append(
            f"- Scaling, {workers} workers / 1 worker: Kassa {times('kassa_scaling')}, "
            f"framework {times('framework_scaling')}; at 1 worker Kassa / framework "
            f"{times('kassa_over_framework_1w')}"
        )
    lines += [
        "- Closed-loop latencies are not corrected for coordinated omission (each of the "
        "64 connections waits for its answer before sending again): compare them "
        "between targets, never against the SLO.",
    ]
    for name, c in closed["targets"].items():
        if c["errors"]:
            lines.append(
                f"- WARNING: {c['errors']} {name} requests got no 2xx "
                f"({c['statuses']}, socket errors {c['socket_errors']}): its "
                "closed-loop figure is not a valid ceiling."
            )
        if c["replayed"]:
            lines.append(
                f"- WARNING: {c['replayed']} {name} answers were idempotent replays: "
                "the keys were not unique, the figure is not of new authorizations."
            )
    framework_open = opened.get("framework")
    framework_closed = closed["targets"].get("framework")
    if (
        framework_open
        and framework_closed
        and (framework_closed["rps"] > GENERATOR_LIMITED_MARGIN * framework_open["capacity_rps"])
    ):
        lines.append(
            f"- **The open-loop framework figure ({framework_open['slo_rps']:.0f}/s at SLO, "
            f"probe {framework_open['capacity_rps']:.0f}/s) is the Python generator's limit, "
            f"not the framework's**: wrk reaches {framework_closed['rps']:.0f}/s on the same "
            "machine. The open-loop Kassa / framework ratio above overstates Kassa; the "
            "closed-loop ratio is the honest one."
        )
    return [*lines, ""]


def summary(results: dict) -> str:
    if "targets" not in results:  # --closed-loop-only
        return "\n".join(
            [
                f"# Kassa benchmark {results['started']} (closed loop only)",
                "",
                f"Commit {results['commit']}; {results['machine']['cpus']} CPUs "
                f"({results['machine']['cpu_model']}); {results['workers']} server workers; "
                f"wrk on the same machine; PostgreSQL {results.get('postgres', '?')}.",
                "",
                *closed_loop_lines(results),
            ]
        )
    t = results["targets"]
    kassa, framework, nobatch = (
        t["kassa"]["slo_rps"],
        t["framework"]["slo_rps"],
        t["kassa-nobatch"]["slo_rps"],
    )
    core = {row["case"]: row for row in results["core"]}
    path = core.get("authorization_path", {})
    invalid = [
        f"{name} at {s['offered_rps']:.0f}/s"
        for name, target in t.items()
        for s in target["steps"]
        if not s["valid"]
    ]
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
        *[
            f"| {name} | {target['slo_rps']:.0f} | {target['capacity_rps']:.0f} |"
            for name, target in t.items()
        ],
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
        *closed_loop_lines(results),
        "## Saturation sweeps (authorize)",
        "",
    ]
    for name, target in t.items():
        lines += [
            f"### {name}",
            "",
            "| offered/s | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
            "| errors | valid |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['offered_rps']:.0f} | {s['achieved_rps']:.0f} | {s['p50_ms']} | "
            f"{s['p90_ms']} | {s['p99_ms']} | {s['p99.9_ms']} | {s['max_ms']} | "
            f"{s['errors']} | {'yes' if s['valid'] else 'NO'} |"
            for s in target["steps"]
        ]
        lines.append("")
    scenarios = t["kassa"].get("scenarios", {})
    if scenarios:
        lines += [
            "## Kassa scenarios at half the best valid authorize rate",
            "",
            "| scenario | offered/s | achieved/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {s['offered_rps']:.0f} | {s['achieved_rps']:.0f} | "
            f"{s['p50_ms']} | {s['p99_ms']} | {s['errors']} {s['error_kinds'] or ''} |"
            for name, s in scenarios.items()
        ]
        lines.append("")
    lines += [
        "## Core micro-benchmarks (ns per call)",
        "",
        "| case | compiled | pure | speedup |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['case']} | {r['compiled_ns']:.0f} | {r['pure_ns']:.0f} | {r['speedup']:.2f}x |"
        for r in results["core"]
    ]
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
            ax.plot(
                offered,
                [max(s[key], 0.01) for s in target["steps"]],
                style,
                marker=".",
                color=colors.get(name),
                label=f"{name} {key[:-3]}",
            )
    ax.axhline(results["slo_p99_ms"], color="red", linewidth=0.8)
    ax.text(
        0.01,
        results["slo_p99_ms"] * 1.08,
        f"SLO p99 {results['slo_p99_ms']:.0f} ms",
        color="red",
        transform=ax.get_yaxis_transform(),
    )
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
    if "targets" in results:
        plot(results, out / "latency.png")
