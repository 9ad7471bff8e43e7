"""Tests for the procedural CelebAMask-HQ-like face generator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtbench.data.constants import CELEBA_ATTRIBUTES, CELEBA_PARTS
from mtbench.data.synth_celebamask import (
    GENERATOR_VERSION,
    VISUAL_ATTRIBUTES,
    FaceSynthSample,
    _sample_attributes,
    combine_parts,
    render_face,
)

N_DRIVE = 240  # rendered samples for the attribute -> pixels/masks checks

# Marginals implied by the conditional prior in _sample_attributes (worked out by hand).
EXPECTED_MARGINALS: dict[str, float] = {
    "Male": 0.42,
    "Young": 0.78,
    "Smiling": 0.48,
    "Mouth_Slightly_Open": 0.4764,
    "High_Cheekbones": 0.4536,
    "Eyeglasses": 0.20,
    "Wearing_Hat": 0.08,
    "Bald": 0.0209,
    "Bangs": 0.1559,
    "Receding_Hairline": 0.0679,
    "Black_Hair": 0.2448,
    "Brown_Hair": 0.2056,
    "Blond_Hair": 0.1570,
    "Gray_Hair": 0.0498,
    "Wavy_Hair": 0.3209,
    "Straight_Hair": 0.1975,
    "Sideburns": 0.0519,
    "No_Beard": 0.8152,
    "5_o_Clock_Shadow": 0.0924,
    "Goatee": 0.0756,
    "Mustache": 0.0504,
    "Wearing_Lipstick": 0.464,
    "Heavy_Makeup": 0.3538,
    "Arched_Eyebrows": 0.273,
    "Bushy_Eyebrows": 0.1582,
    "Narrow_Eyes": 0.12,
    "Big_Lips": 0.24,
    "Big_Nose": 0.2292,
    "Pointy_Nose": 0.2792,
    "Rosy_Cheeks": 0.0622,
    "Pale_Skin": 0.05,
    "Wearing_Earrings": 0.1782,
    "Wearing_Necklace": 0.116,
    "Wearing_Necktie": 0.0714,
    "Chubby": 0.0594,
    "Double_Chin": 0.0485,
    "Bags_Under_Eyes": 0.2004,
    "Blurry": 0.05,
    "Attractive": 0.5081,
    "Oval_Face": 0.2728,
}

HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")


@pytest.fixture(scope="module")
def samples() -> list[FaceSynthSample]:
    rng = np.random.default_rng(20240601)
    return [render_face(rng) for _ in range(N_DRIVE)]


def _check_sample(s: FaceSynthSample, image_size: int, mask_size: int) -> None:
    assert isinstance(s, FaceSynthSample)
    assert s.image.dtype == np.uint8
    assert s.image.shape == (image_size, image_size, 3)
    assert set(s.attributes) == set(CELEBA_ATTRIBUTES)
    assert all(type(v) is bool for v in s.attributes.values())
    assert s.parts, "no parts"
    for name, m in s.parts.items():
        assert name in CELEBA_PARTS
        assert m.dtype == np.bool_
        assert m.shape == (mask_size, mask_size)
        assert m.any(), f"empty mask {name}"
    # parts every face has (hair may be missing for Bald)
    for name in ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "u_lip", "l_lip", "neck", "cloth"):
        assert name in s.parts, name


@pytest.mark.parametrize("image_size,mask_size", [(128, 64), (64, 32), (256, 128), (96, 40)])
def test_shapes_dtypes_keys(image_size: int, mask_size: int) -> None:
    rng = np.random.default_rng(image_size * 1000 + mask_size)
    for _ in range(12):
        _check_sample(render_face(rng, image_size, mask_size), image_size, mask_size)


def test_default_sizes_and_constants() -> None:
    s = render_face(np.random.default_rng(0))
    _check_sample(s, 128, 64)
    assert GENERATOR_VERSION == "4"
    assert set(VISUAL_ATTRIBUTES) <= set(CELEBA_ATTRIBUTES)
    for name in (
        "Male",
        "Smiling",
        "Eyeglasses",
        "Arched_Eyebrows",
        "Wearing_Hat",
        "Mouth_Slightly_Open",
        "Black_Hair",
        "Blond_Hair",
        "Brown_Hair",
        "Gray_Hair",
        "Bald",
        "Bangs",
        "Wearing_Lipstick",
        "No_Beard",
        "Mustache",
        "Goatee",
        "Pale_Skin",
        "Young",
    ):
        assert name in VISUAL_ATTRIBUTES, name
    # ordered like CELEBA_ATTRIBUTES, no duplicates
    idx = [CELEBA_ATTRIBUTES.index(a) for a in VISUAL_ATTRIBUTES]
    assert idx == sorted(set(idx))


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError):
        render_face(np.random.default_rng(0), 4, 64)


def test_determinism() -> None:
    a = render_face(np.random.default_rng(7), 128, 64)
    b = render_face(np.random.default_rng(7), 128, 64)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.attributes == b.attributes
    assert a.parts.keys() == b.parts.keys()
    for k in a.parts:
        np.testing.assert_array_equal(a.parts[k], b.parts[k])
    c = render_face(np.random.default_rng(8), 128, 64)
    assert not np.array_equal(a.image, c.image)
    # consecutive draws from one generator differ too
    rng = np.random.default_rng(7)
    first, second = render_face(rng), render_face(rng)
    np.testing.assert_array_equal(first.image, a.image)
    assert not np.array_equal(first.image, second.image)


def test_no_global_rng() -> None:
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    render_face(np.random.default_rng(1))
    after = np.random.get_state()[1]
    np.testing.assert_array_equal(before, after)


def test_combine_parts_hand_worked() -> None:
    t, f = True, False
    parts = {
        # listed out of order on purpose: CELEBA_PARTS order decides, not dict order
        "cloth": np.array([[f, f, f], [f, f, f], [f, t, t]]),
        "hair": np.array([[t, t, t], [t, f, f], [f, f, f]]),
        "skin": np.array([[f, t, t], [t, t, t], [t, t, f]]),
        "nose": np.array([[f, f, f], [f, t, f], [f, t, f]]),
        "l_eye": np.array([[f, f, t], [f, f, t], [f, f, f]]),
    }
    # skin=1, nose=2, l_eye=4, hair=13, cloth=18
    expected = np.array(
        [
            [13, 13, 13],
            [13, 2, 4],
            [1, 18, 18],
        ],
        dtype=np.uint8,
    )
    out = combine_parts(parts, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(combine_parts({}, 4), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        combine_parts({"nosee": np.ones((3, 3), bool)}, 3)
    with pytest.raises(ValueError):
        combine_parts({"nose": np.ones((4, 4), bool)}, 3)


def test_combined_map_is_consistent(samples: list[FaceSynthSample]) -> None:
    for s in samples[:60]:
        lab = combine_parts(s.parts, 64)
        assert lab.max() <= len(CELEBA_PARTS)
        for name, m in s.parts.items():
            k = CELEBA_PARTS.index(name) + 1
            # where a part's pixel lost the overwrite, the winner is a later part
            assert (lab[m] >= k).all(), name
        present = set(np.unique(lab)) - {0}
        # every part is visible somewhere in the combined map, except underlays fully covered
        assert {CELEBA_PARTS.index(n) + 1 for n in s.parts} >= present
        # skin annotation runs under the inner face parts, like the real annotations
        for inner in ("nose", "l_eye", "r_eye", "u_lip", "l_lip", "mouth"):
            if inner in s.parts:
                assert not (s.parts[inner] & ~s.parts["skin"]).any(), inner


def test_left_right_follow_image(samples: list[FaceSynthSample]) -> None:
    for s in samples[:40]:
        for a, b in (("l_eye", "r_eye"), ("l_brow", "r_brow")):
            ca = np.nonzero(s.parts[a])[1].mean()
            cb = np.nonzero(s.parts[b])[1].mean()
            assert ca < cb, (a, b)


def test_presence_iff_attribute(samples: list[FaceSynthSample]) -> None:
    counts = {"eye_g": 0, "hat": 0, "mouth": 0}
    for s in samples:
        a = s.attributes
        assert ("eye_g" in s.parts) == a["Eyeglasses"]
        assert ("hat" in s.parts) == a["Wearing_Hat"]
        assert ("mouth" in s.parts) == a["Mouth_Slightly_Open"]
        assert ("ear_r" in s.parts) == a["Wearing_Earrings"]
        assert ("neck_l" in s.parts) == a["Wearing_Necklace"]
        if a["Bald"]:
            assert "hair" not in s.parts
        else:
            assert "hair" in s.parts
        counts["eye_g"] += "eye_g" in s.parts
        counts["hat"] += "hat" in s.parts
        counts["mouth"] += "mouth" in s.parts
    # both sides of each equivalence were exercised
    for k, c in counts.items():
        assert 0 < c < len(samples), k


def test_presence_iff_attribute_small_masks() -> None:
    rng = np.random.default_rng(99)
    for _ in range(80):
        s = render_face(rng, 64, 32)
        a = s.attributes
        assert ("eye_g" in s.parts) == a["Eyeglasses"]
        assert ("hat" in s.parts) == a["Wearing_Hat"]
        assert ("mouth" in s.parts) == a["Mouth_Slightly_Open"]
        assert (not a["Bald"]) or "hair" not in s.parts


def _smile_score(parts: dict[str, np.ndarray]) -> float:
    """Mean row of the lip-centre pixels minus mean row of the lip-corner pixels (> 0: corners up)."""
    lips = parts["u_lip"] | parts["l_lip"]
    rows, cols = np.nonzero(lips)
    x0, x1 = cols.min(), cols.max()
    w = x1 - x0 + 1
    mid = 0.5 * (x0 + x1)
    centre = np.abs(cols - mid) <= 0.15 * w
    corner = (cols <= x0 + 0.15 * w) | (cols >= x1 - 0.15 * w)
    return float(rows[centre].mean() - rows[corner].mean())


def test_smiling_lifts_lip_corners(samples: list[FaceSynthSample]) -> None:
    smile = np.array([_smile_score(s.parts) for s in samples if s.attributes["Smiling"]])
    plain = np.array([_smile_score(s.parts) for s in samples if not s.attributes["Smiling"]])
    assert len(smile) > 40 and len(plain) > 40
    # rank separation (AUC) between smiling and non-smiling faces
    auc = (smile[:, None] > plain[None, :]).mean()
    assert auc > 0.95, auc
    assert np.median(smile) - np.median(plain) > 0.5


def test_male_shorter_hair(samples: list[FaceSynthSample]) -> None:
    def hair(s: FaceSynthSample) -> int:
        return int(s.parts["hair"].sum()) if "hair" in s.parts else 0

    male = np.array([hair(s) for s in samples if s.attributes["Male"]])
    female = np.array([hair(s) for s in samples if not s.attributes["Male"]])
    assert len(male) > 40 and len(female) > 40
    assert female.mean() > 1.5 * male.mean()
    assert np.median(female) > np.median(male)


def test_jaw_and_skin_drive_pixels(samples: list[FaceSynthSample]) -> None:
    # Pale_Skin: brighter skin pixels; Male: squarer jaw (wider skin at 85% of the face height)
    def skin_lum(s: FaceSynthSample) -> float:
        m = np.kron(s.parts["skin"], np.ones((2, 2), bool))
        return float(s.image[m].mean())

    pale = [skin_lum(s) for s in samples if s.attributes["Pale_Skin"]]
    other = [skin_lum(s) for s in samples if not s.attributes["Pale_Skin"]]
    if pale:
        assert np.mean(pale) > np.mean(other) + 20

    def jaw_ratio(s: FaceSynthSample) -> float:
        skin = s.parts["skin"]
        rows = np.nonzero(skin.any(1))[0]
        top, bottom = rows.min(), rows.max()
        widths = skin.sum(1)
        return float(widths[int(top + 0.88 * (bottom - top))] / widths.max())

    male = [jaw_ratio(s) for s in samples if s.attributes["Male"]]
    female = [jaw_ratio(s) for s in samples if not s.attributes["Male"]]
    assert np.mean(male) > np.mean(female) + 0.05


def test_attribute_constraints_and_marginals() -> None:
    rng = np.random.default_rng(5)
    n = 20000
    rows = [_sample_attributes(rng) for _ in range(n)]
    for a in rows:
        assert sum(a[c] for c in HAIR_COLOURS) <= 1
        if a["Bald"]:
            assert not any(a[c] for c in HAIR_COLOURS) and not a["Bangs"] and a["Male"]
        if not a["Male"]:
            assert a["No_Beard"] and not (a["Mustache"] or a["Goatee"] or a["Sideburns"])
        else:
            assert not a["Wearing_Lipstick"] and not a["Heavy_Makeup"]
        assert not (a["Straight_Hair"] and a["Wavy_Hair"])
        assert a["No_Beard"] == (not (a["Mustache"] or a["Goatee"] or a["5_o_Clock_Shadow"]))
    assert set(EXPECTED_MARGINALS) == set(CELEBA_ATTRIBUTES)
    for name, p in EXPECTED_MARGINALS.items():
        freq = sum(a[name] for a in rows) / n
        tol = 4.5 * math.sqrt(p * (1 - p) / n) + 1e-3
        assert abs(freq - p) < tol, (name, freq, p)


def test_rendered_marginals_follow_prior(samples: list[FaceSynthSample]) -> None:
    n = len(samples)
    for name in ("Male", "Smiling", "Young", "Mouth_Slightly_Open", "Eyeglasses"):
        p = EXPECTED_MARGINALS[name]
        freq = sum(s.attributes[name] for s in samples) / n
        assert abs(freq - p) < 4.5 * math.sqrt(p * (1 - p) / n), (name, freq)


def _render_with(attrs: dict[str, bool]) -> np.ndarray:
    import mtbench.data.synth_celebamask as mod

    p = mod._sample_params(np.random.default_rng(11), attrs, 64)
    g = mod._geometry(p, 128)
    return mod._paint(p, g, np.random.default_rng(12), 128)


def test_visual_attributes_drive_pixels_others_do_not() -> None:
    base = dict.fromkeys(CELEBA_ATTRIBUTES, False)
    ref = _render_with(base)
    for name in CELEBA_ATTRIBUTES:
        img = _render_with(dict(base, **{name: True}))
        changed = float((np.abs(img - ref).max(-1) > 4).mean())  # fraction of changed pixels
        if name not in VISUAL_ATTRIBUTES:
            np.testing.assert_array_equal(img, ref, err_msg=name)
        elif name != "No_Beard":  # No_Beard is derived (= no Goatee/Mustache/5_o_Clock_Shadow)
            assert changed > 0.001, (name, changed)
