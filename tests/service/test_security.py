"""TLS, mutual TLS and API keys, proven with throwaway certificates and real clients."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from servers import ROOT
from onnx_builders import affine_config, affine_graph, write_model

INFERENCE_KEY = "inference-key-5d1c0b"
ADMIN_KEY = "admin-key-9e77aa"


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject_key, subject: str, issuer_key, issuer: str, *, ca: bool, server: bool):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = _key(), _key()
    ca = _certificate(ca_key, "test-ca", ca_key, "test-ca", ca=True, server=False)
    rogue = _certificate(rogue_key, "rogue-ca", rogue_key, "rogue-ca", ca=True, server=False)
    server_key, client_key, rogue_client_key = _key(), _key(), _key()
    return Pki(
        ca=_write(d / "ca.pem", ca),
        server_cert=_write(d / "server.pem", _certificate(
            server_key, "localhost", ca_key, "test-ca", ca=False, server=True)),
        server_key=_write(d / "server.key", key=server_key),
        client_cert=_write(d / "client.pem", _certificate(
            client_key, "client", ca_key, "test-ca", ca=False, server=False)),
        client_key=_write(d / "client.key", key=client_key),
        rogue_ca=_write(d / "rogue.pem", rogue),
        rogue_client_cert=_write(d / "rogue-client.pem", _certificate(
            rogue_client_key, "intruder", rogue_key, "rogue-ca", ca=False, server=False)),
        rogue_client_key=_write(d / "rogue-client.key", key=rogue_client_key),
    )


@pytest.fixture
def repo(tmp_path):
    write_model(tmp_path, "affine", affine_graph(2.0, 0.0), affine_config())
    return tmp_path


def infer(client, **kwargs):
    x = np.ones((1, 4), np.float32)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("affine", [tensor], client_timeout=10, **kwargs).as_numpy("y")


def fails_with(call, code: str, *fragments: str):
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code}", info.value
    for fragment in fragments:
        assert fragment in info.value.message()


def https_get(server, path: str, cafile, cert=None, key=None) -> int:
    """The status of a GET over HTTPS to the REST port, verifying the server against `cafile`."""
    context = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    with urllib.request.urlopen(f"https://127.0.0.1:{server.http_port}{path}", timeout=10,
                                context=context) as response:
        return response.status


def rest_infer(server, headers: dict | None = None, path: str = "/v2/models/affine/infer"):
    """(status, JSON body) of a REST infer of one item on affine."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                   "data": [1.0] * 4}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=body,
                                     method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_tls_refuses_plaintext_and_wrong_ca(repo, pki, server_factory):
    server = server_factory(repo, "--tls-cert", str(pki.server_cert),
                            "--tls-key", str(pki.server_key))
    trusted = triton.InferenceServerClient(server.grpc_address, ssl=True,
                                           root_certificates=str(pki.ca))
    assert infer(trusted).tolist() == [[2.0] * 4]
    plaintext = triton.InferenceServerClient(server.grpc_address)
    fails_with(lambda: infer(plaintext), "UNAVAILABLE")
    wrong_ca = triton.InferenceServerClient(server.grpc_address, ssl=True,
                                            root_certificates=str(pki.rogue_ca))
    fails_with(lambda: infer(wrong_ca), "UNAVAILABLE")
    # REST on the same certificate: HTTPS only.
    assert https_get(server, "/v2/health/ready", pki.ca) == 200
    with pytest.raises(urllib.error.URLError) as refused:
        https_get(server, "/v2/health/ready", pki.rogue_ca)
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected,
                        urllib.error.URLError)):
        urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/health/ready",
                               timeout=10)
    assert server.process.poll() is None


def test_mutual_tls_needs_a_client_certificate_from_the_ca(repo, pki, server_factory):
    server = server_factory(repo, "--tls-cert", str(pki.server_cert),
                            "--tls-key", str(pki.server_key),
                            "--tls-client-ca", str(pki.ca))
    with_cert = triton.InferenceServerClient(
        server.grpc_address, ssl=True, root_certificates=str(pki.ca),
        private_key=str(pki.client_key), certificate_chain=str(pki.client_cert))
    assert infer(with_cert).tolist() == [[2.0] * 4]
    without_cert = triton.InferenceServerClient(server.grpc_address, ssl=True,
                                                root_certificates=str(pki.ca))
    fails_with(lambda: infer(without_cert), "UNAVAILABLE")
    rogue_cert = triton.InferenceServerClient(
        server.grpc_address, ssl=True, root_certificates=str(pki.ca),
        private_key=str(pki.rogue_client_key), certificate_chain=str(pki.rogue_client_cert))
    fails_with(lambda: infer(rogue_cert), "UNAVAILABLE")
    assert https_get(server, "/v2/health/live", pki.ca, pki.client_cert, pki.client_key) == 200
    for cert, key in ((None, None), (pki.rogue_client_cert, pki.rogue_client_key)):
        with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
            https_get(server, "/v2/health/live", pki.ca, cert, key)


def test_api_keys(repo, tmp_path, server_factory):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# inference keys\n{INFERENCE_KEY}\n")
    server = server_factory(repo, "--api-keys-file", str(keys),
                            env={"ONNXSERVE_ADMIN_KEYS": f'["{ADMIN_KEY}"]'})
    client = triton.InferenceServerClient(server.grpc_address)
    fails_with(lambda: infer(client), "UNAUTHENTICATED",
               "missing API key: send metadata 'authorization: Bearer <key>'")
    fails_with(lambda: infer(client, headers={"authorization": "Bearer nope"}),
               "UNAUTHENTICATED", "invalid API key")
    fails_with(lambda: infer(client, headers={"authorization": INFERENCE_KEY}),
               "UNAUTHENTICATED", "must be 'Bearer <key>'")
    inference = {"authorization": f"Bearer {INFERENCE_KEY}"}
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert infer(client, headers=inference).tolist() == [[2.0] * 4]
    assert infer(client, headers=admin).tolist() == [[2.0] * 4]
    fails_with(lambda: client.load_model("affine", headers=inference), "PERMISSION_DENIED",
               "RepositoryModelLoad needs an admin key")
    fails_with(lambda: client.unload_model("affine", headers=inference), "PERMISSION_DENIED")
    client.load_model("affine", headers=admin)

    # Health and metrics stay readable without a key (the default).
    with grpc.insecure_channel(server.grpc_address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    text = server.metrics_text()
    assert 'code="UNAUTHENTICATED"' in text and 'code="PERMISSION_DENIED"' in text
    # The same keys and roles over REST, with the header's own wording.
    status, body, headers = rest_infer(server)
    assert (status, body) == (401, {
        "error": "missing API key: send header 'Authorization: Bearer <key>'"})
    assert headers["www-authenticate"] == "Bearer"
    assert rest_infer(server, {"Authorization": "Bearer nope"})[:2] == (
        401, {"error": "invalid API key"})
    assert rest_infer(server, {"Authorization": f"Bearer {INFERENCE_KEY}"})[:2] == (
        200, {"model_name": "affine", "model_version": "1", "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [2.0] * 4}]})
    status, body, _ = rest_infer(server, {"Authorization": f"Bearer {INFERENCE_KEY}"},
                                 "/v2/repository/models/affine/load")
    assert (status, body) == (403, {
        "error": "RepositoryModelLoad needs an admin key; this key may only run inference"})
    assert rest_infer(server, {"Authorization": f"Bearer {ADMIN_KEY}"},
                      "/v2/repository/models/affine/load")[0] == 200  # a reload from disk
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/health/ready",
                                timeout=10) as response:
        assert response.status == 200  # public health, as on gRPC
    # Keys are never logged.
    log = "\n".join(str(line) for line in server.log_lines)
    assert INFERENCE_KEY not in log and ADMIN_KEY not in log


def test_shared_memory_registration_needs_an_admin_key_and_streams_a_key(repo, server_factory):
    server = server_factory(repo, env={"ONNXSERVE_API_KEYS": f'["{INFERENCE_KEY}"]',
                                       "ONNXSERVE_ADMIN_KEYS": f'["{ADMIN_KEY}"]'})
    inference = {"authorization": f"Bearer {INFERENCE_KEY}"}
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    key = f"/onnxserve-test-{uuid.uuid4().hex}"
    handle = shm.create_shared_memory_region("keyed", key, 64)
    try:
        client = triton.InferenceServerClient(server.grpc_address)
        fails_with(lambda: client.register_system_shared_memory("keyed", key, 64,
                                                                headers=inference),
                   "PERMISSION_DENIED", "SystemSharedMemoryRegister needs an admin key")
        client.register_system_shared_memory("keyed", key, 64, headers=admin)
        assert list(client.get_system_shared_memory_status(headers=inference).regions) == \
            ["keyed"]
        fails_with(lambda: client.unregister_system_shared_memory(headers=inference),
                   "PERMISSION_DENIED", "SystemSharedMemoryUnregister needs an admin key")
        with triton_http.InferenceServerClient(server.http_address) as rest:
            with pytest.raises(InferenceServerException) as refused:
                rest.unregister_system_shared_memory("keyed", headers=inference)
            assert refused.value.status() == "403"
            rest.unregister_system_shared_memory("keyed", headers=admin)
            assert rest.get_system_shared_memory_status(headers=inference) == []

        # A stream without a key is refused as a whole; with one, it serves.
        answers = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        with contextlib.suppress(InferenceServerException):  # when the refusal came first
            client.async_stream_infer("affine", [tensor])
        client.stop_stream()
        assert [r for r, _ in answers] == [None]
        assert answers[0][1].status() == "StatusCode.UNAUTHENTICATED"
        assert "missing API key" in answers[0][1].message()
        answers.clear()
        client.start_stream(callback=lambda result, error: answers.append((result, error)),
                            headers=inference)
        client.async_stream_infer("affine", [tensor])
        client.stop_stream()
        assert answers[0][1] is None and answers[0][0].as_numpy("y").tolist() == [[2.0] * 4]
    finally:
        shm.destroy_shared_memory_region(handle)


def test_private_health_and_metrics(repo, server_factory):
    server = server_factory(repo, env={"ONNXSERVE_API_KEYS": f'["{INFERENCE_KEY}"]',
                                       "ONNXSERVE_PUBLIC_HEALTH": "false"})
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = health.Check(health_pb2.HealthCheckRequest(), timeout=10,
                          metadata=[("authorization", f"Bearer {INFERENCE_KEY}")])
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
    ready = f"http://127.0.0.1:{server.http_port}/v2/health/ready"
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(ready, timeout=10)
    assert http_error.value.code == 401
    request = urllib.request.Request(ready, headers={"Authorization": f"Bearer {INFERENCE_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(url, timeout=10)
    assert http_error.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {INFERENCE_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert b"inference_requests_total" in response.read()


def test_cli_passes_tls_and_headers(repo, pki, tmp_path, server_factory):
    server = server_factory(repo, "--tls-cert", str(pki.server_cert),
                            "--tls-key", str(pki.server_key),
                            env={"ONNXSERVE_API_KEYS": f'["{INFERENCE_KEY}"]'})
    base = [sys.executable, "-m", "service.client", "--server", f"localhost:{server.grpc_port}",
            "--tls-ca", str(pki.ca)]
    ok = subprocess.run(base + ["--header", f"authorization=Bearer {INFERENCE_KEY}", "models"],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert '"name": "affine"' in ok.stdout
    refused = subprocess.run(base + ["models"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
