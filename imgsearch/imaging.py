"""Bytes or files in, RGB images out: the format allowlist, the pixel cap, EXIF orientation; thumbnails."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from .errors import RequestError
from .persist import atomic_write_bytes

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
ALLOWED_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp")
EXTENSION_FOR_FORMAT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}
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


class ImageError(RequestError):
    """An input that is not a usable image."""


def configure_pillow(max_pixels: int) -> None:
    """Make Pillow refuse decompression bombs: anything over `max_pixels` is an error, not a warning."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


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
    if isinstance(source, (bytes, bytearray)):
        stream: BinaryIO = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        stream = open(source, "rb")
    else:
        stream = source
    max_pixels = max_pixels or Image.MAX_IMAGE_PIXELS
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
        if image.width * image.height > max_pixels:
            raise ImageError(
                f"The image is {image.width}×{image.height} pixels, more than the limit of {max_pixels:,}.")
        extension = EXTENSION_FOR_FORMAT[image.format]
        if draft_size and image.format == "JPEG":
            image.draft("RGB", draft_size)
        image.seek(0)
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image)), extension
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"The image is too large to decode safely ({exc}).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"The image could not be decoded: {exc}.") from None
    finally:
        if isinstance(source, (str, os.PathLike)):
            stream.close()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
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
