"""Images inside a report without an imaging library: a colour scale and a PNG encoder (zlib only)."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

RDBU_R = [(0.0, (5, 48, 97)), (0.1, (33, 102, 172)), (0.2, (67, 147, 195)), (0.3, (146, 197, 222)), (0.4, (209, 229, 240)),
          (0.5, (247, 247, 247)), (0.6, (253, 219, 199)), (0.7, (244, 165, 130)), (0.8, (214, 96, 77)), (0.9, (178, 24, 43)),
          (1.0, (103, 0, 31))]

def colourscale(v: float) -> tuple[int, int, int]:
    v = min(1.0, max(0.0, v))
    for (a, ca), (b, cb) in zip(RDBU_R, RDBU_R[1:]):
        if v <= b:
            f = (v - a) / (b - a)
            return tuple(round(x + f * (y - x)) for x, y in zip(ca, cb))  # type: ignore[return-value]
    return RDBU_R[-1][1]


def png_data_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a PNG data URI (no imaging library needed)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def heat_rgb(norm: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (NaN: the middle) as RdBu_r colours, (H, W) -> (H, W, 3) uint8."""
    lut = np.array([colourscale(v / 255) for v in range(256)], dtype=np.uint8)
    return lut[np.clip((np.nan_to_num(norm, nan=0.5) * 255).round().astype(int), 0, 255)]
