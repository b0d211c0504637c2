"""Contact sheets: crops side by side as PNG strips, and a static HTML page that lists them. Pure (no IO)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import cv2
import numpy as np

from cion_dist.errors import DataError
from cion_dist.images import decode_image

THUMB_H, THUMB_W = 128, 64


def decode_thumb(jpeg: bytes, height: int = THUMB_H, width: int = THUMB_W) -> np.ndarray:
    """A crop as an RGB thumbnail of fixed size (aspect kept, grey padding); a grey tile for unreadable bytes."""
    tile = np.full((height, width, 3), 64, np.uint8)
    try:
        img = decode_image(jpeg)
    except DataError:
        return tile
    h, w = img.shape[:2]
    r = min(height / h, width / w)
    nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    y, x = (height - nh) // 2, (width - nw) // 2
    tile[y : y + nh, x : x + nw] = img
    return tile


def strip_png(jpegs: list[bytes], gap: int = 2) -> bytes:
    """One row of thumbnails as PNG bytes."""
    tiles = [decode_thumb(j) for j in jpegs] or [np.full((THUMB_H, THUMB_W, 3), 64, np.uint8)]
    row = np.full((THUMB_H, len(tiles) * (THUMB_W + gap) - gap, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        row[:, k * (THUMB_W + gap) : k * (THUMB_W + gap) + THUMB_W] = t
    ok, buf = cv2.imencode(".png", row[:, :, ::-1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


@dataclass
class Group:
    """One strip on the page: a tracklet, an identity or a removal reason, with the crops shown."""

    title: str
    note: str
    jpegs: list[bytes] = field(default_factory=list)
    file: str = ""


@dataclass
class Section:
    title: str
    intro: str
    groups: list[Group] = field(default_factory=list)


def page_html(title: str, facts: dict, sections: list[Section]) -> str:
    """A static page: the run's key figures, then one block per section with its strips (PNG files beside it)."""
    esc = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}img{display:block;margin:2px 0 10px}"
        "table{border-collapse:collapse}td{padding:2px 10px;border-bottom:1px solid #ddd}"
        ".note{color:#555;font-size:90%}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<table>",
    ]
    out += [f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in facts.items()]
    out.append("</table>")
    for s in sections:
        out.append(f"<h2>{esc(s.title)}</h2><p class='note'>{esc(s.intro)}</p>")
        if not s.groups:
            out.append("<p>(none)</p>")
        for g in s.groups:
            out.append(
                f"<div><b>{esc(g.title)}</b> <span class='note'>{esc(g.note)}</span>"
                f"<img src='{esc(g.file)}' alt='{esc(g.title)}'></div>"
            )
    out.append("</body></html>")
    return "\n".join(out)
