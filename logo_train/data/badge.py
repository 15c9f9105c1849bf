"""Composite a logo mask into a photo-like badge crop, as a detector would cut it from a car.

A scene is drawn at a small native size (badge crops are often 30-90 px wide) and resized to
the output size: a painted body panel (gradient + specular highlight) or a dark radiator grille
(bars or mesh); the logo in chrome, gloss black or the brand colour, with bevel lighting and a
drop shadow; random scale, rotation, perspective, occlusion; then light, blur, noise and JPEG.
``difficulty`` in [0, 1] scales every random range. Everything random comes from the ``rng``
passed in, so one seed gives one image.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

TEMPLATE_PX = 192

PAINT_COLOURS = np.array(
    [
        (235, 235, 232), (20, 20, 22), (160, 163, 168), (95, 98, 104), (150, 20, 25),
        (25, 45, 110), (15, 25, 55), (30, 80, 45), (200, 185, 150), (90, 60, 40),
        (210, 100, 20), (220, 190, 40), (120, 20, 60), (60, 120, 170),
    ],
    dtype=np.float32,
)  # fmt: skip


def render_mask(svg: str, px: int = TEMPLATE_PX) -> np.ndarray:
    """Rasterise an SVG with resvg and return its alpha as float32 in [0, 1], cropped to the ink."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, width=px, height=px)
    alpha = np.asarray(Image.open(io.BytesIO(bytes(png))).convert("RGBA"))[..., 3]
    ys, xs = np.nonzero(alpha > 8)
    if len(ys) == 0:
        raise ValueError("SVG rendered to an empty image")
    alpha = alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return alpha.astype(np.float32) / 255.0


# --- backgrounds ------------------------------------------------------------------------------


def _body_panel(n: int, rng: np.random.Generator, d: float) -> np.ndarray:
    colour = PAINT_COLOURS[rng.integers(len(PAINT_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    y = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :, None]
    slope = rng.uniform(-0.35, 0.35)
    shade = 1.0 + slope * (y - 0.5) + rng.uniform(-0.15, 0.15) * (x - 0.5)
    img = colour[None, None, :] * shade
    # specular band: a soft diagonal stripe of reflected sky
    angle = rng.uniform(0, np.pi)
    pos = rng.uniform(0.1, 0.9)
    dist = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) + 0.5 - pos
    width = rng.uniform(0.06, 0.25)
    img = img + rng.uniform(40, 140) * np.exp(-(dist**2) / (2 * width**2))
    # orange-peel paint texture / dust
    img = img + rng.normal(0, 2 + 4 * d, (n, n, 1)).astype(np.float32)
    return img


def _grille(n: int, rng: np.random.Generator, d: float) -> np.ndarray:
    base = rng.uniform(8, 45)
    img = np.full((n, n, 3), base, np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    period = max(3, int(n * rng.uniform(0.08, 0.22)))
    thick = max(1, int(period * rng.uniform(0.3, 0.6)))
    bar = rng.uniform(60, 200) if rng.random() < 0.5 else rng.uniform(20, 70)  # chrome or black
    yy, xx = np.mgrid[0:n, 0:n]
    kind = rng.integers(3)
    phase = rng.integers(period)
    if kind == 0:  # horizontal bars
        on = (yy + phase) % period < thick
    elif kind == 1:  # diamond mesh
        on = ((xx + yy + phase) % period < thick) | ((xx - yy + phase) % period < thick)
    else:  # square mesh
        on = ((yy + phase) % period < thick) | ((xx + phase) % period < thick)
    # bars are lit from above: a gradient inside each bar
    light = 1.0 + 0.4 * np.cos(np.pi * ((yy + phase) % period) / period)
    img[on] = (bar * light[on])[:, None]
    return img


# --- logo geometry and material ---------------------------------------------------------------


def _place_mask(template: np.ndarray, n: int, rng: np.random.Generator, d: float) -> np.ndarray:
    h, w = template.shape
    frac = rng.uniform(0.75 - 0.3 * d, 0.95 - 0.1 * d)  # longest logo side / crop side
    scale = frac * n / max(h, w)
    th, tw = max(2, round(h * scale)), max(2, round(w * scale))
    small = cv2.resize(template, (tw, th), interpolation=cv2.INTER_AREA)
    pad = max(th, tw)  # room for rotation
    canvas = np.zeros((th + 2 * pad, tw + 2 * pad), np.float32)
    canvas[pad : pad + th, pad : pad + tw] = small
    cy, cx = pad + th / 2, pad + tw / 2
    src = np.float32([[cx - tw / 2, cy - th / 2], [cx + tw / 2, cy - th / 2],
                      [cx + tw / 2, cy + th / 2], [cx - tw / 2, cy + th / 2]])  # fmt: skip
    angle = np.deg2rad(rng.uniform(-1, 1) * (4 + 26 * d))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    centre = np.float32([n / 2, n / 2]) + rng.uniform(-1, 1, 2).astype(np.float32) * 0.1 * d * n
    corners = (src - [cx, cy]) @ rot.T
    corners += rng.uniform(-1, 1, (4, 2)).astype(np.float32) * (0.02 + 0.14 * d) * frac * n
    matrix = cv2.getPerspectiveTransform(src, (corners + centre).astype(np.float32))
    return cv2.warpPerspective(canvas, matrix, (n, n), flags=cv2.INTER_LINEAR)


def _bevel_shading(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lambert-like shading of a bevelled badge: the blurred mask is the height map."""
    n = mask.shape[0]
    height = cv2.GaussianBlur(mask, (0, 0), max(0.6, n / 50))
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    theta = rng.uniform(0, 2 * np.pi)
    shade = -(gx * np.cos(theta) + gy * np.sin(theta))
    return shade / (np.abs(shade).max() + 1e-6)


def _logo_layer(mask: np.ndarray, brand_rgb, rng: np.random.Generator) -> np.ndarray:
    n = mask.shape[0]
    shade = _bevel_shading(mask, rng)[..., None]
    style = rng.choice(["chrome", "black", "colour"], p=[0.45, 0.25, 0.30])
    if style == "chrome":
        # environment reflection: bright sky above a dark horizon band, mid ground below
        y = np.linspace(0, 1, n, dtype=np.float32)
        horizon = rng.uniform(0.35, 0.65)
        sky = 235 - 60 * y
        ground = 120 + 60 * (y - horizon)
        tone = np.where(y < horizon, sky, ground) - 90 * np.exp(-((y - horizon) ** 2) / 0.004)
        base = np.repeat(tone[:, None, None], n, 1) * np.float32([1.0, 1.0, 1.04])
        return base + 110 * shade
    if style == "black":
        return np.full((n, n, 3), rng.uniform(15, 45), np.float32) + 120 * np.clip(shade, 0, 1)
    colour = np.asarray(brand_rgb, np.float32)
    if colour.max() < 40:  # brands whose colour is black still read as a dark badge
        colour = colour + 30
    return colour[None, None, :] * (1.0 + 0.35 * shade) + 60 * np.clip(shade, 0, 1)


# --- the whole scene --------------------------------------------------------------------------


def _occlude(img: np.ndarray, rng: np.random.Generator, d: float) -> None:
    n = img.shape[0]
    if rng.random() < 0.5:  # a bar across the badge (grille slat, wiper, edge of the crop)
        t = max(1, int(n * rng.uniform(0.08, 0.18)))
        y0 = int(rng.uniform(0, n - t))
        img[y0 : y0 + t] = rng.uniform(10, 200)
    else:  # a blob of dirt, snow or a finger
        centre = (int(rng.uniform(0, n)), int(rng.uniform(0, n)))
        axes = (max(1, int(n * rng.uniform(0.08, 0.12 + 0.15 * d))), max(1, int(n * 0.1)))
        cv2.ellipse(img, centre, axes, rng.uniform(0, 180), 0, 360, rng.uniform(40, 220, 3), -1)


def compose_badge(
    template: np.ndarray,
    brand_rgb: tuple[int, int, int],
    *,
    size: int,
    difficulty: float,
    min_crop_px: int,
    max_crop_px: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int | None]:
    """Return ``(rgb uint8 [size, size, 3], jpeg_quality or None)`` for one badge crop."""
    d = float(difficulty)
    n = int(rng.integers(min_crop_px, max_crop_px + 1))
    bg = _body_panel(n, rng, d) if rng.random() < 0.5 else _grille(n, rng, d)
    mask = _place_mask(template, n, rng, d)
    if rng.random() < 0.25 * d:  # a chrome surround ring, shared by all brands (a nuisance)
        ring = np.zeros((n, n), np.float32)
        cv2.ellipse(ring, (n // 2, n // 2), (int(n * 0.47), int(n * rng.uniform(0.3, 0.47))),
                    0, 0, 360, 1.0, max(1, n // 20))  # fmt: skip
        mask = np.maximum(mask, ring)
    shadow = cv2.GaussianBlur(np.roll(mask, (1 + n // 40, 1 + n // 40), (0, 1)), (0, 0), 1 + n / 60)
    bg = bg * (1.0 - rng.uniform(0.2, 0.6) * shadow[..., None])
    logo = _logo_layer(mask, brand_rgb, rng)
    img = bg * (1.0 - mask[..., None]) + logo * mask[..., None]
    if rng.random() < 0.35 * d:
        _occlude(img, rng, d)
    # light: exposure, contrast, colour cast of the camera
    gain = rng.uniform(1 - 0.45 * d, 1 + 0.3 * d) * rng.uniform(1 - 0.12 * d, 1 + 0.12 * d, 3)
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - 0.4 * d, 1 + 0.2 * d) + mean
    img = np.clip(img * gain.astype(np.float32), 0, 255)
    interp = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST][rng.integers(3)]
    img = cv2.resize(img, (size, size), interpolation=interp if n < size else cv2.INTER_AREA)
    if rng.random() < 0.3 + 0.4 * d:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.4 + 1.6 * d) * size / 64)
    elif rng.random() < 0.3 * d:  # motion blur
        k = max(3, int(size / 64 * rng.uniform(3, 7)))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    img = img + rng.normal(0, rng.uniform(0, 2 + 14 * d), img.shape).astype(np.float32)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    quality = int(rng.uniform(95 - 70 * d, 96)) if rng.random() < 0.4 + 0.5 * d else None
    return rgb, quality


def encode_image(rgb: np.ndarray, fmt: str, jpeg_quality: int | None) -> bytes:
    """Encode an RGB array; a JPEG artefact pass (``jpeg_quality``) happens first if asked."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        assert ok
        if fmt == "jpeg":
            return buf.tobytes()
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    assert ok
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> RGB uint8 array."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("could not decode image bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
