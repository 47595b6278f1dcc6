"""Images for the task API: safe decoding, conversion to model inputs and back.

Decoding reads the header first and refuses an image whose declared size exceeds the pixel limit
before any pixel is decompressed (decompression bombs).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.core.config import PixelScaling
from service.errors import InvalidArgument
from service.tasks.pixels import MODE_BY_CHANNELS

_ACCEPTED_FORMATS = ("PNG", "JPEG")
_IDENTITY = PixelScaling(scale=1 / 255, mean=0.0, std=1.0)


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int


@dataclass(frozen=True)
class EncodedImage:
    """PNG or JPEG bytes, as a client sent them."""

    data: bytes


@dataclass(frozen=True)
class RawPixels:
    """8-bit pixels, row-major HxWxC, as a client sent them."""

    pixels: bytes
    height: int
    width: int
    channels: int


ImageData = EncodedImage | RawPixels


def decode(image: ImageData, where: str, limits: ImageLimits) -> Image.Image:
    if isinstance(image, EncodedImage):
        return decode_encoded(image.data, where, limits)
    return decode_raw(image.pixels, image.height, image.width, image.channels, where, limits)


def _check_size(width: int, height: int, where: str, limits: ImageLimits) -> None:
    if width < 1 or height < 1:
        raise InvalidArgument(f"{where}: image is empty ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InvalidArgument(
            f"{where}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limits.max_pixels} (max_image_pixels)"
        )


def decode_encoded(data: bytes, where: str, limits: ImageLimits) -> Image.Image:
    """PNG/JPEG bytes to an image in L, RGB or RGBA mode."""
    if not data:
        raise InvalidArgument(f"{where}: no image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # parses the header only
    except Image.DecompressionBombError as exc:
        raise InvalidArgument(f"{where}: image exceeds the pixel limit ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidArgument(
            f"{where}: not a readable image; expected PNG or JPEG bytes ({len(data)} bytes came)"
        ) from None
    if image.format not in _ACCEPTED_FORMATS:
        raise InvalidArgument(f"{where}: image format must be PNG or JPEG, got {image.format}")
    _check_size(image.width, image.height, where, limits)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgument(f"{where}: truncated or corrupt {image.format} data ({exc})") from None
    return normalise_mode(image)


def decode_raw(pixels: bytes, height: int, width: int, channels: int, where: str,
               limits: ImageLimits) -> Image.Image:
    if channels not in (1, 3, 4):
        raise InvalidArgument(f"{where}: raw.channels must be 1, 3 or 4, got {channels}")
    _check_size(width, height, where, limits)
    expected = height * width * channels
    if len(pixels) != expected:
        raise InvalidArgument(
            f"{where}: raw.pixels has {len(pixels)} bytes; {height}x{width}x{channels} needs "
            f"{expected}"
        )
    return Image.frombytes(MODE_BY_CHANNELS[channels], (width, height), pixels)


def normalise_mode(image: Image.Image) -> Image.Image:
    """Any mode to L, RGB or RGBA, keeping transparency when there is some."""
    if image.mode in ("L", "RGB", "RGBA"):
        return image
    if image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    if image.mode in ("1", "I", "I;16", "I;16B", "I;16L", "F"):
        if image.mode.startswith("I;16") or image.mode in ("I", "F"):
            # 16-bit and float greys: scale to 8 bits rather than clip.
            array = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if image.mode.startswith("I") else max(float(array.max()), 1.0)
            return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
        return image.convert("L")
    return image.convert("RGB")


def to_model_input(
    image: Image.Image, shape: list[int], scaling: PixelScaling | None
) -> tuple[np.ndarray, str]:
    """An image to one CxHxW float32 input of a fixed-size model, and what was done to it."""
    channels, height, width = shape
    target = "L" if channels == 1 else "RGB"
    steps = [f"{image.mode} {image.width}x{image.height} -> "
             f"{'grey' if channels == 1 else 'RGB'} {width}x{height}"]
    if image.mode != target:
        image = image.convert(target)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        steps.append("(resized)")
    array = np.asarray(image, dtype=np.float32)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return scale_pixels(array, scaling), " ".join(steps)


def scale_pixels(pixels: np.ndarray, scaling: PixelScaling | None) -> np.ndarray:
    s = scaling or _IDENTITY
    return ((pixels * np.float32(s.scale) - np.float32(s.mean)) / np.float32(s.std)).astype(
        np.float32, copy=False
    )


def unscale_pixels(values: np.ndarray, scaling: PixelScaling | None) -> np.ndarray:
    """Model output values back to 0..255 floats (unrounded)."""
    s = scaling or _IDENTITY
    return (values.astype(np.float32) * np.float32(s.std) + np.float32(s.mean)) / np.float32(s.scale)


def chw_to_image(chw: np.ndarray) -> Image.Image:
    """A CxHxW uint8 array (C 1 or 3) to an image."""
    if chw.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(chw[0]))  # 2-D uint8: mode L
    return Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))  # HxWx3 uint8: RGB


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # level 3: far faster than 6, ~same size
    return buffer.getvalue()
