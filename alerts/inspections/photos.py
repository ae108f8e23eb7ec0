"""An uploaded photo, refused or made safe: size-limited, its type judged from its bytes (never from its name or the
client's content type), decoded by Pillow with a pixel limit (a decompression bomb is refused before it is
decoded), turned upright, stripped of EXIF (a phone's photo carries its GPS position) and re-encoded as a JPEG of at
most 2048 px.  Only the re-encoded bytes are ever stored or served back, so nothing the client sent reaches a browser.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 2048
# What people attach from a phone camera or gallery.  GIF and BMP are not photos; SVG is a document that can carry
# scripts; HEIC needs a plugin Pillow does not ship.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
)


class PhotoRefused(Exception):
    """The upload is not an acceptable photo; the message says why, in words for the person who sent it."""


@dataclass(frozen=True, slots=True)
class CleanPhoto:
    data: bytes  # a JPEG written by Pillow
    mime: str
    width: int
    height: int


def check_filename(name: str | None) -> None:
    """A client's file name is never used (files get generated names), but one with a path in it is a probe: refuse."""
    if not name:
        return
    if "/" in name or "\\" in name or ".." in name or "\x00" in name or len(name) > 255:
        raise PhotoRefused("the file name must not contain a path")


def sniff(data: bytes) -> str:
    head = data[:512].lstrip()
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    lowered = head.lower()
    if lowered.startswith((b"<?xml", b"<svg", b"<!doctype svg")) or b"<svg" in lowered:
        raise PhotoRefused("SVG images are not accepted (they can carry scripts); send a JPEG or PNG photo")
    raise PhotoRefused("not a JPEG or PNG photo (judged by its content, not its name)")


def clean(data: bytes, *, max_bytes: int, max_pixels: int) -> CleanPhoto:
    """The re-encoded photo, or :class:`PhotoRefused`."""
    if not data:
        raise PhotoRefused("the photo is empty")
    if len(data) > max_bytes:
        raise PhotoRefused(f"the photo is {len(data) // 1024} KB; the limit is {max_bytes // 1024} KB")
    kind = sniff(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=[kind])
            # The header's size, before a single pixel is decoded: a 50,000 x 50,000 PNG of a few KB is refused here.
            width, height = image.size
            if width * height > max_pixels or width <= 0 or height <= 0:
                raise PhotoRefused(
                    f"the image is {width} x {height} pixels; the limit is {max_pixels:,} pixels (decompression bomb?)"
                )
            image.load()
            image = ImageOps.exif_transpose(image) or image
            if image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            image.thumbnail((MAX_SIDE, MAX_SIDE))
            out = io.BytesIO()
            # A new image from the pixels only: no EXIF, ICC, comments or anything else of the upload survives.
            Image.frombytes(image.mode, image.size, image.tobytes()).save(out, format="JPEG", quality=85)
    except PhotoRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PhotoRefused(f"the image is too large to decode safely: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PhotoRefused(f"the {kind} photo could not be read: {str(exc)[:100]}") from None
    return CleanPhoto(data=out.getvalue(), mime="image/jpeg", width=image.size[0], height=image.size[1])
