// Tensor -> launcher helpers shared by every family's CUDA glue.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "core/launch.h"

namespace segops {

inline cuda::Dtype cuda_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::Dtype::Float32;
    case at::kDouble: return cuda::Dtype::Float64;
    case at::kHalf: return cuda::Dtype::Float16;
    case at::kBFloat16: return cuda::Dtype::BFloat16;
    default: TORCH_CHECK_TYPE(false, "segops: unsupported dtype ", t.scalar_type());
  }
}

}  // namespace segops
