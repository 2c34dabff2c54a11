"""A small instance-segmentation model on segops ops and its training loop, run both under
DistributedDataParallel (gloo, CPU, one process per rank) and in one process, for
tests/distributed/test_ddp.py. Imported as ``helpers.ddp`` (also by the spawned ranks).

The model: a 4-level conv pyramid (P2..P5 of a 128 x 128 image), Mask R-CNN's RoI heads
(``segops.models.mask_rcnn.MaskRCNNHeads``: ``multilevel_roi_align`` for the box and mask
heads, ``roi_align`` for the mask targets) and YOLACT's mask loss
(``segops.models.yolact.YolactMaskLoss``: ``assemble_masks``) on prototypes from P2 with
coefficients from a ``roi_align`` of P3 over each GT box. Its loss is the mean over images
of per-image losses, so that DDP's gradient average over equal shards is the gradient of
the global batch's loss.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import segops
from segops.models.mask_rcnn import MaskRCNNHeads
from segops.models.yolact import YolactMaskLoss

SIZE = 128
DTYPE = torch.float64  # a tight comparison: only summation order differs between the runs


class TinyInstanceSeg(nn.Module):
    def __init__(self, channels: int = 8, num_classes: int = 3, protos: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, stride=4, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1)
                                  for _ in range(3))
        self.heads = MaskRCNNHeads(num_classes, in_channels=channels, representation_size=32,
                                   mask_channels=8)
        self.proto = nn.Conv2d(channels, protos, 3, padding=1)
        self.coeff = nn.Linear(channels * 9, protos)
        self.yolact_loss = YolactMaskLoss()

    def pyramid(self, images: Tensor) -> list[Tensor]:
        feats = [F.relu(self.stem(images))]
        for conv in self.down:
            feats.append(F.relu(conv(feats[-1])))
        return feats  # P2..P5: 1/4 .. 1/32

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]],
                proposals: list[Tensor]) -> Tensor:
        """The mean over the images of each image's summed losses."""
        feats = self.pyramid(images)
        total = images.new_zeros(())
        for i, (target, props) in enumerate(zip(targets, proposals)):
            level = [f[i:i + 1] for f in feats]
            losses = self.heads.losses(level, [props], [target])
            protos = self.proto(level[0])[0].permute(1, 2, 0)  # [Hp, Wp, k]
            boxes = target["boxes"]
            pooled = segops.roi_align(level[1], [boxes], 3, 1 / 8, 2)  # [G, C, 3, 3]
            coeffs = torch.tanh(self.coeff(pooled.flatten(1)))
            relative = boxes / SIZE
            yolact = self.yolact_loss.image_loss(protos, coeffs, relative, target["masks"])
            yolact = yolact / (protos.shape[0] * protos.shape[1] * len(boxes))  # YOLACT's
            total = total + sum(losses.values()) + yolact
        return total / len(targets)


def build_model() -> TinyInstanceSeg:
    torch.manual_seed(0)
    return TinyInstanceSeg().to(DTYPE)


def make_batch(step: int, n_images: int):
    """Images, targets (2 objects each: boxes, labels 1..3, box masks) and proposals (the GT
    boxes jittered, plus random boxes) for one step, the same in every process."""
    g = torch.Generator().manual_seed(1000 + step)
    images = torch.rand(n_images, 3, SIZE, SIZE, generator=g, dtype=DTYPE)
    targets, proposals = [], []
    for _ in range(n_images):
        xy = torch.rand(2, 2, generator=g, dtype=DTYPE) * 60
        wh = torch.rand(2, 2, generator=g, dtype=DTYPE) * 60 + 12
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(2, SIZE, SIZE, dtype=DTYPE)
        for j, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[j, y1:y2, x1:x2] = 1
        labels = torch.randint(1, 4, (2,), generator=g)
        jitter = boxes.repeat(3, 1) + torch.randn(6, 4, generator=g, dtype=DTYPE) * 4
        xy = torch.rand(4, 2, generator=g, dtype=DTYPE) * 90
        extra = torch.cat([xy, xy + torch.rand(4, 2, generator=g, dtype=DTYPE) * 80 + 8], 1)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
        proposals.append(torch.cat([jitter, extra]).clamp(0, SIZE))
    return images, targets, proposals


def train(model: nn.Module, steps: int, n_images: int, shard: slice | None = None,
          module: nn.Module | None = None) -> list[float]:
    """SGD with momentum over `steps` batches of `n_images`; `shard` picks this process's
    images. `model` is called (a DDP wrapper or the module); returns the losses."""
    params = (module or model).parameters()
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    losses = []
    for step in range(steps):
        images, targets, proposals = make_batch(step, n_images)
        if shard is not None:
            images, targets, proposals = images[shard], targets[shard], proposals[shard]
        opt.zero_grad()
        loss = model(images, targets, proposals)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str, steps: int,
               n_images: int) -> None:
    """One rank: its shard of each global batch, gradients averaged by DDP over gloo; saves
    its final parameters to ``out_dir/rank{rank}.pt``."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        model = build_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        per = n_images // world_size
        losses = train(ddp, steps, n_images, slice(rank * per, (rank + 1) * per), model)
        torch.save({"state": model.state_dict(), "losses": losses},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
