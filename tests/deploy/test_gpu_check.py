"""`make gpu-check`, rehearsed here on the CPU provider in its fast mode: the script a GPU
machine runs must not rot before one is lent. Its figures measure nothing about CUDA here; what is
checked is that every step ran and wrote what the device call brings back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from servers import ROOT

CPU = "CPUExecutionProvider"


def test_gpu_check_rehearsal_runs_every_step(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "deploy/gpu/gpu_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "DEVICE": "cpu", "OUT": str(out), "PY": sys.executable}, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # A device call brings back at most 8 files.
    assert sorted(p.name for p in out.iterdir()) == ["figures.json", "log.txt", "report.md"]
    figures = json.loads((out / "figures.json").read_text())

    tests = figures["tests"]["graphs-off"]
    assert (tests["exit_code"], tests["failures"], tests["errors"]) == (0, 0, 0)
    # The fp16 variants are not served on the CPU provider, so they have no parity figure.
    assert set(tests["parity"]) == {"fashion_cnn", "fashion_cnn_int8", "espcn_x2"}
    for name, parity in tests["parity"].items():
        assert parity["provider"] == CPU
        assert max(parity["max_abs_diff"].values()) <= parity["tolerance"], name
    cpu_models = {p.parent.name for p in (ROOT / "models").glob("*/config.yaml")
                  if yaml.safe_load(p.read_text()).get("instance_kind") != "gpu"}
    assert set(tests["warm_up"]) == cpu_models

    bench = figures["bench"]
    assert set(bench["cnn"]) == {"cnn_fp32", "cnn_fp16"}
    for name, cnn in bench["cnn"].items():
        assert cnn["provider"] == CPU
        assert set(cnn["loads"]) == {"1x1", "1x10", "1x64", "1x100", "1x256", "32x1"}
        for load, row in cnn["loads"].items():
            assert row["errors"] == 0, (name, load)
            assert row["served_items_per_s"] > 0 and row["in_process_items_per_s"] > 0, load
        assert set(cnn["time_per_instance_ms"]) == {"1", "10", "100"}
    assert set(bench["sr"]) == {f"sr_x{s}_{p}{g}" for s in (3, 4) for p in ("fp32", "fp16")
                                for g in ("", "_graphs")}
    for name, sr in bench["sr"].items():
        assert sr["image"] == "256x144" and sr["model_runs_per_image"] == 1, name
        assert sr["cuda_graphs"] == 0  # CUDA options are not used on the CPU provider
        assert sr["served_images_per_s"] > 0 and sr["in_process_images_per_s"] > 0, name
    assert set(bench["new_shapes"]) == {"cnn_fp32", "cnn_fp32_exhaustive", "sr_x3_fp32",
                                        "sr_x3_fp32_exhaustive"}
    for shapes in bench["new_shapes"].values():
        assert shapes["first"]["runs"] == shapes["repeat"]["runs"] == 3

    report = (out / "report.md").read_text()
    for heading in ("## Tests", "## fashion_cnn, items/s", "## Time per instance",
                    "## Super-resolution", "## First request of a new shape"):
        assert heading in report
    assert "gpu-check passed" in (out / "log.txt").read_text()
