"""Robust photo decoding with Pillow: sniff by content, fix orientation and colour, resize+crop.

Pillow only, no TensorFlow; thread-safe (ingest runs it in worker threads).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

try:  # HEIC/HEIF, the format of phone photos: Pillow reads it through this plugin
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - a dependency; without it HEIC is reported unsupported
    pillow_heif = None

# The formats convlab accepts, as Pillow names them after sniffing the bytes. AVIF is
# Pillow's own (11.3+); TIFF: 8 or 16 bit, grey, RGB or with alpha, the first page.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP", "MPO", "TIFF", "HEIF",
                              "AVIF"})
# The same list as people name the formats, for messages and page labels.
ACCEPTED_NAMES = "JPEG, PNG, HEIC, AVIF, WEBP, TIFF, BMP or GIF"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
SAMPLES_PER_PIXEL, SAMPLE_FORMAT = 277, 339  # TIFF tags
MAX_BANDS = 4  # grey, grey + alpha, RGB, RGBA: more (multispectral) has no RGB meaning

# A 60-megapixel photo decodes to ~180 MB of RGB; larger images are decoded at a reduced
# scale (JPEG draft mode) or refused, instead of letting one file take the machine's memory.
MAX_PIXELS = 256_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ORIENTATION = 0x0112  # the EXIF tag


class SkipImage(Exception):
    """An input that cannot be used; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    jpeg: bytes
    source_format: str  # what the bytes really were (e.g. "PNG" for a PNG named .jpg)
    source_size: tuple[int, int]  # (width, height) before resizing
    source_mode: str


def sniff(data: bytes) -> tuple[str, tuple[int, int]]:
    """The real format and (width, height) of image bytes, from the header only.

    Raises:
        SkipImage: empty, not an image, or a format convlab does not accept.
    """
    if not data:
        raise SkipImage("empty", "zero-byte file")
    if data[:4] in TIFF_MAGIC:
        _check_tiff_layout(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
    except Image.DecompressionBombError as err:
        raise SkipImage("too large", str(err)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise SkipImage("not an image", type(err).__name__) from None
    if fmt not in ACCEPTED_FORMATS:
        raise SkipImage("unsupported format", str(fmt))
    if size[0] * size[1] > MAX_PIXELS:
        raise SkipImage("too large", f"{size[0]}x{size[1]} pixels, more than {MAX_PIXELS:,}")
    return fmt, size


def _check_tiff_layout(data: bytes) -> None:
    """Refuse, with the reason, a TIFF whose first page has more than 4 bands
    (multispectral: no RGB meaning) or float colour samples, which Pillow cannot read or
    would read wrongly (it keeps the first 3 of 5 bands without a word)."""
    try:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=data[:8])
        fp = io.BytesIO(data)
        fp.seek(ifd.next)
        ifd.load(fp)
    except Exception:  # a damaged header: let Pillow's open say what is wrong
        return
    bands = ifd.get(SAMPLES_PER_PIXEL, 1)
    bands = bands[0] if isinstance(bands, tuple) else bands
    if bands > MAX_BANDS:
        raise SkipImage("too many bands", f"TIFF with {bands} bands per pixel; convlab reads "
                        f"grey, RGB and RGBA (at most {MAX_BANDS}); export an RGB composite")
    sample_format = ifd.get(SAMPLE_FORMAT, (1,))
    sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
    if sample_format == 3 and bands > 1:
        raise SkipImage("unsupported format", f"TIFF with {bands} float bands; save it as "
                        "8- or 16-bit integer RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, compositing transparency over white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit or float greyscale: scale down to 8 bits rather than clipping at 255
        # (floats in [0, 1] as such, larger values as 8- or 16-bit ranges).
        import numpy as np

        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = float(arr.max()) if arr.size else 0.0
        peak = (1.0 if img.mode == "F" and top <= 1.0 else
                65535.0 if img.mode.startswith("I;16") or top > 255 else 255.0)
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype("uint8"), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    # CMYK (including Adobe's inverted CMYK JPEGs, which Pillow handles), L, 1, YCbCr, F, RGBX.
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize preserving aspect ratio so the short side is `size`, then centre-crop a square."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    # reducing_gap: box-reduce huge images first, then resample; fast and still antialiased.
    return img.resize((size, size), Image.Resampling.BICUBIC,
                      box=(left, top, left + side, top + side), reducing_gap=3.0)


def decode_and_resize(data: bytes, size: int, quality: int = 90) -> Decoded:
    """Decode any accepted image, apply EXIF orientation, convert to RGB, fit to size x size.

    Returns:
        The re-encoded JPEG and what the source was.

    Raises:
        SkipImage: with reason "empty", "not an image", "unsupported format", "too large",
            "truncated" or "undecodable".
    """
    fmt, (width, height) = sniff(data)
    try:
        img = Image.open(io.BytesIO(data))
        mode = img.mode
        if fmt in ("JPEG", "MPO"):
            # Decode at the smallest DCT scale still >= 2x the target: far less memory and
            # time for big photos, and still enough pixels for a good downsample.
            img.draft("RGB", (size * 2, size * 2))
        if fmt in ("GIF", "TIFF"):
            img.seek(0)  # animations and multi-page files: the first frame
        img.load()
        if (fmt == "JPEG" and mode == "RGB" and img.size == (size, size)
                and img.getexif().get(ORIENTATION, 1) == 1):
            # Already what we want: keep the original bytes, no second JPEG generation.
            return Decoded(data, fmt, (width, height), mode)
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        img = resize_and_crop(img, size)
    except Image.DecompressionBombError as err:
        raise SkipImage("too large", str(err)) from None
    except OSError as err:
        reason = "truncated" if "truncated" in str(err) else "undecodable"
        raise SkipImage(reason, str(err)) from None
    except (ValueError, SyntaxError, EOFError) as err:
        raise SkipImage("undecodable", f"{type(err).__name__}: {err}") from None
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return Decoded(out.getvalue(), fmt, (width, height), mode)
