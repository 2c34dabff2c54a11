// Masks family, CUDA glue: checks, allocation, stream, launch (kernels in masks_kernel.cu).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "masks/checks.h"
#include "core/cuda_glue.h"
#include "masks/launch.h"

namespace segops {
namespace {

cuda::AssembleArgs assemble_args(const at::Tensor& protos, const at::Tensor& coeffs,
                                 const at::Tensor& boxes, int64_t padding) {
  return {coeffs.size(0), protos.size(0), protos.size(1), protos.size(2), padding,
          boxes.scalar_type() == at::kDouble};
}

// b: the boxes in their geometry dtype (float64 boxes stay float64, else float32).
at::Tensor assemble_cropped(const at::Tensor& protos, const at::Tensor& coeffs,
                            const at::Tensor& b, int64_t padding) {
  const auto a = assemble_args(protos, coeffs, b, padding);
  at::Tensor out = at::empty({a.n, a.h, a.w}, protos.options());
  if (out.numel() == 0) return out;
  const at::Tensor p = protos.contiguous(), c = coeffs.contiguous();
  C10_CUDA_CHECK(cuda::assemble_masks(cuda_dtype(p), a, p.const_data_ptr(), c.const_data_ptr(),
                                      b.const_data_ptr(), out.mutable_data_ptr(),
                                      c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor geometry_boxes(const at::Tensor& boxes) {
  return boxes.to(compute_dtype(boxes.scalar_type())).contiguous();
}

at::Tensor assemble_masks_cuda(const at::Tensor& protos, const at::Tensor& coeffs,
                               const at::Tensor& boxes, int64_t padding) {
  check_assemble("assemble_masks", protos, coeffs, boxes);
  const c10::cuda::CUDAGuard guard(protos.device());
  return assemble_cropped(protos, coeffs, geometry_boxes(boxes), padding);
}

at::Tensor assemble_masks_upsampled_cuda(const at::Tensor& protos, const at::Tensor& coeffs,
                                         const at::Tensor& boxes, int64_t padding,
                                         int64_t height, int64_t width, double threshold) {
  const char* op = "assemble_masks_upsampled";
  check_assemble_upsampled(op, protos, coeffs, boxes, height, width, threshold);
  const c10::cuda::CUDAGuard guard(protos.device());
  const auto a = assemble_args(protos, coeffs, boxes, padding);
  at::Tensor out = at::empty({a.n, height, width}, protos.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  const at::Tensor b = geometry_boxes(boxes);
  const at::Tensor cropped = assemble_cropped(protos, coeffs, b, padding);
  C10_CUDA_CHECK(cuda::upsample_masks(cuda_dtype(cropped), a, cropped.const_data_ptr(),
                                      b.const_data_ptr(), height, width,
                                      rounded_threshold(threshold, protos.scalar_type()),
                                      out.mutable_data_ptr<bool>(),
                                      c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor paste_masks_cuda(const at::Tensor& masks, const at::Tensor& boxes, int64_t height,
                            int64_t width, std::optional<double> threshold,
                            c10::string_view mode_name) {
  const PasteMode mode =
      check_paste("paste_masks", masks, boxes, height, width, threshold, mode_name);
  const c10::cuda::CUDAGuard guard(masks.device());
  const int64_t n = masks.size(0);
  at::Tensor out = at::empty({n, height, width},
                             threshold ? masks.options().dtype(at::kBool) : masks.options());
  if (out.numel() == 0) return out;
  const at::Tensor m = masks.contiguous();
  const at::ScalarType geometry = paste_geometry_dtype(masks, boxes);
  const at::Tensor b = boxes.to(geometry).contiguous();
  const cuda::PasteArgs a{n,
                          masks.size(1),
                          masks.size(2),
                          height,
                          width,
                          mode == PasteMode::Detectron2,
                          threshold.has_value(),
                          geometry == at::kDouble,
                          rounded_threshold(threshold.value_or(0.0), masks.scalar_type())};
  C10_CUDA_CHECK(cuda::paste_masks(cuda_dtype(m), a, m.const_data_ptr(), b.const_data_ptr(),
                                   out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("assemble_masks", &assemble_masks_cuda);
  m.impl("assemble_masks_upsampled", &assemble_masks_upsampled_cuda);
  m.impl("paste_masks", &paste_masks_cuda);
}

}  // namespace segops
