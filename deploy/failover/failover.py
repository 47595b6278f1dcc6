"""Multi-replica failover on one machine: three real servers, two front doors, three events.

    .venv/bin/python deploy/failover/failover.py            # a longer run over models/fashion_mlp
    .venv/bin/python deploy/failover/failover.py --rounds 4 --window 400   # the README's table
    .venv/bin/python deploy/failover/failover.py --help

Three `python -m service serve` processes on loopback ports share one model repository (a copy,
since the run publishes a new version into it). A steady, bounded load reaches them through
  client  one gRPC channel over all three addresses: round_robin, client-side health checks and
          the retry policy of CLIENT_SERVICE_CONFIG (what a client of the headless Service does);
  proxy   nginx (`grpc_pass` to the three, passive health checks) reached by a channel with
          retries off, so what the proxy alone does is what gets counted;
and, as a control, noretry: the client channel without its retry policy.
While the load runs: one replica gets SIGTERM and is restarted (a rolling update), one gets
SIGKILL and is restarted (a crash), and the model is reloaded to a new version on every replica.
The report gives each front door's requests, errors and p50/p99 per event against steady state,
the errors seen by code and message, and whether every restarted replica took traffic again
through each front door.

The module is also the library behind tests/k8s/test_k8s_failover.py (the short form). It never
imports the service's own generated protobuf modules: it speaks to the servers through
tritonclient's stubs, like any client.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.launcher import ROOT, ServerProcess, metric_total, start_server, wait_for

KSERVE_SERVICE = "inference.GRPCInferenceService"

# The retry policy to copy (deploy/k8s/README.md explains each field). Inference is idempotent,
# so a call that met a draining replica (UNAVAILABLE, "server is shutting down"), a dead
# connection (UNAVAILABLE) or a stream the server cancelled as it shut down (CANCELLED; a call
# the client itself cancels is never retried) is sent again, to another replica since
# round_robin moves on, with jittered exponential backoff, at most 5 attempts in all, and never
# past the call's deadline.
# healthCheckConfig makes the channel watch grpc.health.v1 on every replica and stop picking one
# the moment it reports NOT_SERVING (first thing the server does on SIGTERM).
CLIENT_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{"service": KSERVE_SERVICE}],
        "timeout": "10s",
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
        },
    }],
}

# Channel arguments that go with it: retries on (the default, stated), and reconnection to a
# restarted replica within a second rather than gRPC's default backoff of up to two minutes.
CLIENT_CHANNEL_OPTIONS = [
    ("grpc.service_config", json.dumps(CLIENT_SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def client_channel(addresses: list[str]) -> grpc.Channel:
    """The client-side front door: one channel balancing per call over every address. On
    Kubernetes the target is `dns:///<name>-headless.<namespace>.svc.cluster.local:8001`."""
    return grpc.insecure_channel("ipv4:" + ",".join(addresses), options=CLIENT_CHANNEL_OPTIONS)


# --- replicas -------------------------------------------------------------------------------

Launcher = Callable[[int], ServerProcess]  # grpc_port -> a started, ready replica on that port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def inflight(replica: ServerProcess) -> float:
    """Inference calls queued or computing in this process now."""
    return metric_total(replica.metrics_text(), "inference_inflight_requests")


def served_ok(replica: ServerProcess) -> float:
    """ModelInfer calls this process answered OK (its counters start at 0 on every start)."""
    return metric_total(replica.metrics_text(), "inference_requests_total", rpc="ModelInfer",
                        code="OK")


def health_status(address: str, service: str = "", timeout: float = 2) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as exc:
            return exc.code().name


# --- nginx ----------------------------------------------------------------------------------

NGINX_CONF = """\
# One process, no daemon: the harness owns it. Temp paths live in the run's own directory.
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$msec $status $upstream_addr $upstream_status $request_time';
    access_log {dir}/access.log upstream;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream replicas {{
        # Passive health checks: one failed connection or request (the cases
        # grpc_next_upstream lists) takes a replica out for fail_timeout; then it is tried again.
{servers}
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        # nginx closes a client connection after 1000 requests by default (GOAWAY), and a call
        # racing that GOAWAY fails: an error of the proxy's own, not of any replica event.
        keepalive_requests 1000000;
        location / {{
            grpc_pass grpc://replicas;
            grpc_connect_timeout 1s;
            grpc_read_timeout 30s;
            # A refused connection goes to the next replica. non_idempotent allows resending a
            # POST (inference is idempotent), but nginx streams gRPC request bodies without
            # keeping them, so a call cut after it was passed on still fails (502). A gRPC status
            # such as UNAVAILABLE travels in the trailers of an HTTP 200: nginx cannot judge it.
            grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            grpc_next_upstream_tries 3;
            grpc_next_upstream_timeout 10s;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, upstream_ports: list[int], work_dir: Path, fail_timeout_s: int = 2):
        self.port = free_port()
        self.dir = work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout={fail_timeout_s}s;"
            for port in upstream_ports)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(dir=self.dir, servers=servers, port=self.port))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError("nginx not found (Debian's nginx package: make apt-deps)")
        self.process = subprocess.Popen(
            [binary, "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.process.poll() is not None or health_status(self.address) == "SERVING",
             30, "nginx to proxy a health check")
        if self.process.poll() is not None:
            raise RuntimeError(f"nginx exited: {(self.dir / 'error.log').read_text()[-2000:]}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""

    def retried(self) -> int:
        """Requests that nginx passed to more than one replica ($upstream_addr lists each)."""
        path = self.dir / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return sum(1 for line in lines if "," in line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- load -----------------------------------------------------------------------------------

@dataclass
class Outcome:
    door: str
    phase: str
    latency_s: float
    code: str            # "OK" or the gRPC status name
    detail: str = ""
    version: str = ""
    start: float = 0.0


def infer_request(channel: grpc.Channel, model: str,
                  fill: dict[str, float] | None = None) -> service_pb2.ModelInferRequest:
    """A batch-of-one request shaped from the model's metadata: zeros, or `fill[name]`."""
    metadata = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
        service_pb2.ModelMetadataRequest(name=model), timeout=10)
    request = service_pb2.ModelInferRequest(model_name=model)
    for tensor in metadata.inputs:
        shape = [1 if dim < 0 else dim for dim in tensor.shape]
        dtype = triton.triton_to_np_dtype(tensor.datatype)
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        value = (fill or {}).get(tensor.name, 0)
        request.raw_input_contents.append(np.full(shape, value, dtype).tobytes())
    return request


class Load:
    """`workers` threads calling ModelInfer through one channel at `rate` calls/s in all,
    each call labelled with the phase current when it started (or ended, for one that started
    in steady state and ended in an event). Bounded: at most
    `max_requests` calls and `max_seconds` of running, whichever comes first."""

    def __init__(self, door: str, channel: grpc.Channel, request, phase: Callable[[], str],
                 rate: float, workers: int, max_requests: int, max_seconds: float,
                 timeout_s: float = 10):
        self.door, self.outcomes = door, []
        self._channel, self._request, self._phase = channel, request, phase
        self._interval = workers / rate
        self._budget = max_requests
        self._timeout = timeout_s
        self._until = time.monotonic() + max_seconds
        self._stop, self.resume = threading.Event(), threading.Event()
        self.resume.set()
        self._lock = threading.Lock()
        self.active = 0  # calls under way now
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.resume.set()
        for thread in self._threads:
            thread.join(self._timeout + 5)

    def pause(self) -> None:
        with self._lock:
            self.resume.clear()

    def count(self, phase: str | None = None, since: float = 0.0) -> int:
        return sum(1 for o in list(self.outcomes) if (phase is None or o.phase == phase)
                   and o.start >= since)

    def _run(self) -> None:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < self._until:
            self.resume.wait(max(0.0, self._until - time.monotonic()))
            with self._lock:  # pause() takes the lock: once it returns, no new call starts
                if self._stop.is_set() or not self.resume.is_set():
                    continue
                if self._budget <= 0:
                    break
                self._budget -= 1
                self.active += 1
            phase, start = self._phase(), time.monotonic()
            try:
                reply = stub.ModelInfer(self._request, timeout=self._timeout)
                outcome = Outcome(self.door, phase, time.monotonic() - start, "OK",
                                  version=reply.model_version, start=start)
            except grpc.RpcError as exc:
                outcome = Outcome(self.door, phase, time.monotonic() - start, exc.code().name,
                                  exc.details() or "", start=start)
            with self._lock:
                self.active -= 1
            ended_in = self._phase()
            if outcome.phase == "steady" and ended_in in EVENTS:
                outcome.phase = ended_in  # a crash cuts calls that started before the signal
            self.outcomes.append(outcome)
            # Pace, not synchronise: the next call is due one interval after the last was due.
            next_at = max(next_at + self._interval, time.monotonic() - self._interval)
            self._stop.wait(max(0.0, next_at - time.monotonic()))


# --- the scenario ---------------------------------------------------------------------------

# client: the channel to copy; proxy: nginx; noretry: the same channel without its retry policy,
# a control that shows what the events cost a client that does not retry.
DOORS = ("client", "proxy", "noretry")
EVENTS = ("sigterm", "sigkill", "reload")
# warmup: the first calls (connections opening); rotation: the closing check, one door at a time.
PHASES = ("warmup", "steady", *EVENTS, "rotation")


@dataclass
class Report:
    outcomes: list[Outcome]
    events: list[tuple[str, str]] = field(default_factory=list)   # (phase, what happened)
    exit_codes: list[tuple[str, int]] = field(default_factory=list)  # (event, victim's exit code)
    back_in_rotation: dict[str, bool] = field(default_factory=dict)  # door -> every replica served
    inflight_at_signal: list[int] = field(default_factory=list)  # victim's calls, per signal
    proxy_retries: int = 0  # requests nginx sent to a second replica (from its access log)
    served_after: dict[str, list[float]] = field(default_factory=dict)
    versions_after_reload: set[str] = field(default_factory=set)
    proxy_log: str = ""

    def failures(self, door: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.door == door and o.code != "OK"]

    def phases(self) -> list[str]:
        seen = {outcome.phase for outcome in self.outcomes}
        return [phase for phase in PHASES if phase in seen]

    def table(self) -> str:
        lines = [f"{'door':<7} {'phase':<9} {'requests':>8} {'errors':>6} {'p50 ms':>8} "
                 f"{'p99 ms':>8} {'max ms':>8} {'p99/steady':>10}"]
        for door in DOORS:
            steady_p99 = None
            for phase in self.phases():
                rows = [o for o in self.outcomes if o.door == door and o.phase == phase]
                if not rows:
                    continue
                ms = np.array([o.latency_s for o in rows]) * 1000
                p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
                steady_p99 = p99 if phase == "steady" else steady_p99
                ratio = f"{p99 / steady_p99:.1f}x" if steady_p99 and phase in EVENTS else ""
                errors = sum(1 for o in rows if o.code != "OK")
                lines.append(f"{door:<7} {phase:<9} {len(rows):>8} {errors:>6} {p50:>8.2f} "
                             f"{p99:>8.2f} {ms.max():>8.2f} {ratio:>10}")
        return "\n".join(lines)

    def error_summary(self) -> str:
        counts = Counter((o.door, o.phase, o.code, o.detail[:90]) for o in self.outcomes
                         if o.code != "OK")
        if not counts:
            return "no errors"
        return "\n".join(f"{n:>5} x {door}/{phase}: {code} {detail!r}"
                         for (door, phase, code, detail), n in counts.most_common())

    def proxy_messages(self) -> Counter:
        """nginx's error log lines without timestamps, ids, ports and request details."""
        messages = Counter()
        for line in self.proxy_log.splitlines():
            match = re.search(r"\[(\w+)\] \d+#\d+: (?:\*\d+ )?([^,]*)", line)
            if match:
                messages[f"[{match.group(1)}] {re.sub(r':[0-9]+', ':PORT', match.group(2))}"] += 1
        return messages

    def render(self) -> str:
        parts = [self.table(), "", "errors:", self.error_summary(), "", "events:"]
        parts += [f"  {phase}: {what}" for phase, what in self.events]
        parts += [f"  calls in flight on the victim when signalled: {self.inflight_at_signal}",
                  f"  proxy requests nginx re-sent to another replica: {self.proxy_retries}"]
        parts += [f"  back in rotation ({door}): {ok}  (ModelInfer OK per replica: "
                  f"{[int(n) for n in self.served_after.get(door, [])]})"
                  for door, ok in self.back_in_rotation.items()]
        parts += ["", "nginx error log (by message):"]
        parts += [f"{n:>5} x {message}" for message, n in self.proxy_messages().most_common(8)]
        return "\n".join(parts)


def publish_next_version(repo: Path, model: str) -> str:
    """Copy the highest version directory to the next number (what a model publisher does)."""
    versions = sorted(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit())
    new = versions[-1] + 1
    staging = repo / model / f".staging-{new}"
    shutil.copytree(repo / model / str(versions[-1]), staging)
    staging.rename(repo / model / str(new))  # appears whole, never half-written
    return str(new)


class Scenario:
    """Three replicas, both front doors, the events; `run()` returns the Report."""

    def __init__(self, repo: Path, model: str, launch: Launcher, work_dir: Path, *,
                 replicas: int = 3, rate: float = 60, workers: int = 4,
                 window_requests: int = 60, max_seconds: float = 50,
                 rounds: int = 1, event_timeout: float = 30,
                 fill: dict[str, float] | None = None, control: bool = True,
                 settle_requests: int | None = None):
        self.fill, self.control = fill, control
        # Steady calls between events (and warm-up calls), per door.
        self.settle = settle_requests or window_requests
        self.repo, self.model, self.launch, self.work_dir = repo, model, launch, work_dir
        self.rate, self.workers, self.window = rate, workers, window_requests
        self.max_seconds, self.rounds, self.event_timeout = max_seconds, rounds, event_timeout
        self.ports = [free_port() for _ in range(replicas)]
        self.replicas: list[ServerProcess] = []
        self._phase = "warmup"
        self.report = Report([])

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def phase(self) -> str:
        return self._phase

    def _window(self, loads: list[Load], phase: str, started: float,
                calls: int | None = None) -> None:
        """The phase lasts until each door has `calls` (default: `window`) that started in it."""
        calls = calls or self.window
        wait_for(lambda: all(load.count(phase, started) >= calls for load in loads),
             self.event_timeout, f"{calls} calls per door in phase {phase}")

    def _restart(self, index: int, sig: signal.Signals, loads: list[Load]) -> None:
        phase = {signal.SIGTERM: "sigterm", signal.SIGKILL: "sigkill"}[sig]
        victim = self.replicas[index]
        self._phase, started = phase, time.monotonic()
        # Strike while the victim holds calls, so the drain or the crash has something to cut.
        try:
            seen = wait_for(lambda: inflight(victim), self.event_timeout / 4,
                        "calls in flight on the victim")
        except TimeoutError:
            seen = 0.0
        victim.process.send_signal(sig)
        self.report.inflight_at_signal.append(int(seen))
        code = victim.process.wait(self.event_timeout + 30)
        self.report.exit_codes.append((phase, code))
        replacement = self.launch(self.ports[index])
        self.replicas[index] = replacement
        wait_for(lambda: health_status(self.addresses[index]) == "SERVING", self.event_timeout,
             f"replica {index} SERVING after restart")
        # Back in rotation: the new process answers calls from the front doors.
        wait_for(lambda: served_ok(replacement) > 0, self.event_timeout,
             f"replica {index} serving traffic after restart")
        took = time.monotonic() - started
        self.report.events.append((phase, f"replica :{self.ports[index]} {sig.name}, exit code "
                                          f"{code}, restarted in {took:.2f} s"))
        self._window(loads, phase, started)
        self._phase = "steady"

    def _reload(self, loads: list[Load]) -> None:
        self._phase, started = "reload", time.monotonic()
        version = publish_next_version(self.repo, self.model)
        for address in self.addresses:
            with triton.InferenceServerClient(address) as admin:
                admin.load_model(self.model)
        loaded = time.monotonic()
        self.report.events.append((
            "reload", f"version {version} published and loaded on {len(self.addresses)} replicas "
                      f"in {loaded - started:.2f} s"))
        self._window(loads, "reload", loaded)
        self.report.versions_after_reload |= {
            o.version for load in loads for o in list(load.outcomes)
            if o.start > loaded and o.code == "OK"}
        self._phase = "steady"

    def _rotation(self, loads: dict[str, Load], doors: tuple[str, ...]) -> None:
        """Each door alone must reach every replica (the restarted ones included)."""
        for door in doors:
            load = loads[door]
            others = [other for name, other in loads.items() if name != door]
            for other in others:
                other.pause()
            load.resume.set()
            # Only this door's calls may count: let the paused doors' last calls land first.
            wait_for(lambda: all(other.active == 0 for other in others), self.event_timeout,
                 "paused doors to finish their calls")
            before = [served_ok(r) for r in self.replicas]
            try:
                wait_for(lambda: all(served_ok(r) >= b + 3 for r, b in zip(self.replicas, before)),
                     self.event_timeout, f"every replica serving {door} calls", interval=0.1)
                self.report.back_in_rotation[door] = True
            except TimeoutError:
                self.report.back_in_rotation[door] = False
            self.report.served_after[door] = [served_ok(r) - b
                                              for r, b in zip(self.replicas, before)]
            for other in others:
                other.resume.set()

    def run(self) -> Report:
        nginx = None
        loads: dict[str, Load] = {}
        try:
            started: dict[int, ServerProcess] = {}  # replicas start in parallel
            starters = [threading.Thread(target=lambda i=i: started.update(
                {i: self.launch(self.ports[i])})) for i in range(len(self.ports))]
            for thread in starters:
                thread.start()
            for thread in starters:
                thread.join()
            self.replicas = [started[i] for i in sorted(started)]
            if len(self.replicas) != len(self.ports):
                raise RuntimeError("a replica did not start")
            nginx = Nginx(self.ports, self.work_dir / "nginx")
            client = client_channel(self.addresses)
            proxy = grpc.insecure_channel(nginx.address, options=[("grpc.enable_retries", 0)])
            request = infer_request(client, self.model, self.fill)
            budget = int(self.rate * self.max_seconds) + 10
            doors = [("client", client), ("proxy", proxy)]
            if self.control:
                options = [o for o in CLIENT_CHANNEL_OPTIONS if o[0] != "grpc.service_config"]
                config = {k: v for k, v in CLIENT_SERVICE_CONFIG.items() if k != "methodConfig"}
                doors.append(("noretry", grpc.insecure_channel(
                    "ipv4:" + ",".join(self.addresses),
                    options=[*options, ("grpc.service_config", json.dumps(config)),
                             ("grpc.enable_retries", 0)])))
            for door, channel in doors:
                loads[door] = Load(door, channel, request, self.phase, self.rate, self.workers,
                                   budget, self.max_seconds).start()
            everyone = list(loads.values())
            self._window(everyone, "warmup", 0, self.settle)
            self._phase = "steady"
            self._window(everyone, "steady", time.monotonic())
            n = len(self.replicas)
            for round_ in range(self.rounds):
                self._restart(round_ % n, signal.SIGTERM, everyone)
                self._window(everyone, "steady", time.monotonic(), self.settle)
                self._restart((round_ + 1) % n, signal.SIGKILL, everyone)
                self._window(everyone, "steady", time.monotonic(), self.settle)
                self._reload(everyone)
                self._window(everyone, "steady", time.monotonic(), self.settle)
            self._phase = "rotation"
            self._rotation(loads, ("client", "proxy"))
        finally:
            for load in loads.values():
                load.stop()
            if nginx is not None:
                nginx.stop()
                self.report.proxy_log = nginx.error_log()
                self.report.proxy_retries = nginx.retried()
            for replica in self.replicas:
                if replica.process.poll() is None:
                    replica.process.send_signal(signal.SIGTERM)
            for replica in self.replicas:
                try:
                    replica.process.wait(30)
                except subprocess.TimeoutExpired:
                    replica.process.kill()
        self.report.outcomes = [o for load in loads.values() for o in load.outcomes]
        return self.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "models",
                        help="model repository to copy (default: the bundled models/)")
    parser.add_argument("--model", default="fashion_mlp")
    parser.add_argument("--rate", type=float, default=100, help="calls/s per front door")
    parser.add_argument("--workers", type=int, default=6, help="threads per front door")
    parser.add_argument("--window", type=int, default=300,
                        help="calls per door in each phase window")
    parser.add_argument("--rounds", type=int, default=2, help="times to repeat the three events")
    parser.add_argument("--max-seconds", type=float, default=240)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        work = Path(tmp)
        repo = work / "models"
        repo.mkdir()
        shutil.copytree(args.models / args.model, repo / args.model)
        logs = work / "logs"
        logs.mkdir()
        scenario = Scenario(
            repo, args.model,
            lambda port: start_server(repo, "--model", args.model, grpc_port=port,
                                      log_path=logs / f"replica-{port}-{time.monotonic_ns()}.log"),
            work, rate=args.rate, workers=args.workers, window_requests=args.window,
            rounds=args.rounds, max_seconds=args.max_seconds, event_timeout=60)
        started = time.monotonic()
        report = scenario.run()
        print(f"{len(scenario.ports)} replicas of {args.model}, {args.rate:g} calls/s per door, "
              f"{args.rounds} round(s) of events, {time.monotonic() - started:.0f} s\n")
        print(report.render())
        return 0 if not report.failures("client") and all(report.back_in_rotation.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
