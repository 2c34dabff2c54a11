#include "roi_checks.h"

#include <ATen/ops/any.h>
#include <ATen/ops/floor.h>
#include <ATen/ops/ge.h>
#include <ATen/ops/logical_or.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/select.h>

namespace segops {

void check_batch_indices(const at::Tensor& rois, int64_t batch_size, const char* op) {
  if (rois.size(0) == 0) return;
  const at::Tensor b = rois.select(1, 0);
  // One reduction and one read back; NaN fails floor(b) == b.
  const at::Tensor bad =
      at::logical_or(at::logical_or(at::lt(b, 0), at::ge(b, static_cast<double>(batch_size))),
                     at::ne(at::floor(b), b));
  if (!at::any(bad).item<bool>()) return;
  const int64_t k = at::nonzero(bad).select(1, 0)[0].item<int64_t>();
  TORCH_CHECK_VALUE(false, op, ": every rois batch index must be a whole number in [0, ",
                    batch_size, ") (the input's batch size); row ", k, " has batch index ",
                    b[k].item<double>());
}

at::Tensor rois_for_geometry(const at::Tensor& rois, at::ScalarType input_type) {
  return rois.to(compute_dtype(input_type)).contiguous();
}

}  // namespace segops
