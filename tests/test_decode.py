"""Decoding photos robustly: formats sniffed by content, colour modes, EXIF, size."""

import io

import numpy as np
import pytest
from PIL import Image

from convlab.data.decode import SkipImage, decode_and_resize, sniff


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def rgb(jpeg: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    return np.asarray(img).astype(int)


def halves(width=40, height=20, left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    img = Image.new("RGB", (width, height), left)
    img.paste(Image.new("RGB", (width // 2, height), right), (width // 2, 0))
    return img


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP"])
def test_every_accepted_format_decodes_to_square_rgb_jpeg(fmt):
    data = encode(halves(64, 48), fmt)
    decoded = decode_and_resize(data, 16)
    assert decoded.source_format == fmt
    assert decoded.source_size == (64, 48)
    assert rgb(decoded.jpeg).shape == (16, 16, 3)


def test_format_is_sniffed_from_content_not_name():
    assert sniff(encode(halves(), "PNG"))[0] == "PNG"
    with pytest.raises(SkipImage) as err:
        sniff(b"hello, I am a text file pretending to be a .jpg\n")
    assert err.value.reason == "not an image"
    with pytest.raises(SkipImage) as err:
        sniff(b"")
    assert err.value.reason == "empty"


def test_aspect_ratio_kept_and_centre_cropped():
    # 60x20: left third red, middle green, right third blue -> the centre crop is green.
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste(Image.new("RGB", (20, 20), (0, 255, 0)), (20, 0))
    img.paste(Image.new("RGB", (20, 20), (0, 0, 255)), (40, 0))
    pixels = rgb(decode_and_resize(encode(img, "PNG"), 10).jpeg)
    assert pixels[5, 5, 1] > 200 and pixels[5, 5, 0] < 60 and pixels[5, 5, 2] < 60


def test_exif_orientation_is_applied():
    # Stored 40x20, left red / right blue, with "rotate 90 CW" (orientation 6) in EXIF:
    # upright it is 20x40 with red on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(halves(40, 20), "JPEG", exif=exif.tobytes())
    pixels = rgb(decode_and_resize(data, 20).jpeg)
    top, bottom = pixels[2, 10], pixels[17, 10]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_cmyk_grayscale_palette_and_alpha_become_correct_rgb():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    cmyk = decode_and_resize(encode(red.convert("CMYK"), "JPEG"), 8)
    assert cmyk.source_mode == "CMYK"
    assert tuple(rgb(cmyk.jpeg)[4, 4]) == pytest.approx((255, 0, 0), abs=20)

    grey = rgb(decode_and_resize(encode(Image.new("L", (8, 8), 100), "PNG"), 8).jpeg)
    assert tuple(grey[4, 4]) == pytest.approx((100, 100, 100), abs=3)

    palette = Image.new("RGB", (8, 8), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert tuple(rgb(decode_and_resize(encode(palette, "PNG"), 8).jpeg)[4, 4]) == pytest.approx(
        (0, 128, 0), abs=8)

    # Fully transparent pixels are composited over white, not black.
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert rgb(decode_and_resize(encode(clear, "PNG"), 8).jpeg).min() > 240


def test_16_bit_greyscale_is_scaled_not_clipped():
    img = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    decoded = decode_and_resize(encode(img, "PNG"), 8)
    assert decoded.source_mode.startswith("I")
    assert tuple(rgb(decoded.jpeg)[4, 4]) == pytest.approx((128, 128, 128), abs=3)


def test_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    assert rgb(decode_and_resize(out.getvalue(), 8).jpeg)[4, 4, 0] > 200


def test_truncated_jpeg_is_skipped_with_its_reason():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(SkipImage) as err:
        decode_and_resize(data[: len(data) // 2], 16)
    assert err.value.reason == "truncated"


def test_large_photo_is_decoded_at_reduced_scale():
    big = Image.new("RGB", (6000, 4000), (10, 200, 30))
    decoded = decode_and_resize(encode(big, "JPEG", quality=50), 32)
    assert decoded.source_size == (6000, 4000)
    assert tuple(rgb(decoded.jpeg)[16, 16]) == pytest.approx((10, 200, 30), abs=10)


# ---- formats beyond the web's: TIFF (aerial and scanned images), HEIC (phones), AVIF ----


def tiff_bytes(entries: list[tuple[int, int, int, list[int]]], pixels: bytes, width: int,
               height: int) -> bytes:
    """A little-endian TIFF written by hand (Pillow cannot write every layout a real TIFF
    may have, e.g. 5 bands): one strip, the IFD after the pixels. `entries` are
    (tag, type, count, values) besides the strip and size tags."""
    import struct

    header = 8
    ifd_at = header + len(pixels)
    tags = sorted([(256, 3, 1, [width]), (257, 3, 1, [height]), (273, 4, 1, [header]),
                   (278, 3, 1, [height]), (279, 4, 1, [len(pixels)]), *entries])
    body = struct.pack("<H", len(tags))
    extra = b""
    extra_at = ifd_at + 2 + 12 * len(tags) + 4
    for tag, kind, count, values in tags:
        fmt = {3: "H", 4: "I"}[kind]
        packed = struct.pack("<" + fmt * count, *values)
        if len(packed) <= 4:
            body += struct.pack("<HHI", tag, kind, count) + packed.ljust(4, b"\0")
        else:
            body += struct.pack("<HHII", tag, kind, count, extra_at + len(extra))
            extra += packed
    return b"II*\0" + struct.pack("<I", ifd_at) + pixels + body + b"\0\0\0\0" + extra


def test_tiff_16_bit_rgb_is_scaled_not_clipped():
    # 16-bit RGB (a scanner's or an aerial camera's): values around 40000 of 65535
    rgb16 = np.full((12, 16, 3), 40000, "<u2")
    data = tiff_bytes([(258, 3, 3, [16, 16, 16]), (259, 3, 1, [1]), (262, 3, 1, [2]),
                       (277, 3, 1, [3])], rgb16.tobytes(), 16, 12)
    decoded = decode_and_resize(data, 8)
    assert decoded.source_format == "TIFF"
    assert abs(rgb(decoded.jpeg).mean() - 40000 / 257) < 3


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_tiff_grey_rgb_rgba_and_16_bit_grey_decode(mode):
    if mode == "I;16":
        img = Image.fromarray(np.full((20, 30), 30000, np.uint16))
        expected = 30000 / 257
    else:
        img = Image.new(mode, (30, 20), {"L": 90, "RGB": (90, 90, 90),
                                         "RGBA": (90, 90, 90, 255)}[mode])
        expected = 90
    decoded = decode_and_resize(encode(img, "TIFF", compression="tiff_lzw"), 10)
    assert decoded.source_format == "TIFF"
    assert abs(rgb(decoded.jpeg).mean() - expected) < 3


def test_multi_page_tiff_gives_its_first_page():
    first, second = Image.new("RGB", (20, 20), (250, 0, 0)), Image.new("RGB", (20, 20),
                                                                        (0, 0, 250))
    data = encode(first, "TIFF", save_all=True, append_images=[second])
    pixels = rgb(decode_and_resize(data, 8).jpeg)
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 50


def test_tiff_with_more_than_4_bands_is_skipped_with_that_reason():
    five = np.full((6, 8, 5), 100, np.uint8)
    data = tiff_bytes([(258, 3, 5, [8] * 5), (259, 3, 1, [1]), (262, 3, 1, [2]),
                       (277, 3, 1, [5]), (338, 3, 2, [0, 0])], five.tobytes(), 8, 6)
    with pytest.raises(SkipImage) as err:
        decode_and_resize(data, 8)
    assert err.value.reason == "too many bands" and "5 bands" in err.value.detail


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_formats_heic_and_avif_decode(fmt):
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif")
    data = encode(halves(64, 48), fmt, quality=90)
    decoded = decode_and_resize(data, 16)
    assert decoded.source_format == fmt and decoded.source_size == (64, 48)
    pixels = rgb(decoded.jpeg)
    assert pixels[8, 2, 0] > 180 and pixels[8, 13, 2] > 180  # red left, blue right
