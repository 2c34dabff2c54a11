// RoI family on the CPU: roi_align, multilevel_roi_align and their backward ops (roi_pool:
// cpu_pool.cpp; what both use: cpu_shared.h).
//
// Forward kernels parallelise over (RoI, channel) pairs (multilevel: (slot, channel), see
// common/roi_levels.h). Backward kernels parallelise over channels: planes of different
// channels never overlap, so each task scatters (or, in deterministic mode, gathers) into
// its own planes (of every level) with no atomics and in a fixed order.
// Deterministic mode takes the gather form the deterministic CUDA kernel takes, so the
// two devices agree bit for bit there.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "roi/checks.h"
#include "roi/cpu_shared.h"
#include "common/roi_align.h"
#include "common/roi_levels.h"

namespace segops {
namespace {

using roi_cpu::for_channels;
using roi_cpu::gather_backward;
using roi_cpu::grad_accumulator;

// One RoI's geometry with its samples' interpolations precomputed along each axis, so
// that the per-channel loops only load and multiply.
template <typename G>
struct RoIAlignSamples {
  RoIAlignGeometry<G> g{};
  std::vector<Interp1D<G>> y, x;  // samples [first, last) of each axis

  void reset(const RoIAlignGeometry<G>& geometry) {
    g = geometry;
    fill(g.y, y);
    fill(g.x, x);
  }
  static void fill(const RoIAxis<G>& a, std::vector<Interp1D<G>>& out) {
    out.resize(a.last - a.first);
    for (int64_t s = a.first; s < a.last; ++s) out[s - a.first] = a.interp(a.pos(s));
  }
  auto yi() const {
    return [this](int64_t s) { return y[s - g.y.first]; };
  }
  auto xi() const {
    return [this](int64_t s) { return x[s - g.x.first]; };
  }
};

// A RoI's bilinear samples with their offsets and weights (bilinear_sample), bin by bin in
// roi_align_bin's order, computed once per RoI: the per-channel loops then only load,
// multiply and add, the same operations in the same order as roi_align_bin. Offsets are
// int32 (planes of 2^31 elements or more compute on the fly), so that a 14x14 output's
// 784 samples (25 KB in float32) stay in L1 across the channels.
template <typename G>
struct RoIAlignTable {
  std::vector<BilinearSample<G, int32_t>> samples;
  std::vector<int64_t> start;  // [bins + 1]: bin j's samples are [start[j], start[j + 1])
  static constexpr int64_t kMaxSamples = int64_t(1) << 16;  // beyond: computed on the fly

  // False (and no table) when the RoI has more samples than kMaxSamples.
  bool build(const RoIAlignSamples<G>& rs, int64_t pooled_h, int64_t pooled_w) {
    samples.clear();
    start.assign(1, 0);
    const RoIAxis<G>&y = rs.g.y, &x = rs.g.x;
    const int64_t ny = std::max<int64_t>(0, y.last - y.first);
    const int64_t nx = std::max<int64_t>(0, x.last - x.first);
    if (ny * nx > kMaxSamples || y.size * x.size > std::numeric_limits<int32_t>::max())
      return false;
    for (int64_t ph = 0; ph < pooled_h; ++ph)
      for (int64_t pw = 0; pw < pooled_w; ++pw) {
        roi_align_bin_samples(rs.g, ph, pw, rs.yi(), rs.xi(),
                              [&](const Interp1D<G>& a, const Interp1D<G>& c) {
                                samples.push_back(bilinear_sample<int32_t>(a, c, x.size));
                              });
        start.push_back(static_cast<int64_t>(samples.size()));
      }
    return true;
  }

  // Every bin of kLanes planes (`plane_stride` elements apart) into out[l * bins + j]: each
  // bin's samples summed in order from 0, over `count` (roi_align_bin's operations, per
  // plane). A sample's offsets and weights are loaded once for all the planes.
  template <int kLanes, typename T>
  void pool(const T* plane, int64_t plane_stride, T* out, G count) const {
    using A = acc_t<T>;
    const BilinearSample<G, int32_t>* smp = samples.data();
    const int64_t bins = static_cast<int64_t>(start.size()) - 1;
    for (int64_t j = 0; j < bins; ++j) {
      A acc[kLanes];
      for (int l = 0; l < kLanes; ++l) acc[l] = A(0);
      for (int64_t s = start[j]; s < start[j + 1]; ++s) {
        const BilinearSample<G, int32_t> t = smp[s];
        for (int l = 0; l < kLanes; ++l)
          acc[l] += bilinear_value<A>(plane + l * plane_stride, t);
      }
      for (int l = 0; l < kLanes; ++l)
        out[l * bins + j] = static_cast<T>(acc[l] / static_cast<A>(count));
    }
  }

  // `planes` consecutive channels' planes into their consecutive outputs, two at a time:
  // against one at a time, 1.3-1.6x faster at one thread on the Mask R-CNN cases (P2 out7
  // sr0, P4 out7 sr2, P4 out14 sr0); four at a time was faster still at P2 but slower than
  // one at P4 sr2.
  template <typename T>
  void pool_channels(const T* plane, int64_t plane_stride, T* out, int64_t planes,
                     G count) const {
    const int64_t bins = static_cast<int64_t>(start.size()) - 1;
    int64_t l = 0;
    for (; l + 2 <= planes; l += 2)
      pool<2>(plane + l * plane_stride, plane_stride, out + l * bins, count);
    for (; l < planes; ++l) pool<1>(plane + l * plane_stride, plane_stride, out + l * bins, count);
  }
};

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                 int64_t sampling_ratio, bool aligned) {
  check_roi_align(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t K = rois.size(0);
  check_batch_indices(rois, N, "roi_align");
  if (H == 0 || W == 0) return at::zeros({K, C, pooled_h, pooled_w}, input.options());
  // Plain pages: a compute-bound kernel gains little from huge pages, and their faults stall
  // for compaction when memory is fragmented (medians 20-50% slower on a busy machine).
  at::Tensor out = at::empty({K, C, pooled_h, pooled_w}, input.options());  // all written
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois_for_geometry(rois, input.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "roi_align", [&] {
    using G = acc_t<scalar_t>;
    using A = acc_t<scalar_t>;
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const G* boxes = r.const_data_ptr<G>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t bins = pooled_h * pooled_w;
    at::parallel_for(0, K * C, std::max<int64_t>(1, 4096 / bins), [&](int64_t b, int64_t e) {
      int64_t k_geom = -1;
      bool tabled = false;
      RoIAlignSamples<G> rs;
      RoIAlignTable<G> table;
      for (int64_t i = b; i < e; ++i) {
        const int64_t k = i / C, c = i % C;
        if (k != k_geom) {
          rs.reset(roi_align_geometry<G>(boxes + k * 5, static_cast<G>(spatial_scale), pooled_h,
                                         pooled_w, sampling_ratio, aligned, N, H, W));
          k_geom = k;
          tabled = !rs.g.empty && table.build(rs, pooled_h, pooled_w);
        }
        scalar_t* oi = o + i * bins;
        if (rs.g.empty) {
          std::fill(oi, oi + bins, scalar_t(0));
          continue;
        }
        const scalar_t* plane = in + (rs.g.batch * C + c) * H * W;
        if (tabled) {  // this RoI's channels up to C or the task's end, together
          const int64_t planes = std::min(C - c, e - i);
          table.pool_channels(plane, H * W, oi, planes, rs.g.count);
          i += planes - 1;
          continue;
        }
        for (int64_t ph = 0; ph < pooled_h; ++ph)
          for (int64_t pw = 0; pw < pooled_w; ++pw)
            oi[ph * pooled_w + pw] = static_cast<scalar_t>(
                roi_align_bin<scalar_t, G, A>(plane, rs.g, ph, pw, rs.yi(), rs.xi()));
      }
    });
  });
  return out;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_backward("_roi_align_backward", grad, rois, spatial_scale, pooled_h, pooled_w,
                     batch_size, channels, height, width);
  check_sampling_ratio(sampling_ratio, "_roi_align_backward");
  check_batch_indices(rois, batch_size, "_roi_align_backward");
  const int64_t K = rois.size(0), C = channels, H = height, W = width;
  at::Tensor acc = grad_accumulator(grad, batch_size, C, H, W);
  if (K == 0 || acc.numel() == 0 || pooled_h * pooled_w == 0)
    return acc.to(grad.scalar_type());
  const at::Tensor gr = grad.contiguous();
  const at::Tensor r = rois_for_geometry(rois, grad.scalar_type());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gr.scalar_type(), "roi_align_bwd", [&] {
    using G = acc_t<scalar_t>;
    using A = acc_t<scalar_t>;
    const scalar_t* go = gr.const_data_ptr<scalar_t>();
    const G* boxes = r.const_data_ptr<G>();
    A* out = acc.mutable_data_ptr<A>();
    const int64_t bins = pooled_h * pooled_w;
    auto geometry = [&](int64_t k) {
      return roi_align_geometry<G>(boxes + k * 5, static_cast<G>(spatial_scale), pooled_h,
                                   pooled_w, sampling_ratio, aligned, batch_size, H, W);
    };
    if (deterministic) {
      std::vector<RoIAlignGeometry<G>> geoms(K);
      for (int64_t k = 0; k < K; ++k) geoms[k] = geometry(k);
      gather_backward(
          out, K, C, H, W,
          [&](int64_t k, int64_t& n, int64_t& y0, int64_t& y1, int64_t& x0, int64_t& x1) {
            const auto& g = geoms[k];
            n = g.empty ? -1 : g.batch;
            g.y.footprint(y0, y1);
            g.x.footprint(x0, x1);
          },
          [&](int64_t k, int64_t c, int64_t y, int64_t x) {
            return roi_align_grad_at<scalar_t, G>(go + (k * C + c) * bins, geoms[k], y, x);
          });
      return;
    }
    for_channels(C, K * bins, [&](int64_t c0, int64_t c1) {
      RoIAlignSamples<G> rs;
      for (int64_t k = 0; k < K; ++k) {
        rs.reset(geometry(k));
        if (rs.g.empty) continue;
        for (int64_t c = c0; c < c1; ++c) {
          A* plane = out + (rs.g.batch * C + c) * H * W;
          const scalar_t* gk = go + (k * C + c) * bins;
          for (int64_t ph = 0; ph < pooled_h; ++ph)
            for (int64_t pw = 0; pw < pooled_w; ++pw)
              roi_align_bin_scatter(rs.g, ph, pw, static_cast<A>(gk[ph * pooled_w + pw]),
                                    [&](int64_t i, A v) { plane[i] += v; }, rs.yi(), rs.xi());
        }
      }
    });
  });
  return acc.to(grad.scalar_type());
}

// The slots grouped by (level, image), stable within a group: a level's maps then stay in
// cache across its RoIs (torchvision pools level by level); each slot keeps its output rows.
template <typename G>
std::vector<int64_t> slots_by_level(const MultiLevelRoIAlign& p, const G* boxes) {
  const int64_t S = p.slots();
  std::vector<int64_t> key(S), start(p.levels * p.batch + 1, 0), order(S);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t k = p.all_levels ? s % p.rois : s;
    const int64_t level =
        p.all_levels ? s / p.rois : roi_level<G>(boxes + k * 5, p.area, p.levels);
    key[s] = level * p.batch + static_cast<int64_t>(boxes[k * 5]);  // batch checked in range
    ++start[key[s] + 1];
  }
  for (size_t g = 1; g < start.size(); ++g) start[g] += start[g - 1];
  for (int64_t s = 0; s < S; ++s) order[start[key[s]]++] = s;
  return order;
}

at::Tensor multilevel_roi_align_forward_cpu(at::TensorList features, const at::Tensor& rois,
                                            at::ArrayRef<double> spatial_scales,
                                            int64_t pooled_h, int64_t pooled_w,
                                            int64_t sampling_ratio, bool aligned,
                                            at::ArrayRef<double> level_areas, bool all_levels) {
  const char* op = "multilevel_roi_align";
  const MultiLevelRoIAlign p =
      check_multilevel_forward(op, features, rois, spatial_scales, pooled_h, pooled_w,
                               sampling_ratio, aligned, level_areas, all_levels);
  check_batch_indices(rois, p.batch, op);
  std::vector<int64_t> shape = {p.rois, p.channels, pooled_h, pooled_w};
  if (all_levels) shape.insert(shape.begin(), p.levels);
  at::Tensor out = at::empty(shape, features[0].options());  // all written, plain pages
  if (out.numel() == 0) return out;
  std::vector<at::Tensor> xs;
  for (const at::Tensor& f : features) xs.push_back(f.contiguous());
  const at::ScalarType dtype = xs[0].scalar_type();
  const at::Tensor r = rois_for_geometry(rois, dtype);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "multilevel_roi_align", [&] {
    using G = acc_t<scalar_t>;
    std::vector<const scalar_t*> in;
    for (const at::Tensor& x : xs) in.push_back(x.const_data_ptr<scalar_t>());
    const G* boxes = r.const_data_ptr<G>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t C = p.channels, bins = pooled_h * pooled_w;
    const int64_t grain = std::max<int64_t>(1, 4096 / bins);
    const std::vector<int64_t> order = slots_by_level(p, boxes);
    at::parallel_for(0, p.slots() * C, grain, [&](int64_t b, int64_t e) {
      int64_t s_geom = -1, level = 0;
      bool tabled = false;
      RoIAlignSamples<G> rs;
      RoIAlignTable<G> table;
      for (int64_t j = b; j < e; ++j) {
        const int64_t s = order[j / C], c = j % C, i = s * C + c;
        if (s != s_geom) {
          rs.reset(p.geometry<G>(boxes, s, level));
          s_geom = s;
          tabled = !rs.g.empty && table.build(rs, pooled_h, pooled_w);
        }
        if (rs.g.empty) {
          std::fill(o + i * bins, o + (i + 1) * bins, scalar_t(0));
          continue;
        }
        const scalar_t* plane =
            in[level] + (rs.g.batch * C + c) * p.height[level] * p.width[level];
        if (tabled) {  // this slot's channels up to C or the task's end, together
          const int64_t planes = std::min(C - c, e - j);
          table.pool_channels(plane, p.height[level] * p.width[level], o + i * bins, planes,
                              static_cast<G>(rs.g.count));
          j += planes - 1;
          continue;
        }
        for (int64_t ph = 0; ph < pooled_h; ++ph)
          for (int64_t pw = 0; pw < pooled_w; ++pw)
            o[i * bins + ph * pooled_w + pw] = static_cast<scalar_t>(
                roi_align_bin<scalar_t, G, acc_t<scalar_t>>(plane, rs.g, ph, pw, rs.yi(), rs.xi()));
      }
    });
  });
  return out;
}

// One gradient per level. Deterministic mode gathers (each pixel sums its level's slots in
// slot order, as the deterministic CUDA kernel); otherwise channel tasks scatter.
std::vector<at::Tensor> multilevel_roi_align_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> spatial_scales,
    int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
    at::ArrayRef<double> level_areas, bool all_levels) {
  const char* op = "_multilevel_roi_align_backward";
  const MultiLevelRoIAlign p = check_multilevel_backward(
      op, grad, rois, spatial_scales, pooled_h, pooled_w, batch_size, channels, heights, widths,
      sampling_ratio, aligned, level_areas, all_levels);
  check_batch_indices(rois, batch_size, op);
  const int64_t L = p.levels, C = channels, bins = pooled_h * pooled_w;
  std::vector<at::Tensor> acc;
  for (int64_t l = 0; l < L; ++l)
    acc.push_back(grad_accumulator(grad, batch_size, C, p.height[l], p.width[l]));
  auto result = [&] {
    std::vector<at::Tensor> out;
    for (const at::Tensor& a : acc) out.push_back(a.to(grad.scalar_type()));
    return out;
  };
  if (p.slots() == 0 || batch_size * C == 0 || bins == 0) return result();
  const at::Tensor gr = grad.contiguous();
  const at::Tensor r = rois_for_geometry(rois, grad.scalar_type());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const at::ScalarType dtype = gr.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "multilevel_roi_align_bwd", [&] {
    using G = acc_t<scalar_t>;
    using A = acc_t<scalar_t>;
    const scalar_t* go = gr.const_data_ptr<scalar_t>();
    const G* boxes = r.const_data_ptr<G>();
    std::vector<A*> out;
    for (at::Tensor& a : acc) out.push_back(a.mutable_data_ptr<A>());
    const int64_t S = p.slots();
    // The plane of level `l`, image `n`, channel `c`.
    auto plane = [&](int64_t l, int64_t n, int64_t c) {
      return out[l] + (n * C + c) * p.height[l] * p.width[l];
    };
    if (deterministic) {
      std::vector<RoIAlignGeometry<G>> geoms(S);
      std::vector<int64_t> levels(S);
      for (int64_t s = 0; s < S; ++s) geoms[s] = p.geometry<G>(boxes, s, levels[s]);
      for_channels(C, S * 64, [&](int64_t c0, int64_t c1) {
        for (int64_t s = 0; s < S; ++s) {
          const RoIAlignGeometry<G>& g = geoms[s];
          if (g.empty) continue;
          int64_t y0, y1, x0, x1;
          g.y.footprint(y0, y1);
          g.x.footprint(x0, x1);
          const int64_t W = p.width[levels[s]];
          for (int64_t c = c0; c < c1; ++c) {
            A* pl = plane(levels[s], g.batch, c);
            const scalar_t* gs = go + (s * C + c) * bins;
            for (int64_t y = y0; y < y1; ++y)
              for (int64_t x = x0; x < x1; ++x)
                pl[y * W + x] += roi_align_grad_at<scalar_t, G>(gs, g, y, x);
          }
        }
      });
      return;
    }
    for_channels(C, S * bins, [&](int64_t c0, int64_t c1) {
      RoIAlignSamples<G> rs;
      int64_t level = 0;
      for (int64_t s = 0; s < S; ++s) {
        rs.reset(p.geometry<G>(boxes, s, level));
        if (rs.g.empty) continue;
        for (int64_t c = c0; c < c1; ++c) {
          A* pl = plane(level, rs.g.batch, c);
          const scalar_t* gs = go + (s * C + c) * bins;
          for (int64_t ph = 0; ph < pooled_h; ++ph)
            for (int64_t pw = 0; pw < pooled_w; ++pw)
              roi_align_bin_scatter(rs.g, ph, pw, static_cast<A>(gs[ph * pooled_w + pw]),
                                    [&](int64_t i, A v) { pl[i] += v; }, rs.yi(), rs.xi());
        }
      }
    });
  });
  return result();
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
  m.impl("multilevel_roi_align", &multilevel_roi_align_forward_cpu);
  m.impl("_multilevel_roi_align_backward", &multilevel_roi_align_backward_cpu);
}

}  // namespace segops
