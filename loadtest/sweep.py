"""Headless Locust sweep over batch sizes and concurrency, with the in-process ceiling, the
server's own metrics per step, a markdown report and PNG plots.

    python -m loadtest.sweep --models fashion_mlp,fashion_cnn --seconds 10 \
        --out loadtest/results/$(date +%Y%m%d)-$(hostname)

By default it starts its own server from models/, pinned to the first core (`taskset -c 0`, one
intra-op thread), and runs Locust pinned to the other cores (`taskset -c 1-...`), so the server
and the load generator do not share a core; on a one-core host nothing is pinned. With --address
it loads an existing server instead (give --metrics-url too for the server-side columns).

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
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest import harness
from loadtest.ceiling import measure as measure_ceiling
from loadtest.payloads import signature_from_config

ROOT = harness.ROOT
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
GUO_BATCHES = [1, 10, 100]


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
    ceiling_items_per_s: float | None
    server_items_per_cpu_s: float | None = None
    ceiling_items_per_cpu_s: float | None = None

    @property
    def ms_per_item(self) -> float:
        return 1000.0 / self.items_per_s * self.clients if self.items_per_s else float("nan")

    @property
    def ratio(self) -> float:
        return (self.items_per_s / self.ceiling_items_per_s
                if self.ceiling_items_per_s else float("nan"))

    @property
    def cpu_ratio(self) -> float:
        """Items per server CPU-second over the ceiling's items per CPU-second: the share of the
        core's work that is model compute, undisturbed by other processes on a shared host."""
        if self.server_items_per_cpu_s and self.ceiling_items_per_cpu_s:
            return self.server_items_per_cpu_s / self.ceiling_items_per_cpu_s
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
               out: Path, pin: list[str], processes: int, payload: str) -> tuple[dict, float]:
    """One headless Locust run; returns (its stats entry, load-generator cores used)."""
    prefix = out / f"{model}_c{clients}_b{batch}"
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
    entry = next(e for e in entries if e["name"].startswith(f"ModelInfer {model} b{batch} "))
    return entry, cpu


def step(address: str, metrics_url: str | None, model: str, clients: int, batch: int,
         seconds: float, out: Path, pin: list[str], processes: int, payload: str,
         ceiling: dict | None, server: harness.Server | None) -> Step:
    before = fetch(metrics_url)
    cpu0 = server.cpu_seconds() if server else None
    entry, cpu = run_locust(address, model, clients, batch, seconds, out, pin, processes, payload)
    server_cpu = server.cpu_seconds() - cpu0 if server else None
    after = fetch(metrics_url)
    probe = harness.LoadResult(clients, batch, seconds, 0, 0, [], cpu, None, before, after)
    span = max(entry["last_request_timestamp"] - entry["start_time"], 1e-9)
    rate = entry["num_requests"] / span
    hist = entry["response_times"]
    return Step(
        model, clients, batch, entry["num_requests"], entry["num_failures"], rate, rate * batch,
        percentile(hist, 50), percentile(hist, 95), percentile(hist, 99),
        entry["total_response_time"] / max(entry["num_requests"], 1),
        probe.mean_batch(model) if after else float("nan"),
        probe.mean_ms("inference_queue_duration_seconds", model) if after else float("nan"),
        probe.mean_ms("inference_compute_duration_seconds", model) if after else float("nan"),
        cpu, (ceiling or {}).get(batch, {}).get("items_per_s"),
        entry["num_requests"] * batch / server_cpu if server_cpu else None,
        (ceiling or {}).get(batch, {}).get("items_per_cpu_s"),
    )


def fmt(value: float, digits: int = 1) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def report(out: Path, steps: list[Step], ceilings: dict[str, dict], notes: list[str],
           seconds: float) -> str:
    lines = ["# onnx-serve load sweep", "",
             f"Locust (gRPC `ModelInfer`, raw contents, closed loop), {seconds:g} s per step, "
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
            inproc = ceiling.get(batch)
            lines.append(
                f"| {batch} | {fmt(served.ms_per_item if served else None, 3)} | "
                f"{fmt(inproc['mean_ms'] / batch if inproc else None, 3)} | "
                f"{fmt(served.ratio if served else None, 2)} |")
        lines += ["", "### Sweep", "",
                  "| clients | batch | req/s | items/s | ms/item | p50 ms | p95 ms | p99 ms | "
                  "exec batch | queue ms | compute ms | served/ceiling | per CPU-s | failures | "
                  "client CPU |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in sorted(rows, key=lambda s: (s.clients, s.batch)):
            lines.append(
                f"| {s.clients} | {s.batch} | {fmt(s.req_per_s)} | {fmt(s.items_per_s)} | "
                f"{fmt(s.ms_per_item, 3)} | {fmt(s.p50_ms, 0)} | {fmt(s.p95_ms, 0)} | "
                f"{fmt(s.p99_ms, 0)} | {fmt(s.exec_batch)} | {fmt(s.queue_ms, 2)} | "
                f"{fmt(s.compute_ms, 2)} | {fmt(s.ratio, 2)} | {fmt(s.cpu_ratio, 2)} | "
                f"{s.failures} | "
                f"{fmt(s.client_cpu, 2)} |")
        lines += ["", "In-process ceiling (ONNX Runtime, same model, threads and core):", "",
                  "| batch | items/s | items per CPU-s | p50 ms per run |", "|---:|---:|---:|---:|"]
        for batch, c in sorted(ceiling.items()):
            lines.append(f"| {batch} | {fmt(c['items_per_s'])} | {fmt(c['items_per_cpu_s'])} | "
                         f"{fmt(c['p50_ms'], 3)} |")
        lines.append("")
    lines += ["Columns: ms/item = clients / items per second (the time one caller pays per item); "
              "served/ceiling = items/s over the in-process items/s at the same request batch "
              "size (wall clock: on a busy shared host the ceiling itself moves); per CPU-s = "
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
    parser.add_argument("--seconds", type=float, default=10.0, help="per step")
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
    ceilings: dict[str, dict] = {}
    load_before = os.getloadavg()
    try:
        for model in present:
            signature = signature_from_config(args.repository / model)
            limit = signature.max_batch_size or 1
            sizes = sorted({b for b in batches + GUO_BATCHES if b <= limit})
            # The ceiling runs while the server idles, pinned to the server's core.
            ceilings[model] = json.loads(subprocess.run(
                [*server_pin, sys.executable, "-m", "loadtest.ceiling",
                 str(args.repository / model), "--batch-sizes", ",".join(map(str, sizes)),
                 "--seconds", "1.5", "--trials", "3", "--payload", args.payload, "--json"],
                cwd=ROOT, capture_output=True, text=True, check=True).stdout)
            ceilings[model] = {int(k): v for k, v in ceilings[model].items()}
            plan = [(c, b) for c in levels for b in sizes if b in batches]
            plan += [(1, b) for b in GUO_BATCHES if b <= limit and (1, b) not in plan]
            for clients, batch in plan:
                s = step(address, metrics_url, model, clients, batch, args.seconds,
                         out / "locust", client_pin, args.processes, args.payload,
                         ceilings[model], server)
                steps.append(s)
                print(f"{model} c={clients:<3} b={batch:<4} {s.items_per_s:>10.1f} items/s "
                      f"p50 {fmt(s.p50_ms, 0)} ms p99 {fmt(s.p99_ms, 0)} ms exec batch "
                      f"{fmt(s.exec_batch)} ratio {fmt(s.ratio, 2)} per CPU-s "
                      f"{fmt(s.cpu_ratio, 2)} client CPU "
                      f"{fmt(s.client_cpu, 2)}", flush=True)
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
    (out / "ceiling.json").write_text(json.dumps(ceilings, indent=1))
    plot(out, steps, ceilings)
    print(report(out, steps, ceilings, notes, args.seconds))


if __name__ == "__main__":
    main()
