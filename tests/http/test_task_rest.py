"""The task API over REST, end to end against a real server: every route through a real HTTP client
(http.client, and the curl binary for the README's commands), each answer compared with the gRPC
TaskClient's for the same input (the same labels and probabilities, the same pixels), the
streamed PNG, multipart bodies, the error table with exact messages, deadlines and metrics."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import subprocess
import uuid

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import given, settings, strategies as st
from PIL import Image

from onnx_builders import write_task_models
from rest_client import call, error_of, png
from servers import ROOT, metric_value, serving, wait_for
from service._proto import task_service_pb2 as pb
from service.core.config import load_model_config
from service.client import TaskClient, to_pil
from service.client.client import to_image_message
from service.tasks.tiling import tile_windows

TILE, OVERLAP = 16, 4
BUNDLED = ROOT / "models"
LIMIT = 400_000  # max_message_bytes of the task server


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("task-repo")
    write_task_models(path)
    broken = path / "broken"  # listed with its state and reason
    broken.mkdir()
    (broken / "config.yaml").write_text((path / "enc" / "config.yaml").read_text())
    (broken / "1").mkdir()
    (broken / "1" / "model.onnx").write_bytes(b"not an onnx file")
    return path


@pytest.fixture(scope="module")
def server(repo):
    yield from serving(repo, env={"ONNXSERVE_SR_TILE_SIZE": str(TILE),
                                  "ONNXSERVE_SR_TILE_OVERLAP": str(OVERLAP),
                                  "ONNXSERVE_MAX_IMAGES_PER_REQUEST": "32",
                                  "ONNXSERVE_MAX_GENERATE_COUNT": "20",
                                  "ONNXSERVE_MAX_IMAGE_PIXELS": "1000000",
                                  "ONNXSERVE_MAX_MESSAGE_BYTES": str(LIMIT)})


@pytest.fixture(scope="module")
def client(server):
    with TaskClient(server.grpc_address, timeout=60) as c:
        yield c


# -- helpers ---------------------------------------------------------------------------------------

def ok_json(result) -> dict:
    status, headers, body = result
    assert (status, headers["content-type"]) == (200, "application/json"), body[:300]
    return json.loads(body)


def multipart(parts: list[tuple[str, str | None, str | None, bytes]]) -> tuple[bytes, dict]:
    """(body, headers) of a multipart/form-data body of (name, filename, content type, data)."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                     else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type:
            body += f"Content-Type: {content_type}\r\n".encode()
        body += b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", *args], capture_output=True,
                          check=True, timeout=120)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pixels(data: bytes) -> tuple[str, np.ndarray]:
    image = Image.open(io.BytesIO(data))
    return image.mode, np.asarray(image)


def grpc_message(call_, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call_()
    assert info.value.code() == code, info.value.details()
    return info.value.details()


RNG = np.random.default_rng(16)
PHOTO = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)       # 3x4 tiles of 16
GREY = RNG.integers(0, 256, (20, 33), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (18, 21, 4), dtype=np.uint8)


# -- models ------------------------------------------------------------------------------------------

def grpc_info(info) -> dict:
    rendered = json_format.MessageToDict(info, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    for tensor in rendered["inputs"] + rendered["outputs"]:
        tensor["shape"] = [int(d) for d in tensor["shape"]]  # int64 is a string in proto JSON
    return rendered


def test_list_and_describe_models_are_grpcs_model_info(server, client):
    listed = ok_json(call(server, "GET", "/v1/models"))["models"]
    assert listed == [grpc_info(m) for m in client.list_models().models]
    broken = next(m for m in listed if m["name"] == "broken")
    assert broken["state"] == "UNAVAILABLE" and "model.onnx" in broken["reason"]
    assert broken["versions"] == [] and broken["task_kind"] == ""
    by_name = {m["name"]: m for m in listed}
    assert by_name["cgen"]["labels"] == ["a", "b", "c"] and by_name["sr"]["upscale_factor"] == 3

    described = ok_json(call(server, "GET", "/v1/models/cgen?version=1"))
    assert described == grpc_info(client.describe_model("cgen", version="1"))
    assert described["inputs"] == [{"name": "latent", "datatype": "FP32", "shape": [-1, 4]},
                                   {"name": "class_label", "datatype": "INT64", "shape": [-1, 1]}]

    assert error_of(call(server, "GET", "/v1/models/nope")) == (404, grpc_message(
        lambda: client.describe_model("nope"), grpc.StatusCode.NOT_FOUND))
    assert error_of(call(server, "GET", "/v1/models/cgen?version=9")) == (404, grpc_message(
        lambda: client.describe_model("cgen", version="9"), grpc.StatusCode.NOT_FOUND))
    assert error_of(call(server, "GET", "/v1/models/broken")) == (503, grpc_message(
        lambda: client.describe_model("broken"), grpc.StatusCode.UNAVAILABLE))
    assert error_of(call(server, "GET", "/v1/models/cgen?verison=1")) == (
        400, "query parameter 'verison': unknown; this route takes version")


# -- classify ----------------------------------------------------------------------------------------

def labels_of(result) -> list[tuple[int, str, float]]:
    return [(label.index, label.name, label.probability) for label in result.labels]


def test_classify_raw_multipart_and_json_bodies_give_grpcs_answers(server, client):
    bright, dark = png(np.full((8, 8), 250, np.uint8)), np.zeros((8, 8, 1), np.uint8)
    photo = png(PHOTO)
    expected = client.classify([bright, dark, photo], "brightness", top_k=3)
    expected = [(labels_of(r), r.conversion) for r in expected.results]

    def answers(body: dict) -> list:
        assert (body["model"], body["version"]) == ("brightness", "1")
        return [([(l["index"], l["name"], l["probability"]) for l in r["labels"]],
                 r["conversion"]) for r in body["results"]]

    # One image as the raw body; probabilities are the same float32 values as gRPC's.
    assert answers(ok_json(call(server, "POST", "/v1/models/brightness/classify?top_k=3", bright,
                                {"Content-Type": "image/png"}))) == expected[:1]
    # Several, in order, as multipart parts (curl -F) and as JSON (PNG and raw pixels).
    files = [("images", "bright.png", "image/png", bright),
             ("images", "dark.png", "image/png", png(dark[:, :, 0])),
             ("images", "photo.png", None, photo)]
    body, headers = multipart(files)
    by_multipart = answers(ok_json(call(server, "POST", "/v1/models/brightness/classify?top_k=3",
                                        body, headers)))
    by_json = answers(ok_json(call(server, "POST", "/v1/models/brightness/classify", {
        "images": [{"png": b64(bright)},
                   {"raw": {"pixels": b64(dark.tobytes()), "height": 8, "width": 8,
                            "channels": 1}},
                   {"png": b64(photo)}], "top_k": 3})))
    assert by_json == expected
    # A grey PNG (mode L) and raw grey pixels are the same image: same labels, other conversion.
    assert by_multipart[0] == expected[0] and by_multipart[2] == expected[2]
    assert by_multipart[1][0] == expected[1][0]

    buffer = io.BytesIO()
    Image.fromarray(PHOTO).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    assert answers(ok_json(call(server, "POST", "/v1/models/brightness/classify?top_k=3", jpeg,
                                {"Content-Type": "image/jpeg"}))) == [
        (labels_of(r), r.conversion) for r in client.classify([jpeg], "brightness",
                                                              top_k=3).results]


def test_classify_with_curl_multipart(server, client, tmp_path):
    first, second = tmp_path / "shoe.png", tmp_path / "bag.png"
    first.write_bytes(png(PHOTO))
    second.write_bytes(png(GREY))
    result = curl("-F", f"images=@{first}", "-F", f"images=@{second}",
                  f"{server.http_url}/v1/models/brightness/classify?top_k=2")
    body = json.loads(result.stdout)
    expected = client.classify([first.read_bytes(), second.read_bytes()], "brightness", top_k=2)
    assert [[(l["index"], l["probability"]) for l in r["labels"]] for r in body["results"]] == \
        [[(l.index, l.probability) for l in r.labels] for r in expected.results]


# -- generate, encode, decode, reconstruct -------------------------------------------------------

def png_bytes(images: list[dict]) -> list[bytes]:
    return [base64.b64decode(image["png"]) for image in images]


def test_generate_gives_grpcs_images_latents_and_seed(server, client):
    body = ok_json(call(server, "POST", "/v1/models/gen/generate", {"count": 3, "seed": 11}))
    expected = client.generate("gen", count=3, seed=11)
    assert (body["model"], body["version"], body["seed"]) == ("gen", "1", 11)
    assert png_bytes(body["images"]) == [i.encoded for i in expected.images]  # the same PNG bytes
    assert body["latents"] == [list(v.values) for v in expected.latents]

    conditional = ok_json(call(server, "POST", "/v1/models/cgen/generate",
                               {"count": 2, "seed": 4, "class_label": 2}))
    expected = client.generate("cgen", count=2, seed=4, class_label=2)
    assert png_bytes(conditional["images"]) == [i.encoded for i in expected.images]

    walk = ok_json(call(server, "POST", "/v1/models/gen/generate", {
        "seed": 5, "interpolation": {"start": [0, 0, 0, 0], "steps": 4}}))
    expected = client.generate("gen", seed=5, interpolate=([0, 0, 0, 0], None, 4))
    assert png_bytes(walk["images"]) == [i.encoded for i in expected.images]
    assert walk["latents"][0] == [0, 0, 0, 0]

    latents = [[0.5, -1.0, 2.0, 0.25]]
    explicit = ok_json(call(server, "POST", "/v1/models/gen/generate", {"latents": latents}))
    assert png_bytes(explicit["images"]) == [client.generate("gen", latents=latents).images[0]
                                             .encoded]
    # Without a seed the server picks one and returns it; it reproduces the images.
    drawn = ok_json(call(server, "POST", "/v1/models/gen/generate", {}))
    again = client.generate("gen", seed=drawn["seed"])
    assert png_bytes(drawn["images"]) == [again.images[0].encoded]


def test_generate_and_decode_answer_one_png_when_asked(server, client):
    status, headers, body = call(server, "POST", "/v1/models/cgen/generate",
                                 {"seed": 9, "class_label": 1}, {"Accept": "image/png"})
    assert (status, headers["content-type"]) == (200, "image/png")
    assert body == client.generate("cgen", seed=9, class_label=1).images[0].encoded
    assert (headers["x-seed"], headers["x-model"], headers["x-model-version"]) == ("9", "cgen",
                                                                                    "1")
    latents = [[1.0, 2.0, -3.0, 0.5]]
    status, headers, body = call(server, "POST", "/v1/models/dec/decode", {"latents": latents},
                                 {"Accept": "image/png;q=1, application/json;q=0.5"})
    assert (status, headers["content-type"]) == (200, "image/png")
    assert body == client.decode(latents, "dec").images[0].encoded
    # JSON stays the default, and wins when ranked higher.
    for accept in ("*/*", "application/json, image/png;q=0.9"):
        assert "images" in ok_json(call(server, "POST", "/v1/models/dec/decode",
                                        {"latents": latents}, {"Accept": accept}))
    assert error_of(call(server, "POST", "/v1/models/gen/generate", {"count": 2},
                         {"Accept": "image/png"})) == (
        400, "header 'Accept': image/png answers with exactly one image; this call made 2 (ask "
             "for application/json)")


def test_encode_decode_and_reconstruct_give_grpcs_answers(server, client):
    pictures = [RNG.integers(0, 256, (8, 8), dtype=np.uint8), PHOTO]
    body, headers = multipart([("images", f"{i}.png", "image/png", png(p))
                               for i, p in enumerate(pictures)])
    encoded = ok_json(call(server, "POST", "/v1/models/enc/encode", body, headers))
    expected = client.encode([png(p) for p in pictures], "enc")
    assert encoded["latents"] == [list(v.values) for v in expected.latents]
    assert (encoded["model"], encoded["version"]) == ("enc", "1")

    decoded = ok_json(call(server, "POST", "/v1/models/dec/decode",
                           {"latents": encoded["latents"]}))
    assert png_bytes(decoded["images"]) == [i.encoded for i in client.decode(
        encoded["latents"], "dec").images]

    rebuilt = ok_json(call(server, "POST", "/v1/models/ae/reconstruct", body, headers))
    expected = client.reconstruct([png(p) for p in pictures], "ae")
    assert png_bytes(rebuilt["images"]) == [i.encoded for i in expected.images]
    assert rebuilt["errors"] == list(expected.errors)  # float32, as gRPC carries them
    assert pixels(png_bytes(rebuilt["images"])[0])[1].tolist() == pictures[0].tolist()


# -- super-resolution --------------------------------------------------------------------------------

def raw_post(server, path: str, body: bytes, headers: dict) -> tuple[int, dict, list[bytes]]:
    """POST over a bare socket: the status, headers and the body's chunks as framed on the wire,
    which HTTP clients hide."""
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n" \
           "Connection: close\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=120) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        received = bytearray()
        while data := sock.recv(1 << 16):
            received += data
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    found = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert found.get("transfer-encoding") == "chunked", found
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return int(lines[0].split()[1]), found, chunks
        chunks.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]


@pytest.mark.parametrize("picture", [PHOTO, GREY, RGBA], ids=["rgb", "grey", "rgba"])
def test_superresolve_streams_a_png_with_grpcs_stream_pixels(server, client, picture):
    status, headers, chunks = raw_post(server, "/v1/models/sr/superresolve", png(picture),
                                       {"Content-Type": "image/png"})
    assert (status, headers["content-type"]) == (200, "image/png")
    rows, cols = (len(tile_windows(side, TILE, OVERLAP)) for side in picture.shape[:2])
    assert headers["x-upscale-scale"] == "3"
    assert f"{rows * cols} tile(s)" in headers["x-conversion"]
    assert len(chunks) == rows + 2  # the PNG header, one IDAT per strip as computed, the end
    expected = client.upscale(png(picture), "sr")  # SuperResolveStream
    mode, upscaled = pixels(b"".join(chunks))
    assert mode == expected.mode and upscaled.tobytes() == np.asarray(expected).tobytes()
    assert upscaled.shape[:2] == (picture.shape[0] * 3, picture.shape[1] * 3)


def test_superresolve_with_curl_as_the_readme_says(server, client, tmp_path):
    photo, out, header_file = tmp_path / "photo.png", tmp_path / "photo_x3.png", tmp_path / "h"
    photo.write_bytes(png(PHOTO))
    curl("--data-binary", f"@{photo}", "-H", "Content-Type: image/png", "-D", str(header_file),
         f"{server.http_url}/v1/models/sr/superresolve", "-o", str(out))
    assert "transfer-encoding: chunked" in header_file.read_text().lower()
    assert pixels(out.read_bytes())[1].tobytes() == np.asarray(
        client.upscale(photo, "sr")).tobytes()


def test_superresolve_json_multipart_and_json_image_match_grpc(server, client):
    expected = client._stub.SuperResolve(pb.SuperResolveRequest(
        model="sr", image=to_image_message(png(PHOTO))))
    body, headers = multipart([("image", "photo.png", "image/png", png(PHOTO))])
    as_json = ok_json(call(server, "POST", "/v1/models/sr/superresolve", body,
                           {**headers, "Accept": "application/json"}))
    assert (as_json["model"], as_json["version"], as_json["scale"], as_json["conversion"]) == (
        "sr", "1", expected.scale, expected.conversion)
    assert pixels(base64.b64decode(as_json["image"]["png"]))[1].tobytes() == \
        np.asarray(to_pil(expected.image)).tobytes()
    raw = {"raw": {"pixels": b64(PHOTO.tobytes()), "height": 40, "width": 50, "channels": 3}}
    status, headers, streamed = call(server, "POST", "/v1/models/sr/superresolve",
                                     {"image": raw})
    assert (status, headers["content-type"]) == (200, "image/png")
    assert pixels(streamed)[1].tobytes() == np.asarray(to_pil(expected.image)).tobytes()


def test_a_result_over_the_message_limit_streams_and_is_refused_as_json(server, client):
    picture = RNG.integers(0, 256, (250, 250), dtype=np.uint8)  # 750x750 grey: 562500 bytes

    def sr_runs() -> float:
        return metric_value(server.metrics_text(), "inference_batch_size_count", model="sr")

    runs = sr_runs()
    assert error_of(call(server, "POST", "/v1/models/sr/superresolve", png(picture),
                         {"Content-Type": "image/png", "Accept": "application/json"})) == (
        429, "the upscaled image needs 562500 bytes, more than the 400000-byte message limit; "
             "ask for image/png (the default), which streams")
    assert sr_runs() == runs  # refused from the planned size: no tile was computed
    status, headers, chunks = raw_post(server, "/v1/models/sr/superresolve", png(picture),
                                       {"Content-Type": "image/png"})
    assert status == 200 and len(chunks) == 16 + 2
    assert pixels(b"".join(chunks))[1].tobytes() == np.asarray(
        client.upscale(png(picture), "sr")).tobytes()


def test_a_stream_whose_client_leaves_stops_computing(server):
    ramp = np.arange(900) % 256
    picture = (ramp[:, None] ^ ramp[None, :]).astype(np.uint8)  # 57 strips of 57 tiles

    def cancelled() -> float:
        return metric_value(server.metrics_text(), "inference_requests_total", rpc="SuperResolve",
                            code="CANCELLED", protocol="http")

    before = cancelled()
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    connection.request("POST", "/v1/models/sr/superresolve", body=png(picture),
                       headers={"Content-Type": "image/png"})
    response = connection.getresponse()
    assert response.status == 200
    response.read(100)  # the stream has started
    connection.close()
    wait_for(lambda: cancelled() == before + 1, what="the stream to be cancelled")


# -- deadlines and metrics ---------------------------------------------------------------------------

DEADLINE_MESSAGES = ("the deadline passed before model 'sr' answered",
                     "deadline passed before model 'sr' was reached")


def test_timeout_ms_is_the_calls_deadline(server):
    # 13 strips of 13 tiles, 360000 bytes: within the message limit, not within 1 ms.
    picture = png(RNG.integers(0, 256, (200, 200), dtype=np.uint8))
    status, message = error_of(call(server, "POST", "/v1/models/sr/superresolve?timeout_ms=1",
                                    picture, {"Content-Type": "image/png",
                                              "Accept": "application/json"}))
    assert status == 504 and message in DEADLINE_MESSAGES
    # A stream whose deadline passes after its status line went out is cut short.
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    connection.request("POST", "/v1/models/sr/superresolve?timeout_ms=1", body=picture,
                       headers={"Content-Type": "image/png"})
    response = connection.getresponse()
    assert response.status == 200
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    connection.close()
    # A generous deadline changes nothing.
    assert ok_json(call(server, "POST", "/v1/models/dec/decode?timeout_ms=60000",
                        {"latents": [[0, 0, 0, 0]]}))["model"] == "dec"


def test_task_calls_are_counted_under_the_grpc_rpc_names(server):
    def count(rpc: str, code: str) -> float:
        return metric_value(server.metrics_text(), "inference_requests_total", model="brightness",
                            version="1", rpc=rpc, code=code, protocol="http")

    before = count("Classify", "OK"), count("Classify", "INVALID_ARGUMENT")
    image = png(np.full((8, 8), 3, np.uint8))
    for _ in range(3):
        ok_json(call(server, "POST", "/v1/models/brightness/classify", image,
                     {"Content-Type": "image/png"}))
    error_of(call(server, "POST", "/v1/models/brightness/classify?top_k=7", image,
                  {"Content-Type": "image/png"}))
    assert (count("Classify", "OK"), count("Classify", "INVALID_ARGUMENT")) == (
        before[0] + 3, before[1] + 1)


# -- the error table -----------------------------------------------------------------------------------

PNG_HEADERS = {"Content-Type": "image/png"}
GARBAGE_PNG = b"\x89PNG\r\n\x1a\n garbage"


@pytest.mark.parametrize("path, body, headers, grpc_call", [
    ("/v1/models/brightness/classify?top_k=4", png(GREY), PNG_HEADERS,
     lambda c: c.classify([png(GREY)], "brightness", top_k=4)),
    ("/v1/models/gen/classify", png(GREY), PNG_HEADERS, lambda c: c.classify([png(GREY)], "gen")),
    ("/v1/models/brightness/classify", GARBAGE_PNG, PNG_HEADERS,
     lambda c: c.classify([GARBAGE_PNG], "brightness")),
    ("/v1/models/brightness/classify",
     {"images": [{"raw": {"pixels": b64(b"abc"), "height": 2, "width": 2, "channels": 1}}]}, {},
     lambda c: c._stub.Classify(pb.ClassifyRequest(model="brightness", images=[pb.Image(
         raw=pb.RawImage(pixels=b"abc", height=2, width=2, channels=1))]))),
    ("/v1/models/brightness/classify", {"images": [{"png": b64(png(GREY))}] * 33}, {},
     lambda c: c.classify([png(GREY)] * 33, "brightness")),
    ("/v1/models/sr/superresolve", png(np.zeros((1001, 1000), np.uint8)), PNG_HEADERS,
     lambda c: c.upscale(png(np.zeros((1001, 1000), np.uint8)), "sr")),
    ("/v1/models/gen/generate", {"count": 21}, {}, lambda c: c.generate("gen", count=21)),
    ("/v1/models/gen/generate", {"class_label": 1}, {},
     lambda c: c.generate("gen", class_label=1)),
    ("/v1/models/cgen/generate", {}, {}, lambda c: c.generate("cgen")),
    ("/v1/models/cgen/generate", {"class_label": 3}, {},
     lambda c: c.generate("cgen", class_label=3)),
    ("/v1/models/gen/generate", {"latents": [[1, 2]]}, {},
     lambda c: c.generate("gen", latents=[[1, 2]])),
    ("/v1/models/gen/generate", {"interpolation": {"steps": 1}}, {},
     lambda c: c.generate("gen", interpolate=(None, None, 1))),
    ("/v1/models/dec/decode", {"latents": [[1, 2, 3, 4, 5]]}, {},
     lambda c: c.decode([[1, 2, 3, 4, 5]], "dec")),
    ("/v1/models/dec/decode", {}, {}, lambda c: c.decode([], "dec")),
    ("/v1/models/ae/encode", png(GREY), PNG_HEADERS, lambda c: c.encode([png(GREY)], "ae")),
    ("/v1/models/enc/reconstruct", png(GREY), PNG_HEADERS,
     lambda c: c.reconstruct([png(GREY)], "enc")),
], ids=lambda value: value if isinstance(value, str) else None)
def test_bad_input_gets_400_with_grpcs_message(server, client, path, body, headers, grpc_call):
    expected = grpc_message(lambda: grpc_call(client), grpc.StatusCode.INVALID_ARGUMENT)
    assert error_of(call(server, "POST", path, body, headers)) == (400, expected)


def test_an_unknown_model_is_404_with_grpcs_message(server, client):
    expected = grpc_message(lambda: client.classify([png(GREY)], "nope"),
                            grpc.StatusCode.NOT_FOUND)
    assert error_of(call(server, "POST", "/v1/models/nope/classify", png(GREY),
                         PNG_HEADERS)) == (404, expected)


BOUNDARY = {"Content-Type": "multipart/form-data; boundary=b0"}


@pytest.mark.parametrize("path, body, headers, message", [
    ("/v1/models/brightness/classify", b"x", {},
     "header 'Content-Type': required; send image/png, image/jpeg, multipart/form-data or "
     "application/json"),
    ("/v1/models/brightness/classify", png(GREY),
     {"Content-Type": "application/x-www-form-urlencoded"},
     "header 'Content-Type': expected image/png, image/jpeg, multipart/form-data or "
     "application/json, got 'application/x-www-form-urlencoded' (curl --data-binary sends "
     "application/x-www-form-urlencoded unless told -H 'Content-Type: image/png')"),
    ("/v1/models/brightness/classify?top_k=two", png(GREY), PNG_HEADERS,
     "top_k: expected an integer, got 'two'"),
    ("/v1/models/brightness/classify?top_k=-1", png(GREY), PNG_HEADERS,
     "top_k: expected 1..3, got -1"),
    ("/v1/models/brightness/classify?top_k=1", {"images": [], "top_k": 1}, {},
     "top_k: given both in the query and in the body; give it once"),
    ("/v1/models/brightness/classify?topk=1", png(GREY), PNG_HEADERS,
     "query parameter 'topk': unknown; this route takes top_k, version, timeout_ms"),
    ("/v1/models/brightness/classify", {"images": [{"png": "not base64!"}]}, {},
     "images[0].png: not valid base64"),
    ("/v1/models/brightness/classify", {"images": [{"gif": "R0lG"}]}, {},
     "images[0]: expected {\"png\": base64}, {\"jpeg\": base64} or {\"raw\": {pixels, height, "
     "width, channels}}, got an object with ['gif']"),
    ("/v1/models/brightness/classify", {"images": [{"raw": {"pixels": "", "height": 1}}]}, {},
     "images[0].raw.width: required"),
    ("/v1/models/brightness/classify",
     {"images": [{"raw": {"pixels": "", "height": 1, "width": "1", "channels": 1}}]}, {},
     "images[0].raw.width: expected an integer, got a string"),
    ("/v1/models/brightness/classify", {"images": {"png": ""}}, {},
     "images: required, a list of images, got an object with ['png']"),
    ("/v1/models/brightness/classify", {"image": []}, {},
     "the request body: unknown field 'image'; expected images, top_k"),
    ("/v1/models/brightness/classify", b"[1, 2]", {"Content-Type": "application/json"},
     "the request body must be a JSON object, got list"),
    ("/v1/models/brightness/classify", b"--b0\r\nContent-Disposition: form-data; name=\"top_k\""
     b"\r\n\r\n3\r\n--b0--\r\n", BOUNDARY,
     "images[0]: multipart part 'top_k' is a form field, not a file; send images as files "
     "(curl -F 'images=@photo.png') and parameters in the query"),
    ("/v1/models/brightness/classify", b"--b0\r\nContent-Disposition: form-data; name=\"a\"; "
     b"filename=\"a.png\"\r\n\r\nxyz", BOUNDARY,
     "the multipart/form-data body is truncated: its closing boundary is missing"),
    ("/v1/models/brightness/classify", b"xyz", {"Content-Type": "multipart/form-data"},
     "header 'Content-Type': multipart/form-data needs a boundary parameter"),
    ("/v1/models/gen/generate", {"seed": -1}, {},
     "seed: expected 0..18446744073709551615, got -1"),
    ("/v1/models/gen/generate", {"seed": "7"}, {}, "seed: expected an integer, got a string"),
    ("/v1/models/gen/generate", {"count": True}, {}, "count: expected an integer, got a boolean"),
    ("/v1/models/gen/generate", {"latents": [[1, 2, None, 4]]}, {},
     "latents[0][2]: expected a number, got null"),
    ("/v1/models/gen/generate", {"latents": [1, 2]}, {},
     "latents[0]: expected a list of numbers, got an integer"),
    ("/v1/models/gen/generate", {"interpolation": [0, 1]}, {},
     "interpolation: expected an object, got a list"),
    ("/v1/models/gen/generate", {"interpolation": {"steps": 3, "stop": [1]}}, {},
     "interpolation: unknown field 'stop'; expected start, end, steps"),
    ("/v1/models/gen/generate", {"colour": 1}, {},
     "the request body: unknown field 'colour'; expected count, seed, class_label, latents, "
     "interpolation"),
    ("/v1/models/gen/generate", b"{\"count\": 1", {"Content-Type": "application/json"},
     "the request body is not valid JSON: unexpected end of data: line 1 column 12 (char 11)"),
    ("/v1/models/gen/generate", b"count=1", {"Content-Type": "application/x-www-form-urlencoded"},
     "header 'Content-Type': expected application/json, got "
     "'application/x-www-form-urlencoded'"),
    ("/v1/models/dec/decode?timeout_ms=0", {"latents": [[0, 0, 0, 0]]}, {},
     "timeout_ms: expected 1..2147483647, got 0"),
    ("/v1/models/dec/decode?timeout_ms=" + "9" * 400, {"latents": [[0, 0, 0, 0]]}, {},
     f"timeout_ms: expected 1..2147483647, got {'9' * 400}"),
    ("/v1/models/brightness/classify",
     {"images": [{"raw": {"pixels": "", "height": -2, "width": 1, "channels": 1}}]}, {},
     "images[0].raw.height: expected >= 0, got -2"),
    ("/v1/models/dec/decode", {"latents": [[0, 0, 0, 0]]}, {"Accept": "text/html"},
     "header 'Accept': this route answers application/json or image/png, got 'text/html'"),
    ("/v1/models/sr/superresolve", {}, {}, "image: an image is required"),
    ("/v1/models/sr/superresolve", *multipart([("image", "a.png", None, png(GREY))] * 2),
     "image: expected one image, got 2 multipart parts"),
], ids=lambda value: value if isinstance(value, str) and value.startswith("/") else None)
def test_rest_only_mistakes_get_400_naming_the_field(server, path, body, headers, message):
    assert error_of(call(server, "POST", path, body, headers)) == (400, message)


# -- fuzzing: never a 5xx, the server live after -------------------------------------------------

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, print_blob=True)
FIELDS = ("images", "image", "png", "jpeg", "raw", "pixels", "height", "width", "channels",
          "top_k", "count", "seed", "class_label", "latents", "interpolation", "start", "end",
          "steps")
SCALARS = (st.none() | st.booleans() | st.integers(-3, 40) | st.integers() | st.floats()
           | st.text(max_size=6) | st.sampled_from(["iVBORw0KGgo=", b64(png(GREY[:8, :8]))]))
JSON_VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4),
                                             children, max_size=4), max_leaves=16)
ROUTES = [f"/v1/models/{model}/{action}" for model, action in (
    ("brightness", "classify"), ("cgen", "generate"), ("sr", "superresolve"), ("enc", "encode"),
    ("dec", "decode"), ("ae", "reconstruct"))]


@FUZZ
@given(route=st.sampled_from(ROUTES),
       body=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=4),
       query=st.sampled_from(["", "?top_k=2", "?timeout_ms=50", "?version=1", "?x=1"]))
def test_hostile_json_bodies_get_a_4xx_never_a_5xx(server, route, body, query):
    status, headers, answer = call(server, "POST", route + query,
                                   json.dumps(body, allow_nan=True).encode(),
                                   {"Content-Type": "application/json", "Accept": "*/*"})
    assert status < 500 or status == 504, answer
    if status != 200:
        assert headers["content-type"] == "application/json" and json.loads(answer)["error"]


@FUZZ
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=300),
       content_type=st.sampled_from(["image/png", "image/jpeg", "multipart/form-data; boundary=b0",
                                     "multipart/form-data", "application/json", "text/plain",
                                     ""]))
def test_junk_bodies_get_a_4xx_never_a_5xx(server, route, raw, content_type):
    if content_type.startswith("multipart") and raw[:1] == b"x":
        raw = b"--b0\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a\"\r\n\r\n" + raw
    status, _, answer = call(server, "POST", route, raw,
                             {"Content-Type": content_type} if content_type else {})
    assert 400 <= status < 500, answer


def test_the_server_is_live_after_the_fuzzing(server):
    assert call(server, "GET", "/v2/health/live")[0] == 200
    # Malformed multipart bodies are the client's mistake, told in the 400, not logged.
    assert not [line for line in server.log_lines
                if line.get("logger", "").startswith("python_multipart")]
    assert ok_json(call(server, "GET", "/v1/models/sr"))["name"] == "sr"


# -- the bundled models ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled_server():
    yield from serving(BUNDLED)


# Every bundled model a CPU server serves: the fp16 variants are instance_kind gpu.
SERVED = sorted(p.name for p in BUNDLED.iterdir() if (p / "config.yaml").is_file()
                and load_model_config(p / "config.yaml").instance_kind != "gpu")


@pytest.mark.parametrize("model", SERVED)
def test_every_bundled_task_model_answers_as_over_grpc(bundled_server, model):
    info = next(m for m in ok_json(call(bundled_server, "GET", "/v1/models"))["models"]
                if m["name"] == model)
    assert info["state"] == "READY", info
    kind, rng = info["task_kind"], np.random.default_rng(3)
    pictures = [png(rng.integers(0, 256, (28, 28), dtype=np.uint8)),
                png(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))]
    body, headers = multipart([("images", f"{i}.png", "image/png", p)
                               for i, p in enumerate(pictures)])
    path = f"/v1/models/{model}"
    with TaskClient(bundled_server.grpc_address, timeout=120) as client:
        if kind == "classifier":
            rest = ok_json(call(bundled_server, "POST", f"{path}/classify?top_k=3", body, headers))
            assert [[(l["index"], l["probability"]) for l in r["labels"]]
                    for r in rest["results"]] == [[(l.index, l.probability) for l in r.labels]
                                                  for r in client.classify(pictures, model,
                                                                           top_k=3).results]
        elif kind in ("generator", "conditional_generator"):
            request = {"count": 2, "seed": 3}
            if kind == "conditional_generator":
                request["class_label"] = 1
            rest = ok_json(call(bundled_server, "POST", f"{path}/generate", request))
            expected = client.generate(model, count=2, seed=3,
                                       class_label=request.get("class_label"))
            assert png_bytes(rest["images"]) == [i.encoded for i in expected.images]
        elif kind == "decoder":
            latents = rng.standard_normal((2, info["latent_size"])).astype(np.float32).tolist()
            rest = ok_json(call(bundled_server, "POST", f"{path}/decode", {"latents": latents}))
            assert png_bytes(rest["images"]) == [i.encoded for i in client.decode(
                latents, model).images]
        elif kind == "encoder":
            rest = ok_json(call(bundled_server, "POST", f"{path}/encode", body, headers))
            assert rest["latents"] == [list(v.values) for v in client.encode(
                pictures, model).latents]
        elif kind == "autoencoder":
            rest = ok_json(call(bundled_server, "POST", f"{path}/reconstruct", body, headers))
            expected = client.reconstruct(pictures, model)
            assert png_bytes(rest["images"]) == [i.encoded for i in expected.images]
            assert rest["errors"] == list(expected.errors)
        else:
            assert kind == "super_resolution"
            status, _, chunks = raw_post(bundled_server, f"{path}/superresolve", pictures[1],
                                         {"Content-Type": "image/png"})
            assert status == 200
            assert pixels(b"".join(chunks))[1].tobytes() == np.asarray(
                client.upscale(pictures[1], model)).tobytes()
