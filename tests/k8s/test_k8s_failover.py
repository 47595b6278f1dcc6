"""Short form of deploy/failover/failover.py: three real replicas over one repository, a steady
bounded load through a round_robin + retry channel and through nginx, while one replica gets
SIGTERM and comes back, one gets SIGKILL and comes back, and the model is reloaded to a new version
on all three. Nothing may fail for the client that balances and retries itself."""

from __future__ import annotations

import sys

from servers import ROOT, start_server
from onnx_builders import slow_config, slow_graph, write_model

sys.path.insert(0, str(ROOT / "deploy" / "failover"))
import failover  # noqa: E402


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
    # as UNAVAILABLE), or a call that reached the draining server just as it closed its
    # connections (the server's final stop cancels it: CANCELLED through nginx).
    for outcome in report.failures("proxy"):
        assert outcome.phase in ("sigterm", "sigkill"), outcome
        assert outcome.code in ("UNAVAILABLE", "CANCELLED"), outcome
