"""End to end: a (small, randomly initialised) YOLACT with its Detect post-processing --
Fast NMS and the fused mask assembly -- exported to ONNX with segops.onnx's translations and
run in onnxruntime: the same detections as eager (docs/deployment.md shows the same)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segops.models import yolact as Y
from helpers.masks import check_bool_band, contract_resize
from helpers.onnx_export import Runner, assert_standard, compare, export

pytestmark = pytest.mark.no_cuda_emu


class YolactInference(nn.Module):
    """One image ``[1, 3, H, W]`` in; boxes (pixels), classes, scores, bool masks
    ``[D, H, W]``, anchor indices and the proto-resolution masks out."""

    def __init__(self, model: Y.Yolact) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        preds = self.model(image)
        size = (image.shape[2], image.shape[3])
        det = self.model.detect(preds, size, return_proto_masks=True)[0]
        return (det["boxes"], det["classes"], det["scores"], det["masks"], det["indices"],
                det["proto_masks"])


def test_yolact_detect_onnxruntime_matches_eager():
    torch.manual_seed(0)
    backbone = Y.ResNetBackbone(layers=(1, 1, 1, 1), widths=(8, 8, 8, 8))
    model = YolactInference(Y.Yolact(3, backbone=backbone, fpn_channels=16,
                                     num_prototypes=8).eval())
    image = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(image)  # fills Yolact's prior cache with real tensors before tracing
        onnx_model = export(model.forward, (image,))
        ops = assert_standard(onnx_model)
        assert {"Conv", "TopK", "MatMul", "Exp"} <= set(ops)
        boxes, classes, scores, masks, indices, proto_masks = Runner(onnx_model)(image)
        expected = model(image)
    assert expected[0].shape[0] == 100  # max_detections reached: a non-trivial output
    compare((classes, indices), (expected[1], expected[4]))
    # The backbone, FPN and heads run in onnxruntime too: their convolutions sum in another
    # order, so boxes, scores and masks carry float differences of about 1e-6 from there.
    tol = dict(rtol=1e-5, atol=1e-5)
    compare((boxes, scores, proto_masks), (expected[0], expected[2], expected[5]), tol)
    values = contract_resize(expected[5], 128, 128)
    check_bool_band(masks, values, 0.5, strict=True, dtype=torch.float32)
