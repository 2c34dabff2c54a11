#include "nms/checks.h"

#include <ATen/ops/scalar_tensor.h>

namespace segops {

double as_dtype(double v, at::ScalarType dtype) {
  return at::scalar_tensor(v, at::TensorOptions().dtype(dtype)).item<double>();
}

}  // namespace segops
