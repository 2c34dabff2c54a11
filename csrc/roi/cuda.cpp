// RoI family, CUDA glue: checks, allocation, stream, launch (kernels in kernels.cu and
// multilevel_kernels.cu). Nothing is read back: batch indices are checked by the kernels
// that read them, with a device-side assertion (docs/ops/roi.md), where the CPU raises
// a ValueError at once.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "roi/checks.h"
#include "core/cuda_glue.h"
#include "roi/launch.h"

namespace segops {
namespace {

cuda::RoIArgs roi_args(int64_t n, int64_t c, int64_t h, int64_t w, const at::Tensor& rois,
                       int64_t ph, int64_t pw, double scale, int64_t sr = 0,
                       bool aligned = false) {
  return cuda::RoIArgs{n, c, h, w, rois.size(0), ph, pw, scale, sr, aligned};
}

// A call with nothing to compute still has its batch indices checked on the device, as
// every other call is by the kernels that read them.
void check_batch_indices_only(const at::Tensor& rois, int64_t batch_size,
                              at::ScalarType input_type) {
  if (rois.size(0) == 0) return;
  const at::Tensor r = rois_for_geometry(rois, input_type);
  C10_CUDA_CHECK(cuda::roi_check_batch_indices(r.scalar_type() == at::kDouble,
                                               r.const_data_ptr(), r.size(0), batch_size,
                                               c10::cuda::getCurrentCUDAStream()));
}

at::Tensor scratch(const at::Tensor& like, int64_t bytes) {
  return at::empty({std::max<int64_t>(bytes, 1)}, like.options().dtype(at::kByte));
}

// The deterministic (gather) backwards compact RoI indices into ints.
void check_gather_rois(int64_t rois, const char* op) {
  TORCH_CHECK_VALUE(rois <= std::numeric_limits<int>::max(), op,
                    ": the deterministic backward takes at most 2**31 - 1 RoIs (RoI-level "
                    "pairs for multilevel_roi_align), got ", rois);
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                  int64_t sampling_ratio, bool aligned) {
  check_roi_align(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const std::vector<int64_t> shape = {rois.size(0), C, pooled_h, pooled_w};
  if (c10::multiply_integers(shape) == 0 || H == 0 || W == 0) {
    check_batch_indices_only(rois, N, input.scalar_type());
    return at::zeros(shape, input.options());
  }
  at::Tensor out = at::empty(shape, input.options());  // the kernel writes every element
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois_for_geometry(rois, input.scalar_type());
  const auto a = roi_args(N, C, H, W, r, pooled_h, pooled_w, spatial_scale, sampling_ratio,
                          aligned);
  const cuda::Dtype dt = cuda_dtype(x);
  at::Tensor s = scratch(x, cuda::roi_align_scratch_bytes(dt, a.rois));
  C10_CUDA_CHECK(cuda::roi_align_forward(dt, a, x.const_data_ptr(), r.const_data_ptr(),
                                         s.mutable_data_ptr(), out.mutable_data_ptr(),
                                         c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                   int64_t batch_size, int64_t channels, int64_t height,
                                   int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_backward("_roi_align_backward", grad, rois, spatial_scale, pooled_h, pooled_w,
                     batch_size, channels, height, width);
  check_sampling_ratio(sampling_ratio, "_roi_align_backward");
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t K = rois.size(0);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const bool empty = K == 0 || batch_size * channels * height * width == 0 ||
                     pooled_h * pooled_w == 0;
  if (empty) {
    check_batch_indices_only(rois, batch_size, grad.scalar_type());
    return at::zeros({batch_size, channels, height, width}, grad.options());
  }
  const at::Tensor g = grad.contiguous();
  const at::Tensor r = rois_for_geometry(rois, grad.scalar_type());
  const auto a = roi_args(batch_size, channels, height, width, r, pooled_h, pooled_w,
                          spatial_scale, sampling_ratio, aligned);
  const cuda::Dtype dt = cuda_dtype(g);
  at::Tensor s = scratch(g, cuda::roi_align_scratch_bytes(dt, K));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (deterministic) {
    check_gather_rois(K, "_roi_align_backward");
    at::Tensor out = at::empty({batch_size, channels, height, width}, grad.options());
    C10_CUDA_CHECK(cuda::roi_align_backward_gather(dt, a, g.const_data_ptr(), r.const_data_ptr(),
                                                   s.mutable_data_ptr(), out.mutable_data_ptr(),
                                                   stream));
    return out;
  }
  at::Tensor acc = at::zeros({batch_size, channels, height, width},
                             grad.options().dtype(compute_dtype(grad.scalar_type())));
  C10_CUDA_CHECK(cuda::roi_align_backward_atomic(dt, a, g.const_data_ptr(), r.const_data_ptr(),
                                                 s.mutable_data_ptr(), acc.mutable_data_ptr(),
                                                 stream));
  return acc.to(grad.scalar_type());
}

at::Tensor multilevel_roi_align_forward_cuda(at::TensorList features, const at::Tensor& rois,
                                             at::ArrayRef<double> spatial_scales,
                                             int64_t pooled_h, int64_t pooled_w,
                                             int64_t sampling_ratio, bool aligned,
                                             at::ArrayRef<double> level_areas, bool all_levels) {
  const char* op = "multilevel_roi_align";
  const MultiLevelRoIAlign p =
      check_multilevel_forward(op, features, rois, spatial_scales, pooled_h, pooled_w,
                               sampling_ratio, aligned, level_areas, all_levels);
  const c10::cuda::CUDAGuard guard(features[0].device());
  std::vector<int64_t> shape = {p.rois, p.channels, pooled_h, pooled_w};
  if (all_levels) shape.insert(shape.begin(), p.levels);
  if (c10::multiply_integers(shape) == 0 || !p.any_pixels()) {
    check_batch_indices_only(rois, p.batch, features[0].scalar_type());
    return at::zeros(shape, features[0].options());
  }
  at::Tensor out = at::empty(shape, features[0].options());  // every element is written
  std::vector<at::Tensor> xs;
  cuda::RoILevelInputs in{};
  for (int64_t l = 0; l < p.levels; ++l) {
    xs.push_back(features[l].contiguous());
    in.p[l] = xs.back().const_data_ptr();
  }
  const at::Tensor r = rois_for_geometry(rois, xs[0].scalar_type());
  const cuda::Dtype dt = cuda_dtype(xs[0]);
  at::Tensor s = scratch(xs[0], cuda::multilevel_roi_align_scratch_bytes(dt, p.slots()));
  C10_CUDA_CHECK(cuda::multilevel_roi_align_forward(dt, p, in, r.const_data_ptr(),
                                                    s.mutable_data_ptr(), out.mutable_data_ptr(),
                                                    c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::vector<at::Tensor> multilevel_roi_align_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> spatial_scales,
    int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
    at::ArrayRef<double> level_areas, bool all_levels) {
  const char* op = "_multilevel_roi_align_backward";
  const MultiLevelRoIAlign p = check_multilevel_backward(
      op, grad, rois, spatial_scales, pooled_h, pooled_w, batch_size, channels, heights, widths,
      sampling_ratio, aligned, level_areas, all_levels);
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  std::vector<at::Tensor> out;
  if (p.slots() == 0 || batch_size * channels == 0 || pooled_h * pooled_w == 0 ||
      !p.any_pixels()) {
    check_batch_indices_only(rois, batch_size, grad.scalar_type());
    for (int64_t l = 0; l < p.levels; ++l)
      out.push_back(at::zeros({batch_size, channels, p.height[l], p.width[l]}, grad.options()));
    return out;
  }
  const at::Tensor g = grad.contiguous();
  const at::Tensor r = rois_for_geometry(rois, grad.scalar_type());
  const cuda::Dtype dt = cuda_dtype(g);
  at::Tensor s = scratch(g, cuda::multilevel_roi_align_scratch_bytes(dt, p.slots()));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cuda::RoILevelOutputs o{};
  if (deterministic) {
    check_gather_rois(p.slots(), op);
    for (int64_t l = 0; l < p.levels; ++l) {
      out.push_back(at::empty({batch_size, channels, p.height[l], p.width[l]}, grad.options()));
      o.p[l] = out.back().mutable_data_ptr();
    }
    C10_CUDA_CHECK(cuda::multilevel_roi_align_backward_gather(
        dt, p, g.const_data_ptr(), r.const_data_ptr(), s.mutable_data_ptr(), o, stream));
    return out;
  }
  std::vector<at::Tensor> acc;
  for (int64_t l = 0; l < p.levels; ++l) {
    acc.push_back(at::zeros({batch_size, channels, p.height[l], p.width[l]},
                            grad.options().dtype(compute_dtype(grad.scalar_type()))));
    o.p[l] = acc.back().mutable_data_ptr();
  }
  C10_CUDA_CHECK(cuda::multilevel_roi_align_backward_atomic(
      dt, p, g.const_data_ptr(), r.const_data_ptr(), s.mutable_data_ptr(), o, stream));
  for (const at::Tensor& a : acc) out.push_back(a.to(grad.scalar_type()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input,
                                                         const at::Tensor& rois,
                                                         double spatial_scale, int64_t pooled_h,
                                                         int64_t pooled_w) {
  check_roi_forward("roi_pool", input, rois, spatial_scale, pooled_h, pooled_w);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t K = rois.size(0);
  if (K * C * pooled_h * pooled_w == 0) {
    check_batch_indices_only(rois, N, input.scalar_type());
    return {at::zeros({K, C, pooled_h, pooled_w}, input.options()),
            at::full({K, C, pooled_h, pooled_w}, -1, input.options().dtype(at::kLong))};
  }
  // The kernel writes every element of both.
  at::Tensor out = at::empty({K, C, pooled_h, pooled_w}, input.options());
  at::Tensor argmax = at::empty({K, C, pooled_h, pooled_w}, input.options().dtype(at::kLong));
  const at::Tensor x = input.contiguous();
  const at::Tensor r = rois_for_geometry(rois, input.scalar_type());
  const auto a = roi_args(N, C, H, W, r, pooled_h, pooled_w, spatial_scale);
  C10_CUDA_CHECK(cuda::roi_pool_forward(cuda_dtype(x), a, x.const_data_ptr(), r.const_data_ptr(),
                                        out.mutable_data_ptr(),
                                        argmax.mutable_data_ptr<int64_t>(),
                                        c10::cuda::getCurrentCUDAStream()));
  return {out, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                  const at::Tensor& argmax, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width) {
  check_roi_backward("_roi_pool_backward", grad, rois, spatial_scale, pooled_h, pooled_w,
                     batch_size, channels, height, width);
  check_argmax("_roi_pool_backward", grad, argmax);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t K = rois.size(0);
  const bool empty = K == 0 || batch_size * channels * height * width == 0 ||
                     pooled_h * pooled_w == 0;
  if (empty) {
    check_batch_indices_only(rois, batch_size, grad.scalar_type());
    return at::zeros({batch_size, channels, height, width}, grad.options());
  }
  const at::Tensor g = grad.contiguous();
  const at::Tensor am = argmax.contiguous();
  const at::Tensor r = rois_for_geometry(rois, grad.scalar_type());
  const auto a = roi_args(batch_size, channels, height, width, r, pooled_h, pooled_w,
                          spatial_scale);
  const cuda::Dtype dt = cuda_dtype(g);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (at::globalContext().deterministicAlgorithms()) {
    check_gather_rois(K, "_roi_pool_backward");
    at::Tensor s = scratch(g, cuda::roi_pool_scratch_bytes(dt, K));
    at::Tensor out = at::empty({batch_size, channels, height, width}, grad.options());
    C10_CUDA_CHECK(cuda::roi_pool_backward_gather(dt, a, g.const_data_ptr(),
                                                  am.const_data_ptr<int64_t>(),
                                                  r.const_data_ptr(), s.mutable_data_ptr(),
                                                  out.mutable_data_ptr(), stream));
    return out;
  }
  at::Tensor acc = at::zeros({batch_size, channels, height, width},
                             grad.options().dtype(compute_dtype(grad.scalar_type())));
  C10_CUDA_CHECK(cuda::roi_pool_backward_atomic(dt, a, g.const_data_ptr(),
                                                am.const_data_ptr<int64_t>(), r.const_data_ptr(),
                                                acc.mutable_data_ptr(), stream));
  return acc.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
  m.impl("multilevel_roi_align", &multilevel_roi_align_forward_cuda);
  m.impl("_multilevel_roi_align_backward", &multilevel_roi_align_backward_cuda);
  m.impl("roi_pool", &roi_pool_forward_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace segops
