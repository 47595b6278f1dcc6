"""`make bench`: served throughput and latency as ratios to the in-process ONNX Runtime ceiling.

Setup (issue 8): the server pinned to one core (`taskset -c 0`) with one intra-op thread; this
process, the load generator, pinned to the other core(s); the ceiling is the same ONNX file run in a
loop by ONNX Runtime on the server's core with the same threads and batch sizes. Absolute numbers
on shared machines move by 10-20% between runs; ratios measured in the same run move far less.

Prints one table, then one line per target:
    bench <id> measured=<value> goal=<op><value> PASS|FAIL
and exits 0 whatever the outcome (a benchmark, not a test).

Both sides are measured the same way: the ceiling as the best of 3 windows per batch size, each
served step as the best of 3 back-to-back windows.

Last, perf_analyzer's concurrency sweep (loadtest/perf_sweep.py: 1 to 64 clients, the classifier
and super-resolution, max_queue_delay 0 against the bundled delay, in alternating rounds) for
batching_never_dips and delay_costs_nothing; its table, measurements and plot go to BENCH_OUT.

Environment: BENCH_SECONDS (measurement time per step, default 5; perf_analyzer's window is
BENCH_SECONDS x 200 ms, 3 times that for super-resolution), BENCH_RSS_SECONDS (the long run for
rss_growth, default 300), BENCH_PA_ROUNDS (perf_analyzer sweep rounds, default 3), BENCH_MODELS
(repository, default models/), BENCH_OUT (default loadtest/results/<date>-<cores>core).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from loadtest import harness, perf_sweep, rest, shm_bench
from loadtest.payloads import infer_request_bytes, make_inputs, signature_from_config

ROOT = harness.ROOT


@dataclass
class Target:
    id: str
    measured: float
    op: str
    goal: float
    note: str = ""
    extra_ok: bool = True

    @property
    def passed(self) -> bool:
        if self.measured != self.measured:  # NaN: not measured
            return False
        ok = self.measured >= self.goal if self.op == ">=" else self.measured <= self.goal
        return ok and self.extra_ok

    def line(self) -> str:
        return (f"bench {self.id} measured={self.measured:.2f} goal={self.op}{self.goal:.2f} "
                f"{'PASS' if self.passed else 'FAIL'}")


def find_model(repo: Path, wanted: str, fallback: str | None, notes: list[str]) -> Path | None:
    def usable(name):
        path = repo / name
        return path if (path / "config.yaml").is_file() and any(
            p.name.isdigit() for p in path.iterdir()) else None

    found = usable(wanted)
    if found:
        return found
    if fallback and usable(fallback):
        notes.append(f"models/{wanted} is missing: using {fallback} in its place")
        return usable(fallback)
    notes.append(f"models/{wanted} is missing: its target is not measured")
    return None


def unbatched_repo(target: Path, models: list[Path]) -> Path:
    """A repository serving `models` with dynamic batching off."""
    for model in models:
        harness.copy_model(model, target, model.name,
                           lambda config: config.setdefault("dynamic_batching", {}).update(
                               enabled=False))
    return target


def ceiling(pin: list[str], model: Path, sizes: list[int], seconds: float,
            trials: int = 3) -> dict[int, dict]:
    """The ceiling, measured in its own process on the server's core (best of `trials` windows
    per batch size). Each target measures its ceiling right before its served run, so both see
    the host in the same state."""
    out = subprocess.run(
        [*pin, sys.executable, "-m", "loadtest.ceiling", str(model), "--batch-sizes",
         ",".join(map(str, sizes)), "--seconds", str(seconds), "--intra-op-threads", "1",
         "--trials", str(trials), "--json"], cwd=ROOT, capture_output=True, text=True, check=True,
    )
    return {int(k): v for k, v in json.loads(out.stdout).items()}


def served(address: str, body: bytes, clients: int, batch: int, seconds: float,
           server: harness.Server, windows: int = 3, **kwargs) -> harness.LoadResult:
    """The served side, measured as the ceiling is: `seconds` split into `windows` back-to-back
    windows and the best one kept, so that a window in which other processes stole the core
    lowers neither side of a ratio."""
    results = [harness.closed_loop(address, body, clients, batch, seconds / windows,
                                   warmup=1.0 if i == 0 else 0.2, server=server, **kwargs)
               for i in range(windows)]
    return max(results, key=lambda r: r.items_per_s)


def payload(model: Path, batch: int) -> bytes:
    signature = signature_from_config(model)
    inputs, _ = make_inputs(signature, batch, "real", image_size=256)
    return infer_request_bytes(model.name, inputs, signature)


class Table:
    HEAD = (f"{'step':<34} {'model':<12} {'cli':>3} {'bat':>3} {'served/s':>10} "
            f"{'ceiling/s':>10} {'ratio':>6} {'cpuRat':>6} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'batch':>6} {'cliCPU':>6} {'srvCPU':>6}")

    def __init__(self):
        self.rows: list[str] = []

    def add(self, step: str, model: str, r: harness.LoadResult, ceiling: dict | None):
        # Counted by the server where it was read: the client's count leaves out the calls that
        # straddle the window's edges (close to half the work for 4 clients of 0.4 s calls in 1.7 s).
        served = r.computed_per_s(model) if r.metrics_after else r.items_per_s
        nan = float("nan")
        ceiling_items = ceiling["items_per_s"] if ceiling else nan
        ratio = served / ceiling_items if ceiling else nan
        # The same ratio per CPU-second on both sides: how much of the core's work the serving
        # layer costs, whatever else the host was running.
        cpu_ratio = (served / r.server_cpu / ceiling["items_per_cpu_s"]
                     if ceiling and r.server_cpu else nan)
        self.rows.append(
            f"{step:<34} {model:<12} {r.clients:>3} {r.batch_size:>3} {served:>10.1f} "
            f"{ceiling_items:>10.1f} {ratio:>6.2f} {cpu_ratio:>6.2f} {r.p50_ms:>8.3f} "
            f"{r.percentile_ms(99):>8.3f} {r.mean_batch(model):>6.1f} {r.client_cpu:>6.2f} "
            f"{(r.server_cpu or float('nan')):>6.2f}")
        return ratio

    def print(self):
        print(self.HEAD)
        print("-" * len(self.HEAD))
        for row in self.rows:
            print(row)


def knee(address: str, model: Path, server: harness.Server, seconds: float,
         table: Table) -> int:
    """Smallest concurrency reaching 90% of the best throughput seen (batch 1)."""
    body = payload(model, 1)
    best, results = 0.0, {}
    for clients in (1, 2, 4, 8, 16, 32):
        r = harness.closed_loop(address, body, clients, 1, seconds, 0.5, server=server)
        table.add("knee scan", model.name, r, None)
        results[clients] = r.items_per_s
        best = max(best, r.items_per_s)
    return min(c for c, v in results.items() if v >= 0.9 * best)


def main() -> int:
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    rss_seconds = float(os.environ.get("BENCH_RSS_SECONDS", "300"))
    rounds = int(os.environ.get("BENCH_PA_ROUNDS", "3"))
    out = Path(os.environ.get("BENCH_OUT", ROOT / "loadtest/results" /
                              f"{time.strftime('%Y-%m-%d')}-{os.cpu_count()}core"))
    repo = Path(os.environ.get("BENCH_MODELS", ROOT / "models"))
    notes: list[str] = []
    pin, client_cores = harness.cores()
    if pin:
        os.sched_setaffinity(0, {int(c) for c in client_cores})
        notes.append(f"server and ceiling pinned with `{' '.join(pin)}`; load generator on "
                     f"core(s) {','.join(map(str, client_cores))}")
    else:
        notes.append("fewer than 2 cores: nothing pinned, figures are indicative only")

    cnn = find_model(repo, "fashion_cnn", "fashion_mlp", notes)
    sr = find_model(repo, "espcn_x3", None, notes)
    if cnn is None:
        print("no classifier model found under", repo, file=sys.stderr)
        return 0
    cnn_config = yaml.safe_load((cnn / "config.yaml").read_text())
    delay_s = cnn_config.get("dynamic_batching", {}).get("max_queue_delay_us", 500) / 1e6

    ceiling_s = max(1.5, seconds / 2)
    cnn_ceiling: dict[int, dict] = {}
    sr_ceiling: dict[int, dict] = {}

    table = Table()
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        off_repo = unbatched_repo(Path(tmp) / "off", [cnn])
        names = [arg for m in (cnn, sr) if m for arg in ("--model", m.name)]
        server = harness.start_server(repo, *names, pin=pin)
        try:
            addr = server.grpc_address
            # 1. one client, 64 items per request
            cnn_ceiling.update(ceiling(pin, cnn, [64], ceiling_s))
            r = served(addr, payload(cnn, 64), 1, 64, seconds, server)
            ratio = table.add("1 cnn_batch64", cnn.name, r, cnn_ceiling[64])
            targets.append(Target("cnn_batch64_ratio", ratio, ">=", 0.90))

            # 2. four clients, one 256x256 image each, x3 super-resolution
            if sr:
                sr_ceiling.update(ceiling(pin, sr, [1], ceiling_s))
                # Windows three times as long: a 2-image batch takes ~0.2 s here, and the server
                # counts items when their batch ends.
                r = served(addr, payload(sr, 1), 4, 1, 3 * seconds, server)
                ratio = table.add("2 sr_x3_256 (4 clients)", sr.name, r,
                                  sr_ceiling[1])
                targets.append(Target("sr_x3_256_ratio", ratio, ">=", 0.90))
                shm = shm_bench.measure(addr, sr, server,
                                        lambda s: ceiling(pin, sr, [1], s, trials=1)[1],
                                        ceiling_s)
                targets.append(Target("sr_x3_256_shm_ratio", shm.ratio, ">=", 0.97, shm.note))
            else:
                targets.append(Target("sr_x3_256_ratio", float("nan"), ">=", 0.90,
                                      "models/espcn_x3 missing"))
                targets.append(Target("sr_x3_256_shm_ratio", float("nan"), ">=", 0.97,
                                      "models/espcn_x3 missing"))

            # 3. one client, one item: the serving layer's own latency. A bare gRPC call (the
            # health check: no interceptor, no model) first, as the floor this client and
            # grpc.aio put under any served call.
            bare = harness.closed_loop(addr, b"", 1, 1, min(seconds, 3.0), server=server,
                                       method="/grpc.health.v1.Health/Check")
            cnn_ceiling.update(ceiling(pin, cnn, [1], ceiling_s))
            r = served(addr, payload(cnn, 1), 1, 1, seconds, server)
            table.add("3 rpc_overhead (1 client, 1 item)", cnn.name, r,
                      cnn_ceiling[1])
            overhead = r.p50_ms - cnn_ceiling[1]["p50_ms"]
            targets.append(Target("rpc_overhead_p50_ms", overhead, "<=", 0.5,
                                  f"served p50 {r.p50_ms:.3f} ms - in-process p50 "
                                  f"{cnn_ceiling[1]['p50_ms']:.3f} ms; a bare gRPC health "
                                  f"check round trip alone: p50 {bare.p50_ms:.3f} ms, "
                                  f"{bare.server_cpu / bare.calls_per_s * 1e6:.0f} us server "
                                  f"CPU and {bare.client_cpu / bare.calls_per_s * 1e6:.0f} us "
                                  "client CPU per call"))

            # 4. 32 clients, one item each, dynamic batching on. First the same load of bare
            # gRPC calls: the server CPU per call that grpc.aio costs before any service code.
            bare32 = harness.closed_loop(addr, b"", 32, 1, min(seconds, 3.0), server=server,
                                         method="/grpc.health.v1.Health/Check")
            body = payload(cnn, 1)
            cnn_ceiling.update(ceiling(pin, cnn, [32], ceiling_s))
            on = served(addr, body, 32, 1, seconds, server)
            ratio = table.add("4 batching on (32x1)", cnn.name, on,
                              cnn_ceiling[32])
            p99_bound = 2 * (delay_s * 1000 + cnn_ceiling[32]["p50_ms"])

            # 5. rss_growth at the knee of the throughput curve
            knee_clients = knee(addr, cnn, server, max(1.0, seconds / 2), table)
            knee_body = payload(cnn, 1)
            harness.closed_loop(addr, knee_body, knee_clients, 1, 10.0, 0.0, server=server)
            rss_warm = server.rss_mib()
            long_run = harness.closed_loop(addr, knee_body, knee_clients, 1, rss_seconds, 0.0,
                                           server=server)
            table.add(f"5 rss run {rss_seconds:.0f}s", cnn.name, long_run, None)
            rss_end = server.rss_mib()

            # 6-8. overhead, batch 64 and 32x1 again over REST (loadtest/rest.py), same server
            targets += [Target(*t) for t in rest.bench_targets(
                server, cnn, seconds, table, lambda n: ceiling(pin, cnn, [n], ceiling_s)[n])]
        finally:
            server.terminate()

        server = harness.start_server(off_repo, "--model", cnn.name, pin=pin)
        try:
            off = served(server.grpc_address, body, 32, 1, seconds, server)
            table.add("4 batching off (32x1)", cnn.name, off, cnn_ceiling[32])
        finally:
            server.terminate()

    # The best this layout allows: if serving cost nothing beyond bare gRPC calls and every
    # batch were 32, each item would cost one bare call plus its share of a batch-32 run.
    floor_us = bare32.server_cpu / bare32.calls_per_s * 1e6
    item_us = 1e6 / cnn_ceiling[32]["items_per_cpu_s"]
    bound = item_us / (floor_us + item_us)
    p99_ok = on.percentile_ms(99) <= p99_bound
    not_slower = on.items_per_s >= off.items_per_s
    targets.insert(3, Target(
        "batching_32x1_ratio", ratio, ">=", 0.60,
        f"p99 {on.percentile_ms(99):.2f} ms (bound {p99_bound:.2f} ms: "
        f"{'ok' if p99_ok else 'OVER'}); mean executed batch on {on.mean_batch(cnn.name):.1f}, "
        f"off {off.mean_batch(cnn.name):.1f}; on/off items/s "
        f"{on.items_per_s / off.items_per_s:.2f} ({'ok' if not_slower else 'SLOWER'}); "
        f"a bare gRPC call under the same 32 clients costs {floor_us:.0f} us of server CPU and "
        f"a batch-32 item {item_us:.0f} us, so the ratio cannot exceed {bound:.2f} here even "
        f"with no service code at all; served: {on.server_cpu / on.calls_per_s * 1e6:.0f} us "
        "server CPU per call",
        extra_ok=p99_ok and not_slower))
    targets.append(Target("rss_growth", rss_end / rss_warm, "<=", 1.10,
                          f"RSS {rss_warm:.1f} MiB after warm-up, {rss_end:.1f} MiB after "
                          f"{rss_seconds:.0f} s at {knee_clients} clients (the knee)"))

    # 9. perf_analyzer's concurrency sweep: more clients never fewer items per second, and the
    # bundled delay never slower than none.
    window_ms = max(200, int(seconds * 200))
    windows = {cnn.name: window_ms, **({sr.name: 3 * window_ms} if sr else {})}
    try:
        sweep = perf_sweep.run(repo, list(windows), ["0", "default"], perf_sweep.LEVELS, rounds,
                               windows, stability=50, cores=(pin, client_cores))
        sweep.save(out)
        notes.append(f"perf_analyzer sweep ({rounds} rounds, windows {windows} ms): "
                     f"{out / 'perf_analyzer.md'}, plot {out / 'perf_analyzer.png'}")
        (dips, dips_at), (costs, costs_at) = sweep.lowest_step_ratio(), sweep.lowest_config_ratio()
    except FileNotFoundError as exc:
        sweep = None
        notes.append(str(exc))
        (dips, dips_at), (costs, costs_at) = [(float("nan"), "not measured")] * 2
    targets.append(Target("batching_never_dips", dips, ">=", 0.95, f"lowest at {dips_at}"))
    targets.append(Target("delay_costs_nothing", costs, ">=", 0.95, f"lowest at {costs_at}"))

    print()
    print("in-process ceiling (ONNX Runtime, 1 intra-op thread, same core):")
    for name, results in ((cnn.name, cnn_ceiling), (sr.name if sr else "", sr_ceiling)):
        for batch, c in sorted(results.items()):
            print(f"  {name:<12} batch {batch:>3}: {c['items_per_s']:>10.1f} items/s "
                  f"({c['items_per_cpu_s']:.1f} per CPU-second), p50 {c['p50_ms']:.3f} ms per run")
    print()
    table.print()
    if sweep:
        print()
        print("perf_analyzer concurrency sweep (median of rounds; step and /d0 ratios per round):")
        print(sweep.table())
    print()
    print("cli = clients, bat = items per request, batch = mean executed batch (server histogram),")
    print("cliCPU/srvCPU = cores used by the load generator / the server during the window,")
    print("ratio = served/ceiling items per second (the targets), cpuRat = the same per CPU-second")
    # The bench itself keeps two processes busy (server and load generator): only load beyond
    # them means other work shared the cores.
    others = os.getloadavg()[0] - 2
    if others > 0.5:
        print(f"warning: load average {others + 2:.1f} on {os.cpu_count()} CPUs, about "
              f"{others:.1f} of it from other processes: wall-clock ratios are noisy (cpuRat "
              "much less so)")
    for note in notes:
        print("note:", note)
    for target in targets:
        if target.note:
            print(f"{target.id}: {target.note}")
    worst_client = max(float(row.split()[-2]) for row in table.rows)
    if worst_client > 0.8:
        print(f"warning: the load generator used up to {worst_client:.2f} cores: "
              "it may be what limits some steps")
    print()
    for target in targets:
        print(target.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
