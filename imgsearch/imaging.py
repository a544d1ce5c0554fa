"""Bytes or files in, RGB images out: the format allowlist, the pixel cap, EXIF orientation; thumbnails."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import os
import re
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from .errors import RequestError
from .persist import atomic_write_bytes

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
ALLOWED_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp")
# Pillow reports a JPEG with extra pictures (a camera's multi-picture format) as MPO; it is a JPEG to us.
EXTENSION_FOR_FORMAT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}
EXIF_IFD = 0x8769
EXIF_DATE_TIME_ORIGINAL = 36867
THUMBNAIL_SIZE = 200
THUMBNAIL_QUALITY = 75

# Formats people try to upload that we refuse on purpose, recognised by their first bytes.
_REFUSED_SIGNATURES = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"SIMPLE  =", "FITS"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"8BPS", "PSD"),
)


MiB = 1024 * 1024

# Every scan of a progressive JPEG is one more pass over the whole image, so its decoding time grows with
# scans × pixels: a crafted file that repeats one scan 3,000 times takes minutes. Encoders write 6 to 10 scans
# (libjpeg's default progression), rarely more than 20.
MAX_JPEG_SCANS = 100
# scans × pixels: 15 scans at 64 megapixels, 83 at 12. The costliest scans take about 150 ns per 8×8 block
# here, so one decode stays under about 2.5 s of CPU.
MAX_JPEG_SCAN_PIXELS = 1_000_000_000
# A marker: 0xFF (fill bytes may repeat it), then a code that is neither byte stuffing (0x00) nor RSTn.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff\xd0-\xd7])")

# An animated WebP is decoded onto its canvas: libwebp holds two canvas-sized RGBA buffers however small the
# frames are, so a 144-byte file with 1×1 frames on an 8000×8000 canvas took 1 GB to decode. Canvases far
# larger than every frame are refused.
MAX_CANVAS_PER_FRAME_AREA = 16
SMALL_CANVAS_PIXELS = 1_000_000  # below this, any canvas is cheap enough to accept

_decode_budget = 512 * MiB
_decode_slots = threading.BoundedSemaphore(2)


class ImageError(RequestError):
    """An input that is not a usable image."""


def configure_decoding(max_pixels: int, max_decode_bytes: int, max_decodes: int) -> None:
    """Limits for every decode in this process.

    Anything over `max_pixels` is refused as a decompression bomb (an error, not a warning); a decode whose
    estimated memory exceeds `max_decode_bytes` is refused before it starts; at most `max_decodes` images
    are decoded at once, so a client sending costly images cannot take every core.
    """
    global _decode_budget, _decode_slots
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    _decode_budget = max_decode_bytes
    _decode_slots = threading.BoundedSemaphore(max_decodes)


def count_jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """The scans (SOS markers) in JPEG bytes, counting no further than `stop_after` + 1.

    Segments are stepped over by their length, so bytes inside metadata (an EXIF thumbnail, an ICC
    profile) are never taken for markers; the regular expression steps over entropy-coded data.
    """
    scans, position = 0, 2  # after SOI
    while scans <= stop_after and (marker := _JPEG_MARKER.search(data, position)):
        code, position = marker.group(1)[0], marker.end()
        if code == 0xD9:  # EOI
            break
        if code != 0x01:  # every marker but TEM (and RSTn, SOI, EOI) is followed by its length
            position += int.from_bytes(data[position:position + 2], "big")
            scans += code == 0xDA
    return scans


def _check_jpeg_scans(data: bytes, pixels: int) -> None:
    allowed = min(MAX_JPEG_SCANS, max(1, MAX_JPEG_SCAN_PIXELS // max(1, pixels)))
    scans = count_jpeg_scans(data, stop_after=allowed)
    if scans > allowed:
        raise ImageError(f"The JPEG has more than {allowed} scans, too many to decode at "
                         f"{pixels / 1e6:.1f} megapixels.")


def webp_frame_sizes(data: bytes) -> list[tuple[int, int]]:
    """The (width, height) of each frame (ANMF chunk) of an animated WebP, read from the chunk headers."""
    sizes, position = [], 12  # after "RIFF", the RIFF size and "WEBP"
    while position + 20 <= len(data):
        kind, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        if kind == b"ANMF":  # frame X, Y (3 bytes each), then width - 1 and height - 1 (3 bytes each)
            header = data[position + 8:position + 20]
            sizes.append((1 + int.from_bytes(header[6:9], "little"), 1 + int.from_bytes(header[9:12], "little")))
        position += 8 + size + (size & 1)  # chunks are padded to an even length
    return sizes


def _check_animation_canvas(image: Image.Image, data: bytes) -> None:
    canvas = image.width * image.height
    largest = max((w * h for w, h in webp_frame_sizes(data)), default=canvas)
    if canvas > SMALL_CANVAS_PIXELS and canvas > MAX_CANVAS_PER_FRAME_AREA * largest:
        raise ImageError(f"The animation's {image.width}×{image.height} canvas is far larger than its frames.")


def _decode_bytes(image: Image.Image, full_pixels: int) -> int:
    """Peak memory of decoding `image` to RGB, estimated per format from its header.

    Pillow keeps a multi-band pixel in 4 bytes; converting to RGB adds a copy (three with transparency:
    the RGBA copy, a white background and the alpha mask). A progressive JPEG also holds every DCT
    coefficient of the whole image (2 bytes per sample, at full size whatever the draft scale); libwebp
    holds two RGBA canvases and hands Pillow a copy of the frame (12 bytes a pixel).
    The estimates match peaks measured on 16-megapixel images of each kind to within 10 %.
    """
    pixels = image.width * image.height
    frame = pixels * (1 if image.mode in ("1", "L", "P") else 4)
    if image.mode == "RGB":
        conversion = 0
    elif _has_alpha(image):
        conversion = pixels * (5 if image.mode == "RGBA" else 9)
    else:
        conversion = pixels * 4
    decoder = 0
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        largest = max(h * v for _, h, v, _ in image.layer)
        decoder = sum(2 * full_pixels * h * v // largest for _, h, v, _ in image.layer)
    elif image.format == "WEBP":
        decoder = 12 * full_pixels
    return frame + conversion + decoder


def _refused_format(head: bytes) -> str | None:
    stripped = head.lstrip()
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature) or stripped.startswith(signature):
            return name
    return None


def open_image(source: bytes | str | os.PathLike | BinaryIO, draft_size: tuple[int, int] | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """Decode `source` into an upright RGB image, or raise ImageError.

    `draft_size` lets JPEG decoding skip straight to a reduced scale that is still at least that big,
    which makes large photos several times cheaper to decode.
    """
    return decode_image(source, draft_size, max_pixels)[0]


def decode_image(source: bytes | str | os.PathLike | BinaryIO, draft_size: tuple[int, int] | None = None,
                 max_pixels: int | None = None) -> tuple[Image.Image, str]:
    """Like open_image, and also return the file extension of the image's real format."""
    with _decode_slots:
        if isinstance(source, (bytes, bytearray)):
            return _decode(io.BytesIO(source), draft_size, max_pixels or Image.MAX_IMAGE_PIXELS)
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as stream:
                return _decode(stream, draft_size, max_pixels or Image.MAX_IMAGE_PIXELS)
        return _decode(source, draft_size, max_pixels or Image.MAX_IMAGE_PIXELS)


def _decode(stream: BinaryIO, draft_size: tuple[int, int] | None, max_pixels: int) -> tuple[Image.Image, str]:
    try:
        head = stream.read(16)
        stream.seek(0)
        if not head:
            raise ImageError("The file is empty.")
        try:
            image = Image.open(stream, formats=ALLOWED_FORMATS)
        except Image.UnidentifiedImageError:
            refused = _refused_format(head)
            if refused:
                raise ImageError(
                    f"{refused} files are not supported; use one of: {', '.join(ALLOWED_EXTENSIONS)}.", 415
                ) from None
            raise ImageError("The file is not a readable image.") from None
        full_pixels = image.width * image.height
        if full_pixels > max_pixels:
            raise ImageError(
                f"The image is {image.width}×{image.height} pixels, more than the limit of {max_pixels:,}.")
        extension = EXTENSION_FOR_FORMAT[image.format]
        if image.format in ("JPEG", "MPO"):
            stream.seek(0)
            _check_jpeg_scans(stream.read(), full_pixels)
            if draft_size:
                image.draft("RGB", draft_size)
        elif image.format == "WEBP" and getattr(image, "is_animated", False):
            stream.seek(0)
            _check_animation_canvas(image, stream.read())
        needed = _decode_bytes(image, full_pixels)
        if needed > _decode_budget:
            raise ImageError(f"Decoding this image would take about {needed / MiB:,.0f} MB, more than the limit "
                             f"of {_decode_budget / MiB:,.0f} MB.")
        image.seek(0)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image), extension
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"The image is too large to decode safely ({exc}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"The image could not be decoded: {exc}.") from None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if _has_alpha(image):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int, resize_to: int | None = None) -> Image.Image:
    """Scale the short side to `resize_to` (default size/0.875), then cut the centred size×size square."""
    resize_to = resize_to or round(size / 0.875)
    scale = resize_to / min(image.size)
    new_size = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left = (image.width - size) // 2
    top = (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def write_thumbnail(source: Path, destination: Path) -> None:
    """Write a JPEG thumbnail that fits in THUMBNAIL_SIZE², all-or-nothing."""
    image = open_image(source, draft_size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    atomic_write_bytes(destination, buffer.getvalue())


@dataclasses.dataclass(frozen=True)
class FileDetails:
    """What reading an image file tells about it, beyond its pixels."""

    sha256: str
    taken_at: str | None  # "YYYY-MM-DDTHH:MM:SS" as the camera recorded it, else the file's local time
    media_type: str       # the real format's extension: jpg, png, gif, bmp, webp


def file_details(data: bytes, extension: str, mtime: float | None = None) -> FileDetails:
    """The content hash, the date taken (EXIF DateTimeOriginal, else `mtime`) and the format of image bytes."""
    taken = _exif_date_taken(data)
    if taken is None and mtime is not None:
        taken = datetime.datetime.fromtimestamp(mtime).isoformat(timespec="seconds")
    return FileDetails(hashlib.sha256(data).hexdigest(), taken, extension)


def _exif_date_taken(data: bytes) -> str | None:
    """DateTimeOriginal from the EXIF block, read from the header alone (no pixels are decoded)."""
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            value = image.getexif().get_ifd(EXIF_IFD).get(EXIF_DATE_TIME_ORIGINAL)
        if not isinstance(value, str):
            return None
        taken = datetime.datetime.strptime(value.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    return taken.isoformat(timespec="seconds")
