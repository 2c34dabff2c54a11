// Cluster family, CUDA glue (kernels in cluster_kernel.cu). Everything between the input
// and the outputs is launched without reading back: the seed order and the bucket order
// come from stable device sorts, the bucket offsets from searchsorted, the embedding
// bounds from device reductions. Only the unbounded form (max_instances = -1) reads the
// instance count back, to size its scores.
#include <ATen/core/Tensor.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "cluster/checks.h"
#include "cluster/launch.h"

namespace segops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_seeds_cuda(
    const at::Tensor& prediction, const at::Tensor& xs, const at::Tensor& ys, int64_t n_sigma,
    double threshold, double seed_threshold, int64_t min_pixels, int64_t max_instances) {
  const char* op = "cluster_seeds";
  check_cluster(op, prediction, xs, ys, n_sigma, threshold, seed_threshold, min_pixels,
                max_instances);
  const c10::cuda::CUDAGuard guard(prediction.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::ScalarType acc = compute_dtype(prediction.scalar_type());
  const bool dbl = acc == at::kDouble;
  const int64_t h = prediction.size(1), w = prediction.size(2), plane = h * w;
  const auto opts = prediction.options();
  at::Tensor map = at::zeros({h, w}, opts.dtype(at::kInt));
  at::Tensor count = at::zeros({}, opts.dtype(at::kLong));
  const int64_t capacity = max_instances >= 0 ? max_instances : plane;
  at::Tensor scores = at::zeros({capacity}, opts.dtype(acc));
  if (plane > 0) {
    const int64_t grid = std::max<int64_t>(
        1, std::min<int64_t>(1024, static_cast<int64_t>(std::sqrt(plane / 8.0))));
    const cuda::ClusterArgs a{h, w, n_sigma, min_pixels, max_instances, threshold,
                              seed_threshold, grid};
    const at::Tensor p = prediction.to(acc).contiguous();
    at::Tensor px = at::empty({5, plane}, opts.dtype(acc));
    at::Tensor seed_key = at::empty({plane}, opts.dtype(acc));
    at::Tensor valid = at::empty({plane}, opts.dtype(at::kBool));
    C10_CUDA_CHECK(cuda::cluster_prepare(dbl, a, p.const_data_ptr(), xs.contiguous().const_data_ptr(),
                                         ys.contiguous().const_data_ptr(), px.mutable_data_ptr(),
                                         seed_key.mutable_data_ptr(), valid.mutable_data_ptr<bool>(),
                                         stream));
    // Seed order: masked pixels by seed, descending, ties in raster order (stable).
    const at::Tensor order = std::get<1>(at::sort(seed_key, /*stable=*/true, 0, /*descending=*/true));
    const at::Tensor masked = at::sum(seed_key.ge(0), at::kLong);
    // Embedding bounds over the valid pixels, as float64 (x0, x1, y0, y1).
    const double inf = INFINITY;
    const at::Tensor e = px.slice(0, 0, 2).to(at::kDouble);
    const at::Tensor lo = at::where(valid, e, inf).amin(1), hi = at::where(valid, e, -inf).amax(1);
    const at::Tensor bbox = at::stack({lo[0], hi[0], lo[1], hi[1]}).contiguous();
    at::Tensor key = at::empty({plane}, opts.dtype(at::kLong));
    C10_CUDA_CHECK(cuda::cluster_bucket_keys(dbl, a, px.const_data_ptr(),
                                             valid.const_data_ptr<bool>(), bbox.const_data_ptr(),
                                             key.mutable_data_ptr<int64_t>(), stream));
    const auto sorted = at::sort(key, /*stable=*/true, 0, /*descending=*/false);
    const at::Tensor bucket_pixels = std::get<1>(sorted);
    const at::Tensor bucket_start =
        at::searchsorted(std::get<0>(sorted), at::arange(grid * grid + 1, opts.dtype(at::kLong)));
    at::Tensor clustered = at::zeros({plane}, opts.dtype(at::kByte));
    at::Tensor stamp = at::full({plane}, -1, opts.dtype(at::kInt));
    C10_CUDA_CHECK(cuda::cluster_loop(
        dbl, a, px.const_data_ptr(), order.const_data_ptr<int64_t>(),
        masked.const_data_ptr<int64_t>(), bucket_pixels.const_data_ptr<int64_t>(),
        bucket_start.const_data_ptr<int64_t>(), bbox.const_data_ptr(),
        clustered.mutable_data_ptr<uint8_t>(), stamp.mutable_data_ptr<int32_t>(),
        map.mutable_data_ptr<int32_t>(), scores.mutable_data_ptr(),
        count.mutable_data_ptr<int64_t>(), stream));
  }
  if (max_instances < 0) scores = scores.slice(0, 0, count.item<int64_t>()).clone();
  return {map, scores, count};
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) { m.impl("cluster_seeds", &cluster_seeds_cuda); }

}  // namespace segops
