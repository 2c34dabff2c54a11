// Patches family (BPR), CUDA glue (kernels in kernels.cu). The kept patches' output rows
// (a scan of per-row counts) and the per-instance patch lists (a stable sort and
// searchsorted) come from the device, so the padded extraction (max_out) and reassembly
// launch without reading anything back; the unpadded extraction reads its total back to
// size the result. Index arguments are range-checked on the device (core/index_check.h: a
// device-side assertion).
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/clamp_max.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "patches/checks.h"
#include "core/cuda_glue.h"
#include "core/index_check.h"
#include "patches/launch.h"

namespace segops {
namespace {

// Every index in [0, n), asserted on the device (the CPU raises a ValueError instead).
void check_index_range_cuda(const at::Tensor& index, int64_t n, const char*, const char*) {
  const at::Tensor i = index.contiguous();
  C10_CUDA_CHECK(cuda::assert_indices_in_range(i.const_data_ptr<int64_t>(), i.numel(), n,
                                               c10::cuda::getCurrentCUDAStream()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> boundary_patches_cuda(
    const at::Tensor& masks, int64_t patch_size, double iou_threshold, int64_t max_out) {
  check_boundary_patches(masks, patch_size, iou_threshold, max_out);
  const c10::cuda::CUDAGuard guard(masks.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = masks.size(0), h = masks.size(1), w = masks.size(2);
  const auto opts = masks.options().dtype(at::kLong);
  const cuda::PatchArgs a{n, h, w, patch_size, iou_threshold};
  const at::Tensor m = masks.contiguous();
  at::Tensor total, counts, ends, kept;
  if (n * h * w > 0) {
    // Two bits of scratch per pixel and a count per (instance, level, row), all written by
    // the NMS kernel where they are read (no memset).
    const int64_t words = (w + 31) / 32;
    const auto bits = masks.options().dtype(at::kInt);
    at::Tensor suppressed = at::empty({n, h, words}, bits);
    kept = at::empty({n, h, words}, bits);
    counts = at::empty({n, 4, h}, bits);
    C10_CUDA_CHECK(cuda::boundary_nms(
        a, m.const_data_ptr<bool>(), reinterpret_cast<uint32_t*>(suppressed.mutable_data_ptr<int32_t>()),
        reinterpret_cast<uint32_t*>(kept.mutable_data_ptr<int32_t>()),
        counts.mutable_data_ptr<int32_t>(), stream));
    ends = at::cumsum(counts.view({-1}), 0, at::kLong);  // each patch's output row + 1
    total = ends[n * 4 * h - 1];
  } else {
    total = at::zeros({}, opts);
  }
  const int64_t rows = max_out >= 0 ? max_out : total.item<int64_t>();
  at::Tensor boxes = at::zeros({rows, 4}, opts);
  at::Tensor index = at::full({rows}, -1, opts);
  at::Tensor scores = at::zeros({rows}, masks.options().dtype(at::kFloat));
  if (rows > 0 && n * h * w > 0)
    C10_CUDA_CHECK(cuda::boundary_write(
        a, m.const_data_ptr<bool>(), reinterpret_cast<const uint32_t*>(kept.const_data_ptr<int32_t>()),
        counts.const_data_ptr<int32_t>(), ends.const_data_ptr<int64_t>(), rows,
        boxes.mutable_data_ptr<int64_t>(), index.mutable_data_ptr<int64_t>(),
        scores.mutable_data_ptr<float>(), stream));
  return {boxes, index, scores, at::clamp_max(total, rows)};
}

std::tuple<at::Tensor, at::Tensor> crop_patches_cuda(const at::Tensor& images,
                                                     const at::Tensor& masks,
                                                     const at::Tensor& boxes,
                                                     const at::Tensor& instance_index,
                                                     const at::Tensor& batch_index,
                                                     int64_t out_h, int64_t out_w) {
  const c10::cuda::CUDAGuard guard(images.device());
  check_crop_patches(images, masks, boxes, instance_index, batch_index, out_h, out_w,
                     &check_index_range_cuda);
  const int64_t P = boxes.size(0);
  at::Tensor img = at::empty({P, images.size(1), out_h, out_w}, images.options());
  at::Tensor msk = at::empty({P, out_h, out_w}, masks.options());
  if (P == 0 || out_h == 0 || out_w == 0) return {img, msk};
  const at::Tensor x = images.contiguous(), m = masks.contiguous(), b = boxes.contiguous();
  const at::Tensor ii = instance_index.contiguous(), bi = batch_index.contiguous();
  const cuda::CropArgs a{P,     images.size(0), images.size(1), images.size(2), images.size(3),
                         out_h, out_w,          masks.size(0)};
  at::Tensor scratch = at::empty({cuda::crop_patches_scratch_bytes(cuda_dtype(x), P)},
                                 images.options().dtype(at::kByte));
  C10_CUDA_CHECK(cuda::crop_patches(cuda_dtype(x), a, x.const_data_ptr(), m.const_data_ptr<bool>(),
                                    b.const_data_ptr<int64_t>(), ii.const_data_ptr<int64_t>(),
                                    bi.const_data_ptr<int64_t>(), scratch.mutable_data_ptr(),
                                    img.mutable_data_ptr(),
                                    msk.mutable_data_ptr<bool>(),
                                    c10::cuda::getCurrentCUDAStream()));
  return {img, msk};
}

at::Tensor reassemble_patches_cuda(const at::Tensor& masks, const at::Tensor& patch_probs,
                                   const at::Tensor& boxes, const at::Tensor& instance_index,
                                   double threshold) {
  const c10::cuda::CUDAGuard guard(masks.device());
  check_reassemble_patches(masks, patch_probs, boxes, instance_index, threshold,
                           &check_index_range_cuda);
  const int64_t n = masks.size(0), P = boxes.size(0);
  const at::Tensor m = masks.contiguous();
  if (P == 0 || m.numel() == 0 || patch_probs.size(1) == 0 || patch_probs.size(2) == 0)
    return m.clone();
  const auto opts = masks.options().dtype(at::kLong);
  const at::Tensor ii = instance_index.contiguous();
  const auto sorted = at::sort(ii, /*stable=*/true, 0, /*descending=*/false);
  const at::Tensor order = std::get<1>(sorted);
  const at::Tensor start = at::searchsorted(std::get<0>(sorted), at::arange(n + 1, opts));
  at::Tensor out = at::empty_like(m);
  const at::Tensor pr = patch_probs.contiguous(), b = boxes.contiguous();
  const cuda::ReassembleArgs a{n, masks.size(1), masks.size(2), P, pr.size(1), pr.size(2),
                               threshold};
  C10_CUDA_CHECK(cuda::reassemble_patches(cuda_dtype(pr), a, m.const_data_ptr<bool>(),
                                          pr.const_data_ptr(), b.const_data_ptr<int64_t>(),
                                          order.const_data_ptr<int64_t>(),
                                          start.const_data_ptr<int64_t>(),
                                          out.mutable_data_ptr<bool>(),
                                          c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("boundary_patches", &boundary_patches_cuda);
  m.impl("crop_patches", &crop_patches_cuda);
  m.impl("reassemble_patches", &reassemble_patches_cuda);
}

}  // namespace segops
