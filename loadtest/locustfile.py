"""Locust users that speak the service's gRPC APIs: the Open Inference Protocol's ModelInfer
(tensor API) and the task API's RPCs, one user class each.

    locust -f loadtest/locustfile.py --host grpc://localhost:8001 \\
        --model fashion_mlp --batch-size 8 --payload real --deadline-ms 1000
    locust -f loadtest/locustfile.py --host grpc://localhost:8001 ClassifyUser --model fashion_cnn

User class (RPC)                              model task kind         --batch-size is
ModelInferUser (inference.../ModelInfer)      any                     items per tensor
ClassifyUser (onnxserve.task.v1.../Classify)  classifier              images per request
GenerateUser (.../Generate)                   (conditional_)generator images (count) per request
SuperResolveUser (.../SuperResolve)           super_resolution        1: a request holds one image
ReconstructUser (.../Reconstruct)             autoencoder             images per request

Without class names on the command line ModelInferUser runs alone, as before the task users
existed. A task user asks DescribeModel for the model's task kind first; a model of the wrong kind
(or no task stubs: `make proto`), or a model the server does not have, stops it with the reason
logged once, and a headless run then quits with exit code 1 (under `--processes`, the master
too). `--payload real` sends Fashion-MNIST test images (SuperResolveUser: a photo, `--task-photo`,
centre-cropped to `--image-size`), `generated` random pixels; Generate sends no image.
`--task-image-format` sets how images travel both ways (raw pixels or PNG).

Every option has an environment variable (LOADTEST_MODEL, LOADTEST_BATCH_SIZE, LOADTEST_PAYLOAD,
LOADTEST_DEADLINE_MS, LOADTEST_MAX_REQUESTS, LOADTEST_IMAGE_SIZE, LOADTEST_TASK_IMAGE_FORMAT,
LOADTEST_TASK_SEED, LOADTEST_TASK_CLASS_LABEL, LOADTEST_TASK_PHOTO), and the master passes them to
its workers.
Users are closed-loop (no think time): the load is set by the number of users. Each builds its
request once and sends the same bytes on every call.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

# grpcio blocks the whole process in its C core unless told to cooperate with gevent, which
# Locust runs on: this must happen before any channel exists.
import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner
from tritonclient.grpc import service_pb2

grpc_gevent.init_gevent()

try:  # `locust -f loadtest/locustfile.py` from the repo root, or from inside loadtest/
    from loadtest.payloads import (MODEL_INFER, MODEL_METADATA, SR_PHOTO, TASK_SERVICE,
                                   classify_request_bytes, generate_request_bytes,
                                   infer_request_bytes, make_inputs, model_images, photo,
                                   reconstruct_request_bytes, signature_from_metadata,
                                   super_resolve_request_bytes, task_messages)
except ImportError:
    from payloads import (MODEL_INFER, MODEL_METADATA, SR_PHOTO, TASK_SERVICE,
                          classify_request_bytes, generate_request_bytes, infer_request_bytes,
                          make_inputs, model_images, photo, reconstruct_request_bytes,
                          signature_from_metadata, super_resolve_request_bytes, task_messages)


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--model", env_var="LOADTEST_MODEL", default="fashion_mlp",
                        help="model to call")
    parser.add_argument("--batch-size", env_var="LOADTEST_BATCH_SIZE", type=int, default=1,
                        help="items per request (images, or Generate's count)")
    parser.add_argument("--payload", env_var="LOADTEST_PAYLOAD", choices=["real", "generated"],
                        default="real",
                        help="real Fashion-MNIST images (when the input is one; SuperResolveUser: "
                             "--task-photo) or random data")
    parser.add_argument("--deadline-ms", env_var="LOADTEST_DEADLINE_MS", type=float,
                        default=1000.0, help="gRPC deadline per call")
    parser.add_argument("--max-requests", env_var="LOADTEST_MAX_REQUESTS", type=int, default=0,
                        help="stop after this many calls, whichever users make them, per load "
                             "process (0: no limit)")
    parser.add_argument("--image-size", env_var="LOADTEST_IMAGE_SIZE", type=int, default=256,
                        help="size of variable image dims (super-resolution; SuperResolveUser's "
                             "square image)")
    parser.add_argument("--task-image-format", env_var="LOADTEST_TASK_IMAGE_FORMAT",
                        choices=["raw", "png"], default="raw",
                        help="task users: images sent and asked for as raw pixels or PNG (the "
                             "server then decodes and encodes PNG on every call)")
    parser.add_argument("--task-seed", env_var="LOADTEST_TASK_SEED", type=int, default=None,
                        help="GenerateUser: seed of the latents (default: the server draws one "
                             "per call)")
    parser.add_argument("--task-class-label", env_var="LOADTEST_TASK_CLASS_LABEL", type=int,
                        default=None,
                        help="GenerateUser: class label for a conditional generator (default 0); "
                             "refused for the others")
    parser.add_argument("--task-photo", env_var="LOADTEST_TASK_PHOTO", default=str(SR_PHOTO),
                        help="SuperResolveUser with --payload real: the photo, scaled up if "
                             "smaller and centre-cropped to --image-size")


@events.init.add_listener
def _default_users(environment, **_kwargs):
    """Locust runs every user class of the file when none is named; keep the default what it was
    before the task users existed, ModelInferUser alone (the sweep, the compose stack and older
    command lines name none). Workers are left alone: they spawn what their master asks for."""
    options = environment.parsed_options
    if options is None or options.user_classes or isinstance(environment.runner, WorkerRunner):
        return
    environment.user_classes[:] = [u for u in environment.user_classes
                                   if not issubclass(u, TaskUser)]


# A worker's users were refused: it tells its master, which owns the run and its exit code.
REFUSED_MESSAGE = "onnxserve_refused"


@events.init.add_listener
def _distributed(environment, **_kwargs):
    """Under --processes (or --master/--worker) the master's exit code is the run's: it never reads
    its workers'. So a worker reports refusals to the master, and sends its last stats (failures
    included) before it quits by itself (--max-requests): Locust sends a worker's final report only
    when the master ends the run. This quitting listener runs before the runner's own, which tells
    the master that the worker quit (quitting fires its listeners newest first)."""
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(
            REFUSED_MESSAGE, lambda environment, msg, **_: _report_refusal(environment, msg.data))
    elif isinstance(runner, WorkerRunner):
        environment.events.quitting.add_listener(_send_last_stats)


def _send_last_stats(environment, **_kwargs):
    # What WorkerRunner does on the master's quit, through its public events and send_message.
    # Reports reset the stats they carry, so a second one (after the master's quit) is empty.
    runner, report = environment.runner, {}
    environment.events.report_to_master.fire(client_id=runner.client_id, data=report)
    runner.send_message("stats", report)


_refusals: set[str] = set()  # reported by this process


def _report_refusal(environment, refusal: str) -> None:
    """Once per process and refusal: a worker passes it to its master; a master or a lone process
    logs it and, when headless, quits with exit code 1 rather than sit idle or count failures until
    its time is up (a master's quit ends its workers too)."""
    if refusal in _refusals:
        return
    first = not _refusals
    _refusals.add(refusal)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(REFUSED_MESSAGE, refusal)
        return
    logging.error("%s", refusal)
    if first and environment.parsed_options.headless:
        environment.process_exit_code = 1
        gevent.spawn(runner.quit)


def _target(host: str) -> str:
    for prefix in ("grpc://", "http://"):
        if host.startswith(prefix):
            return host[len(prefix):]
    return host


class Refused(Exception):
    """The run cannot work as configured (a model of the wrong kind, missing stubs)."""


class GrpcUser(User):
    """Locust's custom-client pattern: one channel per user, each call reported as a request
    event (request_type 'grpc'). A subclass's `prepare` builds the one request it sends."""

    abstract = True
    wait_time = constant(0)

    sent = 0  # per load process, whichever users send, for --max-requests

    def on_start(self):
        self.channel = grpc.insecure_channel(
            _target(self.host or "localhost:8001"),
            options=[("grpc.max_receive_message_length", 256 << 20),
                     ("grpc.max_send_message_length", 256 << 20)],
        )
        options = self.environment.parsed_options
        self.timeout = options.deadline_ms / 1000.0
        self.refused = False
        try:
            self.name, self.method, self.payload = self.prepare(options)
        except Refused as exc:
            self.refuse(str(exc))

    def prepare(self, options) -> tuple[str, object, bytes]:
        """(request name in the stats, the bytes-in, bytes-out method, the request's bytes)."""
        raise NotImplementedError

    def refuse(self, reason: str) -> None:
        """Stop at the first task (StopUser raised in on_start would log a traceback per user),
        with the reason reported once (`_report_refusal`)."""
        self.refused = True
        _report_refusal(self.environment, f"{type(self).__name__}: {reason}")

    def on_stop(self):
        self.channel.close()

    @task
    def send(self):
        if self.refused:
            raise StopUser()
        limit = self.environment.parsed_options.max_requests
        if limit and GrpcUser.sent >= limit:
            # Outside this greenlet: quit() stops every user, this one included.
            gevent.spawn(self.environment.runner.quit)
            raise StopUser()
        GrpcUser.sent += 1
        self.call(self.name, self.method, self.payload, self.timeout)

    def call(self, name: str, method, payload: bytes, timeout: float):
        started = time.perf_counter()
        length, error = 0, None
        try:
            response = method(payload, timeout=timeout)
            length = len(response)
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=length, exception=error, context={},
        )


class ModelInferUser(GrpcUser):
    """`ModelInfer` (tensor API) with raw contents; the request is built once and sent as bytes."""

    def prepare(self, options):
        try:
            metadata = self.channel.unary_unary(
                MODEL_METADATA,
                request_serializer=service_pb2.ModelMetadataRequest.SerializeToString,
                response_deserializer=service_pb2.ModelMetadataResponse.FromString,
            )(service_pb2.ModelMetadataRequest(name=options.model), timeout=10)
        except grpc.RpcError as exc:
            raise Refused(f"ModelMetadata('{options.model}') failed: {exc.code().name}: "
                          f"{exc.details()}") from None
        signature = signature_from_metadata(metadata)
        inputs, payload = make_inputs(signature, options.batch_size, options.payload,
                                      options.image_size)
        # Bytes in, bytes out: no protobuf work per call on the load generator.
        return (f"ModelInfer {options.model} b{options.batch_size} {payload}",
                self.channel.unary_unary(MODEL_INFER),
                infer_request_bytes(options.model, inputs, signature))


class TaskUser(GrpcUser):
    """One RPC of the task API. DescribeModel tells the model's task kind first: a model the RPC
    cannot serve is refused once instead of failing every call."""

    abstract = True
    rpc = ""
    kinds: tuple[str, ...] = ()

    def prepare(self, options):
        try:
            pb = task_messages()
        except ImportError as exc:
            raise Refused(f"needs the task API's stubs, service/_proto/task_service_pb2.py "
                          f"(`make proto`, and the repository importable): {exc}") from None
        describe = self.channel.unary_unary(
            f"{TASK_SERVICE}/DescribeModel",
            request_serializer=pb.DescribeModelRequest.SerializeToString,
            response_deserializer=pb.ModelInfo.FromString)
        try:
            info = describe(pb.DescribeModelRequest(model=options.model), timeout=10)
        except grpc.RpcError as exc:
            raise Refused(f"DescribeModel('{options.model}') failed: {exc.code().name}: "
                          f"{exc.details()}") from None
        if info.task_kind not in self.kinds:
            raise Refused(f"model '{options.model}' is a {info.task_kind or 'tensor'} model; "
                          f"{self.rpc} needs a {' or '.join(self.kinds)} model")
        label, payload = self.request(pb, info, options)
        return (f"{self.rpc} {options.model} {label} {options.task_image_format}",
                self.channel.unary_unary(f"{TASK_SERVICE}/{self.rpc}"), payload)

    def request(self, pb, info, options) -> tuple[str, bytes]:
        """(what the request holds, for its name in the stats; its bytes)."""
        raise NotImplementedError


class ClassifyUser(TaskUser):
    """`Classify`: --batch-size images per request, top-1 label each."""

    rpc, kinds = "Classify", ("classifier",)

    def request(self, pb, info, options):
        images, used = model_images(options.batch_size, tuple(info.inputs[0].shape),
                                    options.payload)
        return (f"b{options.batch_size} {used}",
                classify_request_bytes(pb, info.name, images, options.task_image_format))


class ReconstructUser(TaskUser):
    """`Reconstruct`: --batch-size images per request through an autoencoder."""

    rpc, kinds = "Reconstruct", ("autoencoder",)

    def request(self, pb, info, options):
        images, used = model_images(options.batch_size, tuple(info.inputs[0].shape),
                                    options.payload)
        return (f"b{options.batch_size} {used}",
                reconstruct_request_bytes(pb, info.name, images, options.task_image_format))


class GenerateUser(TaskUser):
    """`Generate`: --batch-size images (`count`) from random latents per request; --payload does
    not apply (no image goes in)."""

    rpc, kinds = "Generate", ("generator", "conditional_generator")

    def request(self, pb, info, options):
        label = options.task_class_label
        conditional = info.task_kind == "conditional_generator"
        if not conditional and label is not None:
            raise Refused(f"model '{info.name}' is not conditional; drop --task-class-label")
        if conditional:
            label = 0 if label is None else label
            if not 0 <= label < info.num_classes:
                raise Refused(f"--task-class-label {label}: model '{info.name}' has classes "
                              f"0..{info.num_classes - 1}")
        return (f"b{options.batch_size}" + (f" class{label}" if conditional else ""),
                generate_request_bytes(pb, info.name, options.batch_size,
                                       options.task_image_format, options.task_seed, label))


class SuperResolveUser(TaskUser):
    """`SuperResolve`: one --image-size square image per request (the message holds one)."""

    rpc, kinds = "SuperResolve", ("super_resolution",)

    def request(self, pb, info, options):
        if options.batch_size != 1:
            raise Refused(f"a SuperResolveRequest holds one image; --batch-size must be 1, got "
                          f"{options.batch_size}")
        size = options.image_size
        image, used = photo(size, options.payload, Path(options.task_photo))
        return (f"b1 {used} {size}x{size}",
                super_resolve_request_bytes(pb, info.name, image, options.task_image_format))
