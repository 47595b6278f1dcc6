"""The installed `onnx-client` command against a real server over the bundled models: results
equal the Python client's, and every ordinary mistake is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from servers import ROOT, start_server
from service.client import TaskClient

CLI = Path(sys.executable).with_name("onnx-client")
MODELS = ("fashion_cnn", "cdcgan", "espcn_x2", "conv_encoder", "conv_decoder")
ENV = {k: v for k, v in os.environ.items() if k != "ONNXSERVE_SERVER"}


@pytest.fixture(scope="module")
def server():
    process = start_server(ROOT / "models", *[arg for m in MODELS for arg in ("--model", m)])
    yield process
    process.terminate()


@pytest.fixture(scope="module")
def client(server):
    with TaskClient(server.grpc_address, timeout=60) as task_client:
        yield task_client


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "picture.png"
    rng = np.random.default_rng(14)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=60, **kwargs)


def ok(result: subprocess.CompletedProcess) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, status: int) -> str:
    assert "Traceback" not in result.stderr
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def requests_answered(server) -> float:
    return sum(sample.value for family in text_string_to_metric_families(server.metrics_text())
               for sample in family.samples if sample.name == "inference_requests_total")


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# -- results: the same as the Python client's ---------------------------------------------------


def test_classify_and_upscale_with_the_options_after_the_command(server, client, picture,
                                                                  tmp_path):
    out = ok(cli("classify", str(picture), "--model", "fashion_cnn", "--top-k", "2",
                 "--server", server.grpc_address, "--quiet"))
    expected = client.classify([picture], "fashion_cnn", top_k=2).results[0]
    labels = ", ".join(f"{label.name} {label.probability:.3f}" for label in expected.labels)
    assert out == f"{picture}\t{labels}\t[{expected.conversion}]\n"

    target = tmp_path / "big.png"
    out = ok(cli("upscale", str(picture), str(target), "--model", "espcn_x2",
                 "--server", server.grpc_address))
    assert out == f"{target}: 48x40\n"
    assert np.array_equal(pixels(target), np.asarray(client.upscale(picture, "espcn_x2")))


def test_generate_with_the_options_before_the_command(server, client, tmp_path):
    out_dir = tmp_path / "new" / "samples"
    out = ok(cli("--server", server.grpc_address, "--quiet", "generate", "--model", "cdcgan",
                 "--count", "3", "--class", "7", "--seed", "1", "--out", str(out_dir)))
    assert out == f"3 images in {out_dir} (seed 1)\n"
    expected = client.generate("cdcgan", count=3, class_label=7, seed=1)
    written = sorted(out_dir.iterdir())
    assert [p.name for p in written] == [f"cdcgan_1_000{i}.png" for i in range(3)]
    for path, image in zip(written, expected.images):
        assert path.read_bytes() == image.encoded


def test_encode_prints_json_lines_that_decode_reads_from_a_file_or_stdin(server, client,
                                                                         picture, tmp_path):
    second = tmp_path / "second.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(second)
    out = ok(cli("encode", str(picture), str(second), "--model", "conv_encoder",
                 "--server", server.grpc_address))
    lines = [json.loads(line) for line in out.splitlines()]
    expected = client.encode([picture, second], "conv_encoder").latents
    assert [line["file"] for line in lines] == [str(picture), str(second)]
    assert [line["latent"] for line in lines] == [list(v.values) for v in expected]

    latents_file = tmp_path / "latents.jsonl"
    latents_file.write_text(out)
    ok(cli("decode", str(latents_file), "--model", "conv_decoder", "--out",
           str(tmp_path / "from_file"), "--server", server.grpc_address))
    bare_vector = json.dumps(lines[1]["latent"])  # a plain list is a latent too
    out = ok(cli("decode", "--model", "conv_decoder", "--out", str(tmp_path / "from_stdin"),
                 "--server", server.grpc_address, input=f"{lines[0]['latent']}\n\n{bare_vector}\n"))
    assert out == f"2 images in {tmp_path / 'from_stdin'}\n"
    decoded = client.decode([line["latent"] for line in lines], "conv_decoder").images
    for folder in ("from_file", "from_stdin"):
        written = sorted((tmp_path / folder).iterdir())
        assert [p.name for p in written] == ["conv_decoder_0000.png", "conv_decoder_0001.png"]
        assert [p.read_bytes() for p in written] == [image.encoded for image in decoded]


def test_models_and_describe(server, client):
    out = ok(cli("models", "--server", server.grpc_address))
    assert [json.loads(line)["name"] for line in out.splitlines()] == sorted(MODELS)
    described = json.loads(ok(cli("describe", "espcn_x2", "--server", server.grpc_address)))
    info = client.describe_model("espcn_x2")
    assert described["task"] == info.task_kind == "super_resolution"
    assert described["upscale_factor"] == info.upscale_factor == 2
    assert described["inputs"] == [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                                   for t in info.inputs]


def test_server_address_from_the_environment(server):
    out = ok(cli("models", env={"ONNXSERVE_SERVER": server.grpc_address}))
    assert len(out.splitlines()) == len(MODELS)
    help_text = " ".join(ok(cli("models", "--help", env={"ONNXSERVE_SERVER": "gpu-box"})).split())
    assert "(default: gpu-box:8001, from $ONNXSERVE_SERVER)" in help_text
    help_text = " ".join(ok(cli("--help")).split())
    assert "(default: localhost:8001, or set $ONNXSERVE_SERVER)" in help_text
    line = one_line_error(cli("models", env={"ONNXSERVE_SERVER": "a:b:c"}), 2)
    assert line == ("onnx-client: error: $ONNXSERVE_SERVER: expected HOST[:PORT], e.g. "
                    "localhost:8001 or [::1]:8001, got 'a:b:c'")


def test_headers_before_and_after_the_command_are_all_sent(tmp_path):
    key = "cli-test-key"
    guarded = start_server(ROOT / "models", "--model", "fashion_cnn",
                           env={"ONNXSERVE_API_KEYS": f'["{key}"]'})
    try:
        base = ("--server", guarded.grpc_address)
        out = ok(cli(*base, "--header", f"authorization=Bearer {key}", "models",
                     "--header", "x-trace=1"))
        assert json.loads(out)["name"] == "fashion_cnn"
        ok(cli(*base, "--header", "x-trace=1", "models", "--header", f"authorization=Bearer {key}"))
        line = one_line_error(cli(*base, "models", "--header", "x-trace=1"), 1)
        assert line.startswith("onnx-client: UNAUTHENTICATED: missing API key")
    finally:
        guarded.terminate()


# -- progress -------------------------------------------------------------------------------------


def test_progress_draws_only_on_a_terminal(server, picture, tmp_path):
    args = ("upscale", str(picture), str(tmp_path / "big.png"), "--model", "espcn_x2",
            "--server", server.grpc_address)
    assert cli(*args).stderr == ""  # stderr is a pipe here, as in a log

    def on_a_terminal(*extra: str) -> str:
        controller, terminal = os.openpty()
        try:
            result = subprocess.run([str(CLI), *args, *extra], env=ENV, stdout=subprocess.PIPE,
                                    stderr=terminal, timeout=60)
            assert result.returncode == 0
        finally:
            os.close(terminal)
        drawn = b""
        try:
            while chunk := os.read(controller, 4096):
                drawn += chunk
        except OSError:  # EIO: the terminal side is closed and everything has been read
            pass
        finally:
            os.close(controller)
        return drawn.decode()

    assert "\rupscaling: 100% (40/40)" in on_a_terminal()
    assert on_a_terminal("--quiet") == ""


# -- mistakes: one line, before anything is sent ------------------------------------------------


def test_file_mistakes_are_one_line_and_send_nothing(server, picture, tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    target = ("--model", "espcn_x2", "--server", server.grpc_address)
    cases = {
        ("classify", str(tmp_path / "missing.png"), *target):
            f"onnx-client classify: error: argument FILE: no such file "
            f"'{tmp_path / 'missing.png'}' (see 'onnx-client classify --help')",
        ("classify", str(tmp_path), *target):
            f"onnx-client classify: error: argument FILE: '{tmp_path}' is a directory, expected "
            f"a file (see 'onnx-client classify --help')",
        ("upscale", str(picture), str(tmp_path / "big"), *target):
            f"onnx-client upscale: error: argument OUTPUT: '{tmp_path / 'big'}' has no "
            f"extension to name the image format, e.g. big.png (see 'onnx-client upscale --help')",
        ("upscale", str(picture), str(tmp_path / "big.xyz"), *target):
            f"onnx-client upscale: error: argument OUTPUT: '{tmp_path / 'big.xyz'}': Pillow "
            f"writes no '.xyz' images; use e.g. .png, .jpg or .webp "
            f"(see 'onnx-client upscale --help')",
        ("upscale", str(picture), str(tmp_path / "nowhere" / "big.png"), *target):
            f"onnx-client upscale: error: argument OUTPUT: '{tmp_path / 'nowhere' / 'big.png'}': "
            f"no directory '{tmp_path / 'nowhere'}' (see 'onnx-client upscale --help')",
        ("generate", "--out", str(a_file), "--class", "1", *target):
            f"onnx-client generate: error: argument --out: '{a_file}' is a file, expected a "
            f"directory (see 'onnx-client generate --help')",
        ("decode", str(a_file), "--out", str(tmp_path / "decoded"), *target):
            f"onnx-client: error: {a_file} line 1: not JSON (Expecting value)",
        ("decode", str(picture), "--out", str(tmp_path / "decoded"), *target):
            f"onnx-client: error: {picture} line 1: not JSON (Expecting value)",
        ("models", "--tls-ca", str(tmp_path / "ca.pem"), "--server", server.grpc_address):
            f"onnx-client models: error: argument --tls-ca: no such file '{tmp_path / 'ca.pem'}' "
            f"(see 'onnx-client models --help')",
    }
    before = requests_answered(server)
    for args, expected in cases.items():
        assert one_line_error(cli(*args), 2) == expected
    assert requests_answered(server) == before
    assert not (tmp_path / "decoded").exists()


U32 = "expected an integer from {} to 4294967295"
ADDRESS = "expected HOST[:PORT], e.g. localhost:8001 or [::1]:8001"


@pytest.mark.parametrize("command, option, value, expected", [
    ("generate", "--count", "-1", U32.format(1)),
    ("generate", "--count", "0", U32.format(1)),
    ("generate", "--seed", "-3", "expected an integer from 0 to 18446744073709551615"),
    ("generate", "--interpolate", "1", U32.format(2)),
    ("classify", "--top-k", "-2", U32.format(1)),
    ("models", "--server", "a:b:c", ADDRESS),
    ("models", "--server", "host:99999", ADDRESS),
    ("models", "--timeout", "0", "expected a number of seconds > 0"),
    ("models", "--header", "novalue", "expected KEY=VALUE"),
])
def test_argument_mistakes_are_one_line(command, option, value, expected, tmp_path):
    needs = {"generate": ("--model", "cdcgan", "--out", str(tmp_path / "never")),
             "classify": (str(ROOT / "models/espcn_x2/sr_crops.png"), "--model", "fashion_cnn")}
    line = one_line_error(cli(command, *needs.get(command, ()), option, value), 2)
    assert line == (f"onnx-client {command}: error: argument {option}: {expected}, got "
                    f"'{value}' (see 'onnx-client {command} --help')")
    assert not (tmp_path / "never").exists()


def test_usage_mistakes_are_one_line():
    assert one_line_error(cli(), 2) == ("onnx-client: error: the following arguments are "
                                        "required: COMMAND (see 'onnx-client --help')")
    assert one_line_error(cli("frob"), 2).startswith(
        "onnx-client: error: argument COMMAND: invalid choice: 'frob'")
    assert one_line_error(cli("describe"), 2) == (
        "onnx-client describe: error: the following arguments are required: MODEL "
        "(see 'onnx-client describe --help')")


def test_latent_mistakes_on_stdin_are_one_line(tmp_path):
    decode = ("decode", "--model", "conv_decoder", "--out", str(tmp_path / "never"))
    for latents in ("{}", "[true]", "[]", f"[1{'0' * 400}]"):  # the last: beyond any float
        line = one_line_error(cli(*decode, input=f"[0.5]\n{latents}\n"), 2)
        assert line == (f"onnx-client: error: stdin line 2: expected a list of numbers or an "
                        f"object with a 'latent' list, got {latents[:60]!r}")
    line = one_line_error(cli(*decode, input="\n"), 2)
    assert line == "onnx-client: error: stdin: no latent vectors"
    assert not (tmp_path / "never").exists()


def test_server_refusals_are_one_line(server, tmp_path):
    line = one_line_error(cli("describe", "nope", "--server", server.grpc_address), 1)
    assert line.startswith("onnx-client: NOT_FOUND: model 'nope' is not loaded")
    line = one_line_error(cli("decode", "--model", "conv_decoder", "--out", str(tmp_path),
                              "--server", server.grpc_address, input="[1, 2, 3]"), 1)
    assert line == ("onnx-client: INVALID_ARGUMENT: latents[0]: has 3 values; model "
                    "'conv_decoder' expects latent_size 128")


def test_unreachable_server_is_one_line_naming_the_address():
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{bound.getsockname()[1]}"
        line = one_line_error(cli("models", "--server", address), 1)
    assert line.startswith(f"onnx-client: UNAVAILABLE at {address}: ")
    # Without a port the address is on 8001 (gRPC alone would take 443). '.invalid' never
    # resolves; a resolver that answers anyway leaves the call to its deadline.
    line = one_line_error(cli("models", "--timeout", "5",
                              env={"ONNXSERVE_SERVER": "nothing.invalid"}), 1)
    assert re.match(r"onnx-client: (UNAVAILABLE|DEADLINE_EXCEEDED) at nothing\.invalid:8001: ",
                    line), line


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_closed_pipe_ends_quietly(server, unbuffered):
    # Buffered, the pipe is found closed when stdout is flushed; unbuffered, at the first print.
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    reader, writer = os.pipe()
    os.close(reader)  # like `onnx-client models | head -0`: nobody reads what is printed
    try:
        result = subprocess.run([str(CLI), "models", "--server", server.grpc_address], env=env,
                                stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (1, "")


# -- help ------------------------------------------------------------------------------------------

# Per command, a few help fragments whose defaults matter (whitespace collapsed).
HELP_FRAGMENTS = {
    "classify": ["--top-k K labels per image, best first (default: 1)"],
    "generate": ["--count COUNT images to generate (ignored with --interpolate) (default: 1)",
                 "--timeout SECONDS deadline of each call (default: 120)"],
    "upscale": ["--version VERSION model version (default: the highest loaded one)"],
    "encode": ["--model MODEL name of a served encoder model"],
    "decode": ["'-' reads stdin (default: -)"],
    "reconstruct": ["created when missing (default: not written)"],
    "models": ["port 8001 when left out (default: localhost:8001, or set $ONNXSERVE_SERVER)"],
    "describe": ["MODEL model name"],
}


@pytest.mark.parametrize("command", sorted(HELP_FRAGMENTS))
def test_help_explains_every_option_and_its_default(command):
    text = ok(cli(command, "--help"))
    usage, _, body = text.partition("\n\n")
    blocks = re.findall(r"^  (-[^\n]*(?:\n {6,}[^\n]*)*)", body, re.MULTILINE)
    assert len(blocks) >= 8  # -h and the seven connection options at least
    optional = set(re.findall(r"\[(--[\w-]+)", usage))
    for block in blocks:
        flag = block.split()[0]
        assert re.search(r"\s{2,}\S", block), f"{command} {flag}: no help"
        if flag in optional:
            described = " ".join(block.split())
            assert "(default: " in described, f"{command} {flag}: no default in {described!r}"
    for fragment in HELP_FRAGMENTS[command]:
        assert fragment in " ".join(text.split())
