"""`make gpu-check`: the CUDA path on a GPU machine, or its rehearsal on the CPU provider.

    DEVICE=cuda bash deploy/gpu/gpu_check.sh    # on the lent GPU machine (installs onnxruntime-gpu)
    .venv/bin/python -m loadtest.gpu_check --device cpu --out /tmp/gpu-check [--fast]

1. Tests (pytest, every server on `--device`): every bundled model through both APIs against
   ONNX Runtime's CPU provider in this process, provider in metadata and metrics, the warm-up
   plan, batching, reload under traffic, tiling; a second pass with CUDA graphs on.
2. Bench, each served figure beside ONNX Runtime in-process on the same device (the limit: the
   server's own runtime, OnnxModel, run in a loop on one thread):
   - fashion_cnn fp32 and fp16: items/s, 1 client x 1, 64, 256 items and 32 clients x 1 item;
   - time per instance at batch 1, 10, 100 (Guo, Li and Iorio measured 14.5, 7.7, 6.9 ms);
   - espcn x3 and x4, fp32 and fp16, CUDA graphs off and on: a 1920x1080 image through
     SuperResolveStream (tiled), images/s and ms per input megapixel;
   - the first request of each new shape (SR image sizes, CNN batch sizes) with cuDNN's
     HEURISTIC and EXHAUSTIVE algorithm search, against a repeat of the same shape.
On the CPU provider every CUDA option is ignored (graphs on equals off) and the fp16 variants run
on the CPU provider (their instance_kind gpu is lifted for the rehearsal): the figures rehearse
the script, they measure nothing about CUDA.

Writes to --out (at most 8 files come back from a device call): figures.json (every figure),
report.md (the tables), log.txt (test output and failures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import numpy as np
import yaml

from loadtest import harness
from service import launcher
from loadtest.payloads import (
    MODEL_INFER, SR_PHOTO, infer_request_bytes, make_inputs, signature_from_config,
)

ROOT = launcher.ROOT
MODELS = ROOT / "models"
TESTS = [
    "tests/test_bundled_models.py",
    "tests/service/test_scheduling.py::test_concurrent_requests_are_batched_and_exact",
    "tests/service/test_lifecycle.py::test_reload_and_unload_under_traffic_fail_nothing",
    "tests/reliability/test_restart.py::test_new_version_loaded_under_load_fails_nothing",
    "tests/service/test_task_api.py::test_tiled_super_resolution_equals_untiled",
    "tests/service/test_task_api.py::test_tile_runs_are_the_batches_an_upscale_executes",
]
GRAPH_TESTS = TESTS[:1] + TESTS[4:]
# --fast (make test's rehearsal): the same plumbing over a few bundled models.
FAST_TESTS = [TESTS[0], "-k", "fashion_cnn or espcn_x2 or metadata_and_metrics or warm_up_ran"]
EXHAUSTIVE = {"cuda": {"cudnn_conv_algo_search": "EXHAUSTIVE"}}
GRAPHS = {"cuda": {"enable_cuda_graph": True}}
# Bench variants: name in the bench repository -> (bundled model, config changes).
CNN = {"cnn_fp32": ("fashion_cnn", {}), "cnn_fp16": ("fashion_cnn_fp16", {})}
SR = {f"sr_x{s}_{p}{g}": (f"espcn_x{s}{'_fp16' if p == 'fp16' else ''}", GRAPHS if g else {})
      for s in (3, 4) for p in ("fp32", "fp16") for g in ("", "_graphs")}
STALL = {"cnn_fp32": "cnn_fp32_exhaustive", "sr_x3_fp32": "sr_x3_fp32_exhaustive"}
VARIANTS = {**CNN, **SR, "cnn_fp32_exhaustive": ("fashion_cnn", EXHAUSTIVE),
            "sr_x3_fp32_exhaustive": ("espcn_x3", EXHAUSTIVE)}
CNN_LOADS = [(1, 1), (1, 64), (1, 256), (32, 1)]  # (clients, items per request)
GUO_BATCHES = (1, 10, 100)
GUO_MS = {1: 14.5, 10: 7.7, 100: 6.9}


def log_to(path: Path):
    def log(text: str) -> None:
        print(text, flush=True)
        with path.open("a") as handle:
            handle.write(text + "\n")
    return log


# -- 1. tests ------------------------------------------------------------------------------------


def run_tests(device: str, tests: list[str], env_extra: dict, name: str, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-check-tests-") as tmp:
        junit = Path(tmp) / "junit.xml"
        env = {**os.environ, "ONNXSERVE_DEVICE": device, "GPU_CHECK_OUT": tmp,
               "GPU_CHECK_PASS": name, **env_extra}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider",
             f"--junitxml={junit}"], cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        log(f"== tests, pass '{name}' ({seconds:.0f} s, exit {done.returncode})")
        log(done.stdout[-20000:] + done.stderr[-5000:])
        result = {"exit_code": done.returncode, "seconds": round(seconds, 1),
                  "env": env_extra, "tests": tests}
        if junit.exists():
            suite = ET.parse(junit).getroot().find("testsuite")
            result.update({key: int(suite.get(key, 0))
                           for key in ("tests", "failures", "errors", "skipped")})
        for path in sorted(Path(tmp).glob(f"*-{name}.json")):
            result[path.stem.removesuffix(f"-{name}")] = json.loads(path.read_text())
    return result


# -- 2. bench ------------------------------------------------------------------------------------


def bench_repository(target: Path, device: str) -> Path:
    """The variants, each a config over a bundled model's version folder (a symlink)."""
    for name, (source, changes) in VARIANTS.items():
        config = yaml.safe_load((MODELS / source / "config.yaml").read_text())
        config.update(changes, name=name)
        if device == "cpu":
            config["instance_kind"] = "auto"  # rehearse the fp16 steps on the CPU provider
        (target / name).mkdir(parents=True)
        (target / name / "1").symlink_to((MODELS / source / "1").resolve())
        (target / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def in_process_model(repo: Path, name: str, device: str):
    """The server's runtime for one bench variant, warmed up on this thread, as a server would."""
    from service.core.config import CudaOptions, load_model_config
    from service.core.runtime import OnnxModel, RuntimeOptions, choose_provider
    from service.settings import ServerSettings

    config = load_model_config(repo / name / "config.yaml")
    options = RuntimeOptions(intra_op_threads=1 if device == "cpu" else 0,
                             cuda=CudaOptions.from_settings(ServerSettings()))
    model = OnnxModel(repo / name / "1" / config.model_filename, config,
                      choose_provider(device), options)
    model.warm_up(0)
    return model, config


def timed_loop(run, seconds: float, min_runs: int = 3) -> list[float]:
    """Seconds per call of `run`, for `seconds` and at least `min_runs` calls."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float], items: int = 1) -> dict:
    ordered = sorted(times)
    return {"runs": len(times), "items_per_s": items * len(times) / sum(times),
            "p50_ms": statistics.median(times) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
            "max_ms": ordered[-1] * 1000}


def guarded(log, label: str, measure, *args) -> dict:
    """measure(*args), or the error it raised: one failing variant must not cost the rest of a
    run that a GPU machine gives once."""
    try:
        return measure(*args)
    except Exception as exc:  # noqa: BLE001 - recorded in the figures and the log
        log(f"{label}: FAILED {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def bench_cnn(server, repo: Path, device: str, seconds: float, pairs: int, log) -> dict:
    return {name: guarded(log, name, cnn_variant, server, repo, name, device, seconds, pairs, log)
            for name in CNN}


def cnn_variant(server, repo: Path, name: str, device: str, seconds: float, pairs: int,
                log) -> dict:
    """Each load served and in-process in alternating windows (`pairs` of each, `seconds` in
    all per side): medians of both and of their pairwise ratios."""
    window = seconds / pairs
    signature = signature_from_config(repo / name)
    model, _ = in_process_model(repo, name, device)
    rows = {}
    for clients, batch in sorted(set(CNN_LOADS) | {(1, b) for b in GUO_BATCHES}):
        inputs, _ = make_inputs(signature, batch, "generated", seed=batch)
        body = infer_request_bytes(name, inputs, signature)
        # The in-process limit of many one-item clients: one batch of that many items.
        limit_inputs = inputs if clients == 1 else make_inputs(
            signature, clients * batch, "generated", seed=batch)[0]
        model.run(0, limit_inputs)
        served, limit = [], []
        for i in range(pairs):
            served.append(harness.closed_loop(server.grpc_address, body, clients, batch, window,
                                              0.5 if i == 0 else 0.1, server=server))
            limit.append(summary(timed_loop(lambda: model.run(0, limit_inputs), window),
                                 clients * batch))
        latencies = [t for r in served for t in r.latencies]
        limit_p50 = statistics.median(l["p50_ms"] for l in limit)
        rows[f"{clients}x{batch}"] = {
            "served_items_per_s": statistics.median(r.items_per_s for r in served),
            "in_process_items_per_s": statistics.median(l["items_per_s"] for l in limit),
            "ratio": statistics.median(r.items_per_s / l["items_per_s"]
                                       for r, l in zip(served, limit)),
            "served_p50_ms": summary(latencies)["p50_ms"] if latencies else float("nan"),
            "served_p99_ms": summary(latencies)["p99_ms"] if latencies else float("nan"),
            "in_process_p50_ms": limit_p50,
            "mean_executed_batch": statistics.median(r.mean_batch(name) for r in served),
            "errors": sum(r.errors for r in served), "windows": pairs,
        }
        row = rows[f"{clients}x{batch}"]
        log(f"{name} {clients}x{batch}: served {row['served_items_per_s']:.0f} items/s, "
            f"in-process {row['in_process_items_per_s']:.0f} items/s, ratio "
            f"{row['ratio']:.2f}")
    return {
        "loads": rows,
        "time_per_instance_ms": {
            str(b): {"served": rows[f"1x{b}"]["served_p50_ms"] / b,
                     "in_process": rows[f"1x{b}"]["in_process_p50_ms"] / b,
                     "guo_li_iorio": GUO_MS[b]} for b in GUO_BATCHES},
        "provider": model.provider,
    }


def sr_image(width: int, height: int) -> np.ndarray:
    """The Set5 photo scaled to width x height (random pixels without it): content does not
    change the speed, but a real photo keeps the run honest."""
    from PIL import Image

    if SR_PHOTO.is_file():
        with Image.open(SR_PHOTO) as photo:
            return np.asarray(photo.convert("RGB").resize((width, height), Image.BICUBIC))
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def bench_sr(server, repo: Path, device: str, size: tuple[int, int], images: int,
             log) -> dict:
    """Per model and precision, CUDA graphs off and on, served and in-process, one image each
    in turn, `images` rounds: medians, and pairwise ratios served/in-process and on/off."""
    from service.client import TaskClient
    from service.settings import ServerSettings
    from service.tasks.tiling import tile_windows

    width, height = size
    settings = ServerSettings()
    image = {"picture": sr_image(width, height), "label": f"{width}x{height}",
             "megapixels": width * height / 1e6,
             "rows": tile_windows(height, settings.sr_tile_size, settings.sr_tile_overlap),
             "cols": tile_windows(width, settings.sr_tile_size, settings.sr_tile_overlap)}
    figures = {}
    with TaskClient(server.grpc_address, timeout=600) as client:
        for off in (name for name in SR if not name.endswith("_graphs")):
            names = (off, off + "_graphs")
            pair = guarded(log, off, sr_pair, client, repo, device, names, image, images)
            figures.update(pair if "error" not in pair else dict.fromkeys(names, pair))
    for name, f in figures.items():
        if "error" not in f:
            log(f"{name}: served {f['served_images_per_s']:.2f} images/s, in-process "
                f"{f['in_process_images_per_s']:.2f} images/s, ratio {f['ratio']:.2f} "
                f"({f['model_runs_per_image']} runs, {f['cuda_graphs']} graphs)")
    return figures


def sr_pair(client, repo: Path, device: str, names: tuple[str, str], image: dict,
            images: int) -> dict:
    rows, cols = image["rows"], image["cols"]
    steps = {}
    for name in names:
        model, config = in_process_model(repo, name, device)
        step, rng = config.max_batch_size, np.random.default_rng(0)
        # The tiler's runs for one image: each row of windows in requests of at most `step`.
        runs = [{config.inputs[0].name: rng.random(
                    (min(step, len(cols) - start), 1, row.length, cols[0].length),
                    dtype=np.float32)}
                for row in rows for start in range(0, len(cols), step)]
        steps[name] = {
            "served": lambda name=name: client.upscale(image["picture"], name),
            "in_process": lambda model=model, runs=runs: [model.run(0, r) for r in runs],
            "runs": len(runs), "graphs": model.cuda_graphs,
        }
        for side in ("served", "in_process"):
            steps[name][side]()  # first use outside the timing
    times = {(name, side): [] for name in names for side in ("served", "in_process")}
    for _ in range(images):
        for (name, side), seen in times.items():
            seen += timed_loop(steps[name][side], 0, min_runs=1)
    figures = {}
    for name in names:
        served, limit = times[name, "served"], times[name, "in_process"]
        figures[name] = {
            "image": image["label"], "tiles": len(rows) * len(cols),
            "model_runs_per_image": steps[name]["runs"],
            "cuda_graphs": steps[name]["graphs"], "images": images,
            "served_images_per_s": 1 / statistics.median(served),
            "served_ms_per_megapixel": statistics.median(served) * 1000 / image["megapixels"],
            "in_process_images_per_s": 1 / statistics.median(limit),
            "in_process_ms_per_megapixel":
                statistics.median(limit) * 1000 / image["megapixels"],
            "ratio": statistics.median(l / s for s, l in zip(served, limit)),
        }
    off, on = names
    for side in ("served", "in_process"):
        figures[on][f"graphs_speedup_{side}"] = statistics.median(
            a / b for a, b in zip(times[off, side], times[on, side]))
    return figures


async def _latencies(address: str, bodies: list[bytes]) -> list[float]:
    """Each request's latency, one at a time, in order."""
    options = [("grpc.max_receive_message_length", 256 << 20),
               ("grpc.max_send_message_length", 256 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(MODEL_INFER)
        await channel.channel_ready()
        latencies = []
        for body in bodies:
            t0 = time.perf_counter()
            await call(body, timeout=600)
            latencies.append(time.perf_counter() - t0)
    return latencies


def bench_new_shapes(server, repo: Path, shapes: int, log) -> dict:
    figures = {}
    for heuristic, exhaustive in STALL.items():
        pair = guarded(log, heuristic, shapes_pair, server, repo, (heuristic, exhaustive),
                       shapes)
        figures.update(pair if "error" not in pair else dict.fromkeys((heuristic, exhaustive),
                                                                      pair))
    for name, f in figures.items():
        if "error" not in f:
            log(f"{name}: first request of a new shape p50 {f['first']['p50_ms']:.2f} ms, "
                f"p99 {f['first']['p99_ms']:.2f} ms; repeat p50 {f['repeat']['p50_ms']:.2f} ms")
    return figures


def shapes_pair(server, repo: Path, names: tuple[str, str], shapes: int) -> dict:
    """Latency of the first request of each never-seen shape, then of a repeat of it, for the
    HEURISTIC (server default) and EXHAUSTIVE variant of a model, taking turns."""
    signature = signature_from_config(repo / names[0])
    rng = np.random.default_rng(0)
    order, bodies = [], []
    for i in range(shapes):
        if names[0].startswith("sr"):
            # Images smaller than a tile window: one run each, of a shape warm-up never ran.
            shape = (1, 1, 60 + 7 * i, 64 + 5 * i)
            inputs = {signature.inputs[0].name: rng.random(shape, dtype=np.float32)}
        else:
            batch = 2 + i + (i >= 14)  # new batch sizes from 2, skipping the warmed 16
            inputs, _ = make_inputs(signature, batch, "generated", seed=i)
        for name in names:
            body = infer_request_bytes(name, inputs, signature)
            order.append(name)
            bodies += [body, body]  # the first of a new shape, then a repeat of it
    latencies = asyncio.run(_latencies(server.grpc_address, bodies))
    figures = {}
    for name in names:
        mine = [k for k, n in enumerate(order) if n == name]
        figures[name] = {"shapes": shapes,
                         "first": summary([latencies[2 * k] for k in mine]),
                         "repeat": summary([latencies[2 * k + 1] for k in mine])}
    return figures


def run_bench(device: str, seconds: float, pairs: int, size: tuple[int, int], sr_images: int,
              shapes: int, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-check-bench-") as tmp:
        repo = bench_repository(Path(tmp), device)
        server = launcher.start_server(
            repo, "--device", device, "--intra-op-threads", "1" if device == "cpu" else "0",
            timeout=600)
        try:
            started = time.monotonic()
            bench = {"cnn": bench_cnn(server, repo, device, seconds, pairs, log),
                     "sr": bench_sr(server, repo, device, size, sr_images, log),
                     "new_shapes": bench_new_shapes(server, repo, shapes, log)}
            bench["seconds"] = round(time.monotonic() - started, 1)
        finally:
            code = server.terminate()
            errors = [m.get("message", "") for m in server.log_lines if m.get("level") == "ERROR"]
            if errors or code:
                log(f"bench server exit {code}; errors: {errors[:20]}")
    return bench


# -- report --------------------------------------------------------------------------------------


def report(figures: dict) -> str:
    env = figures["environment"]
    lines = [f"# gpu-check on {env['device']} ({env['gpu']})", "",
             f"`{figures['command']}`, {env['onnxruntime']}, took {figures['seconds']:.0f} s.", ""]
    lines += ["## Tests", "", "| pass | tests | failures | errors | skipped | seconds |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, t in figures["tests"].items():
        lines.append(f"| {name} | {t.get('tests', '?')} | {t.get('failures', '?')} | "
                     f"{t.get('errors', '?')} | {t.get('skipped', '?')} | {t['seconds']} |")
    for name, t in figures["tests"].items():
        parity = t.get("parity", {})
        if parity:
            lines += ["", f"Max abs diff against the CPU provider, pass {name}:", "",
                      "| model | outputs | tolerance |", "|---|---|---:|"]
            for model, p in parity.items():
                diffs = ", ".join(f"{k} {v:.2e}" for k, v in p["max_abs_diff"].items())
                lines.append(f"| {model} | {diffs} | {p['tolerance']} |")
    if "bench" not in figures:
        return "\n".join(lines) + "\n"
    bench = figures["bench"]
    if "error" in bench:
        return "\n".join(lines + ["", f"Bench FAILED: {bench['error']}"]) + "\n"
    lines += ["", "## fashion_cnn, items/s", "",
              "| model | clients x items | served | in-process | ratio | p50 ms | p99 ms | "
              "mean batch |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for model, f in bench["cnn"].items():
        if "error" in f:
            lines.append(f"| {model} | FAILED: {f['error']} |")
            continue
        for load, r in f["loads"].items():
            lines.append(f"| {model} | {load} | {r['served_items_per_s']:.0f} | "
                         f"{r['in_process_items_per_s']:.0f} | {r['ratio']:.2f} | "
                         f"{r['served_p50_ms']:.3f} | {r['served_p99_ms']:.3f} | "
                         f"{r['mean_executed_batch']:.1f} |")
    lines += ["", "## Time per instance, ms (Guo, Li and Iorio's table)", "",
              "| batch | Guo, Li, Iorio | " + " | ".join(
                  f"{m} served | {m} in-process" for m in bench["cnn"]) + " |",
              "|---:|---:|" + "---:|" * (2 * len(bench["cnn"]))]
    for batch in map(str, GUO_BATCHES):
        cells = [f"{f['time_per_instance_ms'][batch]['served']:.4f} | "
                 f"{f['time_per_instance_ms'][batch]['in_process']:.4f}"
                 if "error" not in f else "failed | failed" for f in bench["cnn"].values()]
        lines.append(f"| {batch} | {GUO_MS[int(batch)]} | " + " | ".join(cells) + " |")
    lines += ["", "## Super-resolution, SuperResolveStream (tiled)", "",
              "| model | image | graphs | served images/s | served ms/MP | in-process images/s | "
              "in-process ms/MP | ratio | graphs speedup served / in-process |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for model, f in bench["sr"].items():
        if "error" in f:
            lines.append(f"| {model} | FAILED: {f['error']} |")
            continue
        speedup = (f"{f['graphs_speedup_served']:.2f} / {f['graphs_speedup_in_process']:.2f}"
                   if "graphs_speedup_served" in f else "")
        lines.append(f"| {model} | {f['image']} | {f['cuda_graphs']} | "
                     f"{f['served_images_per_s']:.2f} | {f['served_ms_per_megapixel']:.1f} | "
                     f"{f['in_process_images_per_s']:.2f} | "
                     f"{f['in_process_ms_per_megapixel']:.1f} | {f['ratio']:.2f} | {speedup} |")
    lines += ["", "Ratios are medians of pairwise ratios of alternating windows (served / "
              "in-process; graphs off / on time per image)."]
    lines += ["", "## First request of a new shape", "",
              "| model | shapes | first p50 ms | first p99 ms | first max ms | repeat p50 ms | "
              "repeat p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for model, f in bench["new_shapes"].items():
        if "error" in f:
            lines.append(f"| {model} | FAILED: {f['error']} |")
            continue
        lines.append(f"| {model} | {f['shapes']} | {f['first']['p50_ms']:.2f} | "
                     f"{f['first']['p99_ms']:.2f} | {f['first']['max_ms']:.2f} | "
                     f"{f['repeat']['p50_ms']:.2f} | {f['repeat']['p99_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def environment(device: str) -> dict:
    import onnxruntime as ort

    gpu = "no GPU"
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30).stdout.strip() or gpu
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"device": device, "gpu": gpu, "python": platform.python_version(),
            "onnxruntime": f"onnxruntime {ort.__version__}, "
                           f"providers {ort.get_available_providers()}",
            "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fast", action="store_true",
                        help="a quick rehearsal: the bundled-model tests and a short bench")
    parser.add_argument("--seconds", type=float, default=None, help="per bench step")
    parser.add_argument("--sr-size", default=None, help="WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--sr-images", type=int, default=None)
    parser.add_argument("--shapes", type=int, default=None, help="new shapes per model")
    parser.add_argument("--no-bench", action="store_true")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.fast else 2.0)
    pairs = 1 if args.fast else 3
    width, height = map(int, (args.sr_size or ("256x144" if args.fast else "1920x1080"))
                        .split("x"))
    sr_images = args.sr_images or (1 if args.fast else 5)
    shapes = args.shapes or (3 if args.fast else 24)
    args.out.mkdir(parents=True, exist_ok=True)
    log = log_to(args.out / "log.txt")
    started = time.monotonic()
    figures: dict = {"command": " ".join(["python -m loadtest.gpu_check", *(argv or sys.argv[1:])]),
                     "environment": environment(args.device), "tests": {}}
    log(json.dumps(figures["environment"]))
    passes = [("graphs-off", {}, FAST_TESTS if args.fast else TESTS)]
    if not args.fast:
        passes.append(("graphs-on", {"ONNXSERVE_CUDA_ENABLE_CUDA_GRAPH": "true"}, GRAPH_TESTS))
    for name, env_extra, tests in passes:
        figures["tests"][name] = run_tests(args.device, tests, env_extra, name, log)
    if not args.no_bench:
        figures["bench"] = guarded(log, "bench", run_bench, args.device, seconds, pairs,
                                   (width, height), sr_images, shapes, log)
    figures["seconds"] = round(time.monotonic() - started, 1)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    (args.out / "report.md").write_text(report(figures))
    failed = [f"tests {n}" for n, t in figures["tests"].items() if t["exit_code"] != 0]
    bench = figures.get("bench", {})
    failed += ["bench"] if "error" in bench else [
        f"bench {part} {name}" for part, results in bench.items() if isinstance(results, dict)
        for name, f in results.items() if "error" in f]
    log(f"gpu-check {'FAILED: ' + ', '.join(failed) if failed else 'passed'} in "
        f"{figures['seconds']:.0f} s; figures in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
