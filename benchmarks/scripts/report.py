#!/usr/bin/env python3
"""Turns run.sh's CSV into benchmarks/results/latest.md (or checks it is complete, with --check).

The summary table puts every target of benchmarks/README.md next to the ratio measured in this run;
the tables below it hold every absolute figure, and the last section the exact load commands.
"""
import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys

# Metrics each scenario must produce (checked by --check, which run.sh --quick calls).
EXPECTED = {
    "hit": [("nginx-return-200", "requests_per_second"), ("lua-peer", "requests_per_second"),
            ("keygate", "requests_per_second"), ("keygate", "redis_commands_per_request")],
    "limits": [("keygate", "requests_per_second"), ("keygate-limited", "requests_per_second"),
               ("keygate-credits", "requests_per_second"), ("keygate-limited", "redis_commands_per_request"),
               ("keygate-3-nodes", "admitted_per_window_max_vs_limit"), ("keygate-3-nodes", "admitted_per_window_mean_vs_limit")],
    "gateway": [(system, metric) for system in ("nginx-proxy", "lua-in-process", "nginx-auth-request-keygate", "keygate-gateway")
                for metric in ("requests_per_second", "latency_p50_us")],
    "hit10k": [("nginx-return-200", "requests_per_second"), ("lua-peer", "requests_per_second"),
               ("keygate", "requests_per_second")],
    "miss": [("lua-peer", "requests_per_second"), ("keygate", "requests_per_second"),
             ("redis-benchmark-get", "requests_per_second")],
    "badkey": [(system, f"{kind}_{metric}") for system in ("lua-peer", "keygate")
               for kind in ("malformed", "unknown") for metric in ("requests_per_second", "redis_commands_per_request")],
    "revocation": [("keygate-3-nodes", f"revoke_to_refusal_{p}") for p in ("p50_ms", "p99_ms", "max_ms")],
    "memory": [("keygate", "bytes_per_cached_key")],
    "openloop": [(system, f"at_{pct}pct_{field}") for system in ("nginx-return-200", "lua-peer", "keygate")
                 for pct in (50, 80) for field in ("achieved_rate", "p50_us", "p99_us", "p999_us", "max_us")],
}


def load(path):
    with open(path) as handle:
        return {(row["scenario"], row["system"], row["metric"]): (float(row["value"]), row["unit"])
                for row in csv.DictReader(handle) if row["value"] not in ("", None)}


def check(values, scenarios):
    missing = [f"{scenario}/{system}/{metric}" for scenario in scenarios for system, metric in EXPECTED[scenario]
               if (scenario, system, metric) not in values]
    zero_rates = [f"{s}/{sy}/{m}" for (s, sy, m), (v, unit) in values.items() if unit == "req/s" and v <= 0]
    if missing or zero_rates:
        print("benchmark harness check failed:", file=sys.stderr)
        for name in missing:
            print(f"  missing {name}", file=sys.stderr)
        for name in zero_rates:
            print(f"  zero rate {name}", file=sys.stderr)
        return 1
    print(f"benchmark harness check: {sum(len(EXPECTED[s]) for s in scenarios)} figures present")
    return 0


def command_output(*command):
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        return done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    nginx = command_output("nginx", "-v").strip().split("/")[-1]
    redis = command_output("redis-server", "--version").split()[2].replace("v=", "")
    swift = (command_output("swift", "--version").splitlines() or ["?"])[0]
    lua = command_output("dpkg-query", "-W", "-f=${Version}", "libnginx-mod-http-lua").strip()
    wrk = command_output("dpkg-query", "-W", "-f=${Version}", "wrk").strip()
    commit = command_output("git", "rev-parse", "--short", "HEAD").strip()
    return (f"{os.cpu_count()} cores ({cpu}), {memory} GiB, {platform.system()} {platform.release()}; "
            f"nginx {nginx}, libnginx-mod-http-lua {lua}, Redis {redis}, wrk {wrk}; {swift}; keygate commit {commit}")


def ratio(values, numerator, denominator):
    if numerator in values and denominator in values and values[denominator][0] > 0:
        return values[numerator][0] / values[denominator][0]
    return None


def summary_rows(values):
    """(measure, Keygate, reference, ratio or value, target, met) for every target in the README."""
    rows = []

    def add_ratio(measure, numerator, denominator, target):
        r = ratio(values, numerator, denominator)
        if r is None:
            return
        rows.append((measure, f"{values[numerator][0]:,.0f}", f"{denominator[1]}: {values[denominator][0]:,.0f}",
                     f"{r:.2f}x", f">= {target:.2f}x" if target else "(context)", "" if not target else ("yes" if r >= target else "**no**")))

    def add_value(measure, key, target, unit):
        if key not in values:
            return
        value = values[key][0]
        met = value <= target
        rows.append((measure, f"{value:g} {unit}", "", "", f"<= {target:g} {unit}", "yes" if met else "**no**"))

    add_ratio("hit path, one hot key (req/s)", ("hit", "keygate", "requests_per_second"), ("hit", "nginx-return-200", "requests_per_second"), 0.9)
    add_ratio("hit path, one hot key (req/s)", ("hit", "keygate", "requests_per_second"), ("hit", "lua-peer", "requests_per_second"), 1.0)
    add_ratio("hit path, a key with a rate limit, against an unlimited key (req/s)", ("limits", "keygate-limited", "requests_per_second"), ("limits", "keygate", "requests_per_second"), 0.9)
    add_ratio("hit path, a key with a rate limit (req/s)", ("limits", "keygate-limited", "requests_per_second"), ("hit", "lua-peer", "requests_per_second"), 1.0)
    add_ratio("hit path, a key with credits, against an unlimited key (req/s)", ("limits", "keygate-credits", "requests_per_second"), ("limits", "keygate", "requests_per_second"), None)
    add_value("Redis commands per admitted request, keys with a rate limit or credits", ("limits", "keygate-limited", "redis_commands_per_request"), 0.01, "commands")
    for metric, label in (("admitted_per_window_max_vs_limit", "most"), ("admitted_per_window_mean_vs_limit", "mean")):
        key = ("limits", "keygate-3-nodes", metric)
        if key in values:
            windows = values.get(("limits", "keygate-3-nodes", "whole_windows"), (0, ""))[0]
            rows.append((f"rate limit 2000/2s over three nodes, {label} admitted per window against the limit ({windows:.0f} windows)",
                         f"{values[key][0]:.4f}", "the limit", f"{values[key][0]:.4f}",
                         "bound: <= 1 (edge requests may land in the next window)" if label == "most" else "(context: tokens lost)", ""))
    add_ratio("gateway: Keygate proxying to the API, against the in-process Lua check in nginx (req/s)", ("gateway", "keygate-gateway", "requests_per_second"), ("gateway", "lua-in-process", "requests_per_second"), 1.0)
    add_ratio("gateway: nginx auth_request + Keygate, against the in-process Lua check (req/s)", ("gateway", "nginx-auth-request-keygate", "requests_per_second"), ("gateway", "lua-in-process", "requests_per_second"), None)
    add_ratio("gateway: Keygate as the gateway, against a plain nginx proxy without a key check (req/s)", ("gateway", "keygate-gateway", "requests_per_second"), ("gateway", "nginx-proxy", "requests_per_second"), None)
    add_ratio("hit path, 10,000 hot keys (req/s)", ("hit10k", "keygate", "requests_per_second"), ("hit10k", "lua-peer", "requests_per_second"), 1.0)
    add_ratio("hit path, 10,000 hot keys, against wrk's own ceiling with the same script (req/s)", ("hit10k", "keygate", "requests_per_second"), ("hit10k", "nginx-return-200", "requests_per_second"), None)
    add_ratio("miss path, a Redis lookup per request (req/s)", ("miss", "keygate", "requests_per_second"), ("miss", "lua-peer", "requests_per_second"), 1.0)
    add_ratio("miss path against Redis's own GET ceiling (req/s)", ("miss", "keygate", "requests_per_second"), ("miss", "redis-benchmark-get", "requests_per_second"), None)
    add_ratio("malformed-key flood (req/s)", ("badkey", "keygate", "malformed_requests_per_second"), ("badkey", "lua-peer", "malformed_requests_per_second"), None)
    add_ratio("unknown-key flood (req/s)", ("badkey", "keygate", "unknown_requests_per_second"), ("badkey", "lua-peer", "unknown_requests_per_second"), None)
    add_value("Redis commands per malformed key", ("badkey", "keygate", "malformed_redis_commands_per_request"), 0, "commands")
    add_value("revocation, revoke returned to refusal on each node, p99", ("revocation", "keygate-3-nodes", "revoke_to_refusal_p99_ms"), 10, "ms")
    add_value("memory per cached key", ("memory", "keygate", "bytes_per_cached_key"), 256, "bytes")
    add_value("Redis commands per cache hit (usage flush amortised)", ("hit", "keygate", "redis_commands_per_request"), 0.01, "commands")
    for pct in (50, 80):
        for reference in ("nginx-return-200", "lua-peer"):
            numerator = ("openloop", "keygate", f"at_{pct}pct_p99_us")
            denominator = ("openloop", reference, f"at_{pct}pct_p99_us")
            r = ratio(values, numerator, denominator)
            if r is not None:
                rows.append((f"open-loop p99 latency at {pct}% of each one's maximum (us)", f"{values[numerator][0]:g}",
                             f"{reference}: {values[denominator][0]:g}", f"{r:.2f}x", "(context; lower is better)", ""))
    return rows


def write_report(args, values):
    lines = [
        f"# Keygate benchmark, {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"Machine: {machine()}.",
        "",
        "Servers (Redis, nginx, the Lua peer, Keygate with `--threads 1`) share core 0, load generators run on "
        f"core 1; each load lasts {args.duration} s, except the hit scenarios: {args.rounds} interleaved rounds of "
        f"{args.round_seconds} s per system, median kept. Ratios are measured in this one run; absolute figures drift "
        "by about 20% between runs on a shared machine. How to read this: `benchmarks/README.md`.",
        "",
    ]
    if args.quick == "true":
        lines += ["**A `--quick` run: a few seconds per scenario to keep the harness working; not a measurement.**", ""]
    lines += ["## Targets", "", "| measure | Keygate | reference | ratio | target | met |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(values)]
    lines += ["", "## Every figure", "", "| scenario | system | metric | value | unit |", "|---|---|---|---|---|"]
    for (scenario, system, metric), (value, unit) in values.items():
        lines.append(f"| {scenario} | {system} | {metric} | {value:g} | {unit} |")
    lines += ["", "## Commands", "", "Reproduce with `benchmarks/run.sh` (scenarios run: "
              f"`{args.scenarios}`). The load commands, in order ($WORK is the run's temporary folder):", "", "```"]
    lines += [line.rstrip() for line in open(args.commands)]
    lines += ["```", ""]
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", required=True)
    parser.add_argument("--scenarios", required=True)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--commands")
    parser.add_argument("--duration")
    parser.add_argument("--rounds")
    parser.add_argument("--round-seconds")
    parser.add_argument("--quick", default="false")
    parser.add_argument("--out")
    args = parser.parse_args()
    values = load(args.csv)
    if args.check:
        return check(values, args.scenarios.split())
    write_report(args, values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
