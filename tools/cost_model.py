"""The GPU cost model of the roi and nms kernels at the benchmark sizes (docs/cost_model/).

For every full-size roi / nms benchmark case it derives, from the case's own inputs, the
work each kernel does (bytes to and from DRAM, arithmetic, atomics, serial steps) and
converts it to a predicted time on an H100-class GPU with the constants below: a kernel
takes max(DRAM bytes / bandwidth, ops / issue rate, ...) plus a launch, and an op the
sum of its kernels. The constants are round, conservative figures, not measurements: the
point is to read the first GPU profile (tools/gpu_profile.py profile) against them.

    python tools/cost_model.py [--markdown FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# H100 SXM, rounded down to what a good kernel reaches.
DRAM = 3.0e12           # bytes/s (3.35 TB/s peak)
OPS32 = 15e12           # simple fp32/int ops/s (no FMA: --fmad=false; ~half of issue peak)
OPS64 = 8e12            # fp64 ops/s
POPC = 3.6e12           # popc/s (16 per clock per SM)
ATOMIC = 0.5e12         # scattered fp32 atomicAdd/s at the L2, without contention
L2 = 7e12               # bytes/s from L2
LAUNCH = 3e-6           # s per kernel launched eagerly (about 1 us in a CUDA graph)
SORT = 25e-6            # s per ATen sort of <= 1M keys (several CUB kernels), plus bytes
SERIAL_ROW_BLOCK = 1.5e-6  # s per 64 rows settled by the NMS scan (3 barriers, one L2 read)
DIV = 10                # ops per IEEE fp32 division
EXP = 20                # ops per expf
SMS = 132               # a kernel of fewer blocks gets that share of the compute rates


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def mb(b: float) -> str:
    return f"{b / 2**20:,.1f}"


class Op:
    """Kernels of one op call: (name, DRAM bytes, seconds of compute) and ATen calls."""

    def __init__(self, case: str):
        self.case, self.kernels, self.aten = case, [], []

    def kernel(self, name, dram=0.0, compute=0.0, note="", blocks=None):
        if blocks is not None:
            compute /= min(1.0, blocks / SMS)
        self.kernels.append((name, dram, max(dram / DRAM, compute) + LAUNCH, note))

    def aten_call(self, name, seconds):
        self.aten.append((name, seconds))

    def total(self) -> float:
        return sum(k[2] for k in self.kernels) + sum(a[1] for a in self.aten)

    def rows(self):
        out = [f"| {self.case} | **{us(self.total())}** | | {len(self.kernels)} launches, "
               f"{len(self.aten)} ATen calls |"]
        for name, dram, t, note in self.kernels:
            out.append(f"| &nbsp;&nbsp;{name} | {us(t)} | {mb(dram)} | {note} |")
        for name, t in self.aten:
            out.append(f"| &nbsp;&nbsp;ATen {name} | {us(t)} | | |")
        return out


# ---------------------------------------------------------------------------- roi


def roi_grid(rois: torch.Tensor, scale: float, out: int, sr: int, aligned: bool):
    """Samples per bin along y and x of every RoI (torchvision's rule; boxes in the image)."""
    off = 0.5 if aligned else 0.0
    w = rois[:, 3] * scale - off - (rois[:, 1] * scale - off)
    h = rois[:, 4] * scale - off - (rois[:, 2] * scale - off)
    if not aligned:
        w, h = w.clamp(min=1), h.clamp(min=1)
    if sr > 0:
        return torch.full_like(h, sr), torch.full_like(w, sr), h, w
    return (h / out).ceil().clamp(min=1), (w / out).ceil().clamp(min=1), h, w


def roi_align_ops(case, K, C, H, W, out, gy, gx, fh, fw, backward, deterministic):
    """One level's roi_align (or a multilevel level's share)."""
    samples = float((out * gy * out * gx).sum())        # per channel
    outputs = K * C * out * out
    in_bytes, out_bytes = C * H * W * 4.0, outputs * 4.0
    if not backward:
        ops = C * samples * 40 + outputs * DIV
        return [("forward", in_bytes + out_bytes, ops / OPS32,
                 f"{samples * C / 1e6:,.0f}M samples x 4 taps")]
    if not deterministic:
        atomics = 4 * C * samples
        return [("zero grad input", in_bytes, 0.0, "at::zeros"),
                ("scatter (atomic)", out_bytes + in_bytes, atomics / ATOMIC,
                 f"{atomics / 1e6:,.0f}M float atomicAdd")]
    # gather: a block per 8x4 tile x 64-channel slab compacts all K footprints; each
    # (pixel, RoI, channel group) pays ~40 ops, each grad term a division.
    tiles = math.ceil(H / 4) * math.ceil(W / 8)
    slabs = math.ceil(C / 64)
    compaction = tiles * slabs * K * 40 / L2
    covered = float(((fh / 4).ceil() + 1).mul((fw / 8).ceil() + 1).sum()) * 32  # px of tiles
    pairs = covered * C / 8 * 40
    terms = 4 * C * samples * (DIV + 5)
    return [("gather", out_bytes + in_bytes,
             compaction + (pairs + terms) / OPS32,
             f"{covered / 1e6:.1f}M pixel-RoI pairs, {4 * C * samples / 1e6:,.0f}M grad terms")]


def roi_cases():
    from cases.inputs import random_boxes

    ops = []
    for level, stride, (H, W) in (("P2", 4, (200, 304)), ("P4", 16, (50, 76))):
        rois = random_boxes(1000, (800, 1216), (16.0, 600.0))
        for out in (7, 14):
            for sr, aligned in ((2, False), (0, True)):
                gy, gx, fh, fw = roi_grid(rois, 1 / stride, out, sr, aligned)
                for pass_ in ("fwd", "bwd-only", "bwd-only det"):
                    bwd, det = pass_ != "fwd", pass_.endswith("det")
                    name = (f"roi_align {level} {H}x{W} C256 K1000 out{out} sr{sr}"
                            f"{' aligned' if aligned else ''} {pass_}")
                    o = Op(name)
                    o.kernel("geometry", 1000 * 160.0, 0.0)
                    for k in roi_align_ops(name, 1000, 256, H, W, out, gy, gx, fh, fw, bwd, det):
                        o.kernel(*k)
                    ops.append(o)
    # multilevel: P2..P5, level by area (the LevelMapper's rule, canonical 224 at level 4).
    rois = random_boxes(1000, (800, 1216), (32.0, 800.0))
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    lvl = (4 + torch.log2(area.sqrt() / 224) + 1e-6).floor().clamp(2, 5) - 2
    shapes = [(200, 304), (100, 152), (50, 76), (25, 38)]
    for out, sr, aligned, mode in ((7, 2, False, "assign"), (14, 0, True, "assign"),
                                   (7, 2, False, "all")):
        for pass_ in ("fwd", "bwd-only", "bwd-only det"):
            bwd, det = pass_ != "fwd", pass_.endswith("det")
            name = (f"multilevel_roi_align P2-P5 C256 K1000 out{out} sr{sr}"
                    f"{' aligned' if aligned else ''} {mode} {pass_}")
            o = Op(name)
            o.kernel("geometry", 1000 * 170.0 * (4 if mode == "all" else 1), 0.0)
            dram = comp = 0.0
            notes = []
            for l, (H, W) in enumerate(shapes):
                sel = rois if mode == "all" else rois[lvl == l]
                gy, gx, fh, fw = roi_grid(sel, 1 / 2 ** (l + 2), out, sr, aligned)
                for name_k, d, c, note in roi_align_ops(name, len(sel), 256, H, W, out, gy, gx,
                                                       fh, fw, bwd, det):
                    if name_k == "zero grad input":
                        o.kernel(f"zero grad input P{l + 2}", d, 0.0)
                        continue
                    dram, comp = dram + d, comp + c
                    notes.append(f"P{l + 2}: {note}")
            o.kernel("forward" if not bwd else ("gather" if det else "scatter (atomic)"),
                     dram, comp, "; ".join(notes[:2]) + (" ..." if len(notes) > 2 else ""))
            ops.append(o)
    return ops


# ---------------------------------------------------------------------------- nms


def greedy(case, boxes, scores, cls, budget_words=1 << 24):
    n = boxes.shape[0]
    o = Op(case)
    order = torch.argsort(scores, descending=True, stable=True)
    c = cls[order]
    c_sorted, by_class = torch.sort(c, stable=True)
    seg_end = torch.searchsorted(c_sorted, c_sorted, right=True)
    rb = (n + 63) // 64
    last = torch.clamp(torch.arange(rb) * 64 + 63, max=n - 1)
    span = (seg_end[last] - 1) // 64 - torch.arange(rb) + 1
    items = float(span.sum())
    sizes = torch.bincount(c_sorted - c_sorted.min()).double()
    pairs = float((sizes * (sizes - 1) / 2).sum())
    words = rb
    chunks = words * (words + 1) // 2 // (budget_words // 64) + 1
    used_chunks = int(64 * items // budget_words) + 1
    o.aten_call("sort (scores)", SORT + n * 24 / DRAM)
    if cls.unique().numel() > 1:
        o.aten_call("index_select (classes)", LAUNCH)
        o.aten_call("sort (classes)", SORT + n * 32 / DRAM)
        o.aten_call("index_select (order)", LAUNCH)
    o.kernel("prepare", n * 60.0, n * 17 * 4 / OPS32, "boxes, validity, class ends (bsearch)")
    o.kernel("plan (1 block)", n * 8.0, n * 8 / 100e9, "spans, segments; one SM")
    ops_mask = pairs * (25 + DIV) + (items * 4096 - pairs) * 5
    o.kernel("mask", items * 64 * 8 + items * 64 * 20, ops_mask / OPS32,
             f"{items:,.0f} (row block, word) items, {pairs / 1e6:,.1f}M IoUs")
    longest = float(sizes.max())
    chain = math.ceil(longest / 64) * SERIAL_ROW_BLOCK
    classes = int((sizes > 0).sum())
    waves = math.ceil(classes / (132 * 4))
    o.kernel("scan", items * 64 * 8 * 0.3, chain * waves,
             f"{classes} class chains in parallel, the longest {math.ceil(longest / 64)} row "
             "blocks")
    if chunks > 1:  # the mask budget's other chunks: full ones, or launches that find no work
        o.kernels.append((f"{chunks - 1} more chunks (mask + scan)", 0.0,
                          2 * (chunks - 1) * LAUNCH, f"{chunks - used_chunks} of the {chunks} "
                          "chunks hold no row block (launch cost only)"))
    o.aten_call("cumsum", LAUNCH + n * 8 / DRAM)
    o.kernel("compact", n * 16.0, 0.0)
    return o


def matrix(case, masks_shape, labels):
    n, h, w = masks_shape
    p = h * w
    words = math.ceil(p / 64)
    o = Op(case)
    o.aten_call("sort (scores)", SORT)
    o.aten_call("index_select (labels)", LAUNCH)
    o.aten_call("sort (labels)", SORT)
    o.aten_call("index_select (rows)", LAUNCH)
    o.kernel("memset (counts)", n * n * 4.0)
    o.kernel("pack", n * p + n * words * 8.0, 0.0, f"{n * p / 2**20:,.0f} MiB of masks read once")
    lab, _ = torch.sort(labels)
    tiles = math.ceil(n / 64)
    live = 0
    for r in range(tiles):
        for s in range(r, tiles):
            if lab[min(r * 64 + 63, n - 1)] >= lab[s * 64]:
                live += 1
    pairs = tiles * (tiles + 1) // 2
    split = max(1, min(math.ceil(2 * SMS / pairs), math.ceil(words / 16)))
    popc = live * 4096 * words
    o.kernel("intersections (64x64 tiles)", live * 128 * words * 8.0,
             popc / POPC + popc * 2 / OPS32,
             f"{live} of {pairs} tiles share a label, x {split} word slices; "
             f"{popc / 1e9:.2f}G popc", blocks=live * split)
    o.kernel("compensation", n * 64 * 4.0, n * 64 * (DIV + 10) / OPS32, "own label only")
    o.kernel("decay + output", n * n * 2.0, n * n / 2 * (EXP * 2 + DIV + 10) / OPS32,
             "n^2/2 exp terms", blocks=math.ceil(n / 256))
    return o


def nms_cases():
    from cases.inputs import MASK_RCNN_IMAGE, detector_boxes, instance_masks

    ops = []
    for n in (1000, 10000, 100000):
        b, s, _ = detector_boxes(n, MASK_RCNN_IMAGE, min(50, max(5, n // 20)), 80)
        ops.append(greedy(f"nms N{n}", b, s, torch.zeros(n, dtype=torch.long)))
    for n, c in ((10000, 80), (200000, 80)):
        b, s, cls = detector_boxes(n, MASK_RCNN_IMAGE, min(50, max(5, n // 20)), c)
        ops.append(greedy(f"batched_nms N{n} C{c}", b, s, cls))
    masks, labels, _ = instance_masks(500, (200, 304), 25, 80)
    ops.append(matrix("matrix_nms N500 200x304 C80", tuple(masks.shape), labels))
    return ops


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    lines = ["| op call / kernel | predicted us | DRAM MiB | work |", "|---|---|---|---|"]
    for o in roi_cases() + nms_cases():
        lines += o.rows()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
