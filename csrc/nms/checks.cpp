#include "nms/checks.h"

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <c10/util/TypeCast.h>

namespace segops {

double as_dtype(double v, at::ScalarType dtype) {
  // The conversion a tensor of `dtype` filled with v makes (Tensor.fill_ converts through
  // Scalar::to), computed on the host: no tensor, so nothing for a CUDA caller to wait for.
  double out = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "as_dtype", [&] {
    // Scalar::to's checked conversion, written out: its error path (c10::report_overflow) is
    // an exported symbol that other torch releases do not have.
    const bool overflows = c10::overflows<scalar_t, double>(v);
    TORCH_CHECK_VALUE(!overflows, "value cannot be converted to type ", dtype, " without overflow");
    out = static_cast<double>(c10::convert<scalar_t, double>(v));
  });
  return out;
}

}  // namespace segops
