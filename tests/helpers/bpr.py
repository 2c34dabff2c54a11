"""Helpers for the BPR model tests (tests/models/test_models_bpr*.py): deterministic
weights and inputs for the refinement net that any PyTorch build reproduces (integer
arithmetic on the element index, no random generator), and the fixtures recorded from BPR's released
definitions (tests/models/data/, made by tests/models/data/make_bpr_released_fixtures.py).
Imported as ``helpers.bpr``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from segops.models import hrnet as H

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "models", "data")
KEYS_FILE = os.path.join(DATA_DIR, "bpr_released_state_dicts.json.gz")
FORWARD_FILE = os.path.join(DATA_DIR, "bpr_released_forward.pt")

#: input side and the size the logits are resized to before the softmax, per configuration
#: (odd sizes: the branches are 9/5/3/2 and 10/5/3/2 wide, so the fusion's two resizes and
#: the head's resize all act)
FORWARD_CASES: Dict[str, Tuple[int, Tuple[int, int]]] = {
    "hrnet18s_128": (36, (20, 20)),
    "hrnet48_256": (40, (22, 22)),
}


#: a small HRNet for fast tests (4 branches of 2/4/8/16 channels, one block each, 32 px input)
TINY_SPEC = H.HRNetSpec((
    H.StageSpec(1, "BOTTLENECK", (1,), (4,)),
    H.StageSpec(1, "BASIC", (1, 1), (2, 4)),
    H.StageSpec(2, "BASIC", (1, 1, 1), (2, 4, 8)),
    H.StageSpec(1, "BASIC", (1, 1, 1, 1), (2, 4, 8, 16)),
), 32)


def tiny_net(seed: int = 0) -> H.BPRRefineNet:
    torch.manual_seed(seed)
    return H.BPRRefineNet(TINY_SPEC)


def _uniform(numel: int, phase: int) -> Tensor:
    """``float64 [numel]`` in ``[-0.5, 0.5)`` from a 31-bit integer hash of the element index
    (multiply, xor-shift, multiply, xor-shift: exact int64 arithmetic, the same on every
    platform, and without the regularity of a linear sequence)."""
    mask = 0x7FFFFFFF
    h = (torch.arange(numel, dtype=torch.int64) * 1103515245 + phase) & mask
    h = h ^ (h >> 16)
    h = (h * 73244475) & mask
    h = h ^ (h >> 16)
    return h.double() / float(mask + 1) - 0.5


def deterministic_state_dict(template: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Values for every entry of ``template`` (a state dict: only names and shapes are used),
    from :func:`_uniform` ``u`` with the entry's position in sorted key order as the phase:
    convolutions ``u`` scaled to half of He's standard deviation (so that the activations
    stay moderate through the residual sums), BN weight ``1 + 0.4 u``, bias and running mean
    ``0.2 u``, running variance ``1 + 2 u^2``, ``num_batches_tracked`` 0, conv biases
    ``0.2 u``."""
    out: Dict[str, Tensor] = {}
    for k, name in enumerate(sorted(template)):
        t = template[name]
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros_like(t)
            continue
        u = _uniform(t.numel(), 7919 * k).view(t.shape)
        if t.dim() == 4:  # conv weight: the std of u is 1/sqrt(12)
            fan_in = t.shape[1] * t.shape[2] * t.shape[3]
            v = u * math.sqrt(12.0) * math.sqrt(2.0 / fan_in) * 0.5
        elif name.endswith("running_var"):
            v = 1.0 + 2.0 * u * u
        elif name.endswith(".weight"):  # BN weight
            v = 1.0 + 0.4 * u
        else:  # BN bias, running mean, conv bias
            v = 0.2 * u
        out[name] = v.to(t.dtype)
    return out


def deterministic_inputs(batch: int, size: int) -> Tuple[Tensor, Tensor]:
    """``(image [batch, 3, size, size]`` normalised-looking values in [-2, 2),
    ``mask [batch, 1, size, size]`` in {-1, +1}: a disc whose centre moves with the batch
    index)."""
    image = (4.0 * _uniform(batch * 3 * size * size, 12345)).view(batch, 3, size, size).float()
    yy = torch.arange(size, dtype=torch.float64).view(-1, 1) + 0.5
    xx = torch.arange(size, dtype=torch.float64).view(1, -1) + 0.5
    masks = []
    for b in range(batch):
        cy, cx, r = size * (0.4 + 0.1 * b), size * (0.55 - 0.1 * b), size * 0.3
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).double() * 2 - 1)
    return image, torch.stack(masks)[:, None].float()


def released_state_dict_listing() -> Dict[str, List[Tuple[str, Tuple[int, ...], str]]]:
    """``{config: [(key, shape, dtype), ...]}`` in the released models' state-dict order."""
    with gzip.open(KEYS_FILE, "rt") as f:
        data = json.load(f)
    return {cfg: [(k, tuple(shape), dtype) for k, shape, dtype in rows]
            for cfg, rows in data["state_dicts"].items()}


def state_dict_listing(module: torch.nn.Module) -> List[Tuple[str, Tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
            for k, v in module.state_dict().items()]
