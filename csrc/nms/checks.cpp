#include "nms/checks.h"

#include <ATen/Dispatch.h>
#include <c10/core/Scalar.h>

namespace segops {

double as_dtype(double v, at::ScalarType dtype) {
  // The conversion a tensor of `dtype` filled with v makes (Tensor.fill_ converts through
  // Scalar::to), computed on the host: no tensor, so nothing for a CUDA caller to wait for.
  double out = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "as_dtype", [&] {
    out = static_cast<double>(c10::Scalar(v).to<scalar_t>());
  });
  return out;
}

}  // namespace segops
