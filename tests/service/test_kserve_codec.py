"""Runs kserve_codec_cases.py in a pytest process of its own: it needs the service's `inference`
protobuf package, which cannot share a process with tritonclient's (loaded by other test modules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from servers import ROOT

CASES = Path(__file__).with_name("kserve_codec_cases.py")


def test_codec_properties_hold():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout, result.stdout[-2000:]
