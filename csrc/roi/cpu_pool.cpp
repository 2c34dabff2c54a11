// roi_pool and its backward on the CPU. Forward tasks pool one channel over a block of RoIs
// (a plane stays in cache across them); backward tasks own channel blocks, so they scatter
// into their own planes with no atomics (deterministic mode: the gather of cpu_shared.h).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "core/huge_pages.h"
#include "roi/checks.h"
#include "roi/cpu_shared.h"
#include "common/roi_pool.h"

namespace segops {
namespace {

using roi_cpu::gather_backward;
using roi_cpu::grad_accumulator;

// roi_pool's bins, computed once per RoI (roi_pool_geometry's rows and cols), so that the
// per-channel loops only scan.
struct RoIPoolBins {
  std::vector<int64_t> batch;  // [K]; -1 for an empty RoI
  std::vector<int64_t> rows;   // [K, pooled_h, 2]: [h0, h1) of each bin row
  std::vector<int64_t> cols;   // [K, pooled_w, 2]: [w0, w1) of each bin column

  template <typename G>
  RoIPoolBins(const G* boxes, G spatial_scale, int64_t K, int64_t pooled_h, int64_t pooled_w,
              int64_t batch_size, int64_t H, int64_t W)
      : batch(K), rows(K * pooled_h * 2, 0), cols(K * pooled_w * 2, 0) {
    for (int64_t k = 0; k < K; ++k) {
      const RoIPoolGeometry<G> g =
          roi_pool_geometry<G>(boxes + k * 5, spatial_scale, pooled_h, pooled_w, batch_size, H, W);
      batch[k] = g.batch;
      if (g.batch < 0) continue;
      for (int64_t ph = 0; ph < pooled_h; ++ph)
        g.rows(ph, rows[(k * pooled_h + ph) * 2], rows[(k * pooled_h + ph) * 2 + 1]);
      for (int64_t pw = 0; pw < pooled_w; ++pw)
        g.cols(pw, cols[(k * pooled_w + pw) * 2], cols[(k * pooled_w + pw) * 2 + 1]);
    }
  }
};

// RoIs per task of the forward: a task pools one channel of a block of RoIs, so that
// consecutive tasks (one thread's share) scan the same plane, which stays in cache.
constexpr int64_t kPoolRoIBlock = 16;

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input,
                                                        const at::Tensor& rois,
                                                        double spatial_scale, int64_t pooled_h,
                                                        int64_t pooled_w) {
  check_roi_forward("roi_pool", input, rois, spatial_scale, pooled_h, pooled_w);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t K = rois.size(0);
  check_batch_indices(rois, N, "roi_pool");
  // Every element is written below (empty bins and RoIs: 0 and -1).
  at::Tensor out = empty_output({K, C, pooled_h, pooled_w}, input.options());
  at::Tensor argmax = empty_output({K, C, pooled_h, pooled_w}, input.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, argmax};
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois_for_geometry(rois, input.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "roi_pool", [&] {
    using G = acc_t<scalar_t>;
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    int64_t* am = argmax.mutable_data_ptr<int64_t>();
    const int64_t bins = pooled_h * pooled_w;
    const RoIPoolBins geo(r.const_data_ptr<G>(), static_cast<G>(spatial_scale), K, pooled_h,
                          pooled_w, N, H, W);
    const int64_t blocks = (K + kPoolRoIBlock - 1) / kPoolRoIBlock;
    at::parallel_for(0, C * blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t c = t / blocks, k0 = (t % blocks) * kPoolRoIBlock;
        const int64_t k1 = std::min(K, k0 + kPoolRoIBlock);
        for (int64_t k = k0; k < k1; ++k) {
          scalar_t* ok = o + (k * C + c) * bins;
          int64_t* ak = am + (k * C + c) * bins;
          if (geo.batch[k] < 0) {
            std::fill(ok, ok + bins, scalar_t(0));
            std::fill(ak, ak + bins, int64_t(-1));
            continue;
          }
          const scalar_t* plane = in + (geo.batch[k] * C + c) * H * W;
          const int64_t* rows = &geo.rows[k * pooled_h * 2];
          const int64_t* cols = &geo.cols[k * pooled_w * 2];
          for (int64_t ph = 0; ph < pooled_h; ++ph)
            for (int64_t pw = 0; pw < pooled_w; ++pw) {
              const int64_t j = ph * pooled_w + pw;
              ok[j] = static_cast<scalar_t>(roi_pool_window_max<scalar_t>(
                  plane, W, rows[2 * ph], rows[2 * ph + 1], cols[2 * pw], cols[2 * pw + 1],
                  ak[j]));
            }
        }
      }
    });
  });
  return {out, argmax};
}

// The default backward scatters each bin's gradient to its argmax. Channel tasks own their
// planes: each zeroes its planes, then adds, while they are in cache, the RoIs in index
// order and each RoI's bins in raster order, one at a time (the deterministic gather adds
// each RoI's sum at a pixel instead).
at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                 const at::Tensor& argmax, double spatial_scale, int64_t pooled_h,
                                 int64_t pooled_w, int64_t batch_size, int64_t channels,
                                 int64_t height, int64_t width) {
  check_roi_backward("_roi_pool_backward", grad, rois, spatial_scale, pooled_h, pooled_w,
                     batch_size, channels, height, width);
  check_argmax("_roi_pool_backward", grad, argmax);
  check_batch_indices(rois, batch_size, "_roi_pool_backward");
  const int64_t K = rois.size(0), C = channels, H = height, W = width;
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const bool scatter = !deterministic && K > 0 && pooled_h * pooled_w > 0;
  // The scatter zeroes its own planes; the gather (and the early returns) need zeros.
  at::Tensor acc =
      scatter ? empty_output({batch_size, C, H, W},
                             grad.options().dtype(compute_dtype(grad.scalar_type())))
              : grad_accumulator(grad, batch_size, C, H, W);
  if (K == 0 || acc.numel() == 0 || pooled_h * pooled_w == 0)
    return acc.to(grad.scalar_type());
  const at::Tensor gr = grad.contiguous();
  const at::Tensor am = argmax.contiguous();
  const at::Tensor r = rois_for_geometry(rois, grad.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gr.scalar_type(), "roi_pool_bwd", [&] {
    using G = acc_t<scalar_t>;
    using A = acc_t<scalar_t>;
    const scalar_t* go = gr.const_data_ptr<scalar_t>();
    const int64_t* idx = am.const_data_ptr<int64_t>();
    const G* boxes = r.const_data_ptr<G>();
    A* out = acc.mutable_data_ptr<A>();
    const int64_t bins = pooled_h * pooled_w;
    if (deterministic) {
      std::vector<RoIPoolGeometry<G>> geoms(K);
      for (int64_t k = 0; k < K; ++k)
        geoms[k] = roi_pool_geometry<G>(boxes + k * 5, static_cast<G>(spatial_scale), pooled_h,
                                        pooled_w, batch_size, H, W);
      gather_backward(
          out, K, C, H, W,
          [&](int64_t k, int64_t& n, int64_t& y0, int64_t& y1, int64_t& x0, int64_t& x1) {
            n = geoms[k].batch;
            roi_pool_footprint(geoms[k], y0, y1, x0, x1);
          },
          [&](int64_t k, int64_t c, int64_t y, int64_t x) {
            const int64_t o = (k * C + c) * bins;
            return roi_pool_grad_at<scalar_t, G>(go + o, idx + o, geoms[k], y, x);
          });
      return;
    }
    std::vector<int64_t> batch(K);
    for (int64_t k = 0; k < K; ++k)
      batch[k] = roi_pool_geometry<G>(boxes + k * 5, static_cast<G>(spatial_scale), pooled_h,
                                      pooled_w, batch_size, H, W).batch;
    // Channel blocks whose planes fill about half the per-core L2 cache: the output gradient
    // and argmax are read in runs of a block's channels, RoI after RoI, and scattered into
    // planes that stay cached.
    const int64_t hw = H * W;
    const int64_t plane_bytes = std::max<int64_t>(1, batch_size * hw * int64_t(sizeof(A)));
    const int64_t block = std::clamp<int64_t>((int64_t(1) << 20) / plane_bytes, 1, 64);
    const int64_t blocks = (C + block - 1) / block;
    at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t c0 = t * block, c1 = std::min(C, c0 + block);
        for (int64_t n = 0; n < batch_size; ++n)
          std::fill(out + (n * C + c0) * hw, out + (n * C + c1) * hw, A(0));
        for (int64_t k = 0; k < K; ++k) {
          if (batch[k] < 0) continue;
          for (int64_t c = c0; c < c1; ++c) {
            A* const plane = out + (batch[k] * C + c) * hw;
            const scalar_t* const gk = go + (k * C + c) * bins;
            const int64_t* const ik = idx + (k * C + c) * bins;
            for (int64_t j = 0; j < bins; ++j) {
              const int64_t a = ik[j];
              if (a >= 0 && a < hw) plane[a] += static_cast<A>(gk[j]);
            }
          }
        }
      }
    });
  });
  return acc.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("roi_pool", &roi_pool_forward_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace segops
