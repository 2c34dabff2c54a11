"""Records the fixtures of tests/models/test_models_bpr_hrnet.py from BPR's released model
definitions. Not run by CI: it needs BPR's code and its pinned mmcv, outside this repository.

Made with: a checkout of BPR (its ``mmseg/`` copy, ``configs/bpr/``; the import of
``mmseg/models/decode_heads/point_head.py``, which needs mmcv's compiled ops, replaced by
``PointHead = None`` in ``decode_heads/__init__.py``), mmcv 1.2.0 built without ops
(``MMCV_WITH_OPS=0``), torch 2.13.0 (CPU) and a stub ``torchvision`` package (mmcv's
checkpoint module imports it)::

    cd BPR && PYTHONPATH=<stub>:.:<segops>/tests python <segops>/tests/models/data/make_bpr_released_fixtures.py <segops>/tests/models/data

For each released configuration it builds the model exactly as ``tools/test_float.py`` does
(``build_segmentor(cfg.model)`` with ``pretrained=None``), except for ``norm_cfg``: SyncBN
becomes BN (mmcv 1.2's SyncBN does not construct under torch 2.x; mmcv names both layers
``bn`` and both have the same parameters and buffers, so the state-dict listing is the same).

Written:
* ``bpr_released_state_dicts.json.gz``: ``{"state_dicts": {config: [[key, shape, dtype],
  ...]}, "counts": {config: {"parameters", "buffers", "numel"}}}`` in state-dict order;
* ``bpr_released_forward.pt``: with the weights of ``helpers.bpr.deterministic_state_dict``
  on ``helpers.bpr.deterministic_inputs(2, size)``, in eval mode: the decode head's logits
  and ``model.inference(x, [dict(ori_shape=..., flip=False)], rescale=True)`` (the logits
  resized to the input size, then to ``ori_shape``, then the softmax) for
  ``helpers.bpr.FORWARD_CASES``.
"""

import gzip
import json
import os
import sys

import mmcv
import torch
from mmseg.models import build_segmentor

from helpers.bpr import FORWARD_CASES, deterministic_inputs, deterministic_state_dict

out_dir = sys.argv[1]
listing, counts, forward = {}, {}, {}
for name, (size, ori) in FORWARD_CASES.items():
    cfg = mmcv.Config.fromfile(f"configs/bpr/{name}.py")
    cfg.model.pretrained = None
    cfg.model.backbone.norm_cfg = dict(type="BN", requires_grad=True)
    cfg.model.decode_head.norm_cfg = dict(type="BN", requires_grad=True)
    model = build_segmentor(cfg.model, train_cfg=None, test_cfg=cfg.test_cfg)
    sd = model.state_dict()
    listing[name] = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
                     for k, v in sd.items()]
    counts[name] = dict(parameters=len(list(model.parameters())),
                        buffers=len(list(model.buffers())),
                        numel=sum(p.numel() for p in model.parameters()))
    model.load_state_dict(deterministic_state_dict(sd), strict=True)
    model.eval()
    image, mask = deterministic_inputs(2, size)
    x = torch.cat([image, mask], dim=1)  # simple_test's input: RGB + (m - 0.5) / 0.5
    with torch.no_grad():
        head = model.decode_head(model.extract_feat(x))
        probs = model.inference(x, [dict(ori_shape=(*ori, 3), flip=False)] * 2, rescale=True)
    forward[name] = dict(size=size, ori=list(ori), head=head, probs=probs)
    print(name, len(sd), counts[name], tuple(head.shape), float(head.abs().max()))

with gzip.open(os.path.join(out_dir, "bpr_released_state_dicts.json.gz"), "wt") as f:
    json.dump(dict(state_dicts=listing, counts=counts), f)
torch.save(dict(torch_version=str(torch.__version__), mmcv_version=str(mmcv.__version__),
                cases=forward), os.path.join(out_dir, "bpr_released_forward.pt"))
