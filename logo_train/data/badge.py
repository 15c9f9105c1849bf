"""Composite a logo mask into a photo-like badge crop, as a detector would cut it from a car.

A scene is drawn at a small native size (badge crops are often 30-90 px tall) and resized to
the output height: a crop as wide as a detector would cut around the badge (square, or up to
``max_aspect``:1 for wide badges), filled by the badge as in close-ups; a painted body panel
(gradient, specular band, panel gap or trim strip), a radiator grille (bars or mesh) or
textured trim plastic, or (``studio`` of crops) white or light paper behind clean artwork;
the logo raised in chrome (the surroundings reflected along its bevel,
highlights, a dark gap at its edge), chrome with coloured enamel in the regions its outline
encloses (Ford's oval, VW's and BMW's roundels), gloss black or the brand colour; a drop
shadow; random scale, rotation, perspective, occlusion; then light, blur, a surveillance
camera for some (grey, 12-28 px tall, soft, glare), noise and JPEG.
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


_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def lockup(template: np.ndarray, word: str, rng: np.random.Generator) -> np.ndarray:
    """The logo with its name in capitals beside it, one mask: below it (60%) or to its right,
    as brand artwork, product shots and dealership signs show it (the name in one of three
    plain fonts: the model may read the letters, not a brand's own lettering)."""
    text = word.upper()
    font = _FONTS[rng.integers(len(_FONTS))]
    thickness = int(rng.integers(4, 11))
    (tw, th), base = cv2.getTextSize(text, font, 4.0, thickness)
    pad = thickness
    canvas = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(canvas, text, (pad, pad + th), font, 4.0, 255, thickness, cv2.LINE_AA)
    ink = canvas.astype(np.float32) / 255.0
    h, w = template.shape
    gap = max(2, round(h * rng.uniform(0.05, 0.15)))
    if rng.random() < 0.6:  # below: the name about as wide as the logo
        width = max(4, round(w * rng.uniform(0.8, 1.3)))
        ink = cv2.resize(ink, (width, max(2, round(ink.shape[0] * width / ink.shape[1]))),
                         interpolation=cv2.INTER_AREA)  # fmt: skip
        out = np.zeros((h + gap + ink.shape[0], max(w, width)), np.float32)
        out[:h, (out.shape[1] - w) // 2 :][:, :w] = template
        out[h + gap :, (out.shape[1] - width) // 2 :][:, :width] = ink
        return out
    height = max(2, round(h * rng.uniform(0.25, 0.45)))  # to the right: a third of its height
    ink = cv2.resize(ink, (max(2, round(ink.shape[1] * height / ink.shape[0])), height),
                     interpolation=cv2.INTER_AREA)  # fmt: skip
    out = np.zeros((h, w + gap + ink.shape[1]), np.float32)
    out[:, :w] = template
    out[(h - height) // 2 :][:height, w + gap :] = ink
    return out


# --- backgrounds ------------------------------------------------------------------------------


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) in [0, 1], shaped to broadcast over (h, w, 3)."""
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    return y, x


def _body_panel(h: int, w: int, rng: np.random.Generator, d: float) -> np.ndarray:
    colour = PAINT_COLOURS[rng.integers(len(PAINT_COLOURS))] * rng.uniform(0.85, 1.15, 3)
    y, x = _grid(h, w)
    slope = rng.uniform(-0.35, 0.35)
    shade = 1.0 + slope * (y - 0.5) + rng.uniform(-0.15, 0.15) * (x - 0.5)
    img = colour[None, None, :] * shade
    # specular band: a soft diagonal stripe of reflected sky
    angle = rng.uniform(0, np.pi)
    pos = rng.uniform(0.1, 0.9)
    dist = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) + 0.5 - pos
    width = rng.uniform(0.06, 0.25)
    img = img + rng.uniform(40, 140) * np.exp(-(dist**2) / (2 * width**2))
    if rng.random() < 0.3:  # a panel gap or a chrome trim strip across the tailgate
        row = int(rng.uniform(0.05, 0.95) * h)
        thick = max(1, int(h * rng.uniform(0.02, 0.08)))
        dark = rng.random() < 0.5
        img[row : row + thick] = rng.uniform(10, 40) if dark else rng.uniform(170, 240)
    # orange-peel paint texture / dust
    return img + rng.normal(0, 2 + 4 * d, (h, w, 1)).astype(np.float32)


def _grille(h: int, w: int, rng: np.random.Generator, d: float) -> np.ndarray:
    base = rng.uniform(8, 45)
    img = np.full((h, w, 3), base, np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    period = max(3, int(h * rng.uniform(0.08, 0.22)))
    thick = max(1, int(period * rng.uniform(0.3, 0.6)))
    bar = rng.uniform(60, 200) if rng.random() < 0.5 else rng.uniform(20, 70)  # chrome or black
    yy, xx = np.mgrid[0:h, 0:w]
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


def _plastic(h: int, w: int, rng: np.random.Generator, d: float) -> np.ndarray:
    """Textured black or grey trim plastic (bumpers, steering wheels, wheel-cap centres)."""
    base = rng.uniform(15, 90)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 0.8)
    y, _ = _grid(h, w)
    img = base * (1.0 + rng.uniform(-0.3, 0.3) * (y - 0.5)) + (6 + 6 * d) * grain[..., None]
    return np.repeat(img, 3, axis=2) * rng.uniform(0.95, 1.05, 3).astype(np.float32)


def _studio(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """White or light grey paper, a wall or a web page: where product shots and clean artwork
    sit (many real crops are the logo on white, not a badge on a car)."""
    y, x = _grid(h, w)
    level = rng.uniform(200, 255)
    shade = 1.0 + rng.uniform(-0.08, 0.08) * (y - 0.5) + rng.uniform(-0.08, 0.08) * (x - 0.5)
    img = np.full((h, w, 3), level, np.float32) * rng.uniform(0.96, 1.02, 3).astype(np.float32)
    return img * shade + rng.normal(0, 1.5, (h, w, 1)).astype(np.float32)


def _background(h: int, w: int, rng: np.random.Generator, d: float) -> np.ndarray:
    kind = rng.random()
    if kind < 0.45:
        return _body_panel(h, w, rng, d)
    if kind < 0.8:
        return _grille(h, w, rng, d)
    return _plastic(h, w, rng, d)


# --- logo geometry and material ---------------------------------------------------------------


def enamel_regions(template: np.ndarray) -> np.ndarray:
    """The regions the logo's outline encloses but does not ink (Ford's oval around the script,
    VW's and BMW's roundels): where a real badge is filled with coloured enamel."""
    ink = (template > 0.5).astype(np.uint8)
    free = np.pad(1 - ink, 1, constant_values=1)  # the border is outside: reachable
    cv2.floodFill(free, None, (0, 0), 2)
    return (free[1:-1, 1:-1] == 1).astype(np.float32)


def _crop_width(h: int, logo_aspect: float, max_aspect: float, rng) -> int:
    """A detector's crop is about as wide as the badge: wide badges get crops up to
    ``max_aspect`` : 1, some crops are square whatever the badge."""
    if max_aspect <= 1.0 or rng.random() < 0.4:
        return h
    return round(h * float(np.clip(logo_aspect * rng.uniform(0.9, 1.4), 1.0, max_aspect)))


WIDE_FILL = (0.25, 0.55)
"""A wide shot: the badge's limiting side covers this share of the photo's."""


def _place(
    layers: np.ndarray, h: int, w: int, rng: np.random.Generator, d: float, wide: bool = False
) -> np.ndarray:
    """Warp the template's layers (HxWxk) into an h x w crop: scaled to fill it (the badge's
    limiting side covers 0.85-1.0 of the crop's at difficulty 0, down to 0.4 at 1; ``wide``:
    ``WIDE_FILL``), rotated, moved off-centre, with perspective."""
    th0, tw0 = layers.shape[:2]
    fill = rng.uniform(*WIDE_FILL) if wide else rng.uniform(0.85 - 0.45 * d, 1.0)
    scale = fill * min(h / th0, w / tw0)
    th, tw = max(2, round(th0 * scale)), max(2, round(tw0 * scale))
    small = cv2.resize(layers, (tw, th), interpolation=cv2.INTER_AREA)
    src = np.float32([[0, 0], [tw, 0], [tw, th], [0, th]])
    angle = np.deg2rad(rng.uniform(-1, 1) * (4 + 26 * d))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    centre = np.float32([w / 2, h / 2]) * (1 + rng.uniform(-1, 1, 2).astype(np.float32) * 0.1 * d)
    corners = (src - [tw / 2, th / 2]) @ rot.T
    corners += rng.uniform(-1, 1, (4, 2)).astype(np.float32) * (0.02 + 0.14 * d) * max(th, tw)
    matrix = cv2.getPerspectiveTransform(src, (corners + centre).astype(np.float32))
    out = cv2.warpPerspective(small, matrix, (w, h), flags=cv2.INTER_LINEAR)
    return out.reshape(h, w, -1)


def _relief(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bevelled badge's surface: the blurred mask is its height. Returns (Lambert-like
    shading under a random light in [-1, 1], the vertical slope for reflections)."""
    h, w = mask.shape
    height = cv2.GaussianBlur(mask, (0, 0), max(0.6, min(h, w) / 50))
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    theta = rng.uniform(0, 2 * np.pi)
    shade = -(gx * np.cos(theta) + gy * np.sin(theta))
    norm = np.abs(gx).max() + np.abs(gy).max() + 1e-6
    return shade / (np.abs(shade).max() + 1e-6), gy / norm


def _chrome(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Polished metal: the surroundings reflected in a bevelled surface. A sky / dark horizon
    / ground profile with a few bright and dark bands (buildings, the photographer), looked
    up along the surface's slope, so edges show the bent, high-contrast reflections of real
    chrome; plus specular highlights."""
    h, w = mask.shape
    shade, slope = _relief(mask, rng)
    t = np.linspace(0, 1, 128, dtype=np.float32)
    horizon = rng.uniform(0.3, 0.7)
    profile = np.where(t < horizon, rng.uniform(200, 250) - rng.uniform(30, 90) * t,
                       rng.uniform(50, 140) + rng.uniform(0, 60) * (t - horizon))  # fmt: skip
    profile -= rng.uniform(60, 130) * np.exp(-((t - horizon) ** 2) / rng.uniform(0.001, 0.006))
    for _ in range(rng.integers(0, 4)):
        band = rng.uniform(0.01, 0.06)
        profile += rng.uniform(-90, 90) * np.exp(-((t - rng.uniform()) ** 2) / (2 * band**2))
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    lookup = np.clip(y + rng.uniform(0.4, 1.2) * slope, 0, 1)
    tone = profile[(lookup * 127).astype(np.int32)]
    tint = np.float32([1.0, 1.0, 1.04]) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    spec = 120 * np.clip(shade, 0, 1) ** 2
    return tone[..., None] * tint + (40 * shade + spec)[..., None]


ENAMEL_COLOURS = np.array(
    [(20, 50, 140), (0, 90, 180), (180, 20, 30), (15, 15, 18), (235, 235, 235), (200, 160, 40)],
    dtype=np.float32,
)


def _enamel(regions: np.ndarray, brand_rgb, rng: np.random.Generator) -> np.ndarray:
    """Glossy coloured fill: the brand's colour when it has one, else a common enamel colour;
    recessed (darker at the rim) with a soft highlight."""
    h, w = regions.shape
    colour = np.asarray(brand_rgb, np.float32)
    if colour.max() - colour.min() < 40 or rng.random() < 0.25:
        colour = ENAMEL_COLOURS[rng.integers(len(ENAMEL_COLOURS))]
    rim = cv2.GaussianBlur(regions, (0, 0), max(0.6, min(h, w) / 30))
    y, x = _grid(h, w)
    cy, cx = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.8)
    gloss = np.exp(-(((y - cy) ** 2) + (x - cx) ** 2) / rng.uniform(0.01, 0.05))[..., 0]
    return colour * (0.7 + 0.3 * rim)[..., None] + (rng.uniform(40, 110) * gloss)[..., None]


def _flat(mask: np.ndarray, brand_rgb, style: str, rng: np.random.Generator) -> np.ndarray:
    """Gloss black or painted in the brand colour, bevel-lit."""
    h, w = mask.shape
    shade = _relief(mask, rng)[0][..., None]
    if style == "black":
        return np.full((h, w, 3), rng.uniform(15, 45), np.float32) + 120 * np.clip(shade, 0, 1)
    colour = np.asarray(brand_rgb, np.float32)
    if colour.max() < 40:  # brands whose colour is black still read as a dark badge
        colour = colour + 30
    return colour[None, None, :] * (1.0 + 0.35 * shade) + 60 * np.clip(shade, 0, 1)


# --- the whole scene --------------------------------------------------------------------------

STYLES = ("chrome", "black", "colour", "enamel")
STYLE_P = (0.35, 0.2, 0.2, 0.25)
STUDIO_STYLE_P = (0.25, 0.3, 0.3, 0.15)
"""On light backgrounds the logo is mostly flat artwork: black or the brand colour."""


def _occlude(img: np.ndarray, rng: np.random.Generator, d: float) -> None:
    h, w = img.shape[:2]
    if rng.random() < 0.5:  # a bar across the badge (grille slat, wiper, edge of the crop)
        t = max(1, int(h * rng.uniform(0.08, 0.18)))
        y0 = int(rng.uniform(0, h - t))
        img[y0 : y0 + t] = rng.uniform(10, 200)
    else:  # a blob of dirt, snow or a finger
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (max(1, int(h * rng.uniform(0.08, 0.12 + 0.15 * d))), max(1, int(h * 0.1)))
        cv2.ellipse(img, centre, axes, rng.uniform(0, 180), 0, 360, rng.uniform(40, 220, 3), -1)


def _surveillance(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A traffic or parking camera's crop: night-mode grey (or nearly), the badge only 12-28
    pixels tall upscaled by the detector's crop, soft, flat contrast, sometimes the glare of an
    infrared lamp or a headlight on the chrome."""
    h, w = img.shape[:2]
    grey = img @ np.float32([0.299, 0.587, 0.114])
    mix = rng.uniform(0.7, 1.0)
    img = img * (1 - mix) + grey[..., None] * mix
    rows = int(rng.integers(12, 29))
    if rows < h:
        cols = max(2, round(rows * w / h))
        small = cv2.resize(img, (cols, rows), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5) * h / 64)
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.5, 0.9) + mean * rng.uniform(0.9, 1.2)
    if rng.random() < 0.4:  # glare: a soft bright spot, often tinted by the lamp
        y, x = _grid(h, w)
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.9), rng.uniform(0.03, 0.12)
        spot = np.exp(-(((y - cy) ** 2) + (x - cx) ** 2) / (2 * r**2))
        img = img + spot * rng.uniform(80, 200) * rng.uniform(0.8, 1.0, 3).astype(np.float32)
    return img


def compose_badge(
    template: np.ndarray,
    brand_rgb: tuple[int, int, int],
    *,
    size: int,
    difficulty: float,
    min_crop_px: int,
    max_crop_px: int,
    rng: np.random.Generator,
    max_aspect: float = 1.0,
    studio: float = 0.15,
    surveillance: float = 0.3,
    wide_shots: float = 0.0,
    wordmark: str = "",
    wordmarks: float = 0.0,
) -> tuple[np.ndarray, int | None]:
    """Return ``(rgb uint8 [size, width, 3], jpeg_quality or None)`` for one badge crop:
    ``size`` rows; ``width`` from ``size`` (square) up to ``max_aspect * size`` (a wide
    badge's detector crop). ``studio``: the share of crops on a light background (whatever
    the difficulty: a kind of photo, not an easier one; the camera still degrades it);
    ``surveillance`` x ``difficulty``: the share seen by a surveillance camera; ``wide_shots``:
    the share of photos that show the badge small in its surroundings (a car's front, a
    wheel, a product shot with its margins: ``WIDE_FILL`` of the frame), taken at up to twice
    ``max_crop_px`` so that the badge is as sharp as in a close-up; ``wordmarks``: the share of
    crops on a light background that show ``wordmark`` beside the logo (``lockup``)."""
    d = float(difficulty)
    wide = wide_shots > 0 and rng.random() < wide_shots  # no draw at 0: older data unchanged
    low, high = (max_crop_px, 2 * max_crop_px) if wide else (min_crop_px, max_crop_px)
    h = int(rng.integers(low, high + 1))
    w = _crop_width(h, template.shape[1] / template.shape[0], max_aspect, rng)
    named = (wordmark, wordmarks) if wordmark and wordmarks > 0 else None
    img = _badge_on_body(template, brand_rgb, h, w, rng, d, studio, wide, named)
    return _camera(img, size, h, w, rng, d, surveillance)


# The two halves of a crop draw from ``rng`` in a fixed order: the order of the draws is the
# dataset (moving one changes every image rendered after it).


def _badge_on_body(
    template, brand_rgb, h: int, w: int, rng, d: float, studio: float, wide: bool = False,
    named: tuple[str, float] | None = None,
):  # fmt: skip
    """The badge in its style (chrome, enamel, flat) on a car body or a light background, at
    the crop's own size ``h`` x ``w`` (``wide``: small in it; ``named``: (name, share): that
    share of light-background crops show the name beside the logo), float32 RGB."""
    light = rng.random() < studio
    if light and named is not None and rng.random() < named[1]:  # no draw without names
        template = lockup(template, named[0], rng)
    bg = _studio(h, w, rng) if light else _background(h, w, rng, d)
    style = STYLES[rng.choice(len(STYLES), p=STUDIO_STYLE_P if light else STYLE_P)]
    regions = enamel_regions(template) if style == "enamel" else None
    if regions is not None and regions.sum() < 0.15 * (template > 0.5).sum():
        style, regions = "chrome", None  # nothing enclosed to fill
    layers = template[..., None] if regions is None else np.dstack([template, regions])
    placed = _place(layers, h, w, rng, d, wide)
    ink = placed[..., 0]
    fill = placed[..., 1] if regions is not None else np.zeros_like(ink)
    mask = np.clip(ink + fill, 0, 1)
    if rng.random() < 0.25 * d:  # a chrome surround ring, shared by all brands (a nuisance)
        ring = np.zeros((h, w), np.float32)
        cv2.ellipse(ring, (w // 2, h // 2), (int(w * 0.47), int(h * rng.uniform(0.3, 0.47))),
                    0, 0, 360, 1.0, max(1, h // 20))  # fmt: skip
        ink, mask = np.maximum(ink, ring), np.maximum(mask, ring)
    k = 1 + h // 40
    shadow = cv2.GaussianBlur(np.roll(mask, (k, k), (0, 1)), (0, 0), 1 + h / 60)
    bg = bg * (1.0 - rng.uniform(0.2, 0.6) * shadow[..., None])
    if style in ("chrome", "enamel"):  # a raised badge: a dark gap where it meets the body
        gap = np.clip(cv2.GaussianBlur(mask, (0, 0), 0.5 + h / 80) * 1.6 - mask, 0, 1)
        bg = bg * (1.0 - 0.7 * gap[..., None])
        logo = _chrome(ink, rng)
        if regions is not None:
            share = (fill / np.maximum(mask, 1e-6))[..., None]
            logo = logo * (1 - share) + _enamel(fill, brand_rgb, rng) * share
    else:
        logo = _flat(ink, brand_rgb, style, rng)
    return bg * (1.0 - mask[..., None]) + logo * mask[..., None]


def _camera(img, size: int, h: int, w: int, rng, d: float, surveillance: float):
    """What the camera does to the crop: occlusion, exposure, resize to ``size`` rows, blur,
    a surveillance camera's look, sensor noise; ``(rgb uint8, jpeg_quality or None)``."""
    if rng.random() < 0.35 * d:
        _occlude(img, rng, d)
    # light: exposure, contrast, colour cast of the camera
    gain = rng.uniform(1 - 0.45 * d, 1 + 0.3 * d) * rng.uniform(1 - 0.12 * d, 1 + 0.12 * d, 3)
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - 0.4 * d, 1 + 0.2 * d) + mean
    img = np.clip(img * gain.astype(np.float32), 0, 255)
    interp = [cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST][rng.integers(3)]
    out_w = max(size, round(size * w / h))
    img = cv2.resize(img, (out_w, size), interpolation=interp if h < size else cv2.INTER_AREA)
    if rng.random() < 0.3 + 0.4 * d:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.4 + 1.6 * d) * size / 64)
    elif rng.random() < 0.3 * d:  # motion blur
        k = max(3, int(size / 64 * rng.uniform(3, 7)))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (k, k))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    if rng.random() < surveillance * d:
        img = _surveillance(img, rng)
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
