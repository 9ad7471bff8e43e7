"""Procedural, seeded, ray-cast generator of NYU-v2-like indoor scenes (pure NumPy).

Every sample is a box-shaped room (floor, ceiling, four walls) furnished with beds, sofas,
tables, chairs, storage furniture, books, small objects and thin rectangles on the walls
(windows, blinds, curtains, pictures, TVs). One ray per pixel is cast against all primitives
and the nearest positive hit determines the depth, the surface normal, both label maps, the
edge map and the colour, so all tasks are geometrically consistent with each other.
Room size (2.8-5.0 x 3.0-5.5 x 2.4-3.0 m), camera height (1.0-1.6 m), yaw, a slight pitch
(-6..12 degrees looking down, raised where needed so that the floor shows), a small roll
(~1.5 degrees), furniture, materials and the point light are all randomised. As in NYU,
a few percent of the pixels are unlabeled (about 5 % of the furniture parts and 20 % of the
small objects carry no label).

Conventions:
    * Camera frame: OpenCV, x to the right, y down, z forward (optical axis).
    * Intrinsics: NYU-v2's Kinect intrinsics (fx=518.8579, fy=519.4696, cx=325.5824,
      cy=253.7362 at 640x480) scaled to the requested size, i.e. ``fx = 518.8579 * W / 640``,
      ``fy = 519.4696 * H / 480``, ``cx = 325.5824 * W / 640``, ``cy = 253.7362 * H / 480``,
      so the field of view does not depend on the resolution. The pixel in row ``v`` and
      column ``u`` looks along ``((u - cx) / fx, (v - cy) / fy, 1)``; a pixel with depth
      ``z`` back-projects to ``(z * (u - cx) / fx, z * (v - cy) / fy, z)``.
    * ``depth`` is the z-depth (distance along the optical axis) in metres; 0 = invalid.
      Like a Kinect, window glass and a few small "shadow" holes next to occlusion
      boundaries are invalid, as are surfaces closer than 0.4 m.
    * ``normal`` holds unit normals expressed in the camera frame and oriented towards the
      camera (``n . ray_direction < 0``); all-zero exactly where depth is invalid.
    * ``semantic13``: -1 = ignore, else an index into ``NYU13_CLASSES``.
      ``semantic40``: 0 = unlabeled, else ``NYU40_CLASSES`` index + 1. Both are derived from
      the same primitive and agree semantically; -1 in one map <=> 0 in the other.
    * ``edge`` is 1 on the nearer pixel of every 4-neighbour pair across which the
      ``semantic40`` label or the hit primitive changes, the depth jumps by more than a
      relative threshold, or the normal turns by more than 30 degrees (computed on the
      geometry before the Kinect holes are punched).
    * The image is float32 RGB in [0, 1]: class-dependent albedo with optional procedural
      texture, Lambertian shading from one point light plus ambient with distance falloff,
      auto exposure, gamma and Gaussian noise.

Determinism: the output depends only on the state of the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from mtbench.data.constants import NYU13_CLASSES, NYU40_CLASSES

__all__ = ["GENERATOR_VERSION", "NyuSynthSample", "render_scene"]

GENERATOR_VERSION: str = "1"  # bump when output changes

# NYU-v2 Kinect intrinsics at 640x480.
_FX0, _FY0, _CX0, _CY0 = 518.8579, 519.4696, 325.5824, 253.7362
_W0, _H0 = 640.0, 480.0

_MIN_DEPTH = 0.4  # Kinect cannot measure closer than this (metres).
_CREASE_COS = math.cos(math.radians(30.0))
_EPS = 1e-6


@dataclass(frozen=True)
class NyuSynthSample:
    """One rendered scene.

    Attributes:
        image: float32 (H, W, 3) RGB in [0, 1].
        semantic13: int64 (H, W); -1 = ignore, else index into ``NYU13_CLASSES``.
        semantic40: int64 (H, W); 0 = unlabeled, else ``NYU40_CLASSES`` index + 1.
        depth: float32 (H, W) z-depth in metres; 0 = invalid.
        normal: float32 (H, W, 3) unit camera-frame normals facing the camera; 0 = invalid.
        edge: float32 (H, W) in {0, 1}; 1 on boundaries.
    """

    image: np.ndarray
    semantic13: np.ndarray
    semantic40: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    edge: np.ndarray


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

_C13 = {name: i for i, name in enumerate(NYU13_CLASSES)}
_C40 = {name: i + 1 for i, name in enumerate(NYU40_CLASSES)}

# 40-class name -> 13-class name for every 40-class label this generator emits.
_NYU40_TO_13: dict[str, str] = {
    "wall": "wall",
    "floor": "floor",
    "ceiling": "ceiling",
    "floor mat": "floor",
    "bed": "bed",
    "sofa": "sofa",
    "table": "table",
    "desk": "table",
    "chair": "chair",
    "cabinet": "furniture",
    "dresser": "furniture",
    "bookshelf": "furniture",
    "shelves": "furniture",
    "night stand": "furniture",
    "books": "books",
    "lamp": "objects",
    "box": "objects",
    "pillow": "objects",
    "otherprop": "objects",
    "bag": "objects",
    "window": "window",
    "blinds": "window",
    "curtain": "window",
    "picture": "picture",
    "television": "tv",
}

# Base albedos (linear RGB) per 40-class name; one is drawn and jittered per primitive.
_PALETTE: dict[str, tuple[tuple[float, float, float], ...]] = {
    "wall": (
        (0.80, 0.78, 0.72),
        (0.72, 0.74, 0.76),
        (0.78, 0.72, 0.60),
        (0.62, 0.70, 0.66),
        (0.66, 0.70, 0.80),
        (0.82, 0.76, 0.70),
        (0.60, 0.56, 0.50),
    ),
    "ceiling": ((0.85, 0.85, 0.83), (0.80, 0.79, 0.74), (0.74, 0.75, 0.77)),
    "floor": (
        (0.50, 0.34, 0.20),
        (0.62, 0.46, 0.30),
        (0.42, 0.40, 0.38),
        (0.66, 0.62, 0.55),
        (0.34, 0.24, 0.16),
        (0.55, 0.52, 0.46),
    ),
    "floor mat": ((0.60, 0.20, 0.18), (0.20, 0.30, 0.55), (0.70, 0.62, 0.45), (0.30, 0.45, 0.30)),
    "bed": ((0.85, 0.85, 0.85), (0.35, 0.45, 0.70), (0.70, 0.35, 0.35), (0.50, 0.62, 0.45), (0.80, 0.72, 0.55)),
    "sofa": (
        (0.35, 0.35, 0.38),
        (0.45, 0.28, 0.18),
        (0.22, 0.28, 0.45),
        (0.35, 0.45, 0.32),
        (0.70, 0.64, 0.52),
        (0.55, 0.18, 0.18),
    ),
    "table": ((0.55, 0.38, 0.22), (0.40, 0.26, 0.15), (0.82, 0.80, 0.76), (0.18, 0.17, 0.16), (0.68, 0.55, 0.38)),
    "desk": ((0.55, 0.38, 0.22), (0.82, 0.80, 0.76), (0.25, 0.24, 0.22), (0.68, 0.55, 0.38)),
    "chair": ((0.45, 0.30, 0.17), (0.15, 0.15, 0.16), (0.60, 0.60, 0.62), (0.60, 0.20, 0.15), (0.25, 0.35, 0.55)),
    "cabinet": ((0.60, 0.44, 0.28), (0.82, 0.81, 0.78), (0.35, 0.24, 0.15), (0.55, 0.56, 0.58)),
    "dresser": ((0.52, 0.36, 0.22), (0.80, 0.78, 0.74), (0.38, 0.26, 0.18)),
    "night stand": ((0.52, 0.36, 0.22), (0.80, 0.78, 0.74), (0.30, 0.22, 0.15)),
    "bookshelf": ((0.50, 0.35, 0.20), (0.80, 0.79, 0.76), (0.28, 0.20, 0.14)),
    "shelves": ((0.58, 0.42, 0.26), (0.78, 0.78, 0.78), (0.25, 0.25, 0.26)),
    "books": ((0.60, 0.15, 0.12), (0.15, 0.30, 0.60), (0.80, 0.70, 0.20), (0.20, 0.50, 0.25), (0.85, 0.85, 0.80)),
    "lamp": ((0.90, 0.85, 0.70), (0.85, 0.85, 0.85), (0.30, 0.30, 0.30)),
    "box": ((0.60, 0.45, 0.28), (0.75, 0.62, 0.42), (0.80, 0.80, 0.80)),
    "pillow": ((0.88, 0.88, 0.86), (0.75, 0.40, 0.30), (0.40, 0.55, 0.70), (0.80, 0.75, 0.45)),
    "otherprop": (
        (0.70, 0.20, 0.20),
        (0.20, 0.55, 0.30),
        (0.25, 0.35, 0.70),
        (0.85, 0.70, 0.25),
        (0.55, 0.55, 0.55),
        (0.15, 0.15, 0.15),
    ),
    "bag": ((0.15, 0.14, 0.13), (0.35, 0.22, 0.12), (0.20, 0.25, 0.40)),
    "window": ((0.90, 0.90, 0.88), (0.75, 0.75, 0.75), (0.40, 0.30, 0.20)),  # frames
    "blinds": ((0.88, 0.86, 0.80), (0.75, 0.70, 0.60), (0.60, 0.62, 0.64)),
    "curtain": ((0.70, 0.25, 0.22), (0.30, 0.40, 0.60), (0.80, 0.75, 0.60), (0.35, 0.50, 0.35)),
    "picture": ((0.60, 0.45, 0.30), (0.30, 0.45, 0.60), (0.70, 0.60, 0.30), (0.45, 0.55, 0.40)),
    "television": ((0.06, 0.06, 0.07), (0.10, 0.10, 0.11), (0.14, 0.14, 0.16)),
}

# Texture kinds.
_T_PLAIN, _T_NOISE, _T_STRIPES, _T_CHECKER, _T_PLANKS, _T_BOOKS, _T_GLASS = range(7)


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------


@dataclass
class _Prim:
    """A primitive surface with its labels and material (world frame, z up, metres)."""

    kind: str  # "box" | "sphere" | "cyl" | "rect" (room faces are handled separately)
    geom: tuple
    name40: str | None  # None = unlabeled
    albedo: np.ndarray
    tex: int = _T_PLAIN
    tex_args: dict = field(default_factory=dict)
    glass: bool = False


def _jitter_color(rng: np.random.Generator, name: str) -> np.ndarray:
    pal = _PALETTE[name]
    base = np.asarray(pal[int(rng.integers(len(pal)))], dtype=np.float64)
    col = base * rng.uniform(0.88, 1.12, 3) * rng.uniform(0.8, 1.2)
    return np.clip(col, 0.02, 1.0)


class _SceneBuilder:
    """Collects primitives and free floor space while furnishing a room."""

    def __init__(self, rng: np.random.Generator, size: np.ndarray, cam_xy: np.ndarray) -> None:
        self.rng = rng
        self.size = size  # (X, Y, Z) room extent
        self.prims: list[_Prim] = []
        # Footprints as axis-aligned (xmin, xmax, ymin, ymax); the camera keeps some room.
        self.foot: list[tuple[float, float, float, float]] = [
            (cam_xy[0] - 0.6, cam_xy[0] + 0.6, cam_xy[1] - 0.6, cam_xy[1] + 0.6)
        ]
        self.supports: list[tuple[np.ndarray, float, float, float, float]] = []
        self.wall_spans: dict[int, list[tuple[float, float, float, float]]] = {1: [], 2: [], 3: []}

    # ---- material helpers -------------------------------------------------------------------
    def material(self, name40: str, tex: int = _T_PLAIN, **tex_args) -> dict:
        """Albedo and texture parameters for a 40-class name."""
        rng = self.rng
        args = dict(tex_args)
        if tex in (_T_NOISE, _T_PLANKS):
            args.setdefault("lattice", rng.random((16, 16)))
            args.setdefault("amp", rng.uniform(0.15, 0.35))
            args.setdefault("cell", rng.uniform(0.08, 0.4))
        if tex in (_T_STRIPES, _T_CHECKER):
            args.setdefault("second", _jitter_color(rng, name40) * rng.uniform(0.55, 0.85))
            args.setdefault("period", rng.uniform(0.05, 0.5))
        if tex == _T_PLANKS:
            args.setdefault("period", rng.uniform(0.1, 0.25))
        if tex == _T_BOOKS:
            args.setdefault("colors", np.stack([_jitter_color(rng, "books") for _ in range(8)]))
            args.setdefault("period", rng.uniform(0.025, 0.05))
        return {"albedo": _jitter_color(rng, name40), "tex": tex, "tex_args": args}

    def add(self, kind: str, geom: tuple, name40: str | None, mat: dict, glass: bool = False) -> None:
        """Append one primitive."""
        self.prims.append(_Prim(kind, geom, name40, mat["albedo"], mat["tex"], mat["tex_args"], glass))

    # ---- placement ----------------------------------------------------------------------------
    @staticmethod
    def _aabb(center: np.ndarray, yaw: float, hw: float, hd: float) -> tuple[float, float, float, float]:
        c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
        ex, ey = c * hw + s * hd, s * hw + c * hd
        return (center[0] - ex, center[0] + ex, center[1] - ey, center[1] + ey)

    def _free(self, box: tuple[float, float, float, float], margin: float = 0.05, skip: int | None = None) -> bool:
        X, Y = self.size[0], self.size[1]
        if box[0] < -1e-9 or box[2] < -1e-9 or box[1] > X + 1e-9 or box[3] > Y + 1e-9:
            return False
        for i, o in enumerate(self.foot):
            if i == skip:
                continue
            if box[0] < o[1] + margin and o[0] < box[1] + margin and box[2] < o[3] + margin and o[2] < box[3] + margin:
                return False
        return True

    def place_against_wall(self, hw: float, hd: float, tries: int = 20) -> tuple[np.ndarray, float, int] | None:
        """Find a spot with the back of a (2hw x 2hd) footprint against a visible wall."""
        rng = self.rng
        X, Y = self.size[0], self.size[1]
        for _ in range(tries):
            wall = int(rng.choice([1, 2, 2, 3]))
            gap = rng.uniform(0.01, 0.06)
            if wall == 2:
                along = rng.uniform(hw, X - hw) if X > 2 * hw else None
                if along is None:
                    continue
                center, yaw = np.array([along, Y - gap - hd]), math.pi
            elif wall == 1:
                if Y < 2 * hw + 1.2:
                    continue
                along = rng.uniform(1.2 + hw, Y - hw)
                center, yaw = np.array([X - gap - hd, along]), math.pi / 2
            else:
                if Y < 2 * hw + 1.2:
                    continue
                along = rng.uniform(1.2 + hw, Y - hw)
                center, yaw = np.array([gap + hd, along]), -math.pi / 2
            box = self._aabb(center, yaw, hw, hd)
            if self._free(box):
                self.foot.append(box)
                return center, yaw, wall
        return None

    def place_free(
        self, hw: float, hd: float, tries: int = 20, near: np.ndarray | None = None, spread: float = 1.0
    ) -> tuple[np.ndarray, float] | None:
        """Find a free spot anywhere on the floor (or near a given point)."""
        rng = self.rng
        X, Y = self.size[0], self.size[1]
        for _ in range(tries):
            yaw = float(rng.integers(4)) * math.pi / 2 + rng.normal(0.0, 0.12)
            if near is None:
                center = np.array([rng.uniform(0.3, X - 0.3), rng.uniform(1.0, Y - 0.3)])
            else:
                center = near + rng.uniform(-spread, spread, 2)
            box = self._aabb(center, yaw, hw, hd)
            if self._free(box):
                self.foot.append(box)
                return center, yaw
        return None

    def wall_slot(self, wall: int, hw: float, z0: float, z1: float, tries: int = 8) -> float | None:
        """Position along a wall for a wall rectangle that does not overlap earlier ones."""
        rng = self.rng
        length = self.size[1] if wall in (1, 3) else self.size[0]
        lo = 0.15 + hw + (1.0 if wall in (1, 3) else 0.0)
        hi = length - 0.15 - hw
        if hi <= lo:
            return None
        for _ in range(tries):
            a = rng.uniform(lo, hi)
            ok = all(
                not (a - hw < s[1] + 0.1 and s[0] < a + hw + 0.1 and z0 < s[3] and s[2] < z1)
                for s in self.wall_spans[wall]
            )
            if ok:
                self.wall_spans[wall].append((a - hw, a + hw, z0, z1))
                return a
        return None

    # ---- composite helpers ----------------------------------------------------------------------
    def box_local(
        self,
        origin: np.ndarray,
        yaw: float,
        local: tuple[float, float, float],
        half: tuple[float, float, float],
        name40: str | None,
        mat: dict,
    ) -> None:
        """Box given in a group's local frame (x along width, y to the front, z up)."""
        c, s = math.cos(yaw), math.sin(yaw)
        cx = origin[0] + c * local[0] - s * local[1]
        cy = origin[1] + s * local[0] + c * local[1]
        self.add("box", (np.array([cx, cy, local[2]]), np.array(half, dtype=np.float64), yaw), name40, mat)


def _label_or_none(rng: np.random.Generator, name40: str, p_unlabeled: float = 0.05) -> str | None:
    return None if rng.random() < p_unlabeled else name40


# --------------------------------------------------------------------------------------------
# Furniture
# --------------------------------------------------------------------------------------------


def _add_bed(b: _SceneBuilder) -> None:
    rng = b.rng
    hw, hd = rng.uniform(0.45, 0.95), rng.uniform(0.95, 1.05)
    spot = b.place_against_wall(hw, hd + 0.05)
    if spot is None:
        return
    o, yaw, _ = spot
    name = _label_or_none(rng, "bed")
    h = rng.uniform(0.42, 0.62)
    mat = b.material("bed", _T_NOISE if rng.random() < 0.6 else _T_STRIPES)
    b.box_local(o, yaw, (0.0, 0.03, h / 2), (hw, hd, h / 2), name, mat)
    hh = rng.uniform(0.85, 1.2)
    b.box_local(o, yaw, (0.0, -hd - 0.01, hh / 2), (hw + 0.03, 0.04, hh / 2), name, b.material("cabinet", _T_PLAIN))
    for k in range(int(rng.integers(0, 3))):
        px = (rng.uniform(-0.5, 0.5) * hw) if hw < 0.6 else (-0.5 + k) * hw
        r = rng.uniform(0.14, 0.2)
        c, s = math.cos(yaw), math.sin(yaw)
        ly = -hd + 0.3
        center = np.array([o[0] + c * px - s * ly, o[1] + s * px + c * ly, h + r * 0.55])
        b.add("sphere", (center, r), _label_or_none(rng, "pillow"), b.material("pillow", _T_NOISE))
    # Night stand with a lamp.
    if rng.random() < 0.7:
        side = 1.0 if rng.random() < 0.5 else -1.0
        ns = rng.uniform(0.2, 0.27)
        nh = rng.uniform(0.45, 0.6)
        c, s = math.cos(yaw), math.sin(yaw)
        lx, ly = side * (hw + 0.08 + ns), -hd + ns + 0.02
        center = np.array([o[0] + c * lx - s * ly, o[1] + s * lx + c * ly])
        box = b._aabb(center, yaw, ns, ns)
        if b._free(box):
            b.foot.append(box)
            b.add(
                "box",
                (np.array([center[0], center[1], nh / 2]), np.array([ns, ns, nh / 2]), yaw),
                _label_or_none(rng, "night stand"),
                b.material("night stand"),
            )
            b.supports.append((center, yaw, ns, ns, nh))
            if rng.random() < 0.7:
                _add_lamp(b, center, nh)


def _add_lamp(b: _SceneBuilder, xy: np.ndarray, z0: float) -> None:
    rng = b.rng
    name = _label_or_none(rng, "lamp")
    hb = rng.uniform(0.15, 0.3)
    b.add("cyl", (xy.copy(), rng.uniform(0.03, 0.06), z0, z0 + hb), name, b.material("lamp"))
    rs = rng.uniform(0.1, 0.16)
    if rng.random() < 0.5:
        b.add("cyl", (xy.copy(), rs, z0 + hb, z0 + hb + rng.uniform(0.15, 0.25)), name, b.material("lamp"))
    else:
        b.add("sphere", (np.array([xy[0], xy[1], z0 + hb + rs * 0.8]), rs), name, b.material("lamp"))


def _add_sofa(b: _SceneBuilder) -> None:
    rng = b.rng
    hw, hd = rng.uniform(0.75, 1.2), rng.uniform(0.4, 0.48)
    if rng.random() < 0.75:
        spot = b.place_against_wall(hw, hd)
        if spot is None:
            return
        o, yaw = spot[0], spot[1]
    else:
        spot = b.place_free(hw, hd)
        if spot is None:
            return
        o, yaw = spot
    name = _label_or_none(rng, "sofa")
    mat = b.material("sofa", _T_NOISE if rng.random() < 0.5 else _T_PLAIN)
    sh, bh, arm = rng.uniform(0.38, 0.46), rng.uniform(0.75, 0.9), rng.uniform(0.12, 0.2)
    b.box_local(o, yaw, (0.0, 0.05, sh / 2), (hw - arm, hd - 0.05, sh / 2), name, mat)
    b.box_local(o, yaw, (0.0, -hd + 0.1, bh / 2), (hw, 0.1, bh / 2), name, mat)
    ah = rng.uniform(0.55, 0.65)
    for side in (-1.0, 1.0):
        b.box_local(o, yaw, (side * (hw - arm / 2), 0.0, ah / 2), (arm / 2, hd, ah / 2), name, mat)
    for _ in range(int(rng.integers(0, 3))):
        r = rng.uniform(0.13, 0.18)
        lx, ly = rng.uniform(-0.6, 0.6) * (hw - arm), -hd + 0.25
        c, s = math.cos(yaw), math.sin(yaw)
        b.add(
            "sphere",
            (np.array([o[0] + c * lx - s * ly, o[1] + s * lx + c * ly, sh + r * 0.7]), r),
            _label_or_none(rng, "pillow"),
            b.material("pillow"),
        )
    # Coffee table in front.
    if rng.random() < 0.55:
        c, s = math.cos(yaw), math.sin(yaw)
        ly = hd + rng.uniform(0.55, 0.8)
        near = np.array([o[0] - s * ly, o[1] + c * ly])
        _add_table(b, near=near, coffee=True, yaw_hint=yaw)


def _add_table(
    b: _SceneBuilder,
    near: np.ndarray | None = None,
    coffee: bool = False,
    yaw_hint: float | None = None,
    desk: bool = False,
) -> None:
    rng = b.rng
    if coffee:
        hw, hd, h = rng.uniform(0.4, 0.65), rng.uniform(0.25, 0.4), rng.uniform(0.38, 0.5)
    else:
        hw, hd, h = rng.uniform(0.4, 0.85), rng.uniform(0.3, 0.5), rng.uniform(0.7, 0.78)
    if desk:
        spot = b.place_against_wall(hw, hd)
        if spot is None:
            return
        o, yaw = spot[0], spot[1]
    else:
        spot = b.place_free(hw, hd, near=near, spread=0.1 if near is not None else 1.0)
        if spot is None:
            return
        o, yaw = spot
        if yaw_hint is not None:
            yaw = yaw_hint
    name40 = "desk" if desk or (not coffee and rng.random() < 0.25) else "table"
    name = _label_or_none(rng, name40)
    mat = b.material(name40, _T_NOISE if rng.random() < 0.4 else _T_PLAIN)
    th = rng.uniform(0.03, 0.06)
    b.box_local(o, yaw, (0.0, 0.0, h - th / 2), (hw, hd, th / 2), name, mat)
    leg = rng.uniform(0.02, 0.035)
    if desk and rng.random() < 0.5:  # panel sides instead of legs
        for side in (-1.0, 1.0):
            b.box_local(o, yaw, (side * (hw - 0.02), 0.0, (h - th) / 2), (0.02, hd - 0.02, (h - th) / 2), name, mat)
    else:
        for sx in (-1.0, 1.0):
            for sy in (-1.0, 1.0):
                b.box_local(
                    o,
                    yaw,
                    (sx * (hw - leg - 0.03), sy * (hd - leg - 0.03), (h - th) / 2),
                    (leg, leg, (h - th) / 2),
                    name,
                    mat,
                )
    b.supports.append((o, yaw, hw, hd, h))
    table_foot = len(b.foot) - 1
    if not coffee:
        n_chairs = int(rng.integers(0, 2)) if desk else int(rng.choice([0, 1, 2, 2, 3, 4]))
        sides = [(0.0, 1.0), (0.0, -1.0), (1.0, 0.0), (-1.0, 0.0)]
        order = rng.permutation(4) if not desk else np.array([0])
        for k in order[:n_chairs]:
            sx, sy = sides[int(k)]
            _add_chair(b, o, yaw, sx * (hw + 0.2), sy * (hd + 0.2), table_foot)


def _add_chair(b: _SceneBuilder, t_origin: np.ndarray, t_yaw: float, lx: float, ly: float, table_foot: int) -> None:
    """Chair facing the table; (lx, ly) is its position in the table's frame."""
    rng = b.rng
    c, s = math.cos(t_yaw), math.sin(t_yaw)
    center = np.array([t_origin[0] + c * lx - s * ly, t_origin[1] + s * lx + c * ly])
    center += rng.uniform(-0.08, 0.08, 2)
    hw = rng.uniform(0.2, 0.25)
    # The chair's front (local +y) must face the table centre.
    to = t_origin - center
    yaw = math.atan2(-to[0], to[1]) + rng.normal(0.0, 0.15)
    box = b._aabb(center, yaw, hw, hw)
    if not b._free(box, margin=0.0, skip=table_foot):
        return
    b.foot.append(box)
    _chair_parts(b, center, yaw, hw)


def _add_free_chair(b: _SceneBuilder) -> None:
    """A chair standing on its own somewhere in the room."""
    hw = b.rng.uniform(0.2, 0.25)
    spot = b.place_free(hw, hw)
    if spot is not None:
        _chair_parts(b, spot[0], spot[1] + b.rng.normal(0.0, 0.3), hw)


def _chair_parts(b: _SceneBuilder, center: np.ndarray, yaw: float, hw: float) -> None:
    """Seat, back and four legs of a chair whose front is its local +y."""
    rng = b.rng
    name = _label_or_none(rng, "chair")
    mat = b.material("chair")
    sh, st = rng.uniform(0.42, 0.48), rng.uniform(0.03, 0.06)
    b.box_local(center, yaw, (0.0, 0.0, sh - st / 2), (hw, hw, st / 2), name, mat)
    bh = rng.uniform(0.35, 0.5)
    b.box_local(center, yaw, (0.0, -hw + 0.02, sh + bh / 2), (hw, 0.02, bh / 2), name, mat)
    leg = rng.uniform(0.015, 0.025)
    for sx in (-1.0, 1.0):
        for sy in (-1.0, 1.0):
            b.box_local(
                center, yaw, (sx * (hw - leg), sy * (hw - leg), (sh - st) / 2), (leg, leg, (sh - st) / 2), name, mat
            )


def _add_storage(b: _SceneBuilder) -> None:
    rng = b.rng
    kind = str(rng.choice(["cabinet", "dresser", "bookshelf", "shelves", "cabinet"]))
    if kind == "cabinet":
        hw, hd, h = rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.3), rng.uniform(0.7, 2.0)
    elif kind == "dresser":
        hw, hd, h = rng.uniform(0.5, 0.8), rng.uniform(0.22, 0.28), rng.uniform(0.75, 1.1)
    else:
        hw, hd, h = rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.2), rng.uniform(1.0, 2.0)
    spot = b.place_against_wall(hw, hd)
    if spot is None:
        return
    o, yaw = spot[0], spot[1]
    name = _label_or_none(rng, kind)
    if kind in ("bookshelf", "shelves"):
        mat = b.material(kind, _T_STRIPES, axis=1, period=rng.uniform(0.3, 0.4))
    elif kind == "dresser" or rng.random() < 0.4:
        mat = b.material(kind, _T_STRIPES, axis=1 if kind == "dresser" else 0)
    else:
        mat = b.material(kind, _T_PLAIN)
    b.add("box", (np.array([o[0], o[1], h / 2]), np.array([hw, hd, h / 2]), yaw), name, mat)
    if kind in ("bookshelf", "shelves"):
        n_rows = int(rng.integers(1, 4))
        levels = rng.permutation(max(1, int((h - 0.3) / 0.35)))[:n_rows]
        for lv in levels:
            z0 = 0.1 + 0.35 * float(lv)
            bw = rng.uniform(0.15, 0.9) * hw
            lx = rng.uniform(-hw + bw, hw - bw)
            bh = rng.uniform(0.18, 0.28)
            b.box_local(
                o,
                yaw,
                (lx, rng.uniform(0.005, 0.03), z0 + bh / 2),
                (bw, hd, bh / 2),
                _label_or_none(rng, "books"),
                b.material("books", _T_BOOKS),
            )
    elif h < 1.3:
        b.supports.append((o, yaw, hw, hd, h))


def _on_support(b: _SceneBuilder) -> tuple[np.ndarray, float, float] | None:
    """Random point on a support surface: (xy, top z, yaw)."""
    rng = b.rng
    if not b.supports:
        return None
    o, yaw, hw, hd, h = b.supports[int(rng.integers(len(b.supports)))]
    lx, ly = rng.uniform(-0.7, 0.7) * hw, rng.uniform(-0.6, 0.6) * hd
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([o[0] + c * lx - s * ly, o[1] + s * lx + c * ly]), h, yaw


def _add_books_on_support(b: _SceneBuilder) -> None:
    rng = b.rng
    spot = _on_support(b)
    if spot is None:
        return
    xy, z, yaw = spot
    yaw += rng.normal(0.0, 0.3)
    for _ in range(int(rng.integers(1, 4))):
        th = rng.uniform(0.02, 0.06)
        half = np.array([rng.uniform(0.08, 0.15), rng.uniform(0.1, 0.2), th / 2])
        b.add(
            "box",
            (np.array([xy[0], xy[1], z + th / 2]), half, yaw + rng.normal(0.0, 0.15)),
            _label_or_none(rng, "books"),
            b.material("books", _T_NOISE),
        )
        z += th


def _add_object(b: _SceneBuilder) -> None:
    rng = b.rng
    name40 = str(rng.choice(["otherprop", "otherprop", "box", "bag", "pillow", "lamp"]))
    name = _label_or_none(rng, name40, 0.2)
    on_support = b.supports and rng.random() < 0.55
    if on_support:
        xy, z, yaw = _on_support(b)
    else:
        spot = b.place_free(0.2, 0.2)
        if spot is None:
            return
        xy, yaw = spot
        z = 0.0
    if name40 == "lamp":
        if on_support:
            _add_lamp(b, xy, z)
        else:  # floor lamp
            hpole = rng.uniform(1.2, 1.6)
            b.add("cyl", (xy.copy(), 0.02, 0.0, hpole), name, b.material("lamp"))
            b.add("cyl", (xy.copy(), rng.uniform(0.15, 0.22), hpole, hpole + 0.25), name, b.material("lamp"))
        return
    scale = 0.5 if on_support else 1.0
    shape = rng.random()
    if name40 == "box" or (name40 == "otherprop" and shape < 0.3):
        half = np.array([rng.uniform(0.08, 0.25), rng.uniform(0.08, 0.25), rng.uniform(0.05, 0.2)]) * scale
        b.add(
            "box",
            (np.array([xy[0], xy[1], z + half[2]]), half, yaw),
            name,
            b.material(name40, _T_STRIPES if rng.random() < 0.3 else _T_PLAIN),
        )
    elif shape < 0.65 or name40 == "bag":
        r = rng.uniform(0.08, 0.22) * scale
        b.add(
            "sphere",
            (np.array([xy[0], xy[1], z + r * rng.uniform(0.7, 1.0)]), r),
            name,
            b.material(name40, _T_NOISE if rng.random() < 0.5 else _T_PLAIN),
        )
    else:
        r, hh = rng.uniform(0.05, 0.18) * scale, rng.uniform(0.15, 0.6) * scale
        b.add("cyl", (xy.copy(), r, z, z + hh), name, b.material(name40))


def _wall_frame(b: _SceneBuilder, wall: int, along: float, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point on wall plane shifted by offset, inward normal, horizontal axis) for a wall."""
    X, Y = b.size[0], b.size[1]
    if wall == 2:
        return np.array([along, Y - offset, 0.0]), np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    if wall == 1:
        return np.array([X - offset, along, 0.0]), np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    return np.array([offset, along, 0.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])


def _add_wall_rect(b: _SceneBuilder, what: str) -> None:
    rng = b.rng
    Z = b.size[2]
    wall = int(rng.choice([1, 2, 2, 3]))
    if what == "window":
        hw, hh = rng.uniform(0.4, 0.8), rng.uniform(0.5, 0.75)
        zc = min(rng.uniform(0.85, 1.05) + hh, Z - 0.15 - hh)
    elif what == "picture":
        hw, hh = rng.uniform(0.15, 0.45), rng.uniform(0.15, 0.35)
        zc = min(rng.uniform(1.3, 1.8), Z - 0.1 - hh)
    else:  # tv
        hw = rng.uniform(0.4, 0.65)
        hh = hw * rng.uniform(0.55, 0.6)
        zc = min(rng.uniform(1.1, 1.5), Z - 0.1 - hh)
    along = b.wall_slot(wall, hw, zc - hh, zc + hh)
    if along is None:
        return
    up = np.array([0.0, 0.0, 1.0])
    if what == "window":
        v = str(rng.choice(["window", "window", "window", "blinds", "curtain"]))
        name = _label_or_none(rng, v, 0.03)
        if v == "window":
            p, n, a = _wall_frame(b, wall, along, 0.01)
            p[2] = zc
            b.add("rect", (p, n, a, up, hw, hh), name, b.material("window"))
            fr = rng.uniform(0.05, 0.09)
            p, n, a = _wall_frame(b, wall, along, 0.02)
            p[2] = zc
            b.add("rect", (p, n, a, up, hw - fr, hh - fr), name, b.material("window", _T_GLASS), glass=True)
        elif v == "blinds":
            p, n, a = _wall_frame(b, wall, along, 0.02)
            p[2] = zc
            b.add(
                "rect",
                (p, n, a, up, hw, hh),
                name,
                b.material("blinds", _T_STRIPES, axis=1, period=rng.uniform(0.03, 0.06)),
            )
        else:
            p, n, a = _wall_frame(b, wall, along, 0.03)
            p[2] = (zc + hh + 0.1 + 0.05) / 2
            b.add(
                "rect",
                (p, n, a, up, hw + 0.2, (zc + hh + 0.1 - 0.05) / 2),
                name,
                b.material("curtain", _T_STRIPES, axis=0, period=rng.uniform(0.1, 0.2)),
            )
    elif what == "picture":
        p, n, a = _wall_frame(b, wall, along, 0.015)
        p[2] = zc
        b.add(
            "rect",
            (p, n, a, up, hw, hh),
            _label_or_none(rng, "picture"),
            b.material("picture", _T_NOISE, amp=rng.uniform(0.6, 0.9), cell=rng.uniform(0.03, 0.12)),
        )
    else:
        p, n, a = _wall_frame(b, wall, along, 0.03)
        p[2] = zc
        b.add("rect", (p, n, a, up, hw, hh), _label_or_none(rng, "television"), b.material("television"))


def _add_tv_on_support(b: _SceneBuilder) -> bool:
    rng = b.rng
    if not b.supports:
        return False
    o, yaw, shw, shd, h = b.supports[int(rng.integers(len(b.supports)))]
    hw = min(rng.uniform(0.3, 0.55), shw * 0.95)
    hh = hw * rng.uniform(0.55, 0.6)
    c, s = math.cos(yaw), math.sin(yaw)
    ly = rng.uniform(-0.5, 0.2) * shd
    center = np.array([o[0] - s * ly, o[1] + c * ly, h + 0.04 + hh])
    name = _label_or_none(rng, "television")
    b.add("box", (center, np.array([hw, 0.03, hh]), yaw), name, b.material("television"))
    b.add(
        "box",
        (np.array([center[0], center[1], h + 0.02]), np.array([0.12, 0.08, 0.02]), yaw),
        name,
        b.material("television"),
    )
    return True


def _build_scene(
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[_Prim], list[dict], np.ndarray]:
    """Draw a room, camera, light and furniture.

    Returns:
        room size (3,), camera position (3,), camera-to-world rotation (3, 3) whose columns are
        the camera x/y/z axes in world coordinates, the primitive list, the six room-face
        materials and the light position (3,).
    """
    X, Y, Z = rng.uniform(2.8, 5.0), rng.uniform(3.0, 5.5), rng.uniform(2.4, 3.0)
    size = np.array([X, Y, Z])
    cam = np.array([rng.uniform(0.3, 0.7) * X, rng.uniform(0.25, 0.9), rng.uniform(1.0, 1.6)])
    yaw = math.pi / 2 + rng.uniform(-0.6, 0.6)
    pitch = math.radians(rng.uniform(-6.0, 12.0))  # positive looks down
    # Look down far enough for the floor to show at the bottom of the image (as in NYU).
    fwd = (math.cos(yaw), math.sin(yaw))
    reach = min(
        (X - cam[0]) / fwd[0] if fwd[0] > 0 else (-cam[0] / fwd[0] if fwd[0] < 0 else math.inf),
        (Y - cam[1]) / fwd[1] if fwd[1] > 0 else math.inf,
    )
    half_fov = math.atan(_CY0 / _FY0 * (_H0 / 480.0))
    pitch = max(pitch, math.atan(cam[2] / (0.7 * reach)) - half_fov + math.radians(2.0))
    roll = math.radians(rng.normal(0.0, 1.5))
    f = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
    r = np.cross(f, np.array([0.0, 0.0, 1.0]))
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    cr, sr = math.cos(roll), math.sin(roll)
    r, d = cr * r + sr * d, -sr * r + cr * d
    rot = np.stack([r, d, f], axis=1)

    b = _SceneBuilder(rng, size, cam[:2])
    # Room faces: floor, ceiling, wall y=0, wall x=X, wall y=Y, wall x=0.
    wall_mat = b.material("wall", _T_NOISE if rng.random() < 0.6 else _T_STRIPES, amp=rng.uniform(0.05, 0.15), axis=0)
    ftex = int(rng.choice([_T_PLANKS, _T_PLANKS, _T_CHECKER, _T_NOISE]))
    floor_mat = b.material("floor", ftex)
    ceil_mat = b.material("ceiling", _T_PLAIN)
    room_mats = [floor_mat, ceil_mat] + [wall_mat] * 4
    if rng.random() < 0.25:  # an accent wall
        room_mats[int(rng.integers(3, 6))] = b.material("wall", _T_PLAIN)
    room_names: list[str | None] = ["floor", "ceiling", "wall", "wall", "wall", "wall"]

    # Wall rectangles first so that furniture may occlude them.
    for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
        _add_wall_rect(b, "window")
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        _add_wall_rect(b, "picture")
    tv_on_wall = rng.random() < 0.2
    if tv_on_wall:
        _add_wall_rect(b, "tv")

    if rng.random() < 0.5:
        _add_bed(b)
    if rng.random() < 0.5:
        _add_sofa(b)
    for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
        _add_table(b, desk=rng.random() < 0.35)
    if rng.random() < 0.3:
        _add_free_chair(b)
    for _ in range(int(rng.integers(1, 5))):
        _add_storage(b)
    if not tv_on_wall and rng.random() < 0.55:
        _add_tv_on_support(b)
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        _add_books_on_support(b)
    for _ in range(int(rng.integers(3, 8))):
        _add_object(b)
    if rng.random() < 0.2:
        hw, hd = rng.uniform(0.6, 1.2), rng.uniform(0.5, 0.9)
        c = np.array([rng.uniform(hw, X - hw), rng.uniform(1.0 + hd, max(1.0 + hd + 0.01, Y - hd)), 0.004])
        a = np.array([1.0, 0.0, 0.0])
        b.add(
            "rect",
            (c, np.array([0.0, 0.0, 1.0]), a, np.array([0.0, 1.0, 0.0]), hw, hd),
            _label_or_none(rng, "floor mat"),
            b.material("floor mat", _T_CHECKER),
        )
    # Unlabeled room surfaces happen in NYU too (rare).
    if rng.random() < 0.03:
        room_names[int(rng.integers(2, 6))] = None

    light = np.array([rng.uniform(0.2, 0.8) * X, rng.uniform(0.3, 0.9) * Y, Z - rng.uniform(0.2, 0.5)])
    faces = [dict(m, name40=n) for m, n in zip(room_mats, room_names)]
    return size, cam, rot, b.prims, faces, light


# --------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------


def _intrinsics(height: int, width: int) -> tuple[float, float, float, float]:
    return _FX0 * width / _W0, _FY0 * height / _H0, _CX0 * width / _W0, _CY0 * height / _H0


@lru_cache(maxsize=8)
def _camera_rays(height: int, width: int) -> np.ndarray:
    """Camera-frame ray directions with unit z component, (H*W, 3)."""
    fx, fy, cx, cy = _intrinsics(height, width)
    u = (np.arange(width, dtype=np.float64) - cx) / fx
    v = (np.arange(height, dtype=np.float64) - cy) / fy
    rays = np.empty((height, width, 3))
    rays[..., 0] = u[None, :]
    rays[..., 1] = v[:, None]
    rays[..., 2] = 1.0
    rays = rays.reshape(-1, 3)
    rays.flags.writeable = False
    return rays


def _hit_room(o: np.ndarray, d: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance from the room box and the face index (0 floor, 1 ceiling, 2..5 walls)."""
    ts = np.empty((3, d.shape[0]))
    for k in range(3):
        dk = d[:, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            ts[k] = np.where(dk > 0, size[k] - o[k], -o[k]) / dk
        ts[k][dk == 0] = np.inf
    axis = np.argmin(ts, axis=0)
    t = np.take_along_axis(ts, axis[None], axis=0)[0]
    pos = d[np.arange(d.shape[0]), axis] > 0
    # (axis, positive) -> face: x+ 3, x- 5, y+ 4, y- 2, z+ 1, z- 0
    lut = np.array([[5, 3], [2, 4], [0, 1]])
    return t, lut[axis, pos.astype(np.int64)]


def _hit_boxes(o: np.ndarray, d: np.ndarray, centers: np.ndarray, halves: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """Entry distances (P, N) of rays into yaw-rotated boxes; inf where missed."""
    c, s = np.cos(yaws)[:, None], np.sin(yaws)[:, None]
    oc = o[None, :] - centers
    # world -> local: rotate by -yaw about z.
    ox = c[:, 0] * oc[:, 0] + s[:, 0] * oc[:, 1]
    oy = -s[:, 0] * oc[:, 0] + c[:, 0] * oc[:, 1]
    oz = oc[:, 2]
    dx = c * d[None, :, 0] + s * d[None, :, 1]
    dy = -s * d[None, :, 0] + c * d[None, :, 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = 1.0 / dx
        t1 = (-halves[:, 0:1] - ox[:, None]) * inv
        t2 = (halves[:, 0:1] - ox[:, None]) * inv
        tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
        inv = 1.0 / dy
        t1 = (-halves[:, 1:2] - oy[:, None]) * inv
        t2 = (halves[:, 1:2] - oy[:, None]) * inv
        np.maximum(tn, np.minimum(t1, t2), out=tn)
        np.minimum(tf, np.maximum(t1, t2), out=tf)
        inv = 1.0 / d[None, :, 2]
        t1 = (-halves[:, 2:3] - oz[:, None]) * inv
        t2 = (halves[:, 2:3] - oz[:, None]) * inv
        np.maximum(tn, np.minimum(t1, t2), out=tn)
        np.minimum(tf, np.maximum(t1, t2), out=tf)
        miss = ~((tn <= tf) & (tn > _EPS))
    tn[miss] = np.inf
    return tn


def _hit_spheres(o: np.ndarray, d: np.ndarray, centers: np.ndarray, radii: np.ndarray) -> np.ndarray:
    oc = o[None, :] - centers
    a = np.einsum("ij,ij->i", d, d)[None, :]
    bh = oc @ d.T
    cc = (np.einsum("ij,ij->i", oc, oc) - radii**2)[:, None]
    disc = bh * bh - a * cc
    with np.errstate(invalid="ignore"):
        t = (-bh - np.sqrt(disc)) / a
    t[~((disc >= 0) & (t > _EPS))] = np.inf
    return t


def _hit_cylinders(
    o: np.ndarray, d: np.ndarray, xy: np.ndarray, radii: np.ndarray, z0: np.ndarray, z1: np.ndarray
) -> np.ndarray:
    ocx, ocy = (o[0] - xy[:, 0])[:, None], (o[1] - xy[:, 1])[:, None]
    dx, dy, dz = d[None, :, 0], d[None, :, 1], d[None, :, 2]
    a = dx * dx + dy * dy
    bh = dx * ocx + dy * ocy
    cc = ocx**2 + ocy**2 - (radii**2)[:, None]
    disc = bh * bh - a * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-bh - np.sqrt(disc)) / a
        zs = o[2] + ts * dz
        ok = (disc >= 0) & (ts > _EPS) & (zs >= z0[:, None]) & (zs <= z1[:, None])
        t = np.where(ok, ts, np.inf)
        r2 = (radii**2)[:, None]
        for zc in (z0, z1):
            tc = (zc[:, None] - o[2]) / dz
            px, py = ocx + tc * dx, ocy + tc * dy
            okc = (tc > _EPS) & (px * px + py * py <= r2)
            t = np.where(okc & (tc < t), tc, t)
    return t


def _hit_rects(
    o: np.ndarray,
    d: np.ndarray,
    centers: np.ndarray,
    normals: np.ndarray,
    ax_a: np.ndarray,
    ax_b: np.ndarray,
    ha: np.ndarray,
    hb: np.ndarray,
) -> np.ndarray:
    oc = o[None, :] - centers
    den = normals @ d.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -np.einsum("ij,ij->i", oc, normals)[:, None] / den
        u = np.einsum("ij,ij->i", oc, ax_a)[:, None] + t * (ax_a @ d.T)
        v = np.einsum("ij,ij->i", oc, ax_b)[:, None] + t * (ax_b @ d.T)
        ok = (t > _EPS) & (np.abs(u) <= ha[:, None]) & (np.abs(v) <= hb[:, None])
    return np.where(ok, t, np.inf)


def _corners(pr: _Prim) -> np.ndarray:
    """Corners (k, 3) of a convex hull that contains the primitive."""
    unit = np.array([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    if pr.kind == "box":
        center, half, yaw = pr.geom
        loc = unit * half
        c, s = math.cos(yaw), math.sin(yaw)
        return center + np.stack([c * loc[:, 0] - s * loc[:, 1], s * loc[:, 0] + c * loc[:, 1], loc[:, 2]], 1)
    if pr.kind == "sphere":
        center, r = pr.geom
        return center + unit * r
    if pr.kind == "cyl":
        xy, r, z0, z1 = pr.geom
        zc, hz = 0.5 * (z0 + z1), 0.5 * (z1 - z0)
        return np.array([xy[0], xy[1], zc]) + unit * np.array([r, r, hz])
    c, _, a, b, ha, hb = pr.geom
    return np.stack([c + sa * ha * a + sb * hb * b for sa in (-1.0, 1.0) for sb in (-1.0, 1.0)])


def _screen_window(
    corners: np.ndarray,
    cam: np.ndarray,
    rot: np.ndarray,
    intr: tuple[float, float, float, float],
    height: int,
    width: int,
) -> tuple[int, int, int, int] | None:
    """Pixel window (v0, v1, u0, u1) covering the projection of a convex hull; None if off-screen."""
    pc = (corners - cam) @ rot  # world -> camera
    z = pc[:, 2]
    if z.max() <= _EPS:
        return None
    if z.min() <= 0.05:
        return 0, height, 0, width
    fx, fy, cx, cy = intr
    u, v = fx * pc[:, 0] / z + cx, fy * pc[:, 1] / z + cy
    u0, u1 = max(int(math.floor(u.min())) - 1, 0), min(int(math.ceil(u.max())) + 2, width)
    v0, v1 = max(int(math.floor(v.min())) - 1, 0), min(int(math.ceil(v.max())) + 2, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def _hit_one(pr: _Prim, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Hit distances (n,) of rays from ``o`` along ``d`` (n, 3) with one primitive; inf = miss."""
    g = pr.geom
    if pr.kind == "box":
        return _hit_boxes(o, d, g[0][None], g[1][None], np.array([g[2]]))[0]
    if pr.kind == "sphere":
        return _hit_spheres(o, d, g[0][None], np.array([g[1]]))[0]
    if pr.kind == "cyl":
        return _hit_cylinders(o, d, g[0][None], np.array([g[1]]), np.array([g[2]]), np.array([g[3]]))[0]
    return _hit_rects(o, d, g[0][None], g[1][None], g[2][None], g[3][None], np.array([g[4]]), np.array([g[5]]))[0]


# --------------------------------------------------------------------------------------------
# Texturing
# --------------------------------------------------------------------------------------------


def _value_noise(lattice: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1] from a wrapped random lattice."""
    n = lattice.shape[0]
    i0, j0 = np.floor(s), np.floor(t)
    fs, ft = s - i0, t - j0
    fs, ft = fs * fs * (3 - 2 * fs), ft * ft * (3 - 2 * ft)
    i0 = i0.astype(np.int64) % n
    j0 = j0.astype(np.int64) % n
    i1, j1 = (i0 + 1) % n, (j0 + 1) % n
    top = lattice[i0, j0] * (1 - fs) + lattice[i1, j0] * fs
    bot = lattice[i0, j1] * (1 - fs) + lattice[i1, j1] * fs
    return top * (1 - ft) + bot * ft


def _texture(prim_tex: int, args: dict, albedo: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Albedo (n, 3) at surface coordinates (s horizontal, t vertical/second axis, metres)."""
    n = s.shape[0]
    if prim_tex == _T_PLAIN:
        return np.broadcast_to(albedo, (n, 3))
    if prim_tex == _T_NOISE:
        cell = args["cell"]
        v = 0.65 * _value_noise(args["lattice"], s / cell, t / cell) + 0.35 * _value_noise(
            args["lattice"].T, s / (0.3 * cell) + 7.3, t / (0.3 * cell) + 3.1
        )
        return albedo[None, :] * (1.0 + 2.0 * args["amp"] * (v - 0.5))[:, None]
    if prim_tex == _T_STRIPES:
        coord = s if args.get("axis", 0) == 0 else t
        m = (np.sin(2 * np.pi * coord / args["period"]) > 0.3)[:, None]
        return np.where(m, args["second"][None, :], albedo[None, :])
    if prim_tex == _T_CHECKER:
        p = args["period"] * 1.5
        m = ((np.floor(s / p) + np.floor(t / p)) % 2 == 1)[:, None]
        return np.where(m, args["second"][None, :], albedo[None, :])
    if prim_tex == _T_PLANKS:
        k = np.floor(s / args["period"]).astype(np.int64)
        lat = args["lattice"]
        plank = lat[k % 16, (k // 16) % 16]
        grain = _value_noise(lat, s * 40.0, t * 2.0 + 0.37 * k)
        f = 1.0 + args["amp"] * (plank - 0.5) * 1.6 + 0.12 * (grain - 0.5)
        return albedo[None, :] * f[:, None]
    if prim_tex == _T_BOOKS:
        k = np.floor(s / args["period"]).astype(np.int64) % args["colors"].shape[0]
        return args["colors"][k]
    raise ValueError(prim_tex)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _edges(prim: np.ndarray, lab40: np.ndarray, depth: np.ndarray, normal: np.ndarray, rel_thr: float) -> np.ndarray:
    """Boundary map: mark the nearer pixel of every discontinuous 4-neighbour pair."""
    edge = np.zeros(prim.shape, dtype=bool)
    for axis in (0, 1):
        sl_a = (slice(None), slice(None, -1)) if axis == 1 else (slice(None, -1), slice(None))
        sl_b = (slice(None), slice(1, None)) if axis == 1 else (slice(1, None), slice(None))
        da, db = depth[sl_a], depth[sl_b]
        cut = (prim[sl_a] != prim[sl_b]) | (lab40[sl_a] != lab40[sl_b])
        cut |= np.abs(da - db) > rel_thr * np.minimum(da, db)
        cut |= np.einsum("ijk,ijk->ij", normal[sl_a], normal[sl_b]) < _CREASE_COS
        a_near = da <= db
        edge[sl_a] |= cut & a_near
        edge[sl_b] |= cut & ~a_near
    return edge


def render_scene(rng: np.random.Generator, height: int = 96, width: int = 128) -> NyuSynthSample:
    """Render one random indoor scene.

    Args:
        rng: Source of all randomness; the same state gives identical output.
        height: Image height in pixels.
        width: Image width in pixels.

    Returns:
        The rendered ``NyuSynthSample`` (see the module docstring for conventions).
    """
    if height < 2 or width < 2:
        raise ValueError(f"image must be at least 2x2, got {height}x{width}")
    size, cam, rot, prims, faces, light = _build_scene(rng)
    n_pix = height * width
    d = _camera_rays(height, width) @ rot.T  # world directions, camera-z component 1

    # ---- intersect ---------------------------------------------------------------------------
    t_best, prim_id = _hit_room(cam, d, size)
    n_room = 6
    t_img, id_img = t_best.reshape(height, width), prim_id.reshape(height, width)
    d_img = d.reshape(height, width, 3)
    intr = _intrinsics(height, width)
    for i, pr in enumerate(prims):
        win = _screen_window(_corners(pr), cam, rot, intr, height, width)
        if win is None:
            continue
        v0, v1, u0, u1 = win
        dd = d_img[v0:v1, u0:u1].reshape(-1, 3)
        t = _hit_one(pr, cam, dd).reshape(v1 - v0, u1 - u0)
        tb = t_img[v0:v1, u0:u1]
        better = t < tb
        tb[better] = t[better]
        id_img[v0:v1, u0:u1][better] = i + n_room
    t_best, prim_id = t_img.reshape(-1), id_img.reshape(-1)

    # ---- per-primitive shading attributes ----------------------------------------------------------
    pts = cam[None, :] + t_best[:, None] * d
    nrm = np.zeros((n_pix, 3))
    alb = np.zeros((n_pix, 3))
    emit = np.zeros(n_pix, dtype=bool)
    glass = np.zeros(n_pix, dtype=bool)
    lab40 = np.zeros(n_pix, dtype=np.int64)
    lab13 = np.full(n_pix, -1, dtype=np.int64)
    order = np.argsort(prim_id, kind="stable")
    ids, starts = np.unique(prim_id[order], return_index=True)
    ends = np.append(starts[1:], n_pix)
    for pid, a0, a1 in zip(ids.tolist(), starts.tolist(), ends.tolist()):
        sel = order[a0:a1]
        p = pts[sel]
        if pid < n_room:
            face = faces[pid]
            axis = 2 if pid < 2 else (1 if pid in (2, 4) else 0)
            n = np.zeros(3)
            n[axis] = 1.0
            nrm[sel] = n
            if axis == 2:
                s, tt = p[:, 0], p[:, 1]
            else:
                s, tt = p[:, 1 - axis], p[:, 2]
            alb[sel] = _texture(face["tex"], face["tex_args"], face["albedo"], s, tt)
            name40 = face["name40"]
        else:
            pr = prims[pid - n_room]
            name40 = pr.name40
            if pr.kind == "box":
                center, half, yaw = pr.geom
                c, sn = math.cos(yaw), math.sin(yaw)
                q = p - center
                loc = np.stack([c * q[:, 0] + sn * q[:, 1], -sn * q[:, 0] + c * q[:, 1], q[:, 2]], axis=1)
                ax = np.argmax(np.abs(loc) / half, axis=1)
                sign = np.sign(loc[np.arange(len(sel)), ax])
                nl = np.zeros((len(sel), 3))
                nl[np.arange(len(sel)), ax] = sign
                nrm[sel] = np.stack([c * nl[:, 0] - sn * nl[:, 1], sn * nl[:, 0] + c * nl[:, 1], nl[:, 2]], axis=1)
                s = np.where(ax == 0, loc[:, 1], loc[:, 0])
                tt = np.where(ax == 2, loc[:, 1], loc[:, 2])
            elif pr.kind == "sphere":
                center, r = pr.geom
                q = (p - center) / r
                nrm[sel] = q
                s, tt = r * np.arctan2(q[:, 1], q[:, 0]), r * np.arcsin(np.clip(q[:, 2], -1, 1))
            elif pr.kind == "cyl":
                xy, r, z0, z1 = pr.geom
                qx, qy = p[:, 0] - xy[0], p[:, 1] - xy[1]
                zc, hz = 0.5 * (z0 + z1), 0.5 * (z1 - z0)
                cap = np.abs(p[:, 2] - zc) / hz > np.sqrt(qx * qx + qy * qy) / r
                rad = np.maximum(np.sqrt(qx * qx + qy * qy), 1e-12)
                nrm[sel] = np.where(
                    cap[:, None],
                    np.stack([0 * qx, 0 * qx, np.sign(p[:, 2] - zc)], axis=1),
                    np.stack([qx / rad, qy / rad, 0 * qx], axis=1),
                )
                s = np.where(cap, qx, r * np.arctan2(qy, qx))
                tt = np.where(cap, qy, p[:, 2])
            else:
                c, n, a, bv = pr.geom[:4]
                q = p - c
                nrm[sel] = n
                s, tt = q @ a, q @ bv
            if pr.tex == _T_GLASS:
                emit[sel] = True
                glass[sel] = pr.glass
                alb[sel] = pr.albedo
            else:
                alb[sel] = _texture(pr.tex, pr.tex_args, pr.albedo, s, tt)
        if name40 is not None:
            lab40[sel] = _C40[name40]
            lab13[sel] = _C13[_NYU40_TO_13[name40]]

    # Orient normals towards the camera.
    flip = np.einsum("ij,ij->i", nrm, d) > 0
    nrm[flip] *= -1.0

    # ---- shading --------------------------------------------------------------------------------
    to_l = light[None, :] - pts
    dist2 = np.einsum("ij,ij->i", to_l, to_l)
    lam = np.maximum(np.einsum("ij,ij->i", nrm, to_l), 0.0) / np.sqrt(dist2)
    power = rng.uniform(2.5, 5.0)
    ambient = rng.uniform(0.12, 0.3)
    shade = ambient + power * lam / (1.0 + dist2)
    tint = rng.uniform(0.9, 1.1, 3)
    img = alb * shade[:, None] * tint[None, :]
    if emit.any():  # window glass: bright, bluish outdoor light with a vertical gradient
        sky = np.array([0.75, 0.85, 1.0]) * rng.uniform(1.0, 1.6)
        g = np.clip(1.0 - 0.25 * (pts[emit, 2] - 1.0), 0.6, 1.3)
        img[emit] = sky[None, :] * g[:, None]
    expo = rng.uniform(0.85, 1.0) / max(
        float(np.partition(img.max(axis=1), int(0.97 * (n_pix - 1)))[int(0.97 * (n_pix - 1))]), 1e-3
    )
    img = np.clip(img * expo, 0.0, 1.0) ** (1.0 / 2.2)
    img = img.reshape(height, width, 3).astype(np.float32)
    img += rng.normal(0.0, rng.uniform(0.008, 0.02), img.shape).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)

    # ---- depth, normals in camera frame, edges, Kinect holes ----------------------------------------
    depth = t_best.reshape(height, width)
    n_cam = (nrm @ rot).reshape(height, width, 3)  # world -> camera: R^T n
    n_cam /= np.linalg.norm(n_cam, axis=-1, keepdims=True)
    prim_img = prim_id.reshape(height, width)
    lab40_img = lab40.reshape(height, width)
    fx = _intrinsics(height, width)[0]
    rel_thr = max(0.02, 10.0 / fx)
    edge = _edges(prim_img, lab40_img, depth, n_cam, rel_thr)

    invalid = glass.reshape(height, width) | (depth < _MIN_DEPTH)
    # Shadow holes: on the far side of occlusion boundaries.
    far = np.zeros((height, width), dtype=bool)
    for sl_a, sl_b in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        da, db = depth[sl_a], depth[sl_b]
        jump = np.abs(da - db) > rel_thr * np.minimum(da, db)
        far[sl_a] |= jump & (da > db)
        far[sl_b] |= jump & (db > da)
    cand = np.flatnonzero(far)
    n_holes = int(rng.integers(8, 20))
    if cand.size:
        seeds = cand[rng.integers(0, cand.size, n_holes)]
        radii = rng.uniform(1.0, 3.0, n_holes) * (width / 128.0)
        for sd, rad in zip(seeds.tolist(), radii.tolist()):
            r0, c0 = divmod(sd, width)
            ri = int(math.ceil(rad))
            ys = slice(max(r0 - ri, 0), min(r0 + ri + 1, height))
            xs = slice(max(c0 - ri, 0), min(c0 + ri + 1, width))
            yy, xx = np.ogrid[ys, xs]
            disk = ((yy - r0) ** 2 + (xx - c0) ** 2 <= rad * rad) & (prim_img[ys, xs] == prim_img[r0, c0])
            invalid[ys, xs] |= disk

    depth_out = np.where(invalid, 0.0, depth).astype(np.float32)
    normal_out = np.where(invalid[..., None], 0.0, n_cam).astype(np.float32)
    return NyuSynthSample(
        image=img,
        semantic13=lab13.reshape(height, width),
        semantic40=lab40_img,
        depth=depth_out,
        normal=normal_out,
        edge=edge.astype(np.float32),
    )
