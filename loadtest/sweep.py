"""Headless Locust sweep over batch sizes and concurrency, with the in-process ceiling, the
server's own metrics per step, a markdown report and PNG plots.

    python -m loadtest.sweep --models fashion_mlp,fashion_cnn --seconds 10 \
        --out loadtest/results/$(date +%Y%m%d)-$(hostname)

By default it starts its own server from models/, pinned to the first core (`taskset -c 0`, one
intra-op thread), and runs Locust pinned to the other cores (`taskset -c 1-...`), so the server
and the load generator do not share a core; on a one-core host nothing is pinned. With --address
it loads an existing server instead (give --metrics-url too for the server-side columns).

Each step is --pairs pairs of windows on the server's core: an in-process ceiling window (the same
ONNX file run by ONNX Runtime in a loop, in a process that stays loaded) right before a served one.
The served/ceiling ratio is taken per pair and its median quoted, because on a shared host the
speed of the core drifts by more than the serving layer costs; a ratio above NOISE_RATIO cannot be
the server beating ONNX Runtime on its own core, and the report flags it as noise.

Per step it keeps Locust's CSVs and JSON under <out>/locust/, scrapes the service's /metrics
before and after (mean executed batch size, queue wait, compute time), and records the load
generator's CPU use. The report has one table per model, the classic time-per-instance table at
batch 1, 10 and 100 (Guo, Li and Iorio 2016), and served/ceiling ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest import harness
from loadtest.payloads import signature_from_config

ROOT = harness.ROOT
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
GUO_BATCHES = [1, 10, 100]
# A served/ceiling ratio above this is the host changing between the two windows of a pair.
NOISE_RATIO = 1.05


@dataclass
class Step:
    model: str
    clients: int
    batch: int
    requests: int
    failures: int
    req_per_s: float
    items_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    exec_batch: float
    queue_ms: float
    compute_ms: float
    client_cpu: float
    pair_ratios: list[float]      # served/ceiling items per second, per pair of windows
    ceiling_windows: list[dict]   # loadtest.ceiling's window measurements, one per pair
    server_items_per_cpu_s: float | None = None

    @property
    def ms_per_item(self) -> float:
        return 1000.0 / self.items_per_s * self.clients if self.items_per_s else float("nan")

    def ceiling(self, key: str) -> float:
        """The median of this step's ceiling windows."""
        return statistics.median(w[key] for w in self.ceiling_windows)

    @property
    def ratio(self) -> float:
        return statistics.median(self.pair_ratios) if self.pair_ratios else float("nan")

    @property
    def noise(self) -> bool:
        return self.ratio > NOISE_RATIO

    @property
    def ceiling_shares(self) -> list[float]:
        """How much of its core each ceiling window got: wall-clock items/s over items per
        CPU-second (1.0: nothing else ran there)."""
        return [w["items_per_s"] / w["items_per_cpu_s"] for w in self.ceiling_windows]

    @property
    def cpu_ratio(self) -> float:
        """Items per server CPU-second over the ceiling's items per CPU-second: the share of the
        core's work that is model compute, undisturbed by other processes on a shared host."""
        if self.server_items_per_cpu_s and self.ceiling_windows:
            return self.server_items_per_cpu_s / self.ceiling("items_per_cpu_s")
        return float("nan")


def percentile(histogram: dict[str, int], q: float) -> float:
    """Percentile of Locust's response-time histogram (ms, rounded as Locust rounds)."""
    total = sum(histogram.values())
    if not total:
        return float("nan")
    seen = 0
    for value, count in sorted((float(k), v) for k, v in histogram.items()):
        seen += count
        if seen >= q / 100 * total:
            return value
    return float("nan")


def fetch(url: str | None) -> str:
    if not url:
        return ""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def run_locust(address: str, model: str, clients: int, batch: int, seconds: float,
               prefix: Path, pin: list[str], processes: int, payload: str) -> tuple[dict, float]:
    """One headless Locust run; returns (its stats entry, load-generator cores used)."""
    command = [*pin, sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest/locustfile.py"),
               "--headless", "-u", str(clients), "-r", str(clients), "-t", f"{seconds:g}s",
               "--host", f"grpc://{address}", "--model", model, "--batch-size", str(batch),
               "--payload", payload, "--deadline-ms", "30000", "--csv", str(prefix),
               "--json-file", str(prefix), "--only-summary", "--loglevel", "WARNING",
               "--stop-timeout", "10"]
    if processes > 1:
        command += ["--processes", str(processes)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in (0, 1):  # 1: some requests failed, still a measurement
        raise RuntimeError(f"locust failed: {result.stderr[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall
    entries = json.loads(Path(f"{prefix}.json").read_text())
    name = f"ModelInfer {model} b{batch} "
    empty = {"num_requests": 0, "num_failures": 0, "total_response_time": 0,
             "response_times": {}, "start_time": 0.0, "last_request_timestamp": 0.0}
    return next((e for e in entries if e["name"].startswith(name)), empty), cpu


class Ceiling:
    """The in-process ceiling of one model in its own process on the server's core
    (`loadtest.ceiling --stdin`): loaded once, it measures a window whenever asked, so every
    served window gets one right before it."""

    def __init__(self, pin: list[str], model_dir: Path, payload: str):
        self._process = subprocess.Popen(
            [*pin, sys.executable, "-m", "loadtest.ceiling", str(model_dir), "--stdin",
             "--payload", payload, "--intra-op-threads", "1"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def window(self, batch: int, seconds: float) -> dict:
        self._process.stdin.write(f"{batch} {seconds}\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the ceiling process exited ({self._process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(30)


def rate(entry: dict) -> float | None:
    """Requests per second over a Locust run's stats entry; None when it holds too little to say
    (on a busy host Locust can spend most of a short run starting its users)."""
    span = entry["last_request_timestamp"] - entry["start_time"]
    return entry["num_requests"] / span if entry["num_requests"] >= 3 and span >= 1.0 else None


def step(address: str, metrics_url: str | None, model: str, clients: int, batch: int,
         seconds: float, out: Path, pin: list[str], processes: int, payload: str,
         ceiling: Ceiling, pairs: int, server: harness.Server | None) -> Step:
    """`pairs` x (a ceiling window, then a served window of `seconds`)."""
    before = fetch(metrics_url)
    cpu0 = server.cpu_seconds() if server else None
    ceilings, entries, cpus = [], [], []
    for i in range(pairs):
        ceilings.append(ceiling.window(batch, min(seconds, 2.0)))
        entry, cpu = run_locust(address, model, clients, batch, seconds,
                                out / f"{model}_c{clients}_b{batch}_w{i}", pin, processes,
                                payload)
        entries.append(entry)
        cpus.append(cpu)
    server_cpu = server.cpu_seconds() - cpu0 if server else None
    after = fetch(metrics_url)
    probe = harness.LoadResult(clients, batch, seconds, 0, 0, [], 0.0, None, before, after)
    requests = sum(e["num_requests"] for e in entries)
    pairs_seen = [(rate(e), c) for e, c in zip(entries, ceilings) if rate(e)]
    req_per_s = statistics.median(r for r, _ in pairs_seen) if pairs_seen else float("nan")
    hist: dict[str, int] = {}
    for e in entries:
        for value, n in e["response_times"].items():
            hist[value] = hist.get(value, 0) + n
    return Step(
        model, clients, batch, requests, sum(e["num_failures"] for e in entries), req_per_s,
        req_per_s * batch, percentile(hist, 50), percentile(hist, 95), percentile(hist, 99),
        sum(e["total_response_time"] for e in entries) / max(requests, 1),
        probe.mean_batch(model) if after else float("nan"),
        probe.mean_ms("inference_queue_duration_seconds", model) if after else float("nan"),
        probe.mean_ms("inference_compute_duration_seconds", model) if after else float("nan"),
        statistics.mean(cpus),
        [r * batch / c["items_per_s"] for r, c in pairs_seen], ceilings,
        requests * batch / server_cpu if server_cpu else None,
    )


def ceilings_by_batch(steps: list[Step]) -> dict[str, dict[int, dict]]:
    """{model: {batch: medians of every ceiling window measured at that batch size}}."""
    found: dict[str, dict[int, list[dict]]] = {}
    for s in steps:
        found.setdefault(s.model, {}).setdefault(s.batch, []).extend(s.ceiling_windows)
    return {model: {batch: {key: statistics.median(w[key] for w in windows)
                            for key in ("items_per_s", "items_per_cpu_s", "p50_ms", "mean_ms")}
                    for batch, windows in sorted(batches.items())}
            for model, batches in found.items()}


def fmt(value: float, digits: int = 1) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def ratio_cell(s: Step) -> str:
    return f"{fmt(s.ratio, 2)} noise" if s.noise else fmt(s.ratio, 2)


def report(out: Path, steps: list[Step], ceilings: dict[str, dict], notes: list[str],
           seconds: float, pairs: int) -> str:
    lines = ["# onnx-serve load sweep", "",
             f"Locust (gRPC `ModelInfer`, raw contents, closed loop), {pairs} served windows of "
             f"{seconds:g} s per step, each right after an in-process ceiling window, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, host `{os.uname().nodename}`, "
             f"{os.cpu_count()} CPU(s).", ""]
    lines += [f"- {note}" for note in notes] + [""]
    for model in dict.fromkeys(s.model for s in steps):
        rows = [s for s in steps if s.model == model]
        ceiling = ceilings.get(model, {})
        lines += [f"## {model}", "", f"![{model}]({model}.png)", ""]
        lines += ["### Time per instance (Guo, Li and Iorio 2016 style)", "",
                  "One client; time per item = 1 / items per second. Guo et al. measured 14.5, "
                  "7.7 and 6.9 ms per instance at batch 1, 10 and 100 for their CNN on a GPU.", "",
                  "| batch | served ms/item | in-process ms/item | served/in-process items/s |",
                  "|---:|---:|---:|---:|"]
        for batch in GUO_BATCHES:
            served = next((s for s in rows if s.clients == 1 and s.batch == batch), None)
            lines.append(
                f"| {batch} | {fmt(served.ms_per_item if served else None, 3)} | "
                f"{fmt(served.ceiling('mean_ms') / batch if served else None, 3)} | "
                f"{ratio_cell(served) if served else '–'} |")
        lines += ["", "### Sweep", "",
                  "| clients | batch | req/s | items/s | ms/item | p50 ms | p95 ms | p99 ms | "
                  "exec batch | queue ms | compute ms | served/ceiling | pairs | ceiling's core | "
                  "per CPU-s | failures | client CPU |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
                  "---:|---:|"]
        for s in sorted(rows, key=lambda s: (s.clients, s.batch)):
            lines.append(
                f"| {s.clients} | {s.batch} | {fmt(s.req_per_s)} | {fmt(s.items_per_s)} | "
                f"{fmt(s.ms_per_item, 3)} | {fmt(s.p50_ms, 0)} | {fmt(s.p95_ms, 0)} | "
                f"{fmt(s.p99_ms, 0)} | {fmt(s.exec_batch)} | {fmt(s.queue_ms, 2)} | "
                f"{fmt(s.compute_ms, 2)} | {ratio_cell(s)} | "
                f"{', '.join(fmt(r, 2) for r in s.pair_ratios)} | "
                f"{', '.join(f'{share:.0%}' for share in s.ceiling_shares)} | "
                f"{fmt(s.cpu_ratio, 2)} | "
                f"{s.failures} | "
                f"{fmt(s.client_cpu, 2)} |")
        noisy = [s for s in rows if s.noise]
        shares = [share for s in rows for share in s.ceiling_shares]
        if noisy:
            lines += ["", f"**{len(noisy)} of {len(rows)} served/ceiling ratios are above "
                      f"{NOISE_RATIO}: noise.** A server cannot run the model faster than ONNX "
                      "Runtime in a loop on the same core; such a ratio means the core's speed "
                      "changed between the windows of a pair (other processes on the host: the "
                      f"ceiling's windows had their core {statistics.median(shares):.0%} of the "
                      f"time, median, {min(shares):.0%} at the least). Read those steps' per "
                      "CPU-s ratio instead."]
        lines += ["", "In-process ceiling (ONNX Runtime, same model, threads and core; the "
                  "median of the windows interleaved with the steps at each batch size):", "",
                  "| batch | items/s | items per CPU-s | p50 ms per run |", "|---:|---:|---:|---:|"]
        for batch, c in sorted(ceiling.items()):
            lines.append(f"| {batch} | {fmt(c['items_per_s'])} | {fmt(c['items_per_cpu_s'])} | "
                         f"{fmt(c['p50_ms'], 3)} |")
        lines.append("")
    lines += ["Columns: ms/item = clients / items per second (the time one caller pays per item); "
              "served/ceiling = served items/s over the in-process items/s at the same request "
              "batch size, per pair of neighbouring windows (ceiling, then served), the median "
              f"quoted and marked noise above {NOISE_RATIO}; pairs = each pair's ratio; "
              "ceiling's core = the share of its core each ceiling window got (its items/s over "
              "its items per CPU-s: below 100%, other processes ran there too); "
              "items/s and req/s are the medians of the served windows; per CPU-s = "
              "items per server CPU-second over the ceiling's items per CPU-second (what share of "
              "the server's CPU is model compute; robust to other load on the host); "
              "latency percentiles are Locust's (rounded to 1 ms below 100 ms); exec batch, "
              "queue and compute are the means of the service's own histograms over the step "
              "(compute per executed batch); client CPU = cores the Locust process used "
              "(start-up included).", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


def plot(out: Path, steps: list[Step], ceilings: dict[str, dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for model in dict.fromkeys(s.model for s in steps):
        rows = [s for s in steps if s.model == model and s.batch in BATCH_SIZES]
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.8))
        for clients in sorted({s.clients for s in rows}):
            series = sorted((s for s in rows if s.clients == clients), key=lambda s: s.batch)
            batches = [s.batch for s in series]
            ax1.plot(batches, [s.items_per_s for s in series], "o-", label=f"{clients} clients")
            ax2.plot(batches, [s.ms_per_item for s in series], "o-", label=f"{clients} clients")
        ceiling = ceilings.get(model, {})
        sizes = sorted(b for b in ceiling if b in BATCH_SIZES)
        # Per CPU-second: the wall-clock ceiling on a shared host jumps with other load.
        ax1.plot(sizes, [ceiling[b]["items_per_cpu_s"] for b in sizes], "k--",
                 label="in-process ceiling (per CPU-s)")
        ax2.plot(sizes, [1000.0 / ceiling[b]["items_per_cpu_s"] for b in sizes], "k--",
                 label="in-process ceiling (per CPU-s)")
        for ax, title, unit in ((ax1, "throughput vs batch size", "items/s"),
                                (ax2, "per-item latency vs batch size", "ms per item")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("items per request")
            ax.set_ylabel(unit)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        batch_one = sorted((s for s in rows if s.batch == 1), key=lambda s: s.clients)
        for name, attr in (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms")):
            ax3.plot([s.clients for s in batch_one], [getattr(s, attr) for s in batch_one], "o-",
                     label=name)
        ax3.set_xscale("log", base=2)
        ax3.set_xlabel("concurrent clients (batch 1)")
        ax3.set_ylabel("latency ms")
        ax3.set_title("latency percentiles vs concurrency")
        ax3.grid(True, alpha=0.3)
        ax3.legend(fontsize=8)
        fig.suptitle(f"{model}: onnx-serve under Locust (server on 1 core, 1 intra-op thread)")
        fig.tight_layout()
        path = out / f"{model}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fashion_mlp", help="comma-separated model names")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=5.0, help="per served window")
    parser.add_argument("--pairs", type=int, default=2,
                        help="(ceiling window, served window) pairs per step")
    parser.add_argument("--payload", choices=["real", "generated"], default="real")
    parser.add_argument("--processes", type=int, default=1,
                        help="Locust processes (--processes); raise it when one Locust process "
                             "is the bottleneck and spare cores exist")
    parser.add_argument("--address", help="load this server instead of starting one")
    parser.add_argument("--metrics-url", help="its /metrics, with --address")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "loadtest/results" / time.strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)

    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    out = args.out
    (out / "locust").mkdir(parents=True, exist_ok=True)
    notes = []
    server_pin, client_cores = harness.cores()
    client_pin = ["taskset", "-c", ",".join(map(str, client_cores))] if server_pin else []
    present = [m for m in models if (args.repository / m / "config.yaml").is_file()]
    for missing in sorted(set(models) - set(present)):
        notes.append(f"model {missing} is not in {args.repository}: skipped")

    server = None
    if args.address:
        address, metrics_url = args.address, args.metrics_url
        notes.append(f"external server at {address}: not pinned by this sweep")
    else:
        names = [arg for m in present for arg in ("--model", m)]
        server = harness.start_server(args.repository, *names, pin=server_pin)
        address = server.grpc_address
        metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        notes.append("server: `python -m service serve --intra-op-threads 1` pinned with "
                     f"`{' '.join(server_pin) or 'nothing (one core)'}`; Locust pinned with "
                     f"`{' '.join(client_pin) or 'nothing'}`, {args.processes} process(es)")

    steps: list[Step] = []
    load_before = os.getloadavg()
    try:
        for model in present:
            signature = signature_from_config(args.repository / model)
            limit = signature.max_batch_size or 1
            sizes = sorted({b for b in batches + GUO_BATCHES if b <= limit})
            plan = [(c, b) for c in levels for b in sizes if b in batches]
            plan += [(1, b) for b in GUO_BATCHES if b <= limit and (1, b) not in plan]
            # The ceiling runs while the server idles, pinned to the server's core.
            ceiling = Ceiling(server_pin, args.repository / model, args.payload)
            try:
                for clients, batch in plan:
                    s = step(address, metrics_url, model, clients, batch, args.seconds,
                             out / "locust", client_pin, args.processes, args.payload,
                             ceiling, args.pairs, server)
                    steps.append(s)
                    print(f"{model} c={clients:<3} b={batch:<4} {s.items_per_s:>10.1f} items/s "
                          f"p50 {fmt(s.p50_ms, 0)} ms p99 {fmt(s.p99_ms, 0)} ms exec batch "
                          f"{fmt(s.exec_batch)} ratio {ratio_cell(s)} (pairs "
                          f"{', '.join(fmt(r, 2) for r in s.pair_ratios)}) per CPU-s "
                          f"{fmt(s.cpu_ratio, 2)} client CPU {fmt(s.client_cpu, 2)}", flush=True)
            finally:
                ceiling.close()
    finally:
        if server is not None:
            server.terminate()
    load_after = os.getloadavg()
    notes.append(
        f"host load average (1, 5, 15 min) {', '.join(f'{v:.1f}' for v in load_before)} at the "
        f"start, {', '.join(f'{v:.1f}' for v in load_after)} at the end, on {os.cpu_count()} "
        "CPU(s): above the CPU count, other processes shared the pinned cores and wall-clock "
        "figures (the ceiling's too) move between steps; the per CPU-s ratio moves much less")
    (out / "steps.json").write_text(json.dumps([asdict(s) for s in steps], indent=1))
    ceilings = ceilings_by_batch(steps)
    plot(out, steps, ceilings)
    print(report(out, steps, ceilings, notes, args.seconds, args.pairs))


if __name__ == "__main__":
    main()
