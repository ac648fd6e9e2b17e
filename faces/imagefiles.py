"""Reading photos safely: every bad file becomes a quick, clear :class:`ImageError`.

Missing, empty, non-image, corrupt and truncated files, and files whose header claims
a huge picture (a "decompression bomb" such as a 20000x20000 PNG of a few hundred bytes),
are refused *before* any large allocation: the format is recognised from its magic bytes,
the dimensions are read from the header, and only then is the image decoded. Only JPEG,
PNG, BMP and WebP are accepted, because those are the formats whose headers are checked
here (OpenCV would also decode TIFF, PPM, ... without that guard).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from core.errors import ImageError
from faces.types import Image

#: largest file read, in bytes: a 40 MP JPEG at high quality is ~25 MB; anything larger
#: is not a photo taken at a counter
MAX_FILE_BYTES = 64 * 1024 * 1024
#: largest picture decoded, in pixels: 24 MP is a 6000x4000 camera (what a counter's
#: DSLR gives; phones give 12 MP). Decoding costs 3 bytes a pixel, twice (OpenCV's BGR and
#: our RGB copy): 144 MB at the cap. 40 MP (240 MB) let a 105 KB one-colour PNG of
#: 6000x6000 through, several at once push a 1 GB Raspberry Pi into swap
MAX_PIXELS = 24_000_000
#: largest side in pixels; guards against 1 x 40M strips that pass the pixel cap
MAX_SIDE = 16384

_FORMATS = "JPEG, PNG, BMP or WebP"


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> Image:
    """Read an image file as RGB uint8 (h, w, 3); raises ImageError naming the file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ImageError(f"{p}: not a regular file")
        if size == 0:
            raise ImageError(f"{p}: empty file")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{p}: file too large ({size} bytes > {MAX_FILE_BYTES})")
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except PermissionError:
        raise ImageError(f"{p}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"{p}: is a directory") from None
    except OSError as exc:
        raise ImageError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return decode_image(data, name=str(p), max_pixels=max_pixels)


def check_image(data: bytes, name: str = "image", *,
                max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) of encoded image bytes from their header alone; ImageError
    for anything :func:`decode_image` would refuse before decoding (not an image, an empty
    or too large picture: more than ``max_pixels``, capped at MAX_PIXELS, or MAX_SIDE)."""
    if not data:
        raise ImageError(f"{name}: empty file")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(f"{name}: not an image ({_FORMATS} expected)")
    width, height = header_size(data, fmt, name)
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: {fmt} header gives an empty picture ({width}x{height})")
    cap = min(max_pixels, MAX_PIXELS)
    if width > MAX_SIDE or height > MAX_SIDE or width * height > cap:
        raise ImageError(
            f"{name}: picture too large ({width}x{height}; at most {cap} pixels "
            f"and {MAX_SIDE} per side)"
        )
    return fmt, width, height


def decode_image(data: bytes, name: str = "image", *, max_pixels: int = MAX_PIXELS) -> Image:
    """Decode encoded image bytes as RGB uint8 (h, w, 3) after the header checks
    (:func:`check_image`; ``max_pixels`` can only lower the MAX_PIXELS cap)."""
    fmt, _, _ = check_image(data, name, max_pixels=max_pixels)
    _check_complete(data, fmt, name)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"{name}: corrupt {fmt}: {str(exc).strip().splitlines()[-1]}") from None
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
        raise ImageError(f"{name}: corrupt {fmt} (cannot decode)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def sniff_format(data: bytes) -> str | None:
    """The image format named by the magic bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def header_size(data: bytes, fmt: str, name: str = "image") -> tuple[int, int]:
    """(width, height) read from the header, without decoding; ImageError if unreadable."""
    try:
        if fmt == "PNG":
            return _png_size(data)
        if fmt == "JPEG":
            return _jpeg_size(data)
        if fmt == "BMP":
            w, h = struct.unpack_from("<ii", data, 18)
            return w, abs(h)
        if fmt == "WebP":
            return _webp_size(data)
    except (struct.error, IndexError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt {fmt} header ({exc})") from None
    raise ImageError(f"{name}: unsupported format {fmt}")


def _png_size(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ValueError("no IHDR chunk")
    w, h = struct.unpack_from(">II", data, 16)
    return int(w), int(h)


#: JPEG start-of-frame markers (baseline, progressive, lossless, ...); C4, C8, CC are not
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"bad marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if length < 2:
            raise ValueError(f"bad segment length at byte {i}")
        if marker in _SOF_MARKERS:
            h, w = struct.unpack_from(">HH", data, i + 5)
            return int(w), int(h)
        if marker == 0xDA:  # start of scan before any frame header
            raise ValueError("no frame header before the image data")
        i += 2 + length
    raise ValueError("no frame header (file truncated?)")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("bad VP8 frame tag")
        w, h = struct.unpack_from("<HH", data, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("bad VP8L signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    raise ValueError(f"unknown WebP chunk {chunk!r}")


def _check_complete(data: bytes, fmt: str, name: str) -> None:
    """Refuse truncated files that decoders would silently fill with grey."""
    if fmt == "JPEG":
        _check_jpeg_scans(data, name)
    elif fmt == "PNG":
        if data.rfind(b"IEND") < 0:
            raise ImageError(f"{name}: truncated PNG (no IEND chunk)")
    elif fmt == "WebP":
        (riff_size,) = struct.unpack_from("<I", data, 4)
        if riff_size + 8 > len(data):
            raise ImageError(f"{name}: truncated WebP ({len(data)} of {riff_size + 8} bytes)")
    elif fmt == "BMP":
        (file_size,) = struct.unpack_from("<I", data, 2)
        if file_size > len(data):
            raise ImageError(f"{name}: truncated BMP ({len(data)} of {file_size} bytes)")


#: bytes that may follow 0xFF between the first start-of-scan and the end-of-image marker:
#: 00 (a stuffed data byte), FF (fill), restart markers D0-D7, and the segments allowed
#: between the scans of a progressive JPEG (DHT, DQT, DRI, DNL, SOS, APPn, COM)
_SCAN_FOLLOWERS = np.zeros(256, bool)
_SCAN_FOLLOWERS[[0x00, 0xFF, 0xC4, 0xDB, 0xDD, 0xDC, 0xDA, 0xFE, *range(0xD0, 0xD8)]] = True
_SCAN_FOLLOWERS[0xE0:0xF0] = True


def _check_jpeg_scans(data: bytes, name: str) -> None:
    """Refuse truncated JPEGs and ones with garbage in the image data.

    libjpeg decodes both "successfully", filling the rest with grey and only printing a
    warning. Inside entropy-coded data 0xFF is always followed by 0x00 or a restart
    marker, so the end-of-image marker cannot occur there and random bytes show up as
    invalid markers. (Data after the end-of-image marker, e.g. a second picture of a
    multi-picture file, is ignored as the decoder ignores it.)
    """
    sos = data.find(b"\xff\xda")
    eoi = data.find(b"\xff\xd9", sos) if sos >= 0 else -1
    if sos < 0 or eoi < 0:
        raise ImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    scan = np.frombuffer(data, np.uint8, count=eoi - sos, offset=sos)
    ff = np.flatnonzero(scan[:-1] == 0xFF)
    bad = ff[~_SCAN_FOLLOWERS[scan[ff + 1]]]
    if bad.size:
        raise ImageError(
            f"{name}: corrupt JPEG (invalid marker 0xFF{scan[bad[0] + 1]:02X} "
            f"at byte {sos + int(bad[0])})"
        )
