"""AOTInductor: a small detector tail that uses several segops ops (NMS with a data-dependent
output size, RoIAlign, fused YOLACT mask assembly, mask pasting) compiled ahead of time into
a package, loaded back and run: the results equal eager's."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import segops
from helpers.deploy import assert_same, rand_boxes

pytestmark = pytest.mark.no_cuda_emu


class TinyDetectorTail(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.coeffs = nn.Linear(4 * 3 * 3, 4)
        self.mask_head = nn.Conv2d(4, 1, 1)

    def forward(self, image: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor):
        h, w = image.shape[2], image.shape[3]
        feat = self.features(image)  # [1, 4, H, W]
        keep = segops.nms(boxes, scores, 0.5)  # exact size: data-dependent K
        kept = boxes[keep]
        rois = torch.cat([kept.new_zeros(kept.shape[0], 1), kept], 1)
        pooled = segops.roi_align(feat, rois, 3, 1.0, 2, True)  # [K, 4, 3, 3]
        coeffs = torch.tanh(self.coeffs(pooled.flatten(1)))  # [K, 4]
        protos = feat[0].permute(1, 2, 0)  # [H, W, 4]
        rel = kept / torch.tensor([w, h, w, h], dtype=kept.dtype)
        masks = segops.assemble_masks(protos, coeffs, rel, image_size=(2 * h, 2 * w))
        probs = torch.sigmoid(self.mask_head(pooled))  # [K, 1, 3, 3]
        pasted = segops.paste_masks(probs, kept, (h, w))
        return keep, masks, pasted


def _inputs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, 24, 32, generator=g)
    boxes = rand_boxes(n, seed, extent=20.0, size=10.0, clusters=4)
    return image, boxes, torch.rand(n, generator=g)


def test_aoti_package_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = TinyDetectorTail().eval()
    args = _inputs(30, 1)
    n = torch.export.Dim("N", min=2)
    with torch.no_grad():
        ep = torch.export.export(model, args, dynamic_shapes=({}, {0: n}, {0: n}))
        start = time.perf_counter()
        path = torch._inductor.aoti_compile_and_package(
            ep, package_path=str(tmp_path / "tail.pt2"))
        compile_s = time.perf_counter() - start
        compiled = torch._inductor.aoti_load_package(path)
        for v, count in enumerate((30, 45)):
            args = _inputs(count, 1 + v)
            expected = model(*args)
            assert expected[0].numel() >= 3  # several boxes survive NMS
            assert expected[1].any() and expected[2].any()
            actual = compiled(*args)
            assert_same(tuple(actual), expected)
    print(f"AOTInductor compile: {compile_s:.1f} s")
