"""Turning uploaded images into the model's input, as training saw its images: one channel (or three), the model's
height and width, light items on a dark background, pixels 0-255 (the model's input scaling to [0, 1] follows)."""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# A photo's border brighter than this (of 255) is a light background: the image is inverted, since Fashion-MNIST
# items are light on black.
LIGHT_BACKGROUND = 127
FORMATS = ("PNG", "JPEG", "BMP", "GIF")  # what training reads too; Pillow tries no other reader (EPS runs Ghostscript)
# An image larger than this is refused from its header, before a pixel is decoded: a few hundred KB of PNG can
# decode to hundreds of millions of pixels (a decompression bomb). 50 MP: a large phone photo.
MAX_PIXELS = 50_000_000


class BadImage(ValueError):
    """Bytes that are not a whole image Pillow can read."""


def decode(data: bytes, shape: tuple[int, int, int], name: str = "image") -> np.ndarray:
    """The image in `data` as uint8 pixels of `shape` (height, width, channels): converted to grayscale (or RGB),
    resized, and inverted when its background is light; BadImage naming `name` if it is not a whole PNG, JPEG, BMP
    or GIF of at most MAX_PIXELS pixels."""
    height, width, channels = shape
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            columns, rows = image.size  # from the header
            if columns * rows <= MAX_PIXELS:
                image.load()  # a truncated file fails here, not later
                converted = image.convert("L" if channels == 1 else "RGB")
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not a readable image (not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]})") from None
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        raise BadImage(f"{name}: not a readable image ({error})") from None
    if columns * rows > MAX_PIXELS:
        raise BadImage(f"{name}: {columns}x{rows} pixels, more than {MAX_PIXELS:,}")
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(converted, dtype=np.uint8).reshape(height, width, channels)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return 255 - pixels if border.mean() > LIGHT_BACKGROUND else pixels
