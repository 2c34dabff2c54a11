"""segops.MultiScaleRoIAlign without torchvision (docs/torchvision.md): each RoI equals
segops.roi_align on its LevelMapper level, the scales are inferred once from the heights,
and bad arguments raise clear errors. (Parity with torchvision's module:
test_torchvision_ops.py.)"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

import segops


def _pyramid(seed=0, size=(64, 96), channels=3, levels=4):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return OrderedDict((f"p{k + 2}", torch.randn(2, channels, h >> k, w >> k, generator=g))
                       for k in range(levels))


def _boxes(seed, n):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([384.0, 256.0])
    side = 4 * 250 ** torch.rand(n, 1, generator=g)
    return torch.cat([xy, xy + side], dim=1)


def test_each_roi_is_roi_align_on_its_level():
    feats = _pyramid()
    boxes = [_boxes(1, 40), _boxes(2, 30)]
    pooler = segops.MultiScaleRoIAlign(list(feats), (5, 4), 2)
    out = pooler(feats, boxes, [(256, 384), (200, 300)])
    assert pooler.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert out.shape == (70, 3, 5, 4)
    seen = set()
    rows = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1)
                      for i, b in enumerate(boxes)])
    for k, roi in enumerate(rows):
        side = math.sqrt(float((roi[3] - roi[1]) * (roi[4] - roi[2])))
        value = 4 + math.log2(side / 224) + 1e-6
        assert abs(value - round(value)) > 1e-5  # clear of the knife edge
        level = min(max(math.floor(value), 2), 5) - 2
        seen.add(level)
        want = segops.roi_align(list(feats.values())[level], roi[None], (5, 4),
                                pooler.scales[level], 2)[0]
        assert torch.equal(out[k], want), k
    assert seen == {0, 1, 2, 3}


def test_scales_from_the_largest_height_and_kept():
    feats = _pyramid(levels=2)
    pooler = segops.MultiScaleRoIAlign(["p2", "p3", "other"], 3, 2)
    # heights 64 / 256 and 32 / 256; the widths (96 / 300) are not consulted
    pooler(feats, [_boxes(3, 5), _boxes(4, 5)], [(256, 300), (180, 120)])
    assert pooler.scales == [1 / 4, 1 / 8]
    pooler(feats, [_boxes(3, 5), _boxes(4, 5)], [(1024, 1024)] * 2)
    assert pooler.scales == [1 / 4, 1 / 8]  # inferred once, as torchvision
    assert "featmap_names=['p2', 'p3', 'other']" in repr(pooler)


@pytest.mark.parametrize("args, error, match", [
    (("p2", 7, 2), TypeError, "`featmap_names` must be a non-empty list of str"),
    (([], 7, 2), TypeError, "`featmap_names` must be a non-empty list of str"),
    ((["p2"], (7, 7, 7), 2), TypeError, "`output_size` must be an int or a pair of ints"),
    ((["p2"], 7, 2.0), TypeError, "`sampling_ratio` must be an int"),
])
def test_constructor_errors(args, error, match):
    with pytest.raises(error, match="MultiScaleRoIAlign: " + match):
        segops.MultiScaleRoIAlign(*args)


def test_forward_errors():
    feats = _pyramid()
    boxes = [_boxes(5, 4), _boxes(6, 4)]
    # values are the op's to check (one layer), at the first call
    with pytest.raises(ValueError, match="multilevel_roi_align: `output_size` must be in"):
        segops.MultiScaleRoIAlign(list(feats), -1, 2)(feats, boxes, [(256, 384)])
    pooler = segops.MultiScaleRoIAlign(list(feats), 3, 2)
    with pytest.raises(TypeError, match="MultiScaleRoIAlign: `x` must be a dict"):
        pooler(list(feats.values()), boxes, [(256, 384)])
    with pytest.raises(ValueError, match="MultiScaleRoIAlign: `x` holds none of"):
        pooler({"q": feats["p2"]}, boxes, [(256, 384)])
    with pytest.raises(ValueError, match="MultiScaleRoIAlign: `image_shapes` must be"):
        pooler(feats, boxes, [])
    with pytest.raises(ValueError, match=r"MultiScaleRoIAlign: `image_shapes\[0\]` must be"):
        pooler(feats, boxes, [(256, 0)])
    with pytest.raises(ValueError, match="consecutive pyramid levels"):
        pooler(OrderedDict(p2=feats["p2"], p4=feats["p4"]), boxes, [(256, 384)])
    pooler(feats, boxes, [(256, 384)])
    with pytest.raises(ValueError, match="got 3 feature maps, but the scales inferred"):
        pooler(OrderedDict(list(feats.items())[:3]), boxes, [(256, 384)])
    with pytest.raises(TypeError, match="multilevel_roi_align: every level of `features`"):
        segops.MultiScaleRoIAlign(list(feats), 3, 2)(
            OrderedDict(p2=feats["p2"], p3=feats["p3"].double()), boxes, [(256, 384)])
