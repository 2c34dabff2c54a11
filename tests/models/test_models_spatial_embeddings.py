"""SpatialEmbeddings model (models/spatial_embeddings.py, docs/models.md): the
ERFNet layout against a literal transcription of davyneven/SpatialEmbeddings' erfnet.py /
BranchedERFNet.py, the output initialisation, the loss against a literal transcription of
its SpatialEmbLoss (with the ``1 - bool`` bug of lovasz_grad fixed), gradcheck, the Lovász
hinge against brute-force definitions, optimisation, and inference through
`segops.cluster_seeds`. Small widths and inputs keep the suite at a few seconds on CPU.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segops
from segops.models import spatial_embeddings as S

# ======================================================================================
# literal transcriptions of davyneven/SpatialEmbeddings (the oracle)
# ======================================================================================


class OrigDownsamplerBlock(nn.Module):
    def __init__(self, ninput, noutput):
        super().__init__()
        self.conv = nn.Conv2d(ninput, noutput - ninput, (3, 3), stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, input):
        output = torch.cat([self.conv(input), self.pool(input)], 1)
        output = self.bn(output)
        return F.relu(output)


class OrigNonBottleneck1d(nn.Module):
    def __init__(self, chann, dropprob, dilated):
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(chann, chann, (3, 1), stride=1, padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(chann, chann, (1, 3), stride=1, padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(chann, eps=1e-03)
        self.conv3x1_2 = nn.Conv2d(chann, chann, (3, 1), stride=1, padding=(1 * dilated, 0),
                                   bias=True, dilation=(dilated, 1))
        self.conv1x3_2 = nn.Conv2d(chann, chann, (1, 3), stride=1, padding=(0, 1 * dilated),
                                   bias=True, dilation=(1, dilated))
        self.bn2 = nn.BatchNorm2d(chann, eps=1e-03)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, input):
        output = self.conv3x1_1(input)
        output = F.relu(output)
        output = self.conv1x3_1(output)
        output = self.bn1(output)
        output = F.relu(output)
        output = self.conv3x1_2(output)
        output = F.relu(output)
        output = self.conv1x3_2(output)
        output = self.bn2(output)
        if self.dropout.p != 0:
            output = self.dropout(output)
        return F.relu(output + input)


class OrigEncoder(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.initial_block = OrigDownsamplerBlock(3, 16)
        self.layers = nn.ModuleList()
        self.layers.append(OrigDownsamplerBlock(16, 64))
        for x in range(0, 5):
            self.layers.append(OrigNonBottleneck1d(64, 0.03, 1))
        self.layers.append(OrigDownsamplerBlock(64, 128))
        for x in range(0, 2):
            self.layers.append(OrigNonBottleneck1d(128, 0.3, 2))
            self.layers.append(OrigNonBottleneck1d(128, 0.3, 4))
            self.layers.append(OrigNonBottleneck1d(128, 0.3, 8))
            self.layers.append(OrigNonBottleneck1d(128, 0.3, 16))
        self.output_conv = nn.Conv2d(128, num_classes, 1, stride=1, padding=0, bias=True)

    def forward(self, input, predict=False):
        output = self.initial_block(input)
        for layer in self.layers:
            output = layer(output)
        if predict:
            output = self.output_conv(output)
        return output


class OrigUpsamplerBlock(nn.Module):
    def __init__(self, ninput, noutput):
        super().__init__()
        self.conv = nn.ConvTranspose2d(ninput, noutput, 3, stride=2, padding=1,
                                       output_padding=1, bias=True)
        self.bn = nn.BatchNorm2d(noutput, eps=1e-3)

    def forward(self, input):
        output = self.conv(input)
        output = self.bn(output)
        return F.relu(output)


class OrigDecoder(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.layers = nn.ModuleList()
        self.layers.append(OrigUpsamplerBlock(128, 64))
        self.layers.append(OrigNonBottleneck1d(64, 0, 1))
        self.layers.append(OrigNonBottleneck1d(64, 0, 1))
        self.layers.append(OrigUpsamplerBlock(64, 16))
        self.layers.append(OrigNonBottleneck1d(16, 0, 1))
        self.layers.append(OrigNonBottleneck1d(16, 0, 1))
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, padding=0,
                                              output_padding=0, bias=True)

    def forward(self, input):
        output = input
        for layer in self.layers:
            output = layer(output)
        output = self.output_conv(output)
        return output


class OrigBranchedERFNet(nn.Module):
    def __init__(self, num_classes, encoder=None):
        super().__init__()
        if encoder is None:
            self.encoder = OrigEncoder(sum(num_classes))
        else:
            self.encoder = encoder
        self.decoders = nn.ModuleList()
        for n in num_classes:
            self.decoders.append(OrigDecoder(n))

    def init_output(self, n_sigma=1):
        with torch.no_grad():
            output_conv = self.decoders[0].output_conv
            output_conv.weight[:, 0:2, :, :].fill_(0)
            output_conv.bias[0:2].fill_(0)
            output_conv.weight[:, 2:2 + n_sigma, :, :].fill_(0)
            output_conv.bias[2:2 + n_sigma].fill_(1)

    def forward(self, input, only_encode=False):
        if only_encode:
            return self.encoder.forward(input, predict=True)
        else:
            output = self.encoder(input)
        return torch.cat([decoder.forward(output) for decoder in self.decoders], 1)


def orig_lovasz_grad(gt_sorted, fixed=True):
    """criterions/lovasz_losses.py lovasz_grad. ``fixed=False`` is the released line
    ``(1 - gt_sorted).float()``, which current PyTorch rejects for bool labels."""
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts.float() - gt_sorted.float().cumsum(0)
    if fixed:
        union = gts.float() + (1 - gt_sorted.float()).cumsum(0)
    else:
        union = gts.float() + (1 - gt_sorted).float().cumsum(0)
    jaccard = 1. - intersection / union
    if p > 1:  # cover 1-pixel case
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def orig_lovasz_hinge_flat(logits, labels):
    if len(labels) == 0:
        return logits.sum() * 0.
    signs = 2. * labels.float() - 1.
    errors = (1. - logits * signs)
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    perm = perm.data
    gt_sorted = labels[perm]
    grad = orig_lovasz_grad(gt_sorted)
    loss = torch.dot(F.relu(errors_sorted), grad)
    return loss


def orig_mean(values):
    values = iter(values)
    n = 1
    acc = next(values)
    for n, v in enumerate(values, 2):
        acc += v
    if n == 1:
        return acc
    return acc / n


def orig_lovasz_hinge(logits, labels):
    """lovasz_hinge(per_image=True, ignore=None)."""
    return orig_mean(orig_lovasz_hinge_flat(log.unsqueeze(0).view(-1), lab.unsqueeze(0).view(-1))
                     for log, lab in zip(logits, labels))


class OrigSpatialEmbLoss(nn.Module):
    """criterions/my_loss.py SpatialEmbLoss (prints and the iou meter left out)."""

    def __init__(self, to_center=True, n_sigma=1, foreground_weight=1):
        super().__init__()
        self.to_center = to_center
        self.n_sigma = n_sigma
        self.foreground_weight = foreground_weight
        xm = torch.linspace(0, 2, 2048).view(1, 1, -1).expand(1, 1024, 2048)
        ym = torch.linspace(0, 1, 1024).view(1, -1, 1).expand(1, 1024, 2048)
        xym = torch.cat((xm, ym), 0)
        self.register_buffer("xym", xym)

    def forward(self, prediction, instances, labels, w_inst=1, w_var=10, w_seed=1):
        batch_size, height, width = prediction.size(0), prediction.size(2), prediction.size(3)
        xym_s = self.xym[:, 0:height, 0:width].contiguous()  # 2 x h x w
        loss = 0
        for b in range(0, batch_size):
            spatial_emb = torch.tanh(prediction[b, 0:2]) + xym_s  # 2 x h x w
            sigma = prediction[b, 2:2 + self.n_sigma]  # n_sigma x h x w
            seed_map = torch.sigmoid(
                prediction[b, 2 + self.n_sigma:2 + self.n_sigma + 1])  # 1 x h x w
            var_loss = 0
            instance_loss = 0
            seed_loss = 0
            obj_count = 0
            instance = instances[b].unsqueeze(0)  # 1 x h x w
            label = labels[b].unsqueeze(0)  # 1 x h x w
            instance_ids = instance.unique()
            instance_ids = instance_ids[instance_ids != 0]
            bg_mask = label == 0
            if bg_mask.sum() > 0:
                seed_loss += torch.sum(torch.pow(seed_map[bg_mask] - 0, 2))
            for id in instance_ids:
                in_mask = instance.eq(id)  # 1 x h x w
                if self.to_center:
                    xy_in = xym_s[in_mask.expand_as(xym_s)].view(2, -1)
                    center = xy_in.mean(1).view(2, 1, 1)  # 2 x 1 x 1
                else:
                    center = spatial_emb[in_mask.expand_as(spatial_emb)].view(
                        2, -1).mean(1).view(2, 1, 1)  # 2 x 1 x 1
                sigma_in = sigma[in_mask.expand_as(sigma)].view(self.n_sigma, -1)
                s = sigma_in.mean(1).view(self.n_sigma, 1, 1)  # n_sigma x 1 x 1
                var_loss = var_loss + torch.mean(torch.pow(sigma_in - s[..., 0].detach(), 2))
                s = torch.exp(s * 10)
                dist = torch.exp(-1 * torch.sum(torch.pow(spatial_emb - center, 2) * s, 0,
                                                keepdim=True))
                instance_loss = instance_loss + orig_lovasz_hinge(dist * 2 - 1, in_mask)
                seed_loss += self.foreground_weight * torch.sum(
                    torch.pow(seed_map[in_mask] - dist[in_mask].detach(), 2))
                obj_count += 1
            if obj_count > 0:
                instance_loss /= obj_count
                var_loss /= obj_count
            seed_loss = seed_loss / (height * width)
            loss += w_inst * instance_loss + w_var * var_loss + w_seed * seed_loss
        loss = loss / (b + 1)
        return loss + prediction.sum() * 0


# ======================================================================================
# helpers
# ======================================================================================


def scene(n_sigma: int, h: int = 16, w: int = 24, batch: int = 2, dtype=torch.float32,
          seed: int = 0):
    """Random predictions and a synthetic scene: image 0 holds instances 2, 5 and 7 (an
    L-shape and two rectangles) and label-1 pixels without an instance; image 1 (when
    present) holds instance 1 only."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(batch, 3 + n_sigma, h, w, generator=g, dtype=dtype)
    pred[:, 2:2 + n_sigma] = pred[:, 2:2 + n_sigma] * 0.15 - 0.1  # moderate bandwidths
    inst = torch.zeros(batch, h, w, dtype=torch.int64)
    inst[0, 1:6, 2:9] = 2
    inst[0, 6:9, 2:4] = 2
    inst[0, 3:12, 12:20] = 5
    inst[0, 12:15, 3:10] = 7
    labels = (inst > 0).to(torch.uint8)
    labels[0, 13:16, 20:24] = 1  # labelled but no instance: neither background nor instance
    if batch > 1:
        inst[1, h // 2:, w // 2:] = 1
        labels[1] = (inst[1] > 0).to(torch.uint8)
    return pred, inst, labels


def jaccard_set_loss(mistakes: set[int], labels: list[int]) -> float:
    """Jaccard loss of a set of mispredicted pixels: ``|M| / |{y = 1} ∪ M|`` (0 for M = {})."""
    if not mistakes:
        return 0.0
    return len(mistakes) / len({i for i, y in enumerate(labels) if y} | mistakes)


def brute_lovasz_choquet(logits: list[float], labels: list[int]) -> float:
    """The Lovász extension as a Choquet integral of the hinge errors:
    ``∫_0^∞ Δ_J({i : m_i > t}) dt`` with ``m = relu(1 - logit * sign)``."""
    m = [max(0.0, 1.0 - x * (2 * y - 1)) for x, y in zip(logits, labels)]
    levels = sorted({v for v in m if v > 0}, reverse=True) + [0.0]
    return sum((levels[j] - levels[j + 1])
               * jaccard_set_loss({i for i, v in enumerate(m) if v >= levels[j]}, labels)
               for j in range(len(levels) - 1))


def brute_lovasz_max(logits: list[float], labels: list[int]) -> float:
    """The Lovász extension of the submodular Jaccard loss as the max over every ordering
    of the greedy sums ``Σ m_π(i) (Δ(S_i) - Δ(S_{i-1}))``."""
    m = [max(0.0, 1.0 - x * (2 * y - 1)) for x, y in zip(logits, labels)]
    best = -math.inf
    for perm in itertools.permutations(range(len(m))):
        total, prev, chosen = 0.0, 0.0, set()
        for i in perm:
            chosen.add(i)
            cur = jaccard_set_loss(set(chosen), labels)
            total += m[i] * (cur - prev)
            prev = cur
        best = max(best, total)
    return best


# ======================================================================================
# network
# ======================================================================================


@pytest.mark.parametrize("n_sigma", [1, 2])
def test_branched_erfnet_shapes(n_sigma):
    torch.manual_seed(0)
    net = S.BranchedERFNet((2 + n_sigma, 1), width=0.25).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        out = net(x)
        feats = net.encoder(x)
        enc = net(x, only_encode=True)
    assert out.shape == (2, 3 + n_sigma, 32, 48) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert feats.shape == (2, 32, 4, 6)  # 128 * 0.25 channels at stride 8
    assert enc.shape == (2, 3 + n_sigma, 4, 6)
    model = S.SpatialEmbeddings(n_sigma=n_sigma, width=0.25).eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3 + n_sigma, 32, 48)
    # ERFNet's layout: dilations and dropout of the factorised blocks
    enc_blocks = [m for m in net.encoder.layers if isinstance(m, S.NonBottleneck1d)]
    assert [m.conv3x1_2.dilation for m in enc_blocks] == \
        [(1, 1)] * 5 + [(d, 1) for d in (2, 4, 8, 16)] * 2
    assert [m.conv1x3_2.dilation for m in enc_blocks] == \
        [(1, 1)] * 5 + [(1, d) for d in (2, 4, 8, 16)] * 2
    assert [m.dropout.p for m in enc_blocks] == [0.03] * 5 + [0.3] * 8
    assert [type(m).__name__ for m in net.encoder.layers].count("DownsamplerBlock") == 2
    for dec in net.decoders:
        assert [type(m).__name__ for m in dec.layers] == [
            "UpsamplerBlock", "NonBottleneck1d", "NonBottleneck1d"] * 2
    assert [d.output_conv.out_channels for d in net.decoders] == [2 + n_sigma, 1]


def test_bad_sizes_and_widths_raise():
    net = S.BranchedERFNet((3, 1), width=0.25)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 3, 30, 48))
    with pytest.raises(ValueError, match="width"):
        S.BranchedERFNet((3, 1), width=0.1)  # 2 channels after the stem: not > 3
    with pytest.raises(ValueError, match="n_sigma"):
        S.SpatialEmbeddings(n_sigma=3)


def test_layout_and_outputs_equal_the_original_branched_erfnet():
    """At width 1 the parameter and buffer names and shapes are the original's, so its
    state dict loads as is and gives the same outputs."""
    torch.manual_seed(1)
    orig = OrigBranchedERFNet([3, 1])
    orig.init_output(1)
    for m in orig.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    ours = S.BranchedERFNet((3, 1))
    ref_sd, our_sd = orig.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    ours.load_state_dict(ref_sd)
    orig.eval()
    ours.eval()
    x = torch.randn(1, 3, 32, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = orig(x)
        got = ours(x)
        assert torch.equal(ours(x, only_encode=True), orig(x, only_encode=True))
    assert got.shape == (1, 4, 32, 40)
    assert got[:, 3].std() > 0  # the seed branch is not trivially constant
    assert torch.equal(got, expected)


@pytest.mark.parametrize("n_sigma", [1, 2])
def test_init_output(n_sigma):
    torch.manual_seed(3)
    net = S.BranchedERFNet((2 + n_sigma, 1), width=0.25)
    conv = net.decoders[0].output_conv
    assert isinstance(conv, nn.ConvTranspose2d) and conv.weight.shape[1] == 2 + n_sigma
    assert (conv.weight == 0).all()  # every output channel of this decoder is offset/sigma
    assert (conv.bias[:2] == 0).all() and (conv.bias[2:2 + n_sigma] == 1).all()
    seed_conv = net.decoders[1].output_conv
    assert seed_conv.weight.abs().sum() > 0  # the seed decoder keeps PyTorch's init
    # the original's order (construct, then init_output) gives the same parameters
    torch.manual_seed(3)
    plain = S.BranchedERFNet((2 + n_sigma, 1), width=0.25, init_output=False)
    assert plain.decoders[0].output_conv.weight.abs().sum() > 0
    plain.init_output(n_sigma)
    for (k, a), b in zip(plain.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k
    # offsets 0 and sigma 1 whatever the input, in both modes
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            out = net(torch.randn(2, 3, 16, 24))
        assert (out[:, :2] == 0).all()
        assert (out[:, 2:2 + n_sigma] == 1).all()
        assert out[:, 2 + n_sigma].std() > 0


# ======================================================================================
# coordinates and the Lovász hinge
# ======================================================================================


def test_coordinate_map_matches_the_original_and_the_cluster_op():
    xym = S.coordinate_map(16, 24)
    xm = torch.linspace(0, 2, 2048).view(1, 1, -1).expand(1, 1024, 2048)
    ym = torch.linspace(0, 1, 1024).view(1, -1, 1).expand(1, 1024, 2048)
    assert torch.equal(xym, torch.cat((xm, ym), 0)[:, :16, :24])
    from segops.reference.cluster import grid_coordinates

    for dtype in (torch.float32, torch.float64):
        # past a small grid: continued with the same step, like segops.cluster_seeds
        xym = S.coordinate_map(7, 9, grid=(4, 6), extent=(1.5, 2.5), dtype=dtype)
        assert xym.shape == (2, 7, 9) and xym.dtype == dtype
        xs, ys = grid_coordinates(9, 6, 2.5, dtype), grid_coordinates(7, 4, 1.5, dtype)
        assert torch.equal(xym[0], xs.expand(7, 9))
        assert torch.equal(xym[1], ys[:, None].expand(7, 9))
        assert torch.allclose(xym[0, 0, 6:], torch.tensor([3.0, 3.5, 4.0], dtype=dtype))
        assert torch.allclose(xym[1, 4:, 0], torch.tensor([2.0, 2.5, 3.0], dtype=dtype))


def test_original_lovasz_grad_fails_on_bool_labels_and_ours_does_not():
    gt = torch.tensor([True, False, True, False])
    with pytest.raises(RuntimeError, match="bool"):
        orig_lovasz_grad(gt, fixed=False)
    assert torch.equal(S.lovasz_grad(gt), orig_lovasz_grad(gt))
    assert torch.allclose(S.lovasz_grad(gt), torch.tensor([0.5, 1 / 6, 1 / 3, 0.0]))


def test_lovasz_hinge_equals_brute_force_definitions():
    g = torch.Generator().manual_seed(4)
    values = torch.tensor([-1.5, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0], dtype=torch.float64)
    checked = 0
    for p in range(1, 7):
        rows, row_labels, expected = [], [], []
        for _ in range(12 if p < 6 else 4):
            # discrete values: ties in the errors on purpose (the value must not depend on
            # how they are ordered); continuous values in half of the rows
            if len(rows) % 2:
                logits = torch.randn(p, generator=g, dtype=torch.float64) * 1.5
            else:
                logits = values[torch.randint(len(values), (p,), generator=g)]
            labels = torch.randint(0, 2, (p,), generator=g).bool()
            if len(rows) == 2:
                labels[:] = False
            if len(rows) == 3:
                labels[:] = True
            ref = brute_lovasz_choquet(logits.tolist(), labels.int().tolist())
            if p <= 5:
                assert math.isclose(brute_lovasz_max(logits.tolist(), labels.int().tolist()),
                                    ref, rel_tol=1e-12, abs_tol=1e-12)
            got = S.lovasz_hinge_flat(logits, labels)
            assert got.dtype == torch.float64
            assert math.isclose(float(got), ref, rel_tol=1e-12, abs_tol=1e-12), \
                (logits, labels)
            assert math.isclose(float(S.lovasz_hinge_flat(logits, labels.long())), ref,
                                rel_tol=1e-12, abs_tol=1e-12)
            rows.append(logits)
            row_labels.append(labels)
            expected.append(ref)
            checked += ref > 0
        batched = S.lovasz_hinge_flat(torch.stack(rows), torch.stack(row_labels))
        assert torch.allclose(batched, torch.tensor(expected, dtype=torch.float64),
                              rtol=1e-12, atol=1e-12)
        mean = S.lovasz_hinge(torch.stack(rows)[:, None], torch.stack(row_labels)[:, None])
        assert math.isclose(float(mean), sum(expected) / len(expected), rel_tol=1e-12)
    assert checked > 30
    # no pixels: zero with a zero gradient
    empty = torch.zeros(0, requires_grad=True)
    out = S.lovasz_hinge_flat(empty, torch.zeros(0, dtype=torch.bool))
    assert out == 0
    out.backward()


# ======================================================================================
# the loss
# ======================================================================================


def test_loss_defaults_and_validation():
    loss = S.SpatialEmbLoss()
    assert (loss.to_center, loss.n_sigma, loss.foreground_weight) == (True, 1, 10.0)
    assert loss.grid == (1024, 2048) and loss.extent == (1.0, 2.0)
    pred, inst, labels = scene(1)
    with pytest.raises(ValueError, match="prediction"):
        loss(pred[:, :3], inst, labels)
    with pytest.raises(ValueError, match="instances"):
        loss(pred, inst[:, :8], labels)
    with pytest.raises(ValueError, match="labels"):
        loss(pred, inst, labels[:1])
    with pytest.raises(TypeError, match="instances"):
        loss(pred, inst.float(), labels)
    with pytest.raises(ValueError, match="n_sigma"):
        S.SpatialEmbLoss(n_sigma=3)


@pytest.mark.parametrize("n_sigma", [1, 2])
@pytest.mark.parametrize("to_center", [True, False])
def test_loss_equals_the_original(n_sigma, to_center):
    pred, inst, labels = scene(n_sigma, seed=5 + n_sigma)
    pred.requires_grad_()
    orig = OrigSpatialEmbLoss(to_center, n_sigma, foreground_weight=10)
    expected = orig(pred, inst, labels)
    (expected_grad,) = torch.autograd.grad(expected, pred)
    for chunk in (16, 2, 1):
        ours = S.SpatialEmbLoss(to_center, n_sigma, foreground_weight=10, instance_chunk=chunk)
        got = ours(pred, inst, labels)
        assert got.shape == () and got.dtype == torch.float32
        assert torch.allclose(got, expected, rtol=1e-5, atol=0), (got, expected)
        (grad,) = torch.autograd.grad(got, pred)
        assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
    assert expected_grad[:, :2].abs().sum() > 0 and expected_grad[:, 2:2 + n_sigma].abs().sum() > 0
    # other weights, and labels=None (background = no instance)
    ours = S.SpatialEmbLoss(to_center, n_sigma, foreground_weight=3)
    orig = OrigSpatialEmbLoss(to_center, n_sigma, foreground_weight=3)
    assert torch.allclose(ours(pred, inst, labels, w_inst=2, w_var=0.5, w_seed=4),
                          orig(pred, inst, labels, w_inst=2, w_var=0.5, w_seed=4), rtol=1e-5)
    assert torch.allclose(ours(pred, inst), orig(pred, inst, (inst > 0).long()), rtol=1e-5)
    # float64: the original cannot (its float32 Lovász gradient is dotted with float64
    # errors); ours agrees with its float32 value
    pred64 = pred.detach().double()
    with pytest.raises(RuntimeError, match="dtype"):
        OrigSpatialEmbLoss(to_center, n_sigma, 10)(pred64, inst, labels)
    got64 = S.SpatialEmbLoss(to_center, n_sigma)(pred64, inst, labels)
    assert got64.dtype == torch.float64
    assert torch.allclose(got64, expected.detach().double(), rtol=1e-5, atol=0)


def test_loss_without_instances_and_empty_batch():
    pred, inst, labels = scene(1, batch=1)
    inst.zero_()
    labels.zero_()
    pred.requires_grad_()
    got = S.SpatialEmbLoss()(pred, inst, labels)
    expected = torch.sigmoid(pred[0, 3]).square().sum() / (16 * 24)
    assert torch.allclose(got, expected, rtol=1e-6)
    assert torch.allclose(got, OrigSpatialEmbLoss(True, 1, 10)(pred, inst, labels), rtol=1e-6)
    got.backward()
    assert pred.grad[:, :3].abs().sum() == 0 and pred.grad[:, 3].abs().sum() > 0
    empty = torch.zeros(0, 4, 16, 24, requires_grad=True)
    out = S.SpatialEmbLoss()(empty, inst[:0], labels[:0])
    assert out == 0
    out.backward()


def test_loss_half_inputs_and_inputs_beyond_the_grid():
    pred, inst, labels = scene(2, seed=9)
    loss = S.SpatialEmbLoss(n_sigma=2)
    half = pred.to(torch.bfloat16)
    got = loss(half, inst, labels)
    assert got.dtype == torch.float32
    assert torch.equal(got, loss(half.float(), inst, labels))
    small = S.SpatialEmbLoss(n_sigma=2, grid=(4, 6), extent=(0.5, 0.75))
    out = small(pred, inst, labels)  # 16x24 on a 4x6 grid: coordinates continued
    assert torch.isfinite(out) and out > 0
    assert not torch.allclose(out, loss(pred, inst, labels))


@pytest.mark.parametrize("n_sigma", [1, 2])
@pytest.mark.parametrize("to_center", [True, False])
def test_loss_gradcheck(n_sigma, to_center):
    """float64, 1 x (3 + n_sigma) x 8 x 12, two instances. All hinge errors are positive and
    distinct (no kink of relu or of the sort nearby), so the loss is smooth there.

    The foreground seed target is ``dist.detach()``: finite differences of the offsets and
    sigma would see it move, so the check runs (a) without the seed term on every channel and
    (b) with every term on the seed logits only (offsets and sigma held fixed); (c) the seed
    term sends no gradient into offsets or sigma."""
    g = torch.Generator().manual_seed(11 + n_sigma)
    pred = torch.randn(1, 3 + n_sigma, 8, 12, generator=g, dtype=torch.float64)
    pred[:, 2:2 + n_sigma] = pred[:, 2:2 + n_sigma] * 0.1
    inst = torch.zeros(1, 8, 12, dtype=torch.int64)
    inst[0, 1:5, 1:6] = 3
    inst[0, 3:8, 7:11] = 1
    labels = (inst > 0).long()
    loss = S.SpatialEmbLoss(to_center, n_sigma)

    # the hinge errors are away from ties and from 0
    xym = S.coordinate_map(8, 12, dtype=torch.float64).reshape(2, -1)
    emb = torch.tanh(pred[0, :2].reshape(2, -1)) + xym
    for k in (1, 3):
        m = inst.reshape(-1) == k
        c = (xym if to_center else emb)[:, m].mean(1, keepdim=True)
        s = torch.exp(pred[0, 2:2 + n_sigma].reshape(n_sigma, -1)[:, m].mean(1, keepdim=True) * 10)
        dist = torch.exp(-((emb - c) ** 2 * s).sum(0))
        errors = torch.where(m, 2 - 2 * dist, 2 * dist).sort().values
        assert errors[0] > 1e-3 and (errors[1:] - errors[:-1]).min() > 1e-5
        assert 0.05 < dist[m].mean() < 0.99  # neither saturated nor vanishing

    p = pred.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: loss(x, inst, labels, w_seed=0), (p,))
    seed_logits = pred[:, 2 + n_sigma:].clone().requires_grad_()
    rest = pred[:, :2 + n_sigma]
    assert torch.autograd.gradcheck(
        lambda s: loss(torch.cat([rest, s], 1), inst, labels), (seed_logits,))

    (g_all,) = torch.autograd.grad(loss(p, inst, labels), p)
    (g_no_seed,) = torch.autograd.grad(loss(p, inst, labels, w_seed=0), p)
    assert torch.allclose(g_all[:, :2 + n_sigma], g_no_seed[:, :2 + n_sigma], rtol=0, atol=1e-14)
    assert g_no_seed[:, :2].abs().sum() > 0
    assert g_no_seed[:, 2:2 + n_sigma].abs().sum() > 0
    assert g_all[:, 2 + n_sigma].abs().sum() > 0 and (g_no_seed[:, 2 + n_sigma] == 0).all()


def synthetic_scene(h: int = 32, w: int = 48):
    inst = torch.zeros(1, h, w, dtype=torch.int64)
    inst[0, 2:14, 3:20] = 1
    inst[0, 18:30, 6:16] = 2
    inst[0, 8:26, 28:44] = 3
    return inst, (inst > 0).long()


@pytest.mark.parametrize("n_sigma", [1, 2])
@pytest.mark.parametrize("to_center", [True, False])
def test_loss_decreases_when_optimising_a_free_prediction(n_sigma, to_center):
    inst, labels = synthetic_scene()
    g = torch.Generator().manual_seed(12)
    pred = (torch.randn(1, 3 + n_sigma, 32, 48, generator=g) * 0.1).requires_grad_()
    loss_fn = S.SpatialEmbLoss(to_center, n_sigma)
    opt = torch.optim.Adam([pred], lr=0.05)
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(pred, inst, labels)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history
    assert sum(b < a for a, b in zip(history, history[1:])) >= 20, history


def test_loss_decreases_when_training_a_tiny_net():
    """Gradients reach every layer of both branches, and a few Adam steps lower the loss
    (BatchNorm in eval mode: one image, deterministic statistics)."""
    torch.manual_seed(13)
    model = S.SpatialEmbeddings(n_sigma=1, width=0.25).eval()
    inst, labels = synthetic_scene()
    colours = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0]])
    image = colours[inst[0]].permute(2, 0, 1)[None]
    loss_fn = model.criterion()
    assert loss_fn.n_sigma == 1 and loss_fn.foreground_weight == 10
    assert loss_fn.grid == model.grid and loss_fn.extent == model.extent
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for step in range(12):
        opt.zero_grad()
        loss = loss_fn(model(image), inst, labels)
        loss.backward()
        inner = model.get_parameter("net.decoders.0.layers.0.conv.weight").grad
        if step == 0:
            for name in ["net.encoder.initial_block.conv.weight",
                         "net.encoder.layers.12.conv1x3_2.weight",
                         "net.decoders.0.output_conv.weight", "net.decoders.0.output_conv.bias",
                         "net.decoders.1.layers.3.conv.weight",
                         "net.decoders.1.output_conv.weight"]:
                grad = model.get_parameter(name).grad
                assert grad is not None and grad.abs().sum() > 0, name
            # the zero-initialised output conv blocks the offset/sigma decoder's first step
            assert not inner.any()
        if step == 1:
            assert inner.abs().sum() > 0
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.97 * history[0], history
    assert min(history[-3:]) < min(history[:3]), history


# ======================================================================================
# inference through segops.cluster_seeds
# ======================================================================================


@pytest.mark.skipif(not hasattr(segops, "cluster_seeds"),
                    reason="segops.cluster_seeds is not built yet (issue #5, the lead's op)")
@pytest.mark.parametrize("n_sigma", [1, 2])
def test_cluster_runs_the_net_and_segops_cluster_seeds(n_sigma):
    torch.manual_seed(14)
    model = S.SpatialEmbeddings(n_sigma=n_sigma, width=0.25).eval()
    # seeds sigmoid(3) = 0.95 > 0.9 everywhere; offsets 0 and sigma 1 from init_output:
    # every proposal is a disc of radius ~5.7 px (exp(10) * d^2 < ln 2 on the 1/1023 grid)
    with torch.no_grad():
        model.net.decoders[1].output_conv.weight.zero_()
        model.net.decoders[1].output_conv.bias.fill_(3.0)
    image = torch.rand(3, 64, 56, generator=torch.Generator().manual_seed(15))
    instance_map, scores = model.cluster(image, threshold=0.9, min_pixels=50)
    assert instance_map.shape == (64, 56) and instance_map.dtype == torch.int32
    m = scores.numel()
    assert m > 5
    assert int(instance_map.max()) == m and int(instance_map.min()) >= 0
    assert torch.allclose(scores, torch.full((m,), torch.sigmoid(torch.tensor(3.0)).item()))
    areas = torch.bincount(instance_map.flatten().long(), minlength=m + 1)[1:]
    assert (areas > 0).sum() > 5 and areas.max() <= 120

    with torch.no_grad():
        prediction = model(image[None])[0]
    assert prediction.shape == (3 + n_sigma, 64, 56)
    expected_map, expected_scores = segops.cluster_seeds(prediction, n_sigma=n_sigma,
                                                         threshold=0.9, min_pixels=50)
    assert torch.equal(instance_map, expected_map) and torch.equal(scores, expected_scores)
    batched = model.cluster(image[None], threshold=0.9, min_pixels=50)
    assert torch.equal(batched[0], instance_map)
    padded_map, padded_scores, count = model.cluster(image, threshold=0.9, min_pixels=50,
                                                     max_instances=2)
    assert int(count) == 2 and padded_scores.shape == (2,)
    assert torch.equal(padded_scores, scores[:2])
    assert int(padded_map.max()) == 2
    # nothing above the threshold: no instances
    none_map, none_scores = model.cluster(image, threshold=0.99, min_pixels=50)
    assert none_scores.numel() == 0 and not none_map.any()
    with pytest.raises(ValueError, match="image"):
        model.cluster(torch.rand(2, 3, 64, 56))
