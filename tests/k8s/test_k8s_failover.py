"""Short form of deploy/failover/failover.py: three real replicas over one repository, a steady
bounded load through a round_robin + retry channel and through nginx, while one replica gets
SIGTERM and comes back, one gets SIGKILL and comes back, and the model is reloaded to a new version
on all three. Nothing may fail for the client that balances and retries itself."""

from __future__ import annotations

import json

import grpc
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2_grpc

from deploy.failover import failover
from servers import ROOT, start_server, wait_for
from onnx_builders import affine_config, affine_graph, slow_config, slow_graph, write_model


def test_replicas_fail_over_without_losing_a_request(tmp_path):
    repo = tmp_path / "models"
    # Calls that compute for ~5 ms (work=5000 loop trips), so that each event finds calls in
    # flight on its victim: the drain has calls to finish and the crash has calls to cut.
    dim = 16
    write_model(repo, "slow", slow_graph(dim), slow_config(
        inputs=[{"name": "x", "datatype": "FP32", "shape": [dim]},
                {"name": "work", "datatype": "INT64", "shape": [1]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [dim]}],
        dynamic_batching={"max_queue_delay_us": 1000, "max_queue_size": 64}))

    def launch(port: int):
        return start_server(repo, "--grpc-port", str(port))

    scenario = failover.Scenario(repo, "slow", launch, tmp_path, rate=25, workers=4,
                                 window_requests=20, settle_requests=8, max_seconds=50,
                                 event_timeout=20, fill={"work": 5000})
    report = scenario.run()
    print(report.render())  # shown with -s, and on failure

    assert report.failures("client") == [], report.error_summary()
    phases = {o.phase for o in report.outcomes}
    assert phases == {"warmup", "steady", "sigterm", "sigkill", "reload", "rotation"}
    # The drain ends in a clean exit; the crash is a crash.
    assert sorted(report.exit_codes) == [("sigkill", -9), ("sigterm", 0)]
    # Every call that started after the reload returned was answered by the new version.
    assert report.versions_after_reload == {"2"}
    # Each front door alone reaches all three replicas, the two restarted ones included.
    assert report.back_in_rotation == {"client": True, "proxy": True}, report.served_after
    # Through the proxy, failures come only from the two events, from calls nginx cannot resend:
    # a draining replica's UNAVAILABLE, a call the crash cut after nginx passed it on (502, seen
    # as UNAVAILABLE), or a call that raced the draining server's GOAWAY, which gRPC cancels
    # (CANCELLED, or INTERNAL when nginx resets the client's stream for it; a direct client
    # retries these).
    for outcome in report.failures("proxy"):
        assert outcome.phase in ("sigterm", "sigkill"), outcome
        assert outcome.code in ("UNAVAILABLE", "CANCELLED", "INTERNAL"), outcome
        # None from the restarted replica: its port stays closed until its models are loaded,
        # so nginx sends nothing there that it could not answer ("not loaded", "not ready").
        assert "not loaded" not in outcome.detail and "not ready" not in outcome.detail, outcome


def test_client_policy_keeps_a_not_serving_replica_out_of_rotation(tmp_path, server_factory):
    """The documented channel watches grpc.health.v1: a replica whose health "" is NOT_SERVING
    (here: one of its startup models unloaded, as while it loads or drains) gets no calls, and
    gets them again once SERVING. A channel without healthCheckConfig keeps calling it."""
    write_model(tmp_path, "affine", affine_graph(1.0, 0.0), affine_config())
    write_model(tmp_path, "side", affine_graph(1.0, 0.0), affine_config())
    sick, well = server_factory(tmp_path), server_factory(tmp_path)
    addresses = [sick.grpc_address, well.grpc_address]
    with triton.InferenceServerClient(sick.grpc_address) as admin:
        admin.unload_model("side")  # "affine" still answers, but health "" is NOT_SERVING
    assert failover.health_status(sick.grpc_address) == "NOT_SERVING"

    with grpc.insecure_channel(well.grpc_address) as probe:
        request = failover.infer_request(probe, "affine")

    def calls(channel, count: int) -> None:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(count):
            stub.ModelInfer(request, timeout=10)

    with failover.client_channel(addresses) as channel:
        calls(channel, 40)
        assert failover.served_ok(sick) == 0
        assert failover.served_ok(well) == 40

        with triton.InferenceServerClient(sick.grpc_address) as admin:
            admin.load_model("side")
        wait_for(lambda: calls(channel, 1) or failover.served_ok(sick) > 0,
                 what="the recovered replica back in rotation")

    config = {"loadBalancingConfig": [{"round_robin": {}}]}
    control = grpc.insecure_channel("ipv4:" + ",".join(addresses),
                                    options=[("grpc.service_config", json.dumps(config))])
    with triton.InferenceServerClient(sick.grpc_address) as admin:
        admin.unload_model("side")
    before = failover.served_ok(sick)
    with control:
        wait_for(lambda: calls(control, 1) or failover.served_ok(sick) > before,
                 what="a channel without health checks calling the NOT_SERVING replica")


def test_readme_policy_is_the_one_tested():
    """The retry policy deploy/k8s/README.md tells clients to copy is, value for value, the one
    the failover test runs."""
    import ast

    readme = (ROOT / "deploy" / "k8s" / "README.md").read_text()
    section = readme[readme.index("## Clients: the retry policy to copy"):]
    code = section[section.index("```python") + len("```python"):]
    tree = ast.parse(code[:code.index("```")])
    config = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Assign) and node.targets[0].id == "SERVICE_CONFIG")
    assert config == failover.CLIENT_SERVICE_CONFIG
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "insecure_channel")
    options = next(k.value for k in call.keywords if k.arg == "options")
    documented = [ast.literal_eval(item) for item in options.elts
                  if ast.literal_eval(item.elts[0]) != "grpc.service_config"]
    tested = [o for o in failover.CLIENT_CHANNEL_OPTIONS if o[0] != "grpc.service_config"]
    assert documented == tested
