"""Tests for the ray-cast NYU-v2-like scene generator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mtbench.data.constants import NYU13_CLASSES, NYU40_CLASSES
from mtbench.data.synth_nyuv2 import GENERATOR_VERSION, NyuSynthSample, render_scene

# Which 13-class names a 40-class name may map to (written independently of the generator).
_ALLOWED_40_TO_13 = {
    "wall": "wall",
    "floor": "floor",
    "floor mat": "floor",
    "ceiling": "ceiling",
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


def _intrinsics(h: int, w: int) -> tuple[float, float, float, float]:
    """NYU-v2 Kinect intrinsics scaled from 640x480 (as documented by the module)."""
    return 518.8579 * w / 640, 519.4696 * h / 480, 325.5824 * w / 640, 253.7362 * h / 480


def _rays(h: int, w: int) -> np.ndarray:
    fx, fy, cx, cy = _intrinsics(h, w)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)


@pytest.fixture(scope="module")
def samples() -> list[NyuSynthSample]:
    rng = np.random.default_rng(1234)
    return [render_scene(rng) for _ in range(50)]


def _window_all(mask: np.ndarray) -> np.ndarray:
    """True at interior pixels whose 3x3 neighbourhood is all True (border -> False)."""
    out = np.zeros_like(mask)
    acc = np.ones((mask.shape[0] - 2, mask.shape[1] - 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            acc &= mask[dy : dy + mask.shape[0] - 2, dx : dx + mask.shape[1] - 2]
    out[1:-1, 1:-1] = acc
    return out


def _same_3x3(lab: np.ndarray) -> np.ndarray:
    c = lab[1:-1, 1:-1]
    acc = np.ones_like(c, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            acc &= lab[dy : dy + lab.shape[0] - 2, dx : dx + lab.shape[1] - 2] == c
    out = np.zeros(lab.shape, dtype=bool)
    out[1:-1, 1:-1] = acc
    return out


def test_version_is_string() -> None:
    assert isinstance(GENERATOR_VERSION, str) and GENERATOR_VERSION


@pytest.mark.parametrize("size", [(96, 128), (40, 56), (288, 384), (33, 17)])
def test_shapes_dtypes_ranges(size: tuple[int, int]) -> None:
    h, w = size
    s = render_scene(np.random.default_rng(7), h, w)
    assert s.image.shape == (h, w, 3) and s.image.dtype == np.float32
    assert s.semantic13.shape == (h, w) and s.semantic13.dtype == np.int64
    assert s.semantic40.shape == (h, w) and s.semantic40.dtype == np.int64
    assert s.depth.shape == (h, w) and s.depth.dtype == np.float32
    assert s.normal.shape == (h, w, 3) and s.normal.dtype == np.float32
    assert s.edge.shape == (h, w) and s.edge.dtype == np.float32
    for a in (s.image, s.depth, s.normal, s.edge):
        assert np.isfinite(a).all()
    assert s.image.min() >= 0.0 and s.image.max() <= 1.0
    assert s.image.std() > 0.03  # not a flat image
    assert s.semantic13.min() >= -1 and s.semantic13.max() < len(NYU13_CLASSES)
    assert s.semantic40.min() >= 0 and s.semantic40.max() <= len(NYU40_CLASSES)
    valid = s.depth > 0
    assert (s.depth >= 0).all()
    assert valid.mean() > 0.8
    assert s.depth[valid].min() >= 0.4 and s.depth[valid].max() < 15.0
    assert set(np.unique(s.edge).tolist()) <= {0.0, 1.0}


def test_labels_agree_between_13_and_40() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        s = render_scene(rng, 48, 64)
        np.testing.assert_array_equal(s.semantic13 == -1, s.semantic40 == 0)
        pairs = np.unique(np.stack([s.semantic40.ravel(), s.semantic13.ravel()], 1), axis=0)
        for l40, l13 in pairs.tolist():
            if l40 == 0:
                continue
            name40 = NYU40_CLASSES[l40 - 1]
            assert name40 in _ALLOWED_40_TO_13, name40
            assert NYU13_CLASSES[l13] == _ALLOWED_40_TO_13[name40], (name40, NYU13_CLASSES[l13])


def test_determinism() -> None:
    a = render_scene(np.random.default_rng(42))
    b = render_scene(np.random.default_rng(42))
    c = render_scene(np.random.default_rng(43))
    for name in ("image", "semantic13", "semantic40", "depth", "normal", "edge"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.depth, c.depth)


def test_does_not_touch_global_rng() -> None:
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    render_scene(np.random.default_rng(0), 24, 32)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_sample_is_frozen() -> None:
    s = render_scene(np.random.default_rng(0), 24, 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.depth = np.zeros(1)  # type: ignore[misc]


def test_normals_unit_facing_camera_and_match_invalid_depth(samples: list[NyuSynthSample]) -> None:
    rays = _rays(96, 128)
    for s in samples:
        valid = s.depth > 0
        norm = np.linalg.norm(s.normal, axis=-1)
        np.testing.assert_array_equal(norm == 0, ~valid)  # invalid depth <=> zero normal
        np.testing.assert_allclose(norm[valid], 1.0, atol=1e-4)
        facing = np.einsum("hwc,hwc->hw", s.normal, rays)
        assert (facing[valid] < 0).all()


def test_normals_match_backprojected_depth(samples: list[NyuSynthSample]) -> None:
    """Independent check: normals from finite differences of the back-projected point cloud."""
    rays = _rays(96, 128)
    angles = []
    for s in samples:
        pts = rays * s.depth[..., None].astype(np.float64)
        du = pts[1:-1, 2:] - pts[1:-1, :-2]
        dv = pts[2:, 1:-1] - pts[:-2, 1:-1]
        n = np.cross(du, dv)
        n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
        flip = np.einsum("hwc,hwc->hw", n, rays[1:-1, 1:-1]) > 0
        n[flip] *= -1
        ok = _window_all(s.depth > 0) & _same_3x3(s.semantic40) & _window_all(s.edge == 0)
        ok = ok[1:-1, 1:-1]
        cos = np.einsum("hwc,hwc->hw", n, s.normal[1:-1, 1:-1].astype(np.float64))[ok]
        angles.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    ang = np.concatenate(angles)
    assert ang.size > 50 * 96 * 128 * 0.3
    # Exact geometry: a 5 % error in the focal length already gives a median of ~0.8 degrees.
    assert np.median(ang) < 0.3
    assert np.percentile(ang, 99) < 1.0


def test_room_surface_orientation(samples: list[NyuSynthSample]) -> None:
    """Floors face up (camera -y), ceilings down (+y), walls are vertical (small pitch/roll)."""
    floor, ceiling, wall = (NYU13_CLASSES.index(c) for c in ("floor", "ceiling", "wall"))
    for s in samples:
        valid = s.depth > 0
        ny = s.normal[..., 1]
        if (m := valid & (s.semantic13 == floor)).any():
            assert np.median(ny[m]) < -0.9
        if (m := valid & (s.semantic13 == ceiling)).any():
            assert np.median(ny[m]) > 0.9
        m = valid & (s.semantic13 == wall)
        assert np.median(np.abs(ny[m])) < 0.35


def test_edges_cover_label_changes(samples: list[NyuSynthSample]) -> None:
    hits = total = 0
    for s in samples:
        e = s.edge > 0
        for axis in (0, 1):
            lab = s.semantic40
            a = (slice(None), slice(None, -1)) if axis else (slice(None, -1), slice(None))
            b = (slice(None), slice(1, None)) if axis else (slice(1, None), slice(None))
            change = lab[a] != lab[b]
            hits += int((change & (e[a] | e[b])).sum())
            total += int(change.sum())
    assert total > 0
    assert hits / total > 0.99


def test_edges_cover_depth_jumps_and_are_thin(samples: list[NyuSynthSample]) -> None:
    hits = total = blocks = n_edge = 0
    for s in samples:
        e = s.edge > 0
        d = s.depth
        jump = (
            (np.abs(d[:, 1:] - d[:, :-1]) > 0.25 * np.minimum(d[:, 1:], d[:, :-1])) & (d[:, 1:] > 0) & (d[:, :-1] > 0)
        )
        hits += int((jump & (e[:, 1:] | e[:, :-1])).sum())
        total += int(jump.sum())
        assert 0.005 < e.mean() < 0.25
        # Thin: edge pixels rarely sit inside a solid 3x3 block of edges (only on structures
        # that are themselves 1-3 px wide, e.g. a table top seen edge-on or a stack of books).
        blocks += int(_window_all(e).sum())
        n_edge += int(e.sum())
    assert total > 0
    assert hits / total > 0.99
    assert blocks / n_edge < 0.03


def test_dataset_statistics(samples: list[NyuSynthSample]) -> None:
    counts = np.zeros(len(NYU13_CLASSES) + 1)
    present = np.zeros(len(NYU13_CLASSES))
    invalid = []
    for s in samples:
        c = np.bincount(s.semantic13.ravel() + 1, minlength=len(NYU13_CLASSES) + 1)
        counts += c
        present += c[1:] > 0
        invalid.append(float((s.depth == 0).mean()))
    assert (present > 0).all(), dict(zip(NYU13_CLASSES, present))
    assert (present >= 5).all(), dict(zip(NYU13_CLASSES, present))  # in >= 10 % of scenes
    frac = counts / counts.sum()
    assert 0.0 < frac[0] < 0.1  # unlabeled
    assert 0.01 <= float(np.mean(invalid)) <= 0.08
    assert max(invalid) < 0.3
