"""The demo page at `/`, end to end in a real headless Chromium (Debian's package, driven by
Playwright) against a real server over the bundled models: it loads with no console errors and
from this server only, each of its four panels shows what a direct REST call for the same input
answers, API errors are shown with the server's message, and each step leaves a screenshot in
tests/artifacts/demo_page/."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from loadtest.payloads import fashion_mnist_images
from rest_client import call, png
from servers import ROOT, serving

MODELS = ROOT / "models"
SERVED = ("cdcgan", "dcgan", "espcn_x3", "fashion_cnn", "vae_decoder")
ARTIFACTS = ROOT / "tests" / "artifacts" / "demo_page"
CHROMIUM = "/usr/bin/chromium"
# What works on these machines: no sandbox (root, no user namespaces), no GPU, and nothing that
# reaches out to the network on its own.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
KEY = "demo-page-key"
LATENT_RANGE = 3  # the pad spans -3..3 on both axes (demo.js)


@pytest.fixture(scope="module")
def server():
    flags = [flag for name in SERVED for flag in ("--model", name)]
    yield from serving(MODELS, *flags)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1000})
        yield context
        context.close()


class Log:
    """What a page said: console errors and warnings, uncaught errors, and every URL it asked."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda message: message.type in ("error", "warning") and
                self.problems.append(f"console {message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("request", lambda request: self.requests.append(request.url))


def open_page(browser, server) -> tuple[Page, Log]:
    page = browser.new_page()
    page.set_default_timeout(15_000)  # a wait that fails says so well before pytest's timeout
    log = Log(page)
    page.goto(f"{server.http_url}/")
    return page, log


@pytest.fixture
def demo(browser, server):
    page, log = open_page(browser, server)
    expect(page.locator("#models tbody tr")).to_have_count(len(SERVED))
    yield page, log
    page.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")


def drop(page: Page, selector: str, name: str, data: bytes, mime: str) -> None:
    """Drop a file on `selector` as a person dragging it from their desktop would."""
    transfer = page.evaluate_handle(
        """([name, data, mime]) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, { type: mime }));
          return transfer;
        }""", [name, base64.b64encode(data).decode(), mime])
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def image_bytes(page: Page, selector: str) -> bytes:
    """The bytes an <img> of the page shows (a blob: or data: URL)."""
    encoded = page.eval_on_selector(selector, """async (img) => {
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        let text = "";
        for (const byte of bytes) text += String.fromCharCode(byte);
        return btoa(text);
      }""")
    return base64.b64decode(encoded)


def natural_sizes(page: Page, selector: str) -> list[list[int]]:
    """[width, height] of every <img> matching `selector`, once each has loaded."""
    page.wait_for_function("selector => [...document.querySelectorAll(selector)].every("
                           "img => img.complete && img.naturalWidth > 0)", arg=selector)
    return page.eval_on_selector_all(selector, "imgs => imgs.map(img => [img.naturalWidth, "
                                               "img.naturalHeight])")


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)


def boot() -> np.ndarray:
    """The first Fashion-MNIST test image, an ankle boot."""
    images = fashion_mnist_images(1)
    assert images is not None, "Debian's dataset-fashion-mnist is missing: run `make apt-deps`"
    return images[0]


def photo(width: int, height: int) -> np.ndarray:
    """A photo-like RGB image: smooth gradients, a disc and fine stripes (detail to upscale)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.5) ** 2 < (height * 0.3) ** 2) * 90.0
    stripes = (np.sin(x / 2.5) * np.cos(y / 3.5) > 0) * 40.0
    rgb = np.stack([x / width * 200 + disc, y / height * 180 + stripes, 120 + disc - stripes], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _mitchell(x: np.ndarray) -> np.ndarray:
    """The Mitchell-Netravali cubic, B = C = 1/3."""
    x = np.abs(x)
    near = (7 * x**3 - 12 * x**2 + 16 / 3) / 6
    far = (-7 / 3 * x**3 + 12 * x**2 - 20 * x + 32 / 3) / 6
    return np.where(x < 1, near, np.where(x < 2, far, 0))


def mitchell_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """`image` (H x W x C) upscaled by `scale` with the Mitchell cubic, edges clamped."""
    out = image.astype(np.float64)
    for axis in (0, 1):
        size = out.shape[axis]
        centres = (np.arange(size * scale) + 0.5) / scale - 0.5
        taps = np.floor(centres).astype(int)[:, None] + np.arange(-1, 3)
        weights = _mitchell(centres[:, None] - taps)
        weights /= weights.sum(axis=1, keepdims=True)
        moved = np.moveaxis(out, axis, 0)[np.clip(taps, 0, size - 1)]
        out = np.moveaxis(np.einsum("nk,nk...->n...", weights, moved), 0, axis)
    return np.clip(np.round(out), 0, 255).astype(np.int16)


def test_the_page_lists_the_models_and_loads_only_from_this_server(demo, server):
    page, log = demo
    status, _, body = call(server, "GET", "/v1/models")
    models = json.loads(body)["models"]
    rows = page.locator("#models tbody tr")
    assert [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())] == [
        [m["name"], m["task_kind"], ", ".join(m["versions"]), m["state"]] for m in models]
    options = {panel: page.locator(f"#{panel} select[name=model] option").all_inner_texts()
               for panel in ("classify", "upscale", "generate", "latent")}
    assert options == {"classify": ["fashion_cnn"], "upscale": ["espcn_x3"],
                       "generate": ["cdcgan", "dcgan", "vae_decoder"], "latent": ["vae_decoder"]}
    # The page, its style sheet, its two modules and the model list: nothing from elsewhere.
    assert sorted(log.requests) == [f"{server.http_url}{path}" for path in (
        "/", "/demo/api.js", "/demo/demo.css", "/demo/demo.js", "/v1/models")]
    screenshot(page, "0_models")
    assert log.problems == []


def test_the_page_and_its_files_are_served_with_their_types(server):
    types = {"/": "text/html", "/demo/demo.js": "text/javascript", "/demo/api.js":
             "text/javascript", "/demo/demo.css": "text/css"}
    for path, kind in types.items():
        status, headers, body = call(server, "GET", path)
        assert (status, headers["content-type"]) == (200, f"{kind}; charset=utf-8"), path
        name = "index.html" if path == "/" else path.rsplit("/", 1)[1]
        assert body == (ROOT / "service/http/static" / name).read_bytes()
    status, _, body = call(server, "GET", "/demo/app.py")
    assert (status, json.loads(body)) == (404, {"error": "no demo file 'app.py'"})


def test_a_dropped_image_shows_the_classifiers_top5_as_bars(demo, server):
    page, log = demo
    image = png(boot())
    drop(page, "#classify .drop", "boot.png", image, "image/png")
    bars = page.locator("#classify .bar")
    expect(bars).to_have_count(5)
    status, _, body = call(server, "POST", "/v1/models/fashion_cnn/classify?top_k=5", image,
                           {"Content-Type": "image/png"})
    assert status == 200
    [result] = json.loads(body)["results"]
    expected = [(label["name"], label["probability"]) for label in result["labels"]]
    shown = [(bars.nth(i).locator(".label").inner_text(),
              float(bars.nth(i).get_attribute("data-probability"))) for i in range(5)]
    assert shown == expected
    for i, (_, probability) in enumerate(expected):
        assert bars.nth(i).locator(".value").inner_text() == f"{probability * 100:.1f}%"
        # The bar as drawn: its filled part of the track, within a pixel.
        filled, track = bars.nth(i).locator(".fill").evaluate(
            "fill => [fill.getBoundingClientRect().width, fill.parentElement.clientWidth]")
        assert abs(filled - probability * track) <= 1
    expect(page.locator("#classify .note")).to_have_text(
        f"boot.png by fashion_cnn v1: {result['conversion']}")
    assert image_bytes(page, "#classify img.preview") == image  # sent as dropped
    screenshot(page, "1_classify")
    assert log.problems == []


def test_a_picked_photo_shows_bicubic_and_the_models_upscale_side_by_side(demo, server):
    page, log = demo
    original = photo(320, 180)
    page.set_input_files("#upscale input[type=file]", files=[{
        "name": "photo.png", "mimeType": "image/png", "buffer": png(original)}])
    expect(page.locator("#upscale img.model")).to_be_visible()
    expect(page.locator("#upscale img.bicubic")).to_be_visible()
    assert natural_sizes(page, "#upscale img") == [[768, 540], [768, 540]]
    # The right image is the model's answer for the photo's centre 256 x 180, byte for byte: the
    # page sent exactly those pixels (as a canvas encodes them: RGBA, opaque).
    crop = original[:, 32:288]
    opaque = np.dstack([crop, np.full(crop.shape[:2], 255, np.uint8)])
    status, headers, upscaled = call(server, "POST", "/v1/models/espcn_x3/superresolve",
                                     png(opaque), {"Content-Type": "image/png"})
    assert status == 200
    assert image_bytes(page, "#upscale img.model") == upscaled
    # The left one is the bicubic upscale of the same crop: Chromium's high-quality canvas
    # smoothing is the Mitchell-Netravali cubic, here within a rounding step.
    bicubic = pixels(image_bytes(page, "#upscale img.bicubic"))
    assert np.abs(bicubic - mitchell_upscale(crop, 3)).max() <= 1
    assert not np.array_equal(bicubic, pixels(upscaled))
    expect(page.locator("#upscale .note")).to_have_text(
        f"photo.png: 320\u00d7180, its centre 256\u00d7180, upscaled \u00d73 to 768\u00d7540 "
        f"({headers['x-conversion']})")
    screenshot(page, "2_upscale")
    assert log.problems == []


def test_a_generator_fills_a_grid_for_a_seed_and_a_class(demo, server):
    page, log = demo
    form = page.locator("#generate form")
    form.locator("select[name=model]").select_option("cdcgan")
    expect(form.locator(".class-field")).to_be_visible()
    form.locator("select[name=class_label]").select_option("7")  # Sneaker
    form.locator("input[name=count]").fill("12")
    form.locator("input[name=seed]").fill("5")
    form.locator("button", has_text="Generate").click()
    tiles = page.locator("#generate .grid img")
    expect(tiles).to_have_count(12)
    status, _, body = call(server, "POST", "/v1/models/cdcgan/generate",
                           {"count": 12, "seed": 5, "class_label": 7})
    assert status == 200
    expected = [f"data:image/png;base64,{image['png']}" for image in json.loads(body)["images"]]
    assert [tiles.nth(i).get_attribute("src") for i in range(12)] == expected
    assert natural_sizes(page, "#generate .grid img") == [[28, 28]] * 12
    screenshot(page, "3_generate_cdcgan")
    # An unconditional one has no class to choose.
    form.locator("select[name=model]").select_option("dcgan")
    expect(form.locator(".class-field")).to_be_hidden()
    form.locator("input[name=count]").fill("4")
    form.locator("button", has_text="Generate").click()
    expect(tiles).to_have_count(4)
    expect(page.locator("#generate .note")).to_have_text("4 images by dcgan v1, seed 5")
    assert log.problems == []


def test_a_refused_request_shows_the_servers_message(demo, server):
    page, log = demo
    form = page.locator("#generate form")
    form.locator("select[name=model]").select_option("dcgan")
    form.locator("input[name=count]").fill("300")
    form.locator("button", has_text="Generate").click()
    status, _, body = call(server, "POST", "/v1/models/dcgan/generate", {"count": 300, "seed": 1})
    assert status == 400
    expect(page.locator("#generate .error")).to_have_text(
        f"400 Bad Request: {json.loads(body)['error']}")
    screenshot(page, "3_generate_error")
    # A seed past what a JavaScript number holds is refused before any call, never rounded.
    form.locator("input[name=count]").fill("1")
    form.locator("input[name=seed]").fill("9007199254740993")
    form.locator("button", has_text="Generate").click()
    expect(page.locator("#generate .error")).to_have_text(
        "seed: expected a whole number 0..9007199254740991 (what the page can send exactly), "
        "got '9007199254740993'")
    assert log.problems == [
        "console error: Failed to load resource: the server responded with a status of 400 "
        "(Bad Request)"]


# A pixel of the 242-pixel pad is 0.025 of the latent; the page rounds to 0.01.
LATENT_TOLERANCE = 0.02


def decoded(page: Page, server, at: tuple[float, float]) -> bytes:
    """The page's image for the latent point it says it shows; checked against a direct call."""
    shown = json.loads(page.get_attribute("#latent img.decoded", "data-latent"))
    assert shown == pytest.approx(list(at), abs=LATENT_TOLERANCE)
    expect(page.locator("#latent .point")).to_have_text(
        f"z = ({shown[0]:.2f}, {shown[1]:.2f})")
    status, _, body = call(server, "POST", "/v1/models/vae_decoder/decode", {"latents": [shown]},
                           {"Accept": "image/png"})
    assert status == 200
    image = image_bytes(page, "#latent img.decoded")
    assert image == body
    return image


def test_the_latent_pad_decodes_the_point_clicked_or_dragged_to(demo, server):
    page, log = demo
    pad = page.locator("#latent .pad")
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()

    def point(z: tuple[float, float]) -> tuple[float, float]:
        """Where `z` is on the screen."""
        return (box["x"] + (z[0] / LATENT_RANGE + 1) / 2 * box["width"],
                box["y"] + (1 - z[1] / LATENT_RANGE) / 2 * box["height"])

    def wait_for_point(z: tuple[float, float]) -> None:
        page.wait_for_function(
            """([x, y, tolerance]) => {
              const img = document.querySelector("#latent img.decoded");
              const shown = img.dataset.latent && JSON.parse(img.dataset.latent);
              return shown && Math.abs(shown[0] - x) < tolerance &&
                Math.abs(shown[1] - y) < tolerance;
            }""", arg=[*z, LATENT_TOLERANCE])

    first = (-1.5, 1.0)
    page.mouse.click(*point(first))
    wait_for_point(first)
    assert natural_sizes(page, "#latent img.decoded") == [[28, 28]]
    first_image = decoded(page, server, first)
    screenshot(page, "4_latent_clicked")
    # Dragging: the image follows to where the pointer lets go.
    start, end = (1.2, -0.5), (2.0, -2.0)
    page.mouse.move(*point(start))
    page.mouse.down()
    for step in range(1, 6):
        t = step / 5
        page.mouse.move(*point((start[0] + (end[0] - start[0]) * t,
                                start[1] + (end[1] - start[1]) * t)))
    page.mouse.up()
    wait_for_point(end)
    second_image = decoded(page, server, end)
    assert second_image != first_image
    # The arrow keys move the point by 0.1.
    page.keyboard.press("ArrowUp")
    moved = (end[0], end[1] + 0.1)
    wait_for_point(moved)
    decoded(page, server, moved)
    screenshot(page, "4_latent_dragged")
    assert log.problems == []


@pytest.fixture(scope="module")
def keyed_server():
    yield from serving(MODELS, "--model", "fashion_cnn",
                       env={"ONNXSERVE_API_KEYS": json.dumps([KEY])})


def test_with_api_keys_the_page_shows_the_401_and_works_once_given_the_key(browser,
                                                                          keyed_server):
    page, log = open_page(browser, keyed_server)  # the page itself is public
    error = page.locator("#models .error")
    status, _, body = call(keyed_server, "GET", "/v1/models")
    assert status == 401
    expect(error).to_have_text(f"401 Unauthorized: {json.loads(body)['error']} (enter the API "
                               "key at the top of the page)")
    expect(page.locator("#classify .note")).to_have_text(
        "The model list did not load (see Models).")
    screenshot(page, "5_keys_401")
    page.fill("#api-key", "not-the-key")
    page.click("#key-form button")
    expect(error).to_have_text("401 Unauthorized: invalid API key (enter the API key at the top "
                               "of the page)")
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    expect(page.locator("#models tbody tr")).to_have_count(1)
    expect(error).to_be_hidden()
    drop(page, "#classify .drop", "boot.png", png(boot()), "image/png")
    expect(page.locator("#classify .bar")).to_have_count(5)
    screenshot(page, "5_keys_given")
    assert log.problems == ["console error: Failed to load resource: the server responded with "
                            "a status of 401 (Unauthorized)"] * 2
    page.close()
