"""Composition root: builds every part of the server from settings and runs it."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service._proto import task_service_pb2 as task_pb2
from service._proto import task_service_pb2_grpc as task_grpc
from service.core.config import CudaOptions
from service.core.inference import InferenceCore
from service.core.repository import ModelRepository
from service.core.runtime import RuntimeOptions, choose_provider
from service.core.shared_memory import SharedMemoryRegistry
from service.errors import StartupError
from service.auth import ApiKeys
from service.grpc.auth import AuthInterceptor
from service.grpc.interceptor import ServiceInterceptor
from service.grpc.kserve import SERVICE as KSERVE, KServeServicer
from service.grpc.kserve import add_to_server as add_kserve_to_server
from service.grpc.task import TaskServicer
from service.http.demo import DemoRoutes
from service.http.framework import HttpApp, Router
from service.http.openapi import DocsRoutes
from service.http.server import HttpServer, tls_options
from service.http.tasks import TaskRoutes
from service.http.v2 import V2Routes
from service.metrics import Metrics
from service.ports import bind_error, check_port_free
from service.settings import ServerSettings
from service.tasks.core import TaskCore, TaskLimits
from service.tasks.images import ImageLimits

log = logging.getLogger(__name__)

KSERVE_SERVICE = KSERVE.full_name
TASK_SERVICE = task_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name
# SERVING while the process answers, whatever its models: for liveness probes, which must not
# restart a pod that is only not ready. The ':' keeps it apart from every model name.
LIVENESS_SERVICE = "onnx-serve:live"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class InferenceServer:
    """One server: model repository, shared core, the gRPC and REST front ends, health, metrics.

    Construct it inside a running event loop, then `await start()` and `await stop()`.
    """

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.metrics = Metrics()
        self.provider = choose_provider(settings.device)
        log.info("execution provider: %s (%s)", self.provider.provider, self.provider.reason)
        options = RuntimeOptions(
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            graph_optimization=settings.graph_optimization,
            cuda=CudaOptions.from_settings(settings),
            sr_tile_size=settings.sr_tile_size,
            sr_tile_overlap=settings.sr_tile_overlap,
        )
        repository = ModelRepository(settings.models, self.provider, options, self.metrics)
        self.core = InferenceCore(repository, self.provider, self.metrics)
        self.shared_memory = SharedMemoryRegistry()
        self.tasks = TaskCore(self.core, TaskLimits(
            max_images=settings.max_images_per_request,
            max_generate_count=settings.max_generate_count,
            tile_size=settings.sr_tile_size,
            tile_overlap=settings.sr_tile_overlap,
            image=ImageLimits(max_pixels=settings.max_image_pixels),
        ))
        self.health = health.aio.HealthServicer()
        self.core.readiness_listeners.append(self._model_health)
        self.interceptor = ServiceInterceptor(lambda: self.core.draining, self.metrics)
        self.keys = ApiKeys.from_settings(settings)
        interceptors = [self.interceptor]
        if self.keys.enabled:
            # Inside the service interceptor, so refused calls are counted like any other.
            interceptors.append(AuthInterceptor(self.keys, settings.public_health))

        limit = settings.max_message_bytes
        options = [("grpc.max_receive_message_length", limit),
                   ("grpc.max_send_message_length", limit),
                   # gRPC turns SO_REUSEPORT on by default: a second server on a busy port would
                   # then start and take a share of the connections, silently.
                   ("grpc.so_reuseport", int(settings.reuse_port))]
        if settings.max_connection_age_s:
            age_ms = int(settings.max_connection_age_s * 1000)
            # GOAWAY after the age; calls still running get the drain grace to finish.
            options += [("grpc.max_connection_age_ms", age_ms),
                        ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_s * 1000))]
        self.grpc_server = grpc.aio.server(interceptors=interceptors, options=options)
        add_kserve_to_server(
            KServeServicer(self.core, self.shared_memory, limit, settings.max_load_file_bytes),
            self.grpc_server
        )
        task_grpc.add_TaskServiceServicer_to_server(
            TaskServicer(self.core, self.tasks, limit), self.grpc_server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            [KSERVE_SERVICE, TASK_SERVICE,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            self.grpc_server,
        )
        self._credentials = self._tls_credentials()
        self.http = None
        if settings.http_port >= 0:
            router = Router()
            V2Routes(self.core, self.shared_memory, settings.max_load_file_bytes).register(router)
            TaskRoutes(self.core, self.tasks, limit).register(router)
            DocsRoutes().register(router)
            DemoRoutes().register(router)
            self.http_app = HttpApp(router, self.metrics, lambda: self.core.draining, self.keys,
                                    settings.public_health, limit)
            tls = None
            if settings.tls_cert_file is not None:
                tls = tls_options(str(settings.tls_cert_file), str(settings.tls_key_file),
                                  settings.tls_client_ca_file and str(settings.tls_client_ca_file))
            self.http = HttpServer(self.http_app, settings.host, settings.http_port,
                                   settings.reuse_port, tls, settings.shutdown_grace_s)
        self.grpc_port = 0
        self.metrics_port = 0
        self._metrics_http = None

    async def start(self) -> None:
        """Open the metrics port, load the startup models, then open the gRPC and REST ports and
        report SERVING. Those ports open last (as Triton's do): until then connections are
        refused, so a proxy's passive checks or a DNS-balancing client never send calls to a
        server that cannot answer them; /metrics is up throughout to watch the loading. Every
        port is taken before the loading starts, so a busy one fails the start at once."""
        settings = self.settings
        authorize = None
        if self.keys.enabled and not settings.public_health:
            authorize = self._authorized_scrape
        try:
            self._metrics_http, self.metrics_port = self.metrics.serve_http(
                settings.host, settings.metrics_port, authorize)
        except OSError as exc:
            raise bind_error("metrics", settings.host, settings.metrics_port, exc) from exc
        if not settings.reuse_port:
            check_port_free("gRPC", settings.host, settings.grpc_port)  # fail before loading
        if self.http is not None:
            self.http.bind()  # bound, not listening: connections are refused until start()
        log.info("loading models: metrics_port=%d (gRPC and REST open once they are loaded)",
                 self.metrics_port, extra={"event": "loading", "metrics_port": self.metrics_port})
        await self.core.start(settings.startup_models)

        address = f"{settings.host}:{settings.grpc_port}"
        try:
            if self._credentials is None:
                self.grpc_port = self.grpc_server.add_insecure_port(address)
            else:
                self.grpc_port = self.grpc_server.add_secure_port(address, self._credentials)
        except RuntimeError as exc:  # grpc's "Failed to bind to address"
            raise StartupError(f"cannot bind the gRPC port {address}: in use, or not an "
                               "address of this host") from exc
        status = SERVING if self.core.server_ready() else NOT_SERVING
        for service in ("", KSERVE_SERVICE, TASK_SERVICE):
            await self.health.set(service, status)
        await self.health.set(LIVENESS_SERVICE, SERVING)
        await self.grpc_server.start()
        http_port = -1
        if self.http is not None:
            await self.http.start()
            http_port = self.http.port
        log.info(
            "serving: grpc_port=%d http_port=%d metrics_port=%d models=%s ready=%s",
            self.grpc_port, http_port, self.metrics_port, self.core.ready_names(),
            self.core.server_ready(),
            extra={"event": "serving", "grpc_port": self.grpc_port, "http_port": http_port,
                   "metrics_port": self.metrics_port},
        )

    def _tls_credentials(self) -> grpc.ServerCredentials | None:
        settings = self.settings
        if settings.tls_cert_file is None:
            return None
        client_ca = (_read("tls_client_ca_file", settings.tls_client_ca_file)
                     if settings.tls_client_ca_file else None)
        log.info("gRPC over TLS%s", " with client certificates required" if client_ca else "")
        return grpc.ssl_server_credentials(
            [(_read("tls_key_file", settings.tls_key_file),
              _read("tls_cert_file", settings.tls_cert_file))],
            root_certificates=client_ca, require_client_auth=client_ca is not None,
        )

    def _authorized_scrape(self, header: str) -> bool:
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "bearer" and self.keys.role(key.strip()) is not None

    async def _model_health(self, name: str, ready: bool) -> None:
        await self.health.set(name, SERVING if ready else NOT_SERVING)
        if self.core.started and not self.core.draining:
            overall = SERVING if self.core.server_ready() else NOT_SERVING
            for service in ("", KSERVE_SERVICE, TASK_SERVICE):
                await self.health.set(service, overall)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let in-flight calls finish (up to
        `grace` seconds), then close the server and the models."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self.core.begin_drain()
        await self.health.enter_graceful_shutdown()  # watchers see NOT_SERVING first
        recorders = [self.interceptor.calls] + ([self.http_app.calls] if self.http else [])
        log.info("draining: %d call(s) in flight", sum(r.active for r in recorders))
        # Stop at once, with a grace period: gRPC sends GOAWAY, so clients stop opening calls here
        # and get UNAVAILABLE (which their retry policy retries elsewhere) for new ones, while
        # calls in flight finish. Refusing in our interceptor alone and stopping at the end would
        # let calls race in until the last moment, when gRPC cancels them. REST stops listening
        # and answers 503 to new calls on open connections while its calls in flight finish.
        stopped = [asyncio.ensure_future(self.grpc_server.stop(grace))]
        if self.http is not None:
            stopped.append(asyncio.ensure_future(self.http.stop()))
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait_idle() for r in recorders)), grace)
        except TimeoutError:
            log.warning("grace period over with %d call(s) in flight",
                        sum(r.active for r in recorders))
        await asyncio.gather(*stopped)
        self.shared_memory.close()
        await self.core.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        log.info("stopped")

    async def serve_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received; shutting down")
        await self.stop()


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"{setting} {path}: {exc.strerror}") from exc
