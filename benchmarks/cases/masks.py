"""masks family: assemble_masks (YOLACT), paste_masks (Mask R-CNN).

Sizes (``--quick`` in brackets):

- ``assemble_masks`` inference: 100 [10] detections of YOLACT-550's 138x138x32 [35x35x8]
  prototypes, assembled, cropped, upsampled and thresholded at 0.5 into a 550x550 [138x138]
  and a 1080x1920 [270x480] image (``image_size=``): segops' fused op against the reference's
  YOLACT passes (matmul, sigmoid, crop, ``F.interpolate``, ``>``).
- ``assemble_masks`` training: 300 [30] positives on the same prototypes, ``image_size=None``
  (the cropped float masks YOLACT's loss reads): ``fwd``; ``bwd-only`` (``autograd.grad``
  of the output w.r.t. prototypes and coefficients for a random gradient, on a forward
  computed beforehand, as the roi cases); ``fwd+bwd`` (forward and that backward in one
  call, as a training step runs them; YOLACT's BCE loss between them is left out: on the CPU
  it costs as much as the rest of the step, the same for every implementation).
- ``paste_masks``: 100 [10] Mask R-CNN 28x28 probability masks pasted into 800x1216
  [200x304] and 4000x8000 [400x800] images, threshold 0.5, in ``mode="detectron2"`` and
  ``mode="torchvision"``.

Inputs (seeded, built on the CPU): boxes spread over the image with sides log-uniform in
2%..60% of the image's (``inputs.random_boxes`` on a unit image), float32 (float64 with
``--dtype float64``) whatever ``--dtype``, as detectors keep them; coefficients
``tanh(N(0, 0.5))``; prototypes ``relu(N(0, 1))``; paste masks ``sigmoid`` of a soft
ellipse filling most of the box plus noise (values spread over (0, 1), about half >= 0.5).

Implementations: ``segops``; ``reference`` (``segops.reference``, pure PyTorch); in every
``assemble_masks`` case the peer ``yolact``: YOLACT's own chain as YOLACT writes it
(``layers/output_utils.postprocess`` and ``layers/box_utils.crop``: ``protos @ coeffs.t()``,
``sigmoid``, a crop that multiplies by a float 0/1 mask built from ``arange`` comparisons,
``permute``, ``F.interpolate(bilinear)``, ``gt_(0.5)`` in place, leaving float 0/1 masks;
the training cases return its ``[H, W, N]`` masks as an ``[N, H, W]`` view, so that
gradients compare); in torchvision-mode paste
cases the peer ``torchvision`` (``torchvision.models.detection.roi_heads.
paste_masks_in_image`` on masks ``[N, 1, M, M]``, then ``>= 0.5``, inside the timing), and
in detectron2-mode cases ``detectron2`` (``detectron2.layers.mask_ops.paste_masks_in_image``)
when detectron2 imports (it is selected with ``torchvision``: ``--impls`` knows no
``detectron2``).

Memory: an implementation other than segops that would need more than ``CHUNK_BYTES`` at
once (estimated from ``_WORK_BYTES_PER_PIXEL``: the reference's float ``[N, H, W]`` canvas
and full-image sampling grids, torchvision's float ``[N, 1, H, W]`` canvas; each canvas is
12.8 GB at 4000x8000) is called on as few consecutive chunks of the detections as keep it
under that, its boolean results copied into one output (the copy is timed); one whose
single detection would need more is left out of the case, as an unavailable
implementation is (a line on stderr says so). ``benchmarks/masks_memory.py`` reports
each implementation's peak memory against the size of its output.

Memory floors (``s``: the dtype's size, ``sb`` the boxes'): the inputs read once,
prototypes ``H W k s``, coefficients ``N k s``, boxes ``4 N sb``, paste masks ``N 28 28 s``;
the outputs written once: bool masks ``N h w`` (inference, paste), float masks ``N H W s``
(training forward); a backward reads the output gradient ``N H W s`` and the inputs and
writes the prototypes' and coefficients' gradients.

Cross-checks: the float outputs and gradients are compared with segops' as everywhere. The
boolean masks are not expected to be equal bit for bit (the reference's ``F.interpolate``
and torchvision round differently from segops' fixed arithmetic, which moves pixels whose
value is within rounding of the threshold), so for them the compared quantity is the
number of pixels that differ from segops' over the number of foreground pixels in either
(1 - IoU of all masks at once; segops' own output stands as 0): a note says when it is
above the dtype's tolerance (1e-3 for float32).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .inputs import random_boxes
from .registry import Ctx, Fn, nbytes, op_impls, register

THRESHOLD = 0.5
PADDING = 1  # YOLACT's crop padding (the op's default)
BOX_SIDES = (0.02, 0.6)  # box sides as fractions of the image's

# (full, --quick)
PROTOS = ((138, 138, 32), (35, 35, 8))  # YOLACT-550's prototypes [H, W, k]
DETECTIONS = (100, 10)  # inference: detections per image
ASSEMBLE_IMAGES = (((550, 550), (138, 138)), ((1080, 1920), (270, 480)))  # (h, w)
POSITIVES = (300, 30)  # training: positive anchors per image
PASTE_MASK = (28, 28)  # Mask R-CNN's mask head resolution
PASTE_IMAGES = (((800, 1216), (200, 304)), ((4000, 8000), (400, 800)))  # (h, w)
PASTE_MODES = ("detectron2", "torchvision")

# Implementations other than segops need at most this much memory at once (see above).
CHUNK_BYTES = 2 << 30
# Their peak memory in bytes per output pixel per detection, rounded up from
# benchmarks/masks_memory.py (float32; twice that for float64): the reference's float
# canvas [N, H, W] (4), its detectron2 path's sampling grid and grid_sample output for the
# masks of one internal chunk (12) and the bool output (1); torchvision's float canvas and
# the comparison; the reference assembly's upsampled float masks and the comparison.
_WORK_BYTES_PER_PIXEL = {
    ("assemble_masks", "reference"): 6,
    ("assemble_masks", "yolact"): 6,
    ("paste_masks", "reference", "detectron2"): 18,
    ("paste_masks", "reference", "torchvision"): 6,
    ("paste_masks", "torchvision"): 6,
    ("paste_masks", "detectron2"): 0,  # pastes mask by mask on the CPU, bounded chunks on GPU
}


def _pick(ctx: Ctx, full_quick):
    return full_quick[1] if ctx.quick else full_quick[0]


def _box_dtype(ctx: Ctx) -> torch.dtype:
    return torch.float64 if ctx.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def relative_boxes(num: int, seed: int = 0) -> torch.Tensor:
    """[num, 4] float64 (x1, y1, x2, y2) in [0, 1]: sides log-uniform in ``BOX_SIDES`` of the
    image's (independently per axis), each box inside the image."""
    return random_boxes(num, (1.0, 1.0), BOX_SIDES, seed=seed)[:, 1:]


def yolact_inputs(num: int, protos_shape, seed: int = 3):
    """``(protos [H, W, k], coeffs [N, k])`` float32 on the CPU: ReLU'd N(0, 1) prototypes,
    ``tanh(N(0, 0.5))`` coefficients."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(*protos_shape, generator=g).relu_()
    coeffs = torch.tanh(torch.randn(num, protos_shape[2], generator=g) * 0.5)
    return protos, coeffs


def mask_probabilities(num: int, hw=PASTE_MASK, seed: int = 4) -> torch.Tensor:
    """[num, Mh, Mw] float32 Mask R-CNN-like probabilities: ``sigmoid`` of a soft ellipse
    (centre N(0.5, 0.05), half-axes uniform in 0.25..0.5 of the mask) plus N(0, 1) noise."""
    g = torch.Generator().manual_seed(seed)
    mh, mw = hw
    centre = 0.5 + 0.05 * torch.randn(num, 2, 1, 1, generator=g)
    radius = torch.empty(num, 2, 1, 1).uniform_(0.25, 0.5, generator=g)
    ys = ((torch.arange(mh) + 0.5) / mh).view(1, mh, 1)
    xs = ((torch.arange(mw) + 0.5) / mw).view(1, 1, mw)
    r2 = ((xs - centre[:, 0]) / radius[:, 0]) ** 2 + ((ys - centre[:, 1]) / radius[:, 1]) ** 2
    logits = 6.0 * (1.0 - r2) + torch.randn(num, mh, mw, generator=g)
    return torch.sigmoid(logits)


# --------------------------------------------------------------------------------------
# Shared machinery: cross-checking boolean masks, chunked calls
# --------------------------------------------------------------------------------------


class _Agreement:
    """Output maps for boolean masks (``Fn.output``): segops' output is kept and stands as
    0; another implementation's becomes the number of pixels that differ from it over the
    number set in either (1 - IoU of all the masks at once), which the runner then holds to
    the tolerance. The runner times segops first."""

    def __init__(self) -> None:
        self.segops: Optional[torch.Tensor] = None

    def keep(self, out: torch.Tensor) -> torch.Tensor:
        self.segops = out
        return torch.zeros(1, dtype=torch.float64)

    def differing(self, out: Any) -> Any:
        ref = self.segops
        if ref is None or not isinstance(out, torch.Tensor) or out.shape != ref.shape:
            return out  # not comparable: the runner says so (or has no segops to compare)
        differ = union = 0
        per_item = out[0].numel() if out.dim() and out.size(0) else 1
        step = max(1, (1 << 26) // max(1, per_item))
        for a, b in zip(out.reshape(-1).split(step * per_item),
                        ref.reshape(-1).split(step * per_item)):  # no full-size temporaries
            differ += int(torch.count_nonzero(a != b))
            union += int(torch.count_nonzero(torch.logical_or(a, b)))
        return torch.tensor([differ / max(1, union)], dtype=torch.float64)


def _chunk_size(ctx: Ctx, key: Tuple[str, ...], n: int, pixels: int) -> Optional[int]:
    """Detections per call that keep ``key``'s float work under ``CHUNK_BYTES`` (``n``: one
    call); None when one detection alone needs more."""
    per_item = _WORK_BYTES_PER_PIXEL.get(key, 0) * pixels * max(1, ctx.dtype.itemsize // 4)
    if per_item * n <= CHUNK_BYTES:
        return max(n, 1)
    if per_item > CHUNK_BYTES:
        return None
    return max(1, CHUNK_BYTES // per_item)


def _chunked(fn: Callable[[int, int], torch.Tensor], n: int, chunk: int, out_hw, device):
    """``fn(i, j)`` -> bool [j - i, h, w] on detections i..j, called on chunks of ``chunk``
    and copied into one [n, h, w] output (a single call when ``chunk >= n``)."""

    def call():
        if chunk >= n:
            return fn(0, n)
        out = torch.empty((n, *out_hw), dtype=torch.bool, device=device)
        for i in range(0, n, chunk):
            j = min(n, i + chunk)
            out[i:j] = fn(i, j)
        return out

    return call


def _left_out(case: str, impl: str, reason: str) -> None:
    print(f"  {case} [{impl}]: left out: {reason}", file=sys.stderr, flush=True)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


# --------------------------------------------------------------------------------------
# assemble_masks
# --------------------------------------------------------------------------------------


def yolact_crop(masks: torch.Tensor, boxes: torch.Tensor, padding: int = PADDING):
    """YOLACT's crop of ``masks [H, W, N]`` to relative ``boxes [N, 4]``: bounds scaled to
    pixels, ordered, grown by ``padding`` and clamped to the image; then the masks times a
    float 0/1 mask of the pixels inside."""
    h, w, n = masks.shape

    def bounds(lo, hi, size):
        lo, hi = lo * size, hi * size
        lo, hi = torch.min(lo, hi), torch.max(lo, hi)
        return torch.clamp(lo - padding, min=0), torch.clamp(hi + padding, max=size)

    x1, x2 = bounds(boxes[:, 0], boxes[:, 2], w)
    y1, y2 = bounds(boxes[:, 1], boxes[:, 3], h)
    cols = torch.arange(w, device=masks.device, dtype=x1.dtype).view(1, -1, 1).expand(h, w, n)
    rows = torch.arange(h, device=masks.device, dtype=x1.dtype).view(-1, 1, 1).expand(h, w, n)
    inside = ((cols >= x1.view(1, 1, -1)) * (cols < x2.view(1, 1, -1))
              * (rows >= y1.view(1, 1, -1)) * (rows < y2.view(1, 1, -1)))
    return masks * inside.float()


def yolact_assemble(protos, coeffs, boxes, padding: int = PADDING, image_size=None,
                    threshold: float = THRESHOLD):
    """YOLACT's mask chain: ``[N, h, w]`` float 0/1 masks (``image_size``), else the cropped
    ``[H, W, N]`` sigmoid masks as an ``[N, H, W]`` view."""
    masks = yolact_crop(torch.sigmoid(protos @ coeffs.t()), boxes, padding)
    if image_size is None:
        return masks.permute(2, 0, 1)
    masks = masks.permute(2, 0, 1).contiguous()
    masks = F.interpolate(masks.unsqueeze(0), image_size, mode="bilinear",
                          align_corners=False).squeeze(0)
    return masks.gt_(threshold)


def _assemble_impls(ctx: Ctx) -> Dict[str, Callable]:
    fns = op_impls(ctx, "assemble_masks", torchvision=False)
    if ctx.wants("yolact"):
        fns["yolact"] = yolact_assemble
    return fns


def _assemble_floor(num, image: Optional[int], backward: bool = False):
    """The memory floor of an assemble_masks case: ``num`` (full, quick) detections,
    ``image`` an index into ``ASSEMBLE_IMAGES`` or None (training)."""

    def floor(ctx: Ctx, out) -> int:
        (h, w, k), n = _pick(ctx, PROTOS), _pick(ctx, num)
        inputs = (((h, w, k), ctx.dtype), ((n, k), ctx.dtype), ((n, 4), _box_dtype(ctx)))
        if image is not None:
            return nbytes(inputs, ((n,) + tuple(_pick(ctx, ASSEMBLE_IMAGES[image])), torch.bool))
        masks = ((n, h, w), ctx.dtype)
        if not backward:
            return nbytes(inputs, masks)
        return nbytes(inputs, masks, ((h, w, k), ctx.dtype), ((n, k), ctx.dtype))

    return floor


def _paste_floor(k: int):
    def floor(ctx: Ctx, out) -> int:
        n, (h, w) = _pick(ctx, DETECTIONS), _pick(ctx, PASTE_IMAGES[k])
        return nbytes(((n,) + PASTE_MASK, ctx.dtype), ((n, 4), _box_dtype(ctx)),
                      ((n, h, w), torch.bool))

    return floor


def _protos_name(ctx: Ctx) -> str:
    return "x".join(map(str, _pick(ctx, PROTOS)))


def _assemble_inputs(ctx: Ctx, num: int):
    protos, coeffs = yolact_inputs(num, _pick(ctx, PROTOS))
    boxes = relative_boxes(num)
    return (protos.to(ctx.device, ctx.dtype), coeffs.to(ctx.device, ctx.dtype),
            boxes.to(ctx.device, _box_dtype(ctx)))


def _upsample_name(k: int) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        h, w = _pick(ctx, ASSEMBLE_IMAGES[k])
        return f"{_protos_name(ctx)} N{_pick(ctx, DETECTIONS)} to {h}x{w} thr{THRESHOLD} fwd"

    return name


def _upsample_setup(k: int):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        n, hw = _pick(ctx, DETECTIONS), _pick(ctx, ASSEMBLE_IMAGES[k])
        protos, coeffs, boxes = _assemble_inputs(ctx, n)
        agree = _Agreement()
        impls: Dict[str, Any] = {}
        for name, fn in _assemble_impls(ctx).items():

            def part(i, j, fn=fn):
                return fn(protos, coeffs[i:j], boxes[i:j], PADDING, image_size=hw,
                          threshold=THRESHOLD)

            if name == "segops":
                impls[name] = Fn(call=lambda part=part: part(0, n), output=agree.keep)
                continue
            chunk = _chunk_size(ctx, ("assemble_masks", name), n, hw[0] * hw[1])
            if chunk is None:
                _left_out(_upsample_name(k)(ctx), name, f"one mask needs over "
                          f"{_gib(CHUNK_BYTES)} of work")
                continue
            impls[name] = Fn(call=_chunked(part, n, chunk, hw, ctx.device),
                             output=agree.differing)
        return impls

    return setup


def _training_name(pass_: str) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        return f"{_protos_name(ctx)} N{_pick(ctx, POSITIVES)} crop {pass_}"

    return name


def _assemble_backward(fn, protos, coeffs, boxes, seed: int = 2):
    """Forward once on grad-requiring copies; return a callable timing only the backward
    (``autograd.grad`` w.r.t. prototypes and coefficients), as ``inputs.backward_only``."""
    protos = protos.detach().requires_grad_(True)
    coeffs = coeffs.detach().requires_grad_(True)
    out = fn(protos, coeffs, boxes, PADDING)
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.device, out.dtype)

    def call():
        return torch.autograd.grad(out, (protos, coeffs), grad, retain_graph=True)

    return call


def _assemble_train_step(fn, protos, coeffs, boxes, seed: int = 2):
    """Forward and backward in one call: the output's gradient w.r.t. prototypes and
    coefficients for a fixed random output gradient (that of ``(out * grad).sum()``; the
    same gradient as ``bwd-only``). YOLACT's BCE would add a loss as costly as the whole
    step on the CPU (0.55 s for 300x138x138 on 2 cores), the same for every implementation."""
    protos = protos.detach().requires_grad_(True)
    coeffs = coeffs.detach().requires_grad_(True)
    n, (h, w) = coeffs.size(0), protos.shape[:2]
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn((n, h, w), generator=g, dtype=torch.float32).to(protos.device, protos.dtype)

    def call():
        return torch.autograd.grad(fn(protos, coeffs, boxes, PADDING), (protos, coeffs), grad)

    return call


def _training_setup(pass_: str):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        n = _pick(ctx, POSITIVES)
        protos, coeffs, boxes = _assemble_inputs(ctx, n)
        impls: Dict[str, Any] = {}
        for name, fn in _assemble_impls(ctx).items():
            if pass_ == "fwd":
                impls[name] = lambda fn=fn: fn(protos, coeffs, boxes, PADDING)
                continue
            if pass_ == "bwd-only":
                spec = dict(prepare=lambda fn=fn: _assemble_backward(fn, protos, coeffs, boxes))
            else:
                spec = dict(call=_assemble_train_step(fn, protos, coeffs, boxes))
            if name == "segops" and ctx.deterministic:
                impls["segops"] = Fn(deterministic=False, **spec)
                impls["segops-deterministic"] = Fn(deterministic=True, **spec)
            else:
                impls[name] = Fn(**spec)
        return impls

    return setup


# --------------------------------------------------------------------------------------
# paste_masks
# --------------------------------------------------------------------------------------


def _paste_name(k: int, mode: str) -> Callable[[Ctx], str]:
    def name(ctx: Ctx) -> str:
        h, w = _pick(ctx, PASTE_IMAGES[k])
        mh, mw = PASTE_MASK
        return f"N{_pick(ctx, DETECTIONS)} {mh}x{mw} to {h}x{w} {mode} thr{THRESHOLD}"

    return name


def _torchvision_paste(ctx: Ctx):
    """torchvision's ``paste_masks_in_image(masks [N, 1, M, M], boxes, (h, w))`` -> float
    ``[N, 1, h, w]``, or None when it does not import."""
    if ctx.torchvision is None:
        return None
    try:
        from torchvision.models.detection.roi_heads import paste_masks_in_image
    except Exception:  # noqa: BLE001 - an unusable torchvision is an unavailable peer
        return None
    return paste_masks_in_image


def _detectron2_paste():
    try:
        from detectron2.layers.mask_ops import paste_masks_in_image
    except Exception:  # noqa: BLE001
        return None
    return paste_masks_in_image


def _paste_setup(k: int, mode: str):
    def setup(ctx: Ctx) -> Dict[str, Any]:
        n, hw = _pick(ctx, DETECTIONS), _pick(ctx, PASTE_IMAGES[k])
        masks = mask_probabilities(n).to(ctx.device, ctx.dtype)
        scale = torch.tensor([hw[1], hw[0], hw[1], hw[0]], dtype=torch.float64)
        boxes = (relative_boxes(n) * scale).to(ctx.device, _box_dtype(ctx))
        agree = _Agreement()
        case = _paste_name(k, mode)(ctx)

        parts: Dict[str, Tuple[Tuple[str, ...], Callable[[int, int], torch.Tensor]]] = {}
        for name, fn in op_impls(ctx, "paste_masks", torchvision=False).items():
            parts[name] = (("paste_masks", name, mode),
                           lambda i, j, fn=fn: fn(masks[i:j], boxes[i:j], hw,
                                                  threshold=THRESHOLD, mode=mode))
        tv_paste = _torchvision_paste(ctx) if mode == "torchvision" else None
        if tv_paste is not None and ctx.wants("torchvision"):
            parts["torchvision"] = (
                ("paste_masks", "torchvision"),
                lambda i, j: tv_paste(masks[i:j, None], boxes[i:j], hw)[:, 0] >= THRESHOLD)
        d2_paste = _detectron2_paste() if mode == "detectron2" else None
        if d2_paste is not None and (ctx.wants("torchvision") or ctx.wants("detectron2")):
            parts["detectron2"] = (
                ("paste_masks", "detectron2"),
                lambda i, j: d2_paste(masks[i:j], boxes[i:j], hw, threshold=THRESHOLD))

        impls: Dict[str, Any] = {}
        for name, (key, part) in parts.items():
            if name == "segops":
                impls[name] = Fn(call=lambda part=part: part(0, n), output=agree.keep)
                continue
            chunk = _chunk_size(ctx, key, n, hw[0] * hw[1])
            if chunk is None:
                _left_out(case, name, f"one mask needs over {_gib(CHUNK_BYTES)} of work")
                continue
            impls[name] = Fn(call=_chunked(part, n, chunk, hw, ctx.device),
                             output=agree.differing)
        return impls

    return setup


def register_cases() -> None:
    # params: the options, not the sizes (those differ with --quick; the name has them)
    for k in range(len(ASSEMBLE_IMAGES)):
        register("assemble_masks", _upsample_name(k), _upsample_setup(k),
                 floor=_assemble_floor(DETECTIONS, k), slow_reference=k > 0, padding=PADDING,
                 threshold=THRESHOLD)
    for pass_ in ("fwd", "bwd-only", "fwd+bwd"):
        register("assemble_masks", _training_name(pass_), _training_setup(pass_),
                 backward=pass_ != "fwd",
                 floor=_assemble_floor(POSITIVES, None, backward=pass_ != "fwd"),
                 padding=PADDING)
    for k in range(len(PASTE_IMAGES)):
        for mode in PASTE_MODES:
            register("paste_masks", _paste_name(k, mode), _paste_setup(k, mode),
                     floor=_paste_floor(k), slow_reference=k > 0, threshold=THRESHOLD,
                     mode=mode)
