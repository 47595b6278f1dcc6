"""deploy/k8s validates offline, and names only what the server really exposes.

Core kinds: kubernetes-validate (strict: unknown fields are errors). KServe objects: their CRD
schemas from ../shared/schemas/kserve with check-jsonschema, once as shipped and once strict (the
CRD schemas allow unknown fields, which a typo would hide). Overlays are rendered with
`kubectl kustomize` and the rendered output is what gets validated. Ports, probes, health service
names, environment settings and metric names are checked against a real server's health service
and /metrics, not against a list kept here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from functools import cache
from pathlib import Path

import grpc
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from servers import ROOT, http_status, start_server, wait_for
from onnx_builders import affine_config, affine_graph, write_model

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("base", "cpu", "gpu", "bundled")
# The HTTP probes component on each overlay that deploys ("overlay+component" renders both).
HTTP_PROBED = ("cpu+http-probes", "gpu+http-probes", "bundled+http-probes")
KSERVE = ("kserve", "kserve-rest")  # one port each: gRPC (h2c), REST (http1)
IMAGE = "onnx-serve:0.1.0"
KUBERNETES_VERSION = "1.37.0"
OLDEST_KUBERNETES = "1.30.0"  # the README's minimum (preStop sleep action)
# Repo-relative on purpose: ../shared/schemas sits next to the checkout in CI.
SCHEMAS = ROOT / ".." / "shared" / "schemas" / "kserve"
KSERVE_SCHEMAS = {
    "InferenceService": SCHEMAS / "inferenceservice-v1beta1.json",
    "ServingRuntime": SCHEMAS / "servingruntime-v1alpha1.json",
}
METRIC_NAME = re.compile(r"\binference_[a-z_]+\b")


@cache
def render(source: str) -> tuple[dict, ...]:
    """An overlay rendered by `kubectl kustomize`; "cpu+http-probes" is the cpu overlay with the
    http-probes component, composed as a user's own overlay would (kustomize takes relative paths
    only)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the kustomize overlays (it runs without a cluster)"
    overlay, *components = source.split("+")
    with tempfile.TemporaryDirectory() as tmp:
        directory = K8S / overlay
        if components:
            directory = Path(tmp)
            (directory / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / overlay, tmp)],
                "components": [os.path.relpath(K8S / c, tmp) for c in components]}))
        result = subprocess.run([kubectl, "kustomize", str(directory)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def by_kind(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs, kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def server_container(pod_spec: dict) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] in ("server", "kserve-container"))


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def strict_schema(schema):
    """The CRD schema with unknown fields refused wherever it lists its fields (what the API
    server's strict field validation does), except where the CRD keeps unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def check_jsonschema(schema: Path, documents: list[dict],
                     tmp_path: Path) -> subprocess.CompletedProcess:
    files = []
    for index, doc in enumerate(documents):
        path = tmp_path / f"{doc['kind']}-{index}.json"
        path.write_text(json.dumps(doc))
        files.append(str(path))
    command = [str(Path(sys.executable).with_name("check-jsonschema")), "--schemafile", str(schema),
               *files]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


# --- offline validation --------------------------------------------------------------------

@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, KUBERNETES_VERSION])
@pytest.mark.parametrize("overlay", OVERLAYS + HTTP_PROBED)
def test_rendered_overlay_is_valid_kubernetes_strict(overlay, version):
    docs = render(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    assert ("PersistentVolumeClaim" in kinds) == (not overlay.startswith("bundled"))
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            pytest.fail(f"{overlay} on {version}: {where}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")


def test_strict_kubernetes_validation_rejects_an_unknown_field():
    deployment = copy.deepcopy(only(render("cpu"), "Deployment"))
    server_container(deployment["spec"]["template"]["spec"])["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("source", KSERVE)
def test_kserve_objects_match_their_crd_schemas(source, tmp_path):
    docs = render(source)
    assert {doc["kind"] for doc in docs} == set(KSERVE_SCHEMAS)
    for kind, schema in KSERVE_SCHEMAS.items():
        assert schema.is_file(), f"{schema} missing (the shared schemas sit next to the checkout)"
        strict = tmp_path / f"strict-{schema.name}"
        strict.write_text(json.dumps(strict_schema(json.loads(schema.read_text()))))
        for schema_file in (schema, strict):
            result = check_jsonschema(schema_file, by_kind(docs, kind), tmp_path)
            assert result.returncode == 0, f"{kind} vs {schema_file.name}:\n{result.stdout}"


def test_strict_kserve_schema_catches_what_the_crd_schema_lets_through(tmp_path):
    isvc = copy.deepcopy(only(render("kserve"), "InferenceService"))
    isvc["spec"]["predictor"]["minReplica"] = 2  # a typo the CRD schema alone accepts
    schema = KSERVE_SCHEMAS["InferenceService"]
    assert check_jsonschema(schema, [isvc], tmp_path).returncode == 0
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps(strict_schema(json.loads(schema.read_text()))))
    result = check_jsonschema(strict, [isvc], tmp_path)
    assert result.returncode != 0 and "minReplica" in result.stdout


# --- the manifests agree with themselves ---------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_pdb_and_hpa_point_at_the_deployment(overlay):
    docs = render(overlay)
    deployment = only(docs, "Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in server_container(pod["spec"])["ports"]}
    assert set(ports) == {"http", "grpc", "metrics"}

    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    assert services["onnx-serve-headless"]["spec"]["clusterIP"] == "None"
    assert services["onnx-serve"]["spec"].get("type", "ClusterIP") == "ClusterIP"
    # REST clients go through the ClusterIP (kube-proxy spreads their connections over pods).
    assert {p["name"] for p in services["onnx-serve"]["spec"]["ports"]} == set(ports)
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port}"
            assert port["port"] == ports[port["targetPort"]]

    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2  # one replica must survive the PDB's disruption
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    if overlay == "bundled":  # filled by the init container from the image
        assert set(volumes["models"]) == {"name", "emptyDir"}
        (init,) = pod["spec"]["initContainers"]
        assert {m["name"] for m in init["volumeMounts"]} == {"models"}
    else:
        claim = only(docs, "PersistentVolumeClaim")["metadata"]["name"]
        assert volumes["models"]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    images = {c["image"] for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])}
    assert images == {IMAGE}


def test_bundled_overlays_init_container_copies_a_repository(tmp_path):
    """The init container's own command, run here with its two paths moved into tmp_path."""
    pod = only(render("bundled"), "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    source = tmp_path / "image-models"
    write_model(source, "affine", affine_graph(1.0, 0.0), affine_config())
    target = tmp_path / "repo"
    mount = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == "models")
    command = [part.replace("'/models'", repr(str(source))).replace(f"'{mount}'", repr(str(target)))
               for part in init["command"]]
    command[0] = sys.executable if command[0] == "python" else command[0]
    subprocess.run(command, check=True, timeout=60)
    assert (target / "affine" / "config.yaml").read_text() == \
        (source / "affine" / "config.yaml").read_text()
    assert (target / "affine" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_locked_down_and_drains_within_its_grace_period(overlay):
    pod = only(render(overlay), "Deployment")["spec"]["template"]["spec"]
    container = server_container(pod)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert mounts["models"]["mountPath"] == env_of(container)["ONNXSERVE_MODELS"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    # The kubelet's clock covers preStop and the server's drain together.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env_of(container)["ONNXSERVE_SHUTDOWN_GRACE_S"])
    assert 0 < pre_stop and pod["terminationGracePeriodSeconds"] > pre_stop + drain
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # warm-up headroom


@pytest.mark.parametrize("source", [*OVERLAYS, "kserve"])
def test_connections_age_out_within_a_drain_the_pod_can_wait_for(source):
    """Clients reconnect, and so re-resolve the Service, once their connection reaches its age:
    sooner than the HPA's scale-down window, so a scale-out's pods carry calls before the HPA
    judges them. Calls still running on an aged-out connection get the drain as their grace (the
    server derives one from the other, service/app.py), which the kubelet waits for after preStop,
    as it does on SIGTERM."""
    docs = render(source)
    if source == "kserve":
        container = server_container(only(docs, "ServingRuntime")["spec"])
        pod = only(docs, "InferenceService")["spec"]["predictor"]  # holds the pod's fields
        env = {**env_of(container), **env_of(pod["model"])}
        deployment = only(render("base"), "Deployment")["spec"]["template"]["spec"]
        # KEDA scales it, not the HPA: the age is the Deployment's.
        assert env["ONNXSERVE_MAX_CONNECTION_AGE_S"] == \
            env_of(server_container(deployment))["ONNXSERVE_MAX_CONNECTION_AGE_S"]
        window = None
    else:
        pod = only(docs, "Deployment")["spec"]["template"]["spec"]
        container = server_container(pod)
        env = env_of(container)
        hpa = only(docs, "HorizontalPodAutoscaler")
        window = hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    age = float(env["ONNXSERVE_MAX_CONNECTION_AGE_S"])
    drain = float(env["ONNXSERVE_SHUTDOWN_GRACE_S"])
    assert 0 < age and (window is None or age < window)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < drain and pod["terminationGracePeriodSeconds"] > pre_stop + drain


def test_gpu_overlay_requests_a_gpu_and_cpu_does_not():
    gpu = server_container(only(render("gpu"), "Deployment")["spec"]["template"]["spec"])
    cpu = server_container(only(render("cpu"), "Deployment")["spec"]["template"]["spec"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(gpu)["ONNXSERVE_DEVICE"] == "cuda"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert env_of(cpu)["ONNXSERVE_DEVICE"] == "cpu"


@pytest.mark.parametrize("source, port_name, protocol", [("kserve", "h2c", "grpc-v2"),
                                                         ("kserve-rest", "http1", "v2")])
def test_kserve_runtime_serves_onnx_over_v2_and_the_isvc_scales_on_queue_depth(
        source, port_name, protocol):
    docs = render(source)
    runtime, isvc = only(docs, "ServingRuntime"), only(docs, "InferenceService")
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == ["onnx"]
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    # Serverless mode takes one port, named for its protocol (Knative: h2c or http1).
    (port,) = server_container(runtime["spec"])["ports"]
    assert port["name"] == port_name
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert predictor["model"]["modelFormat"]["name"] == "onnx"
    assert predictor["model"]["protocolVersion"] == protocol
    assert 2 <= predictor["minReplicas"] < predictor["maxReplicas"]
    assert {m["type"] for m in predictor["autoScaling"]["metrics"]} == {"External", "Resource"}
    assert json.loads(env_of(predictor["model"])["ONNXSERVE_STARTUP_MODELS"]) == ["fashion_cnn"]


# --- the manifests agree with a real server ------------------------------------------------

def series_names(metrics_text: str) -> dict[str, set[str]]:
    """Every series name the server exports (a counter `x` is `x_total`, a histogram has
    `_bucket`, `_sum`, `_count`), with the label names seen on it."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count", "")}
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for suffix in suffixes.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real server started with the CPU overlay's settings (ports and repository overridden by
    flags, which win over the environment), after one good and one failed inference."""
    repo = tmp_path_factory.mktemp("models")
    write_model(repo, "affine", affine_graph(2.0, 1.0), affine_config())
    container = server_container(only(render("cpu"), "Deployment")["spec"]["template"]["spec"])
    server = start_server(repo, env=env_of(container))
    try:
        with triton.InferenceServerClient(server.grpc_address) as client:
            x = triton.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            client.infer("affine", [x])
            with pytest.raises(Exception):
                client.infer("missing", [x])
        with grpc.insecure_channel(server.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> str:
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as exc:
                    return exc.code().name

            yield {"server": server, "container": container, "health": status,
                   "series": series_names(server.metrics_text())}
    finally:
        server.terminate()


def test_manifest_settings_are_real_server_settings(live, monkeypatch):
    from service.settings import ServerSettings  # pydantic only; no generated protobuf

    fields = {f"ONNXSERVE_{name.upper()}" for name in ServerSettings.model_fields}
    containers = [live["container"]]
    containers += [server_container(only(render(o), "Deployment")["spec"]["template"]["spec"])
                   for o in ("gpu",)]
    containers += [server_container(only(render("kserve"), "ServingRuntime")["spec"]),
                   only(render("kserve"), "InferenceService")["spec"]["predictor"]["model"]]
    for container in containers:
        settings = {k: v for k, v in env_of(container).items() if k.startswith("ONNXSERVE_")}
        assert settings.keys() <= fields, settings.keys() - fields
        with monkeypatch.context() as env:  # parsed as the server parses its environment
            for name, value in settings.items():
                env.setenv(name, value)
            ServerSettings()
    assert live["server"].process.poll() is None  # the CPU overlay's settings start a server


@pytest.mark.parametrize("source", ["cpu", "gpu", "cpu+http-probes", *KSERVE])
def test_ports_and_probes_are_the_servers(live, source):
    if source in KSERVE:
        runtime = only(render(source), "ServingRuntime")["spec"]
        container = server_container(runtime)
        (declared,) = container["ports"]
        # The one declared port is one of the server's; the other still listens, undeclared.
        ports = {{"h2c": "grpc", "http1": "http"}[declared["name"]]: declared["containerPort"],
                 "metrics": int(runtime["annotations"]["prometheus.kserve.io/port"])}
    else:
        pod = only(render(source), "Deployment")["spec"]["template"]
        container = server_container(pod["spec"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == ports["metrics"]
        assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    env = env_of(container)
    # The server listens where the manifest says: its settings name the same ports.
    for name, port in ports.items():
        assert int(env[f"ONNXSERVE_{name.upper()}_PORT"]) == port, name
    server = live["server"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        (handler,) = set(container[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"}
        check = container[probe][handler]
        if handler == "grpc":
            assert check["port"] == ports["grpc"], probe
            # The real server answers this exact health service name, and it is SERVING.
            assert live["health"](check.get("service", "")) == "SERVING", probe
            # Liveness asks only whether the process answers (tests/service/
            # test_health_reflection.py: it stays SERVING while the server is not ready).
            assert (check.get("service") == "onnx-serve:live") == (probe == "livenessProbe")
        else:
            assert handler == "httpGet", probe
            assert ports.get(check["port"], check["port"]) == ports["http"], probe
            # The real server's REST port answers this exact path with 200.
            assert http_status(f"{server.http_url}{check['path']}") == 200, probe


def test_every_metric_named_in_the_manifests_is_exported(live):
    series = live["series"]
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {}
    for rule in adapter["rules"]["custom"]:
        (source,) = METRIC_NAME.findall(rule["seriesQuery"])
        assert source in series, f"adapter rule reads {source}, which the server does not export"
        served[re.sub(rule["name"]["matches"], rule["name"]["as"], source)] = source
        for label in re.findall(r'(\w+)="', rule["metricsQuery"]):
            assert label in series[source], f"{source} has no label {label}"
    for overlay in OVERLAYS:
        hpa = only(render(overlay), "HorizontalPodAutoscaler")
        names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert names and set(names) <= set(served), f"{overlay}: {names} not served by the adapter"
        assert any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])  # the CPU fallback
    isvc = only(render("kserve"), "InferenceService")
    for metric in isvc["spec"]["predictor"]["autoScaling"]["metrics"]:
        if metric["type"] == "External":
            query = metric["external"]["metric"]["query"]
            for name in METRIC_NAME.findall(query):
                assert name in series, f"KServe scales on {name}, which the server does not export"
                for label in re.findall(r'(\w+)="', query):
                    assert label in series[name] | {"namespace", "pod"}, label


def test_adapter_queries_are_valid_promql(tmp_path):
    """promtool parses each rule's query as Prometheus will see it once the adapter fills in
    its template (series, label matchers, group-by)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package, make apt-deps) is needed"
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    rules = []
    for index, rule in enumerate(adapter["rules"]["custom"]):
        (source,) = METRIC_NAME.findall(rule["seriesQuery"])
        expr = (rule["metricsQuery"].replace("<<.Series>>", source)
                .replace("<<.LabelMatchers>>", 'namespace="onnx-serve",pod=~"onnx-serve-.*"')
                .replace("<<.GroupBy>>", "pod"))
        rules.append({"record": f"check:{index}", "expr": expr})
        rules.append({"record": f"series:{index}", "expr": rule["seriesQuery"]})
    isvc = only(render("kserve"), "InferenceService")
    for metric in isvc["spec"]["predictor"]["autoScaling"]["metrics"]:
        if metric["type"] == "External":
            rules.append({"record": "keda:0", "expr": metric["external"]["metric"]["query"]})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("source", KSERVE)
def test_kserve_runtime_serves_the_bundled_classifier(source):
    """The ServingRuntime's command, arguments and environment plus the InferenceService's,
    on the bundled repository standing in for /mnt/models: the model it names loads, health
    "" turns SERVING (and the REST probes' paths answer 200), and the KEDA query's series carries
    that model's label."""
    docs = render(source)
    runtime = server_container(only(docs, "ServingRuntime")["spec"])
    predictor = only(docs, "InferenceService")["spec"]["predictor"]
    env = {**env_of(runtime), **env_of(predictor["model"])}
    (name,) = json.loads(env["ONNXSERVE_STARTUP_MODELS"])
    config = yaml.safe_load((ROOT / "models" / name / "config.yaml").read_text())
    assert config["platform"] == "onnxruntime_onnx"  # what modelFormat onnx promises
    assert runtime["command"] == ["python", "-m", "service", "serve"]
    args = [str(ROOT / "models") if a == "/mnt/models" else a for a in runtime["args"]]
    server = start_server(ROOT / "models", *args, env=env)
    try:
        with grpc.insecure_channel(server.grpc_address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "httpGet" in runtime[probe]:
                url = server.http_url + runtime[probe]["httpGet"]["path"]
                assert http_status(url) == 200, probe
        assert http_status(f"{server.http_url}/v2/models/{name}/ready") == 200
        with triton.InferenceServerClient(server.grpc_address) as client:
            assert client.is_model_ready(name)
            loaded = {m.name for m in client.get_model_repository_index().models
                      if m.state == "READY"}
            assert loaded == {name}  # only the InferenceService's model, not the whole folder
        query = next(m["external"]["metric"]["query"]
                     for m in predictor["autoScaling"]["metrics"] if m["type"] == "External")
        assert f'model="{name}"' in query
        assert 'model="%s"' % name in server.metrics_text()
    finally:
        server.terminate()


def test_manifests_agree_with_the_image_and_the_server_defaults():
    """The Dockerfile's user and ports (exposed and set), and the server's default ports, are
    the manifests'."""
    from service.settings import ServerSettings

    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)", dockerfile, re.M)
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M)
               for p in line.split()}
    assert json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1)) == \
        ["python", "-m", "service"]
    defaults = ServerSettings.model_fields
    default_ports = {name: defaults[f"{name}_port"].default for name in ("http", "grpc", "metrics")}
    image_ports = {name.lower(): int(port)
                   for name, port in re.findall(r"ONNXSERVE_(\w+)_PORT=(\d+)", dockerfile)}
    assert image_ports == default_ports and set(default_ports.values()) == exposed
    for overlay in OVERLAYS:
        pod = only(render(overlay), "Deployment")["spec"]["template"]["spec"]
        ports = {p["name"]: p["containerPort"] for p in server_container(pod)["ports"]}
        assert ports == default_ports
        assert user and pod["securityContext"]["runAsUser"] == int(user.group(1))
    runtime = server_container(only(render("kserve"), "ServingRuntime")["spec"])
    assert runtime["securityContext"]["runAsUser"] == int(user.group(1))
    assert runtime["command"][:3] == ["python", "-m", "service"]


def test_adapter_rules_and_keda_query_answer_per_pod_from_a_real_prometheus(tmp_path):
    """Two real servers of the bundled classifier, scraped by a real Prometheus with the
    `namespace` and `pod` labels Kubernetes discovery adds: each adapter rule's seriesQuery finds
    the series (what the adapter lists), its metricsQuery answers one value per pod (what the HPA
    reads), and the InferenceService's KEDA query answers one value (what KEDA requires)."""
    import urllib.parse

    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is missing: run `make apt-deps`"
    isvc = only(render("kserve"), "InferenceService")
    keda = next(m["external"]["metric"] for m in isvc["spec"]["predictor"]["autoScaling"]["metrics"]
                if m["type"] == "External")
    namespace = re.search(r'namespace="([^"]+)"', keda["query"]).group(1)
    model = json.loads(env_of(isvc["spec"]["predictor"]["model"])["ONNXSERVE_STARTUP_MODELS"])[0]
    servers = [start_server(ROOT / "models", "--model", model) for _ in range(2)]
    pods = [f"onnx-serve-{index}" for index in range(len(servers))]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "200ms", "scrape_timeout": "150ms"},
        "scrape_configs": [{"job_name": "onnx-serve", "static_configs": [
            {"targets": [f"127.0.0.1:{server.metrics_port}"],
             "labels": {"namespace": namespace, "pod": pod}}
            for server, pod in zip(servers, pods)]}],
    }))
    prometheus = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def api(path: str, **params) -> list:
        url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer = json.loads(response.read())
        except OSError:
            assert prometheus.poll() is None, "prometheus exited"
            return []
        assert answer["status"] == "success", answer
        return answer["data"]["result"] if path == "query" else answer["data"]

    try:
        for server in servers:  # traffic, so that the request counter has series to rate
            with triton.InferenceServerClient(server.grpc_address) as client:
                x = triton.InferInput("images", [1, 1, 28, 28], "FP32")
                x.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
                client.infer(model, [x])
        adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
        matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
        for rule in adapter["rules"]["custom"]:
            def series(rule=rule):
                found = api("series", **{"match[]": rule["seriesQuery"]})
                return {(s["namespace"], s["pod"]) for s in found} == {
                    (namespace, p) for p in pods} and found

            found = wait_for(series, what=f"series of every pod for {rule['seriesQuery']}")
            query = (rule["metricsQuery"].replace("<<.Series>>", found[0]["__name__"])
                     .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod"))
            result = wait_for(lambda: len(api("query", query=query)) == len(pods)
                              and api("query", query=query), what=f"one value per pod: {query}")
            assert sorted(sample["metric"]["pod"] for sample in result) == pods
        result = wait_for(lambda: api("query", query=keda["query"]), what=keda["query"])
        assert len(result) == 1 and float(result[0]["value"][1]) >= 0
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        for server in servers:
            server.terminate()
