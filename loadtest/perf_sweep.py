"""Triton's perf_analyzer against onnx-serve: a concurrency sweep comparing batching delays.

    python -m loadtest.perf_sweep --models fashion_cnn,espcn_x3 --delays 0,default \\
        --concurrency 1,2,4,8,16,32,64 --out /tmp/pa

One server (pinned as the bench pins it: `taskset -c 0`, one intra-op thread) serves a copy of each
model per delay (`fashion_cnn_d0`, `fashion_cnn_d500`, ...: the bundled config with only
`max_queue_delay_us` changed), and perf_analyzer (`make perf-analyzer` installs it) runs on the
other cores, once per measurement: `--concurrency-range C -p WINDOW --percentile 99 -f CSV`, which
reports 3 windows that agree within --stability percent. `--compare-with DIR` adds the same
variants served by a second server started from another checkout (its code, our models), so a code
change is measured against its base in the same rounds.

A shared host drifts by more than the effects measured here, so measurements are ordered to make
every ratio a pair of neighbours in time: each round measures every concurrency, and at each
concurrency every configuration back to back, in reversed order every other round. The ratio to
the first configuration (delay 0) at the same concurrency and the step ratio (a concurrency's
throughput over the one before it, same configuration) are taken per round; the median over rounds
is quoted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from loadtest import harness

ROOT = harness.ROOT
DEFAULT_BINARY = ROOT / ".venv/perf-analyzer/perf_analyzer"
LEVELS = [1, 2, 4, 8, 16, 32, 64]
# Super-resolution inputs have variable height and width: the size perf_analyzer sends.
IMAGE_SIZE = 256


def binary() -> str:
    """perf_analyzer as `make perf-analyzer` installs it, or $PERF_ANALYZER."""
    path = Path(os.environ.get("PERF_ANALYZER", DEFAULT_BINARY))
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"perf_analyzer not found at {path}: run `make perf-analyzer` "
                                "or set PERF_ANALYZER")
    return str(path)


@dataclass
class Measurement:
    model: str          # the bundled model
    config: str         # "d<delay us>", prefixed by the checkout's name for --compare-with
    concurrency: int
    round: int
    infer_per_s: float  # nan: perf_analyzer found no stable measurement
    p50_us: float
    p99_us: float
    queue_us: float     # the server-side split, per request, from our ModelStatistics RPC
    compute_infer_us: float
    mean_batch: float   # inferences per execution


@dataclass(frozen=True)
class Variant:
    model: str
    delay_us: int
    checkout: Path = ROOT

    @property
    def served_name(self) -> str:
        return f"{self.model}_d{self.delay_us}"

    @property
    def config(self) -> str:
        prefix = "" if self.checkout == ROOT else f"{self.checkout.name} "
        return f"{prefix}d{self.delay_us}"


def variant_repo(target: Path, repo: Path, variants: list[Variant]) -> Path:
    for v in variants:
        harness.copy_model(repo / v.model, target, v.served_name,
                           lambda config, v=v: config.setdefault("dynamic_batching", {}).update(
                               max_queue_delay_us=v.delay_us))
    return target


def shape_args(model_dir: Path) -> list[str]:
    """--shape for inputs with variable dims (images of any size): IMAGE_SIZE squared."""
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    args = []
    for spec in config["inputs"]:
        if -1 in spec["shape"]:
            dims = [IMAGE_SIZE if d == -1 else d for d in spec["shape"]]
            args += ["--shape", f"{spec['name']}:{','.join(map(str, dims))}"]
    return args


def count(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else float("nan")


def measure(pa: str, address: str, variant: Variant, concurrency: int, round_: int,
            window_ms: int, stability: int, shapes: list[str], pin: list[str],
            scratch: Path, log=print) -> Measurement:
    """One perf_analyzer run at one concurrency. A measurement that never settles within
    `stability` is left out (nan); one that fails otherwise (no request finished inside a window
    because the host slowed down that far, or on this host once a statistics snapshot without the
    model) is tried once more with windows 3 times longer, then left out."""
    report = scratch / f"{variant.served_name}_c{concurrency}_r{round_}.csv"
    empty = Measurement(variant.model, variant.config, concurrency, round_, *[float("nan")] * 6)
    for window in (window_ms, 3 * window_ms):
        report.unlink(missing_ok=True)
        result = subprocess.run(
            [*pin, pa, "-m", variant.served_name, "-i", "grpc", "-u", address,
             "--concurrency-range", str(concurrency), "-p", str(window), "--percentile", "99",
             "-s", str(stability), "-f", str(report), *shapes],
            capture_output=True, text=True, timeout=60 + 20 * window / 1000)
        if result.returncode == 0 and report.exists():
            break
        said = (result.stdout + result.stderr).strip()
        if "Failed to obtain stable measurement" in said:
            return empty
        log(f"perf_analyzer {variant.served_name} c={concurrency} -p {window} failed "
            f"({result.returncode}): {said.splitlines()[-1] if said else ''}")
    else:
        return empty
    with report.open() as f:
        row = next(csv.DictReader(f))
    inferences = count(r"Inference count: (\d+)", result.stdout)
    executions = count(r"Execution count: (\d+)", result.stdout)
    return Measurement(variant.model, variant.config, concurrency, round_,
                       float(row["Inferences/Second"]), float(row["p50 latency"]),
                       float(row["p99 latency"]), float(row["Server Queue"]),
                       float(row["Server Compute Infer"]),
                       inferences / executions if executions else float("nan"))


def sweep(pa: str, addresses: dict[Variant, str], levels: list[int], rounds: int,
          window_ms: dict[str, int], stability: int, shapes: dict[str, list[str]],
          pin: list[str], log=print) -> list[Measurement]:
    measurements = []
    with tempfile.TemporaryDirectory(prefix="perf-sweep-") as scratch:
        for model in dict.fromkeys(v.model for v in addresses):
            mine = [v for v in addresses if v.model == model]
            for round_ in range(rounds):
                for concurrency in levels:
                    for v in (mine if round_ % 2 == 0 else mine[::-1]):
                        m = measure(pa, addresses[v], v, concurrency, round_, window_ms[model],
                                    stability, shapes[model], pin, Path(scratch), log)
                        measurements.append(m)
                        log(f"perf_analyzer {model} {v.config:<16} c={concurrency:<3} round "
                            f"{round_}: {m.infer_per_s:8.1f} infer/s, p99 "
                            f"{m.p99_us / 1000:7.2f} ms, batch {m.mean_batch:5.1f}, queue "
                            f"{m.queue_us:6.0f} us")
    return measurements


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _lowest(pairs) -> tuple[float, str]:
    return min((p for p in pairs if p[0] == p[0]), default=(float("nan"), "nothing measured"))


def fmt(value: float, digits: int) -> str:
    return "–" if value != value else f"{value:.{digits}f}"


@dataclass
class Summary:
    """Medians over rounds and per-round ratios, by (model, config, concurrency)."""
    measurements: list[Measurement]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(w.model for w in self.measurements))

    def configs(self, model) -> list[str]:
        """In the order measured: the first is what the others are compared with."""
        return list(dict.fromkeys(w.config for w in self.measurements if w.model == model))

    def levels(self, model) -> list[int]:
        return sorted({w.concurrency for w in self.measurements if w.model == model})

    def _pick(self, model, config, concurrency) -> dict[int, Measurement]:
        return {w.round: w for w in self.measurements
                if (w.model, w.config, w.concurrency) == (model, config, concurrency)}

    def median(self, model, config, concurrency, field: str) -> float:
        return _median([getattr(w, field)
                        for w in self._pick(model, config, concurrency).values()])

    def _ratio(self, a: dict[int, Measurement], b: dict[int, Measurement]) -> float:
        # A measurement with no answer in it (nan, or 0 when requests outlast its windows) pairs
        # with nothing.
        return _median([a[r].infer_per_s / b[r].infer_per_s for r in a.keys() & b.keys()
                        if a[r].infer_per_s > 0 and b[r].infer_per_s > 0])

    def config_ratio(self, model, config, concurrency) -> float:
        """Throughput over the first configuration's, same concurrency and round."""
        return self._ratio(self._pick(model, config, concurrency),
                           self._pick(model, self.configs(model)[0], concurrency))

    def step_ratio(self, model, config, concurrency, before) -> float:
        return self._ratio(self._pick(model, config, concurrency),
                           self._pick(model, config, before))

    def lowest_step_ratio(self) -> tuple[float, str]:
        """batching_never_dips: the lowest step ratio over every model, configuration and step,
        and where it is."""
        return _lowest((self.step_ratio(m, k, c, b), f"{m} {k}, {b} -> {c} clients")
                       for m in self.models for k in self.configs(m)
                       for b, c in zip(self.levels(m), self.levels(m)[1:]))

    def lowest_config_ratio(self) -> tuple[float, str]:
        """delay_costs_nothing: the lowest ratio to the first configuration (delay 0), and
        where it is."""
        return _lowest((self.config_ratio(m, k, c), f"{m} {k}/{self.configs(m)[0]}, {c} clients")
                       for m in self.models for k in self.configs(m)[1:] for c in self.levels(m))

    def table(self) -> str:
        """Markdown: per model, one row per concurrency, per configuration its medians."""
        lines = []
        for model in self.models:
            configs, levels = self.configs(model), self.levels(model)
            head = ["clients"]
            for k in configs:
                head += [f"{k} infer/s", "p99 ms", "batch", "queue us", "step"]
                if k != configs[0]:
                    head.append(f"/{configs[0]}")
            lines += [f"### {model}", "", "| " + " | ".join(head) + " |",
                      "|" + "---:|" * len(head)]
            for i, c in enumerate(levels):
                cells = [str(c)]
                for k in configs:
                    step = self.step_ratio(model, k, c, levels[i - 1]) if i else float("nan")
                    cells += [fmt(self.median(model, k, c, "infer_per_s"), 1),
                              fmt(self.median(model, k, c, "p99_us") / 1000, 2),
                              fmt(self.median(model, k, c, "mean_batch"), 1),
                              fmt(self.median(model, k, c, "queue_us"), 0), fmt(step, 2)]
                    if k != configs[0]:
                        cells.append(fmt(self.config_ratio(model, k, c), 2))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        lines.append(
            "Medians over rounds. step = throughput over the row above's, same configuration; "
            "/d0 = throughput over the first configuration's, same concurrency; both per round "
            "(neighbouring measurements), median quoted. batch = inferences per execution; queue "
            "= the server's mean queue wait per request (ModelStatistics, as perf_analyzer "
            "prints it).")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(self.models), figsize=(6.5 * len(self.models), 4.8),
                                 squeeze=False)
        for ax, model in zip(axes[0], self.models):
            levels = self.levels(model)
            for k in self.configs(model):
                xs = [self.median(model, k, c, "p99_us") / 1000 for c in levels]
                ys = [self.median(model, k, c, "infer_per_s") for c in levels]
                ax.plot(xs, ys, "o-", label=f"max_queue_delay {k[1:]} us"
                        if k.startswith("d") else k)
                for c, x, y in zip(levels, xs, ys):
                    ax.annotate(str(c), (x, y), textcoords="offset points", xytext=(3, 3),
                                fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("p99 latency, ms (labels: concurrent clients)")
            ax.set_ylabel("infer/s")
            ax.set_title(model)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("perf_analyzer concurrency sweep (server on 1 core, 1 intra-op thread)")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "perf_analyzer.json").write_text(
            json.dumps([asdict(w) for w in self.measurements], indent=1))
        (out / "perf_analyzer.md").write_text(self.table())
        self.plot(out / "perf_analyzer.png")


def bundled_delay(model_dir: Path) -> int:
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    return int(config.get("dynamic_batching", {}).get("max_queue_delay_us", 500))


def run(repo: Path, models: list[str], delays: list[str], levels: list[int], rounds: int,
        window_ms: dict[str, int], stability: int, compare_with: Path | None = None,
        cores: tuple[list[str], list[str]] | None = None, log=print) -> Summary:
    """Start pinned servers over delay variants of `models`, sweep, stop them. `delays` holds
    integers (microseconds) or "default" (the model's bundled delay); `cores` is
    harness.cores() read before this process pinned itself."""
    pa = binary()
    server_pin, client_cores = cores or harness.cores()
    client_pin = ["taskset", "-c", ",".join(map(str, client_cores))] if server_pin else []
    checkouts = [ROOT] + ([compare_with.resolve()] if compare_with else [])
    variants = [Variant(m, d, checkout) for m in models
                for d in dict.fromkeys(bundled_delay(repo / m) if d == "default" else int(d)
                                       for d in delays)
                for checkout in checkouts]
    shapes = {m: shape_args(repo / m) for m in models}
    addresses = {}
    with ExitStack() as stack:
        served = variant_repo(Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="perf-repo-"))), repo,
            [v for v in variants if v.checkout == ROOT])
        for checkout in checkouts:
            # `python -m service` imports the package of the folder it starts in.
            server = harness.start_server(
                served, *[a for v in variants if v.checkout == ROOT
                          for a in ("--model", v.served_name)],
                pin=["env", "--chdir", str(checkout), *server_pin])
            stack.callback(server.terminate)
            addresses.update({v: server.grpc_address for v in variants
                              if v.checkout == checkout})
        measurements = sweep(pa, addresses, levels, rounds, window_ms, stability, shapes,
                             client_pin, log)
    return Summary(measurements)


def parse_windows(text: str, models: list[str]) -> dict[str, int]:
    """'1000' (every model) or 'fashion_cnn=1000,espcn_x3=3000' (models not named: 1000)."""
    windows = dict.fromkeys(models, 1000)
    for part in text.split(","):
        name, _, value = part.rpartition("=")
        if name and name not in windows:
            raise ValueError(f"{name} is not one of --models")
        for model in [name] if name else models:
            windows[model] = int(value)
    return windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--models", default="fashion_cnn,espcn_x3")
    parser.add_argument("--delays", default="0,default",
                        help="max_queue_delay_us values, the first the reference; 'default': "
                             "the bundled config's")
    parser.add_argument("--concurrency", default=",".join(map(str, LEVELS)))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-ms", default="1000",
                        help="perf_analyzer's -p: MS for every model, or MODEL=MS,... "
                             "(super-resolution, 35 ms an image here, needs about 3000)")
    parser.add_argument("--stability", type=int, default=50,
                        help="perf_analyzer's -s: p99 and throughput within this %% over 3 "
                             "windows (a shared host rarely holds 10)")
    parser.add_argument("--compare-with", type=Path, metavar="CHECKOUT",
                        help="also serve every variant from this checkout's code")
    parser.add_argument("--out", type=Path,
                        help="write perf_analyzer.{json,md,png} into this folder")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    for model in models:
        if not (args.repository / model / "config.yaml").is_file():
            parser.error(f"--models: no {model}/config.yaml under {args.repository}")
    if args.compare_with and not (args.compare_with / "service/__main__.py").is_file():
        parser.error(f"--compare-with: {args.compare_with} holds no service/__main__.py")
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
        delays = [d if d == "default" else str(int(d)) for d in args.delays.split(",")]
        windows = parse_windows(args.window_ms, models)
    except ValueError as exc:
        parser.error(f"--concurrency/--delays/--window-ms: {exc}")
    try:
        summary = run(args.repository, models, delays, levels, args.rounds, windows,
                      args.stability, args.compare_with,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(summary.table())
    for name, (ratio, where) in (("step ratio", summary.lowest_step_ratio()),
                                 ("ratio to the first configuration",
                                  summary.lowest_config_ratio())):
        print(f"lowest {name}: {ratio:.2f} ({where})")
    if args.out:
        summary.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
