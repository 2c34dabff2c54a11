"""End-to-end YOLACT inference on the CPU: segops' ``yolact_base`` against the released
pipeline written the released way, with the same weights.

Both pipelines run the same network (segops' ``Yolact`` is the release's architecture and
gives its raw outputs bit for bit, tests/models/test_models_yolact_release.py), so the
network stages are timed once: the ResNet-101 backbone, then FPN + protonet + prediction
heads. Post-processing is where they differ:

* segops: :class:`segops.models.yolact.Detect` -- softmax, decode, ``segops.fast_nms``, then
  the fused ``segops.assemble_masks(..., image_size=)`` (crop, upsample, threshold) and the
  pixel boxes;
* released: the release's ``Detect`` (its batched-IoU Fast NMS in PyTorch) and
  ``postprocess`` (matmul, sigmoid, crop, ``F.interpolate`` to the image, ``gt_(0.5)``),
  transcribed in ``tests/helpers/yolact_release_post.py``.

Random weights are made detector-like (peaked, unsaturated class scores; 100 detections
per image, the release's cap) so that post-processing does a trained model's work. Each
stage is timed ``--repeat`` times after a warm-up; the table gives medians (ms), the
post-processing share of each pipeline's total and the speed-up. The two pipelines'
detections are compared before timing (classes, scores and pixel boxes must be equal;
differing mask pixels are counted).

Usage: ``python benchmarks/yolact_e2e.py [--quick] [--threads N] [--image-size H W]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))  # the transcribed release (helpers/)
try:
    import segops  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, REPO_ROOT)

from helpers.yolact_release_post import released_detect, released_postprocess  # noqa: E402
from helpers.yolact_scenes import as_release, detector_like_weights  # noqa: E402

from segops.models import yolact as Y  # noqa: E402


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, a smoke run")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--image-size", type=int, nargs=2, default=(550, 550),
                        metavar=("H", "W"), help="the original image size masks are pasted at")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    h, w = args.image_size

    torch.manual_seed(0)
    model = Y.yolact_base()
    image = torch.randn(1, 3, 550, 550, generator=torch.Generator().manual_seed(1))
    detector_like_weights(model, image)
    model.eval()

    feats = model.backbone(image)
    preds = model(image)
    rpreds = as_release(preds)
    detect = model.detect

    def ours_post():
        return detect(preds, (h, w))

    def released_post():
        return released_postprocess(released_detect(rpreds), w, h, return_float=False)

    # the same detections before any timing
    (det,) = ours_post()
    classes, scores, boxes, masks = released_post()
    assert torch.equal(det["classes"], classes) and torch.equal(det["scores"], scores)
    assert torch.equal(det["boxes"], boxes)
    differing = int((det["masks"] != masks.bool()).sum())

    def heads():
        pyramid = model.fpn(feats)
        model.proto_net(pyramid[0])
        for p in pyramid:
            model.prediction_layers[0](p)

    t_backbone = median_ms(lambda: model.backbone(image), repeat)
    t_heads = median_ms(heads, repeat)
    t_ours = median_ms(ours_post, repeat)
    t_rel_nms = median_ms(lambda: released_detect(rpreds), repeat)
    rdet = released_detect(rpreds)
    t_rel_masks = median_ms(lambda: released_postprocess(rdet, w, h, return_float=False), repeat)
    t_rel = median_ms(released_post, repeat)

    net = t_backbone + t_heads
    rows = [  # (stage, segops, released); the network stages are one measurement
        ("backbone (ResNet-101), shared", t_backbone, t_backbone),
        ("FPN + protonet + heads, shared", t_heads, t_heads),
        ("post-processing", t_ours, t_rel),
        ("  of which: Detect (NMS)", None, t_rel_nms),
        ("  of which: postprocess (masks, boxes)", None, t_rel_masks),
        ("total", net + t_ours, net + t_rel),
    ]
    print(f"YOLACT yolact_base end to end, CPU, 550x550 input, masks at {h}x{w}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"medians of {repeat} runs (ms)")
    print(f"{det['classes'].shape[0]} detections, identical classes, scores and boxes; "
          f"{differing} of {masks.numel()} mask pixels differ")
    print()
    print(f"| {'stage':40s} | {'segops':>9s} | {'released':>9s} | {'speed-up':>8s} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    for name, ours, rel in rows:
        o = "" if ours is None else f"{ours:9.1f}"
        s = "" if ours is None or "shared" in name else f"{rel / ours:7.2f}x"
        print(f"| {name:40s} | {o:>9s} | {rel:9.1f} | {s:>8s} |")
    print(f"| {'post-processing share of total':40s} | {100 * t_ours / (net + t_ours):8.1f}% | "
          f"{100 * t_rel / (net + t_rel):8.1f}% | {'':8s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
