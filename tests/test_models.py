"""Model pieces whose behaviour a benchmark result depends on."""

from __future__ import annotations

import torch

from mtbench.models import ImageHead, global_pool


def test_image_heads_see_local_evidence():
    """Two maps with the same per-channel mean but a local peak in one must pool differently.

    Average pooling cannot tell them apart (it made the small presets' attribute heads predict the
    majority class for local attributes such as eyeglasses and smiling); max pooling can.
    """
    flat = torch.full((1, 4, 8, 8), 0.25)
    peaked = torch.zeros(1, 4, 8, 8)
    peaked[..., 3, 5] = 16.0  # same mean: 16 / 64 = 0.25
    assert torch.equal(flat.mean(dim=(2, 3)), peaked.mean(dim=(2, 3)))
    assert torch.equal(global_pool(flat), torch.full((1, 4), 0.25))
    assert torch.equal(global_pool(peaked), torch.full((1, 4), 16.0))


def test_image_head_output_shape_and_pooling():
    head = ImageHead(4, 1, "batch", hidden=6).eval()
    features = torch.randn(3, 4, 5, 7)
    out = head(features, (20, 28))
    assert out.shape == (3, 1)
    expected = head.mlp(head.conv(features).amax(dim=(2, 3)))  # independent: the formula written out
    assert torch.allclose(out, expected)
