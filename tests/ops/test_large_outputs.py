"""Outputs of 8 MB and more take the CPU kernels' huge-page path (csrc/core/huge_pages.h:
advised to transparent huge pages before the first write): the references' values there,
and the same bits with the advice turned off (SEGOPS_HUGE_PAGES=0, in a subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import segops

from helpers.masks import assert_close, check_bool_band, upsample
from helpers.masks import ref as masks_ref
from helpers.patches import ref as patches_ref

# The huge-page path is the CPU kernels' own; emulated CUDA over 12 MiB outputs takes minutes.
pytestmark = pytest.mark.no_cuda_emu

SIDE = 1024  # 12 bool masks of SIDE x SIDE: 12 MiB


def _assembly_inputs():
    g = torch.Generator().manual_seed(1)
    protos = torch.relu(torch.randn(138, 138, 32, generator=g))
    coeffs = torch.randn(12, 32, generator=g)
    xy = torch.rand(12, 2, generator=g) * 0.6
    boxes = torch.cat([xy, xy + 0.1 + torch.rand(12, 2, generator=g) * 0.3], 1)
    return protos, coeffs, boxes


def _paste_inputs():
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(12, 28, 28, generator=g)
    xy = torch.rand(12, 2, generator=g) * (SIDE - 300)
    boxes = torch.cat([xy, xy + 20 + torch.rand(12, 2, generator=g) * 280], 1)
    return masks, boxes


def _reassemble_inputs():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(12, SIDE, SIDE, generator=g) > 0.5
    P = 40
    xy = torch.randint(0, SIDE - 64, (P, 2), generator=g)
    boxes = torch.cat([xy, xy + 64], 1)  # patches of the box size: no resampling
    probs = torch.rand(P, 64, 64, generator=g)
    index = torch.randint(0, 12, (P,), generator=g)
    return masks, probs, boxes, index


def _outputs():
    protos, coeffs, boxes = _assembly_inputs()
    fused = segops.assemble_masks(protos, coeffs, boxes, image_size=(SIDE, SIDE))
    masks, pboxes = _paste_inputs()
    pasted = segops.paste_masks(masks, pboxes, (SIDE, SIDE), None)
    pasted_bool = segops.paste_masks(masks, pboxes, (SIDE, SIDE), 0.5)
    reassembled = segops.reassemble_patches(*_reassemble_inputs(), 0.5)
    return fused, pasted, pasted_bool, reassembled


def test_large_outputs_match_references():
    fused, pasted, pasted_bool, reassembled = _outputs()
    assert fused.nbytes >= 8 << 20 and reassembled.nbytes >= 8 << 20

    protos, coeffs, boxes = _assembly_inputs()
    values = upsample(masks_ref.assemble_masks(protos, coeffs, boxes), (SIDE, SIDE))
    differ = check_bool_band(fused, values, 0.5, True, torch.float32, max_band=1e-5)
    assert differ <= 1e-6 * values.numel()
    assert fused.any()

    masks, pboxes = _paste_inputs()
    expected = masks_ref.paste_masks(masks, pboxes, (SIDE, SIDE), None)
    assert_close(pasted, expected, torch.float32)
    assert torch.equal(pasted_bool, pasted >= 0.5) and pasted_bool.any()

    assert torch.equal(reassembled,
                       patches_ref.reassemble_patches(*_reassemble_inputs(), 0.5))


_SCRIPT = """
import hashlib, sys
sys.path[:0] = [{here!r}, {tests!r}]
import test_large_outputs as t
for out in t._outputs():
    print(hashlib.sha256(out.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest())
"""


def test_huge_page_advice_changes_no_bit():
    here = Path(__file__).resolve().parent
    script = "import torch\n" + _SCRIPT.format(here=str(here), tests=str(here.parent))
    digests = []
    for value in ("1", "0"):
        env = dict(os.environ, SEGOPS_HUGE_PAGES=value)
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True)
        digests.append(run.stdout.split())
    assert len(digests[0]) == 4 and digests[0] == digests[1]
