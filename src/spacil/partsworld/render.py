"""Drawing parts-world creatures with PIL, and their ground-truth captions.

A creature is a large body (the global look: shape + colour) with small local parts attached at
plausible places: ears/horn on top, tail at the back, legs below, eyes and a texture patch inside.
Every part is drawn in a body-local frame (body centre at 0, body "radius" 1, up = -y), then mapped
to pixels by the body's pose (position, scale, rotation, left/right facing), so parts follow the body.

Randomness is split per component: the caller's ``rng`` gives one child seed per component
(background, body pose, clutter, noise, and one per part kind) in a fixed order. So two creatures that
differ only in some parts, rendered from the same ``rng`` state, get the same background, pose, clutter
and the same jitter on their shared parts: their pixels differ only where the differing parts are.

Drawing happens at ``supersample`` x resolution and is box-downsampled for anti-aliasing.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import NONE, VOCABULARY, PartValues

# Label-map ids of the non-part components; parts get ids from PART_LABEL_BASE in kind order.
LABEL_BACKGROUND = 0
LABEL_CLUTTER = 1
LABEL_BODY = 2
PART_LABEL_BASE = 3

DEFAULT_CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} creature with {parts}",
    "a {shape} {colour} creature that has {parts}",
    "a drawing of a {colour} {shape} creature with {parts}",
    "a photo of a {colour} {shape} creature. it has {parts}",
    "{parts} on a {colour} {shape} body",
)


@dataclass(frozen=True)
class RenderConfig:
    """Every knob of the renderer (sizes in body-local units unless a name says otherwise)."""

    supersample: int = 3
    body_radius: tuple[float, float] = (0.23, 0.28)  # fraction of the image size
    body_rotation_deg: float = 12.0
    body_colour_jitter: float = 14.0  # std of the per-image RGB offset of the body colour
    part_scale_jitter: float = 0.12  # parts are scaled by 1 +- this
    part_rotation_deg: float = 10.0
    part_offset_jitter: float = 0.04
    background_contrast: float = 110.0  # min RGB distance between background and body colour
    background_desaturation: tuple[float, float] = (0.25, 0.7)  # mix towards grey
    noise_sigma: tuple[float, float] = (0.0, 7.0)  # per-pixel Gaussian noise on the final image
    n_clutter: tuple[int, int] = (2, 5)  # inclusive range of small distractor shapes
    clutter_size: tuple[float, float] = (0.035, 0.08)  # fraction of the image size
    clutter_clearance: float = 0.2  # extra body-local margin kept free around the creature
    p_detached_part: float = 0.5  # chance to try placing one loose vocabulary part away from the creature
    detached_part_scale: float = 0.4  # its size relative to the body's parts
    # Within-class variation: what one image of a class shows differs from another, so which images a
    # describer is shown matters. Each is drawn per image from its own stream; the part kind it hits is
    # chosen among all kinds (present or not), so classes of a group still share it image by image.
    p_occluder: float = 0.25  # a foreground blob covers the place of one part kind
    occluder_radius: tuple[float, float] = (0.45, 0.7)  # body-local units
    p_faded_part: float = 0.15  # one part kind is drawn with low contrast (hard to see)
    fade_strength: float = 0.8  # its colours mixed this far towards the body colour
    p_out_of_frame: float = 0.1  # the creature sits at an edge, the parts on that side cut off

    def __post_init__(self) -> None:
        if self.supersample < 1:
            raise ValueError("supersample must be >= 1")
        for name in ("p_occluder", "p_faded_part", "p_out_of_frame", "fade_strength"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("body_radius", "background_desaturation", "noise_sigma", "n_clutter", "clutter_size",
                     "occluder_radius"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")


@dataclass(frozen=True)
class Variation:
    """What made this image differ from its class's typical look (None: not drawn for this image)."""

    occluded: str | None = None  # part kind whose place a foreground blob covers
    faded: str | None = None  # part kind drawn with low contrast
    out_of_frame: str | None = None  # 'back', 'top' or 'bottom': the side of the creature cut off

    def to_dict(self) -> dict[str, str | None]:
        return {"occluded": self.occluded, "faded": self.faded, "out_of_frame": self.out_of_frame}


@dataclass
class RenderResult:
    """An image plus its per-pixel component labels (see :func:`component_names`) and its variation."""

    image: Image.Image
    labels: np.ndarray  # uint8 [size, size]
    variation: Variation = Variation()

    def mask(self, component: str) -> np.ndarray:
        """Boolean mask of the visible pixels of ``component`` ('body', 'clutter', 'background' or a kind)."""
        return self.labels == component_names().index(component)

    def visible_pixels(self) -> dict[str, int]:
        """Per part kind, how many output pixels of it are visible (0 when absent, hidden or cut off)."""
        counts = np.bincount(self.labels.ravel(), minlength=PART_LABEL_BASE + len(VOCABULARY.kinds))
        return {k: int(counts[PART_LABEL_BASE + i]) for i, k in enumerate(VOCABULARY.kind_names)}


def component_names() -> list[str]:
    """Label-map id -> component name."""
    return ["background", "clutter", "body", *VOCABULARY.kind_names]


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True, eq=False)  # hashed by identity: geometries are cached singletons
class _ShapeGeometry:
    """A body outline in local units plus where the inner parts sit."""

    polygon: np.ndarray  # [N, 2]
    eye_y: float
    pattern_y: float
    pattern_half: float = 0.38  # half side of the texture patch, so it stays inside narrow bodies

    @functools.cached_property
    def reach(self) -> float:
        """Largest distance of the outline from the body centre."""
        return float(np.max(np.hypot(self.polygon[:, 0], self.polygon[:, 1])))


@functools.lru_cache(maxsize=None)
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    circle.flags.writeable = False
    return circle


def _ellipse_points(rx: float, ry: float, n: int = 40, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    return _unit_circle(n) * (rx, ry) + (cx, cy)


def _regular_polygon(n: int, radius: float, start_deg: float) -> np.ndarray:
    t = np.deg2rad(start_deg + 360.0 / n * np.arange(n))
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _capsule(half_w: float, half_h: float) -> np.ndarray:
    straight = half_w - half_h
    right = [(straight + half_h * math.cos(a), half_h * math.sin(a))
             for a in np.linspace(-math.pi / 2, math.pi / 2, 14)]
    left = [(-straight + half_h * math.cos(a), half_h * math.sin(a))
            for a in np.linspace(math.pi / 2, 3 * math.pi / 2, 14)]
    return np.array(right + left)


@functools.lru_cache(maxsize=None)
def _shape_geometry(shape: str) -> _ShapeGeometry:
    if shape == "loose":  # the invisible stand-in body of a detached distractor part
        return _ShapeGeometry(_ellipse_points(0.35, 0.35, 16), -0.1, 0.0)
    if shape == "round":
        return _ShapeGeometry(_ellipse_points(1.0, 1.0, 48), -0.3, 0.38)
    if shape == "oval":
        return _ShapeGeometry(_ellipse_points(1.18, 0.84, 48), -0.24, 0.3)
    if shape == "square":
        h = 0.88
        return _ShapeGeometry(np.array([(-h, -h), (h, -h), (h, h), (-h, h)]), -0.36, 0.38)
    if shape == "triangle":
        return _ShapeGeometry(np.array([(0.0, -1.1), (1.12, 0.86), (-1.12, 0.86)]), -0.06, 0.48, 0.32)
    if shape == "diamond":
        return _ShapeGeometry(np.array([(0.0, -1.12), (1.05, 0.0), (0.0, 1.12), (-1.05, 0.0)]), -0.28, 0.32, 0.3)
    if shape == "hexagon":
        return _ShapeGeometry(_regular_polygon(6, 1.02, 0.0), -0.3, 0.36)
    if shape == "pentagon":
        return _ShapeGeometry(_regular_polygon(5, 1.08, -90.0), -0.14, 0.42)
    if shape == "capsule":
        return _ShapeGeometry(_capsule(1.22, 0.76), -0.3, 0.32, 0.34)
    raise KeyError(f"no geometry for body shape {shape!r}")


def _edge_point(geom: _ShapeGeometry, origin: tuple[float, float], direction: tuple[float, float]) -> np.ndarray:
    """Where the ray origin + t*direction (t > 0) leaves the body outline (origin inside)."""
    return _edge_point_cached(geom, tuple(origin), tuple(direction)).copy()


@functools.lru_cache(maxsize=4096)
def _edge_point_cached(geom: _ShapeGeometry, origin: tuple[float, float],
                       direction: tuple[float, float]) -> np.ndarray:
    polygon = geom.polygon
    o = np.asarray(origin, dtype=float)
    d = np.asarray(direction, dtype=float)
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    e = b - a
    denom = d[0] * e[:, 1] - d[1] * e[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((a[:, 0] - o[0]) * e[:, 1] - (a[:, 1] - o[1]) * e[:, 0]) / denom
        s = ((a[:, 0] - o[0]) * d[1] - (a[:, 1] - o[1]) * d[0]) / denom
    ok = (np.abs(denom) > 1e-12) & (t > 0) & (s >= -1e-9) & (s <= 1 + 1e-9)
    if not ok.any():
        return o
    return o + d * float(np.min(t[ok]))


def _place(points: Sequence[Sequence[float]] | np.ndarray, anchor: Sequence[float], angle_deg: float,
           scale: float) -> np.ndarray:
    """Map part-local points (part's "up" = -y) to body-local ones: rotate, scale, move to ``anchor``."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return p @ rot.T * scale + np.asarray(anchor, dtype=float)


# ----------------------------------------------------------------------------- canvas


@dataclass
class _Frame:
    """Body-local -> supersampled pixel coordinates."""

    cx: float
    cy: float
    scale: float  # pixels per local unit
    angle: float  # radians
    facing: int  # +1: front is +x; -1: mirrored

    def pts(self, local: np.ndarray) -> list[tuple[float, float]]:
        p = np.asarray(local, dtype=float).reshape(-1, 2)
        u = p[:, 0] * self.facing
        v = p[:, 1]
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = self.cx + self.scale * (c * u - s * v)
        y = self.cy + self.scale * (s * u + c * v)
        return list(zip(x.tolist(), y.tolist()))

    def width(self, local_width: float) -> int:
        return max(1, int(round(local_width * self.scale)))


class _NullDraw:
    """Stands in for the label-map drawer when no label map is wanted (saves half the drawing)."""

    def polygon(self, *args: Any, **kwargs: Any) -> None:
        pass

    line = ellipse = polygon


class _Canvas:
    """Draws every primitive on the RGB image and, with the current label, on the label map."""

    def __init__(self, image: Image.Image, frame: _Frame, supersample: int, with_labels: bool = True):
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.labels = Image.new("L", image.size, LABEL_BACKGROUND) if with_labels else None
        self.ldraw: Any = ImageDraw.Draw(self.labels) if self.labels is not None else _NullDraw()
        self.frame = frame
        self.ss = supersample
        self.label = LABEL_BACKGROUND
        self.tint: tuple[tuple[int, ...], float] | None = None  # (colour, t): fills mixed towards it (faded part)

    def _ink(self, colour: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if colour is None or self.tint is None:
            return colour
        return _mix(colour, self.tint[0], self.tint[1])

    def polygon(self, local: np.ndarray, fill: tuple[int, ...], outline: tuple[int, ...] | None = None) -> None:
        pts = self.frame.pts(local)
        fill, outline = self._ink(fill), self._ink(outline)
        self.draw.polygon(pts, fill=fill)
        self.ldraw.polygon(pts, fill=self.label)
        if outline is not None:  # a closed wide line: much faster in PIL than polygon(width=...)
            loop = pts + pts[:1]
            self.draw.line(loop, fill=outline, width=self.ss, joint="curve")
            self.ldraw.line(loop, fill=self.label, width=self.ss, joint="curve")

    def circle(self, centre: Sequence[float], radius: float, fill: tuple[int, ...],
               outline: tuple[int, ...] | None = None) -> None:
        self.polygon(_ellipse_points(radius, radius, 20, centre[0], centre[1]), fill, outline)

    def line(self, local: np.ndarray, fill: tuple[int, ...], local_width: float) -> None:
        pts = self.frame.pts(local)
        fill = self._ink(fill)
        width = self.frame.width(local_width)
        self.draw.line(pts, fill=fill, width=width, joint="curve")
        self.ldraw.line(pts, fill=self.label, width=width, joint="curve")
        r = width / 2.0  # round caps, so thick polylines do not end in hard squares
        for x, y in (pts[0], pts[-1]):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
            self.ldraw.ellipse([x - r, y - r, x + r, y + r], fill=self.label)


# ----------------------------------------------------------------------------- colours


def _byte(x: float) -> int:
    return min(255, max(0, int(round(x))))


def _shade(rgb: Sequence[float], factor: float) -> tuple[int, int, int]:
    return (_byte(rgb[0] * factor), _byte(rgb[1] * factor), _byte(rgb[2] * factor))


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[int, int, int]:
    return (_byte(a[0] * (1 - t) + b[0] * t), _byte(a[1] * (1 - t) + b[1] * t), _byte(a[2] * (1 - t) + b[2] * t))


class _Style:
    """The colours of one creature, all derived from its (jittered) body colour."""

    def __init__(self, body: Sequence[float]):
        self.body = (_byte(body[0]), _byte(body[1]), _byte(body[2]))
        self.outline = _shade(self.body, 0.42)
        self.part = _shade(self.body, 0.8)
        self.dark = _shade(self.body, 0.55)
        self.light = _mix(self.body, (255, 255, 255), 0.6)
        self.inner_ear = _mix(self.body, (255, 160, 190), 0.6)


INK = (25, 25, 30)
WHITE = (250, 250, 250)
IVORY = (245, 235, 200)


# ----------------------------------------------------------------------------- part drawers
# Each drawer: (canvas, geometry, style, jitter) -> None, jitter = (scale, angle_deg, dx, dy) from the
# part kind's own generator, so the jitter of a kind is the same whatever value it takes.


@dataclass(frozen=True)
class _Jitter:
    scale: float
    angle: float
    dx: float
    dy: float

    def anchor(self, point: np.ndarray) -> np.ndarray:
        return np.asarray(point, dtype=float) + np.array([self.dx, self.dy])


def _top_anchor(geom: _ShapeGeometry, x: float) -> np.ndarray:
    return _edge_point(geom, (x, 0.0), (0.0, -1.0))


def _ears(value: str, c: _Canvas, geom: _ShapeGeometry, st: _Style, j: _Jitter) -> None:
    for side in (-1, 1):
        if value == "floppy":
            anchor = j.anchor(_edge_point(geom, (side * 0.3, -0.2), (side * 0.75, -1.0)))
            shape = _ellipse_points(0.16, 0.42, 20, 0.0, -0.32)
            pts = _place(shape, anchor, side * (118 + j.angle), j.scale)
        else:
            anchor = j.anchor(_top_anchor(geom, side * 0.55)) + np.array([0.0, 0.08])
            angle = side * (16 + j.angle)
            if value == "pointy":
                shape = np.array([(-0.22, 0.05), (0.0, -0.58), (0.22, 0.05)])
            elif value == "long":
                shape = _ellipse_points(0.14, 0.44, 20, 0.0, -0.38)
            elif value == "round":
                shape = _ellipse_points(0.24, 0.24, 20, 0.0, -0.16)
            else:
                raise KeyError(value)
            pts = _place(shape, anchor, angle, j.scale)
        c.polygon(pts, st.part, st.outline)
        if value in ("long", "pointy"):  # inner ear, so the ear reads as an ear and not a spike
            inner = _place(shape * np.array([0.45, 0.7]) + np.array([0.0, -0.03]), anchor, angle, j.scale)
            c.polygon(inner, st.inner_ear)


def _horn(value: str, c: _Canvas, geom: _ShapeGeometry, st: _Style, j: _Jitter) -> None:
    if value == "spike":
        anchor = j.anchor(_top_anchor(geom, 0.0)) + np.array([0.0, 0.1])
        c.polygon(_place([(-0.2, 0.08), (0.0, -0.8), (0.2, 0.08)], anchor, j.angle, j.scale), IVORY, INK)
    elif value == "antennae":
        for side in (-1, 1):
            anchor = j.anchor(_top_anchor(geom, side * 0.12)) + np.array([0.0, 0.05])
            tip = _place([(0.0, -0.6)], anchor, side * (22 + j.angle), j.scale)[0]
            c.line(np.stack([anchor, tip]), INK, 0.07)
            c.circle(tip, 0.1 * j.scale, (250, 220, 60), INK)
    elif value == "crest":
        for k, x in enumerate((-0.24, 0.0, 0.24)):
            anchor = j.anchor(_top_anchor(geom, x)) + np.array([0.0, 0.06])
            height = 0.48 if k == 1 else 0.38
            tri = [(-0.14, 0.04), (0.0, -height), (0.14, 0.04)]
            c.polygon(_place(tri, anchor, j.angle + (x * 40), j.scale), (235, 70, 40), INK)
    else:
        raise KeyError(value)


def _eyes(value: str, c: _Canvas, geom: _ShapeGeometry, st: _Style, j: _Jitter) -> None:
    centre = j.anchor((0.0, geom.eye_y))
    if value == "one":
        positions, radius = [0.0], 0.27
    elif value in ("two", "sleepy"):
        positions, radius = [-0.31, 0.31], 0.17
    elif value == "three":
        positions, radius = [-0.38, 0.0, 0.38], 0.14
    else:
        raise KeyError(value)
    radius *= j.scale
    look = 0.35 * radius  # pupils look forwards
    for x in positions:
        p = centre + np.array([x * j.scale, 0.0])
        if value == "sleepy":
            t = np.linspace(0.15 * math.pi, 0.85 * math.pi, 9)
            arc = np.stack([p[0] + radius * np.cos(t), p[1] - 0.3 * radius + radius * 0.6 * np.sin(t)], axis=1)
            c.line(arc, INK, 0.1)
        else:
            c.circle(p, radius, WHITE, INK)
            c.circle(p + np.array([look, 0.0]), radius * 0.48, INK)


def _pattern(value: str, c: _Canvas, geom: _ShapeGeometry, st: _Style, j: _Jitter) -> None:
    h = geom.pattern_half * j.scale
    centre = j.anchor((0.0, geom.pattern_y))
    angle = j.angle

    def put(points: Any) -> np.ndarray:
        return _place(points, centre, angle, 1.0)

    c.polygon(put([(-h, -h), (h, -h), (h, h), (-h, h)]), st.light, st.outline)
    ink = st.outline
    if value == "stripes":
        for x in (-0.5 * h, 0.0, 0.5 * h):
            c.polygon(put([(x - 0.11 * h, -h), (x + 0.11 * h, -h), (x + 0.11 * h, h), (x - 0.11 * h, h)]), ink)
    elif value == "dots":
        for x, y in ((-0.45, -0.45), (0.45, -0.45), (-0.45, 0.45), (0.45, 0.45)):
            c.polygon(put(_ellipse_points(0.3 * h, 0.3 * h, 14, x * h, y * h)), ink)
    elif value == "checker":
        cell = 2 * h / 3
        for row in range(3):
            for col in range(3):
                if (row + col) % 2 == 0:
                    x0, y0 = -h + col * cell, -h + row * cell
                    c.polygon(put([(x0, y0), (x0 + cell, y0), (x0 + cell, y0 + cell), (x0, y0 + cell)]), ink)
    elif value == "zigzag":
        xs = np.linspace(-0.8 * h, 0.8 * h, 4)
        for y in (-0.42 * h, 0.42 * h):
            ys = y + 0.3 * h * np.array([-1, 1, -1, 1])
            c.line(put(np.stack([xs, ys], axis=1)), ink, 0.1)
    else:
        raise KeyError(value)


def _tail(value: str, c: _Canvas, geom: _ShapeGeometry, st: _Style, j: _Jitter) -> None:
    # The back is -x (the frame mirrors for facing); the tail leaves slightly upwards.
    anchor = j.anchor(_edge_point(geom, (0.0, 0.2), (-1.0, 0.0))) + np.array([0.06, 0.0])
    angle = -72.0 + j.angle
    colour = st.dark
    if value == "straight":
        c.line(_place([(0.0, 0.0), (0.0, -0.8)], anchor, angle, j.scale), colour, 0.15)
    elif value == "forked":
        stem = _place([(0.0, 0.0), (0.0, -0.55)], anchor, angle, j.scale)
        c.line(stem, colour, 0.13)
        for side in (-1, 1):
            c.line(_place([(0.0, -0.55), (side * 0.26, -0.85)], anchor, angle, j.scale), colour, 0.12)
    elif value == "curly":
        t = np.linspace(0.0, 2.6 * math.pi, 40)
        r = 0.26 * (1.0 - t / (3.2 * math.pi))
        spiral = np.stack([0.26 - r * np.cos(t), -0.42 - r * np.sin(t)], axis=1)
        pts = np.concatenate([[(0.0, 0.0), (0.0, -0.2)], spiral])
        c.line(_place(pts, anchor, angle, j.scale), colour, 0.1)
    elif value == "fluffy":
        ball = _place([(0.0, -0.3)], anchor, angle, j.scale)[0]
        for a in range(6):
            off = 0.13 * j.scale * np.array([math.cos(a * math.pi / 3), math.sin(a * math.pi / 3)])
            c.circle(ball + off, 0.15 * j.scale, st.light, st.outline)
        c.circle(ball, 0.16 * j.scale, st.light)
    else:
        raise KeyError(value)


def _legs(value: str, c: _Canvas, geom: _ShapeGeometry, st: _Style, j: _Jitter) -> None:
    def bottom(x: float) -> np.ndarray:
        return j.anchor(_edge_point(geom, (x, 0.0), (0.0, 1.0))) - np.array([0.0, 0.06])

    angle = 180.0 + j.angle * 0.5
    if value == "two":
        for x in (-0.35, 0.35):
            a = bottom(x)
            leg = _place([(0.0, 0.0), (0.0, -0.55)], a, angle, j.scale)
            c.line(leg, st.dark, 0.12)
            foot = leg[1]
            c.line(np.stack([foot, foot + np.array([0.18 * j.scale, 0.0])]), st.dark, 0.12)
    elif value == "four":
        for x in (-0.6, -0.22, 0.22, 0.6):
            a = bottom(x * 0.95)
            c.polygon(_place([(-0.09, 0.05), (0.09, 0.05), (0.09, -0.32), (-0.09, -0.32)], a, angle, j.scale),
                      st.dark, st.outline)
    elif value == "wheels":
        for x in (-0.42, 0.42):
            centre = bottom(x) + np.array([0.0, 0.16 * j.scale])
            c.circle(centre, 0.23 * j.scale, (60, 60, 65), INK)
            c.circle(centre, 0.09 * j.scale, (200, 200, 205))
    elif value == "tentacles":
        for x in (-0.38, 0.0, 0.38):
            a = bottom(x)
            t = np.linspace(0.0, 1.0, 12)
            wave = np.stack([0.1 * np.sin(t * 2 * math.pi), -0.6 * t], axis=1)
            c.line(_place(wave, a, angle, j.scale), st.dark, 0.11)
    else:
        raise KeyError(value)


_DRAWERS: dict[str, Callable[[str, _Canvas, _ShapeGeometry, _Style, _Jitter], None]] = {
    "ears": _ears, "horn": _horn, "eyes": _eyes, "pattern": _pattern, "tail": _tail, "legs": _legs,
}
_BEHIND_BODY = ("ears", "horn", "tail", "legs")  # attached from outside: drawn first, the body covers their base
_ON_BODY = ("pattern", "eyes")


def _check_drawers() -> None:
    if set(_DRAWERS) != set(VOCABULARY.kind_names) or set(_BEHIND_BODY + _ON_BODY) != set(VOCABULARY.kind_names):
        raise RuntimeError("every vocabulary part kind needs a drawer and a layer")


# ----------------------------------------------------------------------------- background and clutter


def _background(rng: np.random.Generator, size: int, body_rgb: Sequence[int], cfg: RenderConfig) -> np.ndarray:
    """A muted solid, gradient or blotchy background that keeps its distance from the body colour."""

    def colour() -> np.ndarray:
        for _ in range(20):
            rgb = rng.uniform(0, 255, size=3)
            t = rng.uniform(*cfg.background_desaturation)
            rgb = rgb * (1 - t) + rgb.mean() * t
            if np.linalg.norm(rgb - np.asarray(body_rgb, dtype=float)) >= cfg.background_contrast:
                return rgb
        return 255.0 - np.asarray(body_rgb, dtype=float)

    mode = int(rng.integers(3))
    c1, c2 = colour(), colour()
    if mode == 0:
        field_ = np.zeros((size, size, 1))
    elif mode == 1:
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        g = math.cos(a) * xx + math.sin(a) * yy
        field_ = ((g - g.min()) / max(g.max() - g.min(), 1e-9))[..., None]
    else:
        coarse = rng.uniform(0, 1, size=(4, 4)).astype(np.float32)
        img = Image.fromarray((coarse * 255).astype(np.uint8), "L").resize((size, size), Image.Resampling.BICUBIC)
        field_ = (np.asarray(img, dtype=float) / 255.0)[..., None]
    return c1 * (1 - field_) + c2 * field_


def _first_clear_point(rng: np.random.Generator, low: float, high: float, tries: int, frame: _Frame,
                       geom: _ShapeGeometry, margin: float) -> np.ndarray | None:
    """The first of ``tries`` uniform candidate points (pixels) that is ``margin`` local units clear of
    everywhere any part value could be drawn, or None.

    The zone depends only on the body (shape and pose), never on the part values, so clutter sits at
    the same place for every class of a group.
    """
    p = rng.uniform(low, high, size=(tries, 2))
    dx, dy = (p[:, 0] - frame.cx) / frame.scale, (p[:, 1] - frame.cy) / frame.scale
    c, s = math.cos(frame.angle), math.sin(frame.angle)
    u, v = (c * dx + s * dy) * frame.facing, -s * dx + c * dy  # body-local; the back is -u
    m, reach = margin, geom.reach
    blocked = np.hypot(u, v) <= reach + m  # body
    blocked |= (np.abs(u) <= 1.6 + m) & (v >= -(reach + 0.95 + m)) & (v <= 0.0)  # ears, horn, antennae
    blocked |= (u >= -(reach + 1.05 + m)) & (u <= 0.0) & (v >= -(1.0 + m)) & (v <= 0.7 + m)  # tail
    blocked |= (np.abs(u) <= 1.0 + m) & (v >= 0.0) & (v <= reach + 0.8 + m)  # legs, wheels, tentacles
    free = np.flatnonzero(~blocked)
    return p[free[0]] if free.size else None


def _clutter(rng: np.random.Generator, c: _Canvas, frame: _Frame, geom: _ShapeGeometry, size: int,
             cfg: RenderConfig) -> None:
    """Small random shapes (and maybe one loose vocabulary part) kept clear of the creature."""
    ss = cfg.supersample
    full = size * ss
    n = int(rng.integers(cfg.n_clutter[0], cfg.n_clutter[1] + 1))
    c.label = LABEL_CLUTTER
    for _ in range(n):
        radius = rng.uniform(*cfg.clutter_size) * full
        kind = int(rng.integers(4))
        rgb = tuple(int(v) for v in rng.integers(0, 256, size=3))
        angle = rng.uniform(0, 2 * math.pi)
        p = _first_clear_point(rng, 0.0, full, 20, frame, geom, cfg.clutter_clearance + radius / frame.scale)
        if p is None:
            continue
        if kind == 0:
            c.draw.ellipse([p[0] - radius, p[1] - radius, p[0] + radius, p[1] + radius], fill=rgb)
            c.ldraw.ellipse([p[0] - radius, p[1] - radius, p[0] + radius, p[1] + radius], fill=c.label)
            continue
        if kind == 3:  # a short thick stroke
            q = p + radius * np.array([math.cos(angle), math.sin(angle)])
            line = [tuple(p), tuple(q)]
            c.draw.line(line, fill=rgb, width=max(1, int(radius * 0.5)))
            c.ldraw.line(line, fill=c.label, width=max(1, int(radius * 0.5)))
            continue
        corners = 3 if kind == 1 else 4
        t = angle + 2 * math.pi / corners * np.arange(corners)
        pts = list(zip((p[0] + radius * np.cos(t)).tolist(), (p[1] + radius * np.sin(t)).tolist()))
        c.draw.polygon(pts, fill=rgb)
        c.ldraw.polygon(pts, fill=c.label)
    if rng.uniform() < cfg.p_detached_part:
        kind_name = VOCABULARY.kind_names[int(rng.integers(len(VOCABULARY.kinds)))]
        kind = VOCABULARY.kind(kind_name)
        value = kind.values[int(rng.integers(len(kind.values)))].name
        loose_scale = cfg.detached_part_scale * frame.scale
        p = _first_clear_point(rng, 0.04 * full, 0.96 * full, 30, frame, geom,
                               cfg.clutter_clearance + 1.2 * loose_scale / frame.scale)
        if p is None:
            return
        loose_frame = _Frame(float(p[0]), float(p[1]), loose_scale, rng.uniform(-0.6, 0.6), 1)
        loose_geom = _shape_geometry("loose")
        style = _Style(rng.integers(40, 230, size=3).tolist())
        saved = c.frame
        c.frame = loose_frame
        _DRAWERS[kind_name](value, c, loose_geom, style, _Jitter(1.0, 0.0, 0.0, 0.0))
        c.frame = saved


# ----------------------------------------------------------------------------- within-class variation


def _draw_variation(rng: np.random.Generator, cfg: RenderConfig) -> Variation:
    """Which variations this image gets (a fixed number of draws, whatever happens)."""
    kinds = VOCABULARY.kind_names
    u = rng.uniform(size=3)
    occluded, faded = (kinds[int(i)] for i in rng.integers(len(kinds), size=2))
    side = ("back", "top", "bottom")[int(rng.integers(3))]
    return Variation(occluded=occluded if u[0] < cfg.p_occluder else None,
                     faded=faded if u[1] < cfg.p_faded_part else None,
                     out_of_frame=side if u[2] < cfg.p_out_of_frame else None)


def _part_place(geom: _ShapeGeometry, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Body-local centre of where ``kind`` is drawn (whatever its value), for the occluder to cover."""
    if kind == "ears":
        return _top_anchor(geom, float(rng.choice([-0.55, 0.55]))) + np.array([0.0, -0.2])
    if kind == "horn":
        return _top_anchor(geom, 0.0) + np.array([0.0, -0.35])
    if kind == "eyes":
        return np.array([0.0, geom.eye_y])
    if kind == "pattern":
        return np.array([0.0, geom.pattern_y])
    if kind == "tail":
        return _edge_point(geom, (0.0, 0.2), (-1.0, 0.0)) + np.array([-0.3, -0.35])
    if kind == "legs":
        return _edge_point(geom, (0.0, 0.0), (0.0, 1.0)) + np.array([0.0, 0.3])
    raise KeyError(kind)


def _occluder(rng: np.random.Generator, c: _Canvas, geom: _ShapeGeometry, kind: str, body_rgb: Sequence[int],
              cfg: RenderConfig) -> None:
    """A foreground blob (a leaf, a rock) over the place of one part kind, labelled as clutter."""
    centre = _part_place(geom, kind, rng) + rng.uniform(-0.12, 0.12, size=2)
    radius = rng.uniform(*cfg.occluder_radius)
    t = np.linspace(0.0, 2 * math.pi, 11, endpoint=False) + rng.uniform(0, 2 * math.pi)
    r = radius * rng.uniform(0.75, 1.15, size=t.size)
    blob = np.stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)], axis=1)
    for _ in range(20):
        rgb = rng.uniform(30, 220, size=3)
        if np.linalg.norm(rgb - np.asarray(body_rgb, dtype=float)) >= cfg.background_contrast:
            break
    c.label = LABEL_CLUTTER
    c.polygon(blob, tuple(int(v) for v in rgb), _shade(rgb, 0.5))


# ----------------------------------------------------------------------------- public API


def _as_parts(item: Any) -> PartValues:
    if isinstance(item, PartValues):
        return item
    if isinstance(item, Mapping):
        return PartValues.from_dict(item)
    parts = getattr(item, "parts", None)
    if isinstance(parts, PartValues):
        return parts
    raise TypeError(f"expected a ClassSpec, PartValues or dict of part values, got {type(item).__name__}")


def render_layers(item: Any, rng: np.random.Generator, size: int = 64,
                  config: RenderConfig | None = None) -> RenderResult:
    """Render a creature (ClassSpec, PartValues or dict) and the label map of its visible components.

    Consumes a fixed number of draws from ``rng`` whatever the part values are. The image equals
    :func:`render_image` for the same ``rng`` state.
    """
    image, labels, variation = _render(item, rng, size, config, with_labels=True)
    assert labels is not None
    return RenderResult(image, labels, variation)


def render_image(item: Any, rng: np.random.Generator, size: int = 64,
                 config: RenderConfig | None = None) -> Image.Image:
    """Render a creature (ClassSpec, PartValues or dict of part values) as an RGB image."""
    return _render(item, rng, size, config, with_labels=False)[0]


def _render(item: Any, rng: np.random.Generator, size: int, config: RenderConfig | None,
            with_labels: bool) -> tuple[Image.Image, np.ndarray | None, Variation]:
    _check_drawers()
    cfg = config or RenderConfig()
    parts = _as_parts(item)
    kinds = VOCABULARY.kind_names
    seeds = rng.integers(0, 2**63 - 1, size=5 + len(kinds))
    bg_rng, body_rng, clutter_rng, noise_rng, variation_rng = (np.random.default_rng(int(s)) for s in seeds[:5])
    part_rngs = {k: np.random.default_rng(int(s)) for k, s in zip(kinds, seeds[5:])}
    variation = _draw_variation(variation_rng, cfg)

    ss = cfg.supersample
    full = size * ss
    geom = _shape_geometry(parts.shape)
    base_rgb = np.asarray(VOCABULARY.colour(parts.colour).rgb, dtype=float)
    body_rgb = tuple(int(v) for v in np.clip(base_rgb + body_rng.normal(0, cfg.body_colour_jitter, 3), 0, 255))
    radius = body_rng.uniform(*cfg.body_radius) * size
    angle = math.radians(body_rng.uniform(-cfg.body_rotation_deg, cfg.body_rotation_deg))
    facing = 1 if body_rng.uniform() < 0.5 else -1
    # Keep the creature (body + the furthest parts) inside the image, as far as the size allows:
    # the back (tail) and the top (ears) stick out further than the front and the bottom.
    back, front, top, bottom = ((geom.reach + extra) * radius for extra in (0.8, 0.45, 0.7, 0.5))
    left, right = (back, front) if facing == 1 else (front, back)
    cx = body_rng.uniform(left, size - right) if size - right > left else size / 2
    cy = body_rng.uniform(top, size - bottom) if size - bottom > top else size / 2
    if variation.out_of_frame is not None:  # the body's edge on that side at the image border
        edge = geom.reach * radius * variation_rng.uniform(0.85, 1.1)
        if variation.out_of_frame == "back":
            cx = edge if facing == 1 else size - edge
        elif variation.out_of_frame == "top":
            cy = edge
        else:
            cy = size - edge
    frame = _Frame(cx * ss, cy * ss, radius * ss, angle, facing)

    bg = _background(bg_rng, size, body_rgb, cfg)
    # Nearest upsampling is enough: the final box reduction gives back exactly these background pixels.
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB").resize((full, full),
                                                                               Image.Resampling.NEAREST)
    canvas = _Canvas(image, frame, ss, with_labels)
    _clutter(clutter_rng, canvas, frame, geom, size, cfg)
    style = _Style(body_rgb)
    jitters = {k: _Jitter(1.0 + r.uniform(-cfg.part_scale_jitter, cfg.part_scale_jitter),
                          r.uniform(-cfg.part_rotation_deg, cfg.part_rotation_deg),
                          r.uniform(-cfg.part_offset_jitter, cfg.part_offset_jitter),
                          r.uniform(-cfg.part_offset_jitter, cfg.part_offset_jitter))
               for k, r in part_rngs.items()}

    def draw_part(kind: str) -> None:
        value = parts.get(kind)
        if value != NONE:
            canvas.label = PART_LABEL_BASE + kinds.index(kind)
            canvas.tint = (style.body, cfg.fade_strength) if kind == variation.faded else None
            _DRAWERS[kind](value, canvas, geom, style, jitters[kind])
            canvas.tint = None

    for kind in _BEHIND_BODY:
        draw_part(kind)
    canvas.label = LABEL_BODY
    canvas.polygon(geom.polygon, style.body, style.outline)
    for kind in _ON_BODY:
        draw_part(kind)
    if variation.occluded is not None:
        _occluder(variation_rng, canvas, geom, variation.occluded, body_rgb, cfg)

    small = canvas.image.reduce(ss)
    arr = np.asarray(small, dtype=np.float32)
    sigma = noise_rng.uniform(*cfg.noise_sigma)
    arr = arr + noise_rng.standard_normal(size=arr.shape, dtype=np.float32) * sigma
    out = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")
    if canvas.labels is None:
        return out, None, variation
    # Label of each output pixel = label at the centre of its supersampled block.
    labels = np.asarray(canvas.labels, dtype=np.uint8)[ss // 2::ss, ss // 2::ss][:size, :size].copy()
    return out, labels, variation


def caption_for(item: Any, rng: np.random.Generator,
                templates: Sequence[str] = DEFAULT_CAPTION_TEMPLATES) -> str:
    """Ground-truth caption naming colour, shape and every present part's phrase (in random order)."""
    parts = _as_parts(item)
    template = templates[int(rng.integers(len(templates)))]
    texts = [value.caption_text for _, value in parts.present_parts()]
    texts = [texts[i] for i in rng.permutation(len(texts))]
    if len(texts) > 1:
        listed = ", ".join(texts[:-1]) + " and " + texts[-1]
    else:
        listed = texts[0] if texts else "no visible parts"
    return template.format(colour=parts.colour, shape=VOCABULARY.shape(parts.shape).word, parts=listed)
