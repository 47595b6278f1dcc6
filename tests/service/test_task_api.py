"""The task API end to end: our client library against a real server process."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from PIL import Image

from servers import ROOT, metric_value, serving
from support import expect_error
from onnx_builders import write_task_models
from service._proto import task_service_pb2 as pb
from service.client import AsyncTaskClient, TaskClient, to_pil
from service.tasks.tiling import tile_runs

TILE = 16  # small tiles, so modest test images are cut into many


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("task-repo")
    write_task_models(path)
    return path


@pytest.fixture(scope="module")
def server(repo):
    yield from serving(repo, env={"ONNXSERVE_SR_TILE_SIZE": str(TILE),
                                  "ONNXSERVE_SR_TILE_OVERLAP": "4",
                                  "ONNXSERVE_MAX_IMAGES_PER_REQUEST": "32",
                                  "ONNXSERVE_MAX_GENERATE_COUNT": "20",
                                  "ONNXSERVE_MAX_IMAGE_PIXELS": "1000000",
                                  "ONNXSERVE_MAX_MESSAGE_BYTES": "400000"})


@pytest.fixture
def client(server):
    with TaskClient(server.grpc_address, timeout=30) as c:
        yield c


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def grey(value: int, side: int = 8) -> np.ndarray:
    return np.full((side, side), value, np.uint8)


def session(repo, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / name / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])


# -- Classify ----------------------------------------------------------------------------------


def test_classify_encoded_and_raw_images(client):
    rgb_bright = np.full((20, 30, 3), 250, np.uint8)
    response = client.classify([png(grey(255)), grey(0), rgb_bright], "brightness", top_k=2)
    assert response.model == "brightness" and response.version == "1"
    first, second, third = response.results
    assert [(l.index, l.name) for l in first.labels] == [(0, "bright"), (2, "neutral")]
    assert second.labels[0].name == "dark"
    assert first.labels[0].probability > 0.9
    assert sum(l.probability for l in first.labels) <= 1.0 + 1e-6
    assert first.conversion == "L 8x8 -> grey 8x8"
    assert third.conversion == "RGB 30x20 -> grey 8x8 (resized)"
    assert third.labels[0].name == "bright"


def test_classify_agrees_with_model_infer(server, client, repo):
    rng = np.random.default_rng(5)
    pictures = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(6)]
    task = client.classify(pictures, "brightness", top_k=3)
    tensor = np.stack([(p.astype(np.float32) / 255 - 0.5) / 0.5 for p in pictures])[:, None]
    with triton.InferenceServerClient(server.grpc_address) as tc:
        x = triton.InferInput("images", list(tensor.shape), "FP32")
        x.set_data_from_numpy(tensor)
        probabilities = tc.infer("brightness", [x]).as_numpy("probabilities")
    for row, result in zip(probabilities, task.results):
        assert [l.index for l in result.labels] == list(np.argsort(-row, kind="stable"))
        np.testing.assert_allclose([l.probability for l in result.labels],
                                   np.sort(row)[::-1], rtol=1e-5)


def test_classify_limits_and_errors(client):
    expect_error(lambda: client.classify([grey(1)], "brightness", top_k=4),
           grpc.StatusCode.INVALID_ARGUMENT, "top_k: expected 1..3, got 4")
    expect_error(lambda: client.classify([grey(1)] * 33, "brightness"),
           grpc.StatusCode.INVALID_ARGUMENT, "images: expected 1..32 items, got 33")
    expect_error(lambda: client.classify([grey(1)], "gen"),
           grpc.StatusCode.INVALID_ARGUMENT,
           "model: 'gen' is a generator model; Classify needs a classifier model")
    expect_error(lambda: client.classify([grey(1)], "nope"),
           grpc.StatusCode.NOT_FOUND, "model 'nope' is not loaded")
    expect_error(lambda: client.classify([b"\x89PNG\r\n\x1a\n garbage"], "brightness"),
           grpc.StatusCode.INVALID_ARGUMENT, "images[0]: not a readable image")
    truncated = png(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))[:60]
    expect_error(lambda: client.classify([grey(1), truncated], "brightness"),
           grpc.StatusCode.INVALID_ARGUMENT, "images[1]:")
    expect_error(lambda: client.classify([np.zeros((0, 5), np.uint8)], "brightness"),
           grpc.StatusCode.INVALID_ARGUMENT, "images[0]: image is empty (5x0)")
    bad_raw = pb.Image(raw=pb.RawImage(pixels=b"\0" * 10, height=2, width=2, channels=3))
    expect_error(lambda: client._stub.Classify(pb.ClassifyRequest(model="brightness", images=[bad_raw])),
           grpc.StatusCode.INVALID_ARGUMENT, "images[0]: raw.pixels has 10 bytes; 2x2x3 needs 12")
    two = pb.Image(raw=pb.RawImage(pixels=b"\0" * 8, height=2, width=2, channels=2))
    expect_error(lambda: client._stub.Classify(pb.ClassifyRequest(model="brightness", images=[two])),
           grpc.StatusCode.INVALID_ARGUMENT, "raw.channels must be 1, 3 or 4, got 2")


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_from_header(server, client):
    details = expect_error(lambda: client.classify([bomb_png(100_000, 100_000)], "brightness"),
                     grpc.StatusCode.INVALID_ARGUMENT)
    assert details == ("images[0]: 100000x100000 = 10000000000 pixels exceeds the limit of "
                       "1000000 (max_image_pixels)")
    assert client.classify([grey(9)], "brightness").results  # still serving


# -- Generate ----------------------------------------------------------------------------------


def test_generate_is_reproducible_with_a_seed(client):
    first = client.generate("gen", count=3, seed=42)
    again = client.generate("gen", count=3, seed=42)
    other = client.generate("gen", count=3, seed=43)
    assert first.seed == 42 and len(first.images) == 3
    assert [i.encoded for i in first.images] == [i.encoded for i in again.images]
    assert [list(v.values) for v in first.latents] == [list(v.values) for v in again.latents]
    assert [i.encoded for i in first.images] != [i.encoded for i in other.images]
    assert to_pil(first.images[0]).size == (8, 8)
    unseeded = client.generate("gen", count=1)
    assert unseeded.seed != 0  # the server picked one and says which


def test_generate_from_explicit_latents_matches_the_model(client, repo):
    latents = [[0.1, -0.2, 0.3, 0.4], [1.0, 0.0, -1.0, 0.5]]
    response = client.generate("gen", latents=latents, raw=True)
    expected = session(repo, "gen").run(None, {"latent": np.array(latents, np.float32)})[0]
    pixels = np.clip(np.rint((expected * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)
    for image, want in zip(response.images, pixels):
        got = np.frombuffer(image.raw.pixels, np.uint8).reshape(8, 8)
        assert np.abs(got.astype(int) - want[0]).max() <= 1


def test_generate_interpolation_walks_between_endpoints(client):
    start, end = [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]
    response = client.generate("gen", interpolate=(start, end, 5))
    vectors = np.array([v.values for v in response.latents])
    assert vectors.shape == (5, 4)
    np.testing.assert_allclose(vectors[0], start)
    np.testing.assert_allclose(vectors[-1], end)
    np.testing.assert_allclose(vectors[2], [0.5, 1.0, 1.5, 2.0])
    drawn = client.generate("gen", interpolate=(None, None, 3), seed=7)
    again = client.generate("gen", interpolate=(None, None, 3), seed=7)
    assert [list(v.values) for v in drawn.latents] == [list(v.values) for v in again.latents]


def test_conditional_generation_and_class_label_rules(client):
    a = client.generate("cgen", count=2, seed=1, class_label=0)
    b = client.generate("cgen", count=2, seed=1, class_label=2)
    assert [list(v.values) for v in a.latents] == [list(v.values) for v in b.latents]
    assert [i.encoded for i in a.images] != [i.encoded for i in b.images]
    expect_error(lambda: client.generate("cgen", count=1),
           grpc.StatusCode.INVALID_ARGUMENT,
           "class_label: model 'cgen' is a conditional generator; give a class label in 0..2")
    expect_error(lambda: client.generate("cgen", count=1, class_label=3),
           grpc.StatusCode.INVALID_ARGUMENT, "class_label: expected 0..2, got 3")
    expect_error(lambda: client.generate("gen", count=1, class_label=1),
           grpc.StatusCode.INVALID_ARGUMENT, "class_label: model 'gen' is not conditional")


def test_tensor_api_checks_class_labels_of_conditional_generators(server):
    with triton.InferenceServerClient(server.grpc_address) as tc:
        latent = triton.InferInput("latent", [2, 4], "FP32")
        latent.set_data_from_numpy(np.zeros((2, 4), np.float32))
        label = triton.InferInput("class_label", [2, 1], "INT64")
        label.set_data_from_numpy(np.array([[1], [3]], np.int64))
        with pytest.raises(triton.InferenceServerException) as info:
            tc.infer("cgen", [latent, label])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input 'class_label': class labels must lie in 0..2, got range [1, 3]" in \
            info.value.message()
        label.set_data_from_numpy(np.array([[1], [2]], np.int64))
        assert tc.infer("cgen", [latent, label]).as_numpy("images").shape == (2, 1, 8, 8)


def test_generate_limits(client):
    expect_error(lambda: client.generate("gen", count=21),
           grpc.StatusCode.INVALID_ARGUMENT, "count: expected 1..20 items, got 21")
    expect_error(lambda: client.generate("gen", latents=[[1.0, 2.0, 3.0]]),
           grpc.StatusCode.INVALID_ARGUMENT,
           "latents[0]: has 3 values; model 'gen' expects latent_size 4")
    expect_error(lambda: client.generate("gen", interpolate=(None, None, 1)),
           grpc.StatusCode.INVALID_ARGUMENT, "interpolation.steps: expected 2..20, got 1")
    expect_error(lambda: client.generate("gen", latents=[[float("nan")] * 4]),
           grpc.StatusCode.INVALID_ARGUMENT, "latents: values must be finite numbers")


# -- Encode / Decode / Reconstruct --------------------------------------------------------------


def test_encode_decode_reconstruct(client, repo):
    picture = np.random.default_rng(6).integers(0, 256, (8, 8), dtype=np.uint8)
    encoded = client.encode([picture], "enc")
    x = ((picture.astype(np.float32) / 255 - 0.5) / 0.5)[None, None]
    expected = session(repo, "enc").run(None, {"images": x})[0]
    np.testing.assert_allclose(encoded.latents[0].values, expected[0], rtol=1e-5, atol=1e-6)

    decoded = client.decode([list(encoded.latents[0].values)], "dec")
    assert to_pil(decoded.images[0]).size == (8, 8)

    rebuilt = client.reconstruct([picture, np.full((16, 16, 3), 200, np.uint8)], "ae", raw=True)
    first = np.frombuffer(rebuilt.images[0].raw.pixels, np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(first, picture)  # identity autoencoder
    assert rebuilt.errors[0] < 1e-10 and rebuilt.errors[1] < 1e-10

    expect_error(lambda: client.decode([[1.0] * 5], "dec"), grpc.StatusCode.INVALID_ARGUMENT,
           "latents[0]: has 5 values; model 'dec' expects latent_size 4")
    expect_error(lambda: client.encode([picture], "ae"), grpc.StatusCode.INVALID_ARGUMENT,
           "Encode needs an encoder model")
    expect_error(lambda: client.reconstruct([picture], "enc"), grpc.StatusCode.INVALID_ARGUMENT,
           "Reconstruct needs an autoencoder model")


# -- SuperResolve ------------------------------------------------------------------------------


def untiled_grey(repo, picture: np.ndarray) -> np.ndarray:
    """The whole grey image through the model in one run, with the BT.601 studio-range luma
    mapping of `color_mode: y` (16 + 219 * g / 255 in, its inverse out)."""
    luma = 16.0 + picture.astype(np.float32) * (219.0 / 255.0)
    y = session(repo, "sr").run(None, {"low_res": (luma / 255.0)[None, None]})[0][0, 0]
    grey = (y * 255.0 - 16.0) * (255.0 / 219.0)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def test_tiled_super_resolution_equals_untiled(client, repo):
    picture = np.random.default_rng(7).integers(0, 256, (45, 70), dtype=np.uint8)  # 3x5 tiles
    response = client._stub.SuperResolve(pb.SuperResolveRequest(
        model="sr", image=pb.Image(encoded=png(picture)), format=pb.RAW))
    assert response.scale == 3
    assert "15 tile(s)" in response.conversion and "grey through the network" in response.conversion
    tiled = np.frombuffer(response.image.raw.pixels, np.uint8).reshape(135, 210)
    untiled = untiled_grey(repo, picture)
    # No seams: equal everywhere up to float summation order flipping a rounding.
    assert np.abs(tiled.astype(int) - untiled.astype(int)).max() <= 1
    assert (tiled != untiled).mean() < 0.01


def executed_batches(server, model: str) -> dict[int, int]:
    with triton.InferenceServerClient(server.grpc_address) as tc:
        (stats,) = tc.get_inference_statistics(model).model_stats
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_tile_runs_are_the_batches_an_upscale_executes(client, server):
    """What warm-up plans from tiling.tile_runs is what the tiler really sends: 150 pixels wide
    at tile 16 is 10 windows a row, requests of 8 and 2 (max_batch_size 8), for 3 rows."""
    picture = np.random.default_rng(3).integers(0, 256, (45, 150), dtype=np.uint8)
    before = executed_batches(server, "sr")
    client.upscale(picture, "sr", stream=False)
    after = executed_batches(server, "sr")
    executed = {size: count - before.get(size, 0) for size, count in after.items()
                if count > before.get(size, 0)}
    runs = tile_runs(150, 45, TILE, 4, 8)
    assert runs == {(8, 24, 24), (2, 24, 24)}
    assert executed == {batch: 3 for batch, _, _ in runs}


def test_super_resolution_colour_modes(client):
    rng = np.random.default_rng(8)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    out = client.upscale(rgb, "sr", stream=False)
    assert out.mode == "RGB" and out.size == (72, 60)
    rgba = np.dstack([rgb, np.full((20, 24), 128, np.uint8)])
    out = client.upscale(rgba, "sr")
    assert out.mode == "RGBA" and out.size == (72, 60)
    assert np.abs(np.asarray(out)[:, :, 3].astype(int) - 128).max() <= 1  # alpha: plain resize
    streamed = client.upscale(rgb, "sr", stream=True)
    np.testing.assert_array_equal(np.asarray(streamed), np.asarray(client.upscale(rgb, "sr",
                                                                                  stream=False)))


def test_large_result_is_refused_unary_and_streamed(server, client, repo):
    picture = np.random.default_rng(9).integers(0, 256, (250, 250), dtype=np.uint8)
    request = pb.SuperResolveRequest(model="sr", image=pb.Image(encoded=png(picture)),
                                     format=pb.RAW)

    def sr_runs() -> float:
        return metric_value(server.metrics_text(), "inference_batch_size_count", model="sr")

    runs = sr_runs()
    expect_error(lambda: client._stub.SuperResolve(request), grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "the upscaled image needs 562500 bytes, more than the 400000-byte message "
                 "limit; use SuperResolveStream")
    # A PNG is refused from the planned size too: before any tile is computed.
    as_png = pb.SuperResolveRequest(model="sr", image=pb.Image(encoded=png(picture)),
                                    format=pb.PNG)
    expect_error(lambda: client._stub.SuperResolve(as_png), grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "use SuperResolveStream")
    assert sr_runs() == runs
    chunks = list(client._stub.SuperResolveStream(request))
    assert len(chunks) > 1 and all(len(c.pixels) < 400_000 for c in chunks)
    streamed = np.asarray(client.upscale(png(picture), "sr"))
    assert streamed.shape == (750, 750)
    assert np.abs(streamed.astype(int) - untiled_grey(repo, picture).astype(int)).max() <= 1


# -- models, metrics, async client, CLI ---------------------------------------------------------


def test_list_and_describe_models(client):
    names = {m.name: m for m in client.list_models().models}
    assert set(names) == {"ae", "brightness", "cgen", "dec", "enc", "gen", "sr"}
    info = client.describe_model("cgen")
    assert (info.task_kind, info.latent_size, info.num_classes) == ("conditional_generator", 4, 3)
    assert list(info.labels) == ["a", "b", "c"]
    assert info.execution_provider == "CPUExecutionProvider"
    assert [(t.name, list(t.shape)) for t in info.inputs] == [("latent", [-1, 4]),
                                                              ("class_label", [-1, 1])]
    assert names["sr"].upscale_factor == 3 and names["sr"].color_mode == "y"
    expect_error(lambda: client.describe_model("nope"), grpc.StatusCode.NOT_FOUND, "'nope'")


def test_task_rpcs_share_the_metrics(server, client):
    def counts() -> tuple[float, float]:
        text = server.metrics_text()
        return (metric_value(text, "inference_requests_total", model="brightness",
                             version="1", rpc="Classify", code="OK"),
                metric_value(text, "inference_batch_size_count", model="brightness", version="1"))

    requests, batches = counts()
    client.classify([grey(3)], "brightness")
    # One call, one image: one more answered RPC and one more executed batch, exactly.
    assert counts() == (requests + 1, batches + 1)


def test_async_client(server):
    import asyncio

    async def scenario():
        async with AsyncTaskClient(server.grpc_address, timeout=30) as client:
            results = await asyncio.gather(
                client.classify([grey(250)], "brightness"),
                client.generate("gen", count=2, seed=3),
                client.upscale(grey(90, side=10), "sr"),
                client.describe_model("sr"),
            )
            return results

    classified, generated, upscaled, info = asyncio.run(scenario())
    assert classified.results[0].labels[0].name == "bright"
    assert len(generated.images) == 2
    assert upscaled.size == (30, 30)
    assert info.name == "sr"


def run_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.client", "--server", server.grpc_address, "--quiet", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_cli_upscale_matches_in_process_onnx_runtime(server, repo, tmp_path):
    picture = np.random.default_rng(10).integers(0, 256, (33, 41), dtype=np.uint8)
    source, target = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(picture).save(source)
    result = run_cli(server, "upscale", str(source), str(target), "--model", "sr")
    assert result.returncode == 0, result.stderr
    assert f"{target}: 123x99" in result.stdout
    served = np.asarray(Image.open(target))
    assert np.abs(served.astype(int) - untiled_grey(repo, picture).astype(int)).max() <= 1


def test_cli_commands(server, tmp_path):
    image = tmp_path / "bright.png"
    Image.fromarray(grey(240)).save(image)
    classify = run_cli(server, "classify", str(image), "--model", "brightness", "--top-k", "2")
    assert classify.returncode == 0 and "bright 0." in classify.stdout
    generate = run_cli(server, "generate", "--model", "cgen", "--count", "3", "--class", "1",
                       "--seed", "5", "--out", str(tmp_path / "gen"))
    assert generate.returncode == 0, generate.stderr
    assert len(list((tmp_path / "gen").glob("cgen_5_*.png"))) == 3
    reconstruct = run_cli(server, "reconstruct", str(image), "--model", "ae")
    assert reconstruct.returncode == 0 and "error 0.000000" in reconstruct.stdout
    models = run_cli(server, "models")
    assert models.returncode == 0 and '"name": "sr"' in models.stdout
    failing = run_cli(server, "generate", "--model", "cgen", "--out", str(tmp_path / "x"))
    assert failing.returncode == 1
    assert "INVALID_ARGUMENT: class_label:" in failing.stderr


def test_colour_upscale_runs_bt601_luma_through_the_network(client, repo):
    rgb = np.random.default_rng(11).integers(0, 256, (30, 36, 3), dtype=np.uint8)
    served = np.asarray(client.upscale(rgb, "sr", stream=False)).astype(np.float64)
    r, g, b = (rgb[:, :, i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    y_up = session(repo, "sr").run(
        None, {"low_res": (y / 255).astype(np.float32)[None, None]})[0][0, 0] * 255
    up = [np.asarray(Image.fromarray(np.clip(np.rint(c), 0, 255).astype(np.uint8)).resize(
        (108, 90), Image.Resampling.BICUBIC), np.float64) for c in (cb, cr)]
    yy, cbu, cru = y_up - 16, up[0] - 128, up[1] - 128
    expected = np.stack([1.164384 * yy + 1.596027 * cru,
                         1.164384 * yy - 0.391762 * cbu - 0.812968 * cru,
                         1.164384 * yy + 2.017232 * cbu], axis=-1)
    expected = np.clip(np.rint(expected), 0, 255)
    assert served.shape == (90, 108, 3)
    assert np.abs(served - expected).max() <= 2
