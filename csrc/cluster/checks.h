// Argument checks of the cluster family, shared by its CPU and CUDA glue.
#pragma once

#include "core/checks.h"

namespace segops {

// prediction [2 + n_sigma + 1, H, W]; xs [W] and ys [H] coordinates in the compute dtype.
inline void check_cluster(const char* op, const at::Tensor& prediction, const at::Tensor& xs,
                          const at::Tensor& ys, int64_t n_sigma, double threshold,
                          double seed_threshold, int64_t min_pixels, int64_t max_instances) {
  check_float(prediction, op, "prediction");
  check_dim(prediction, 3, op, "prediction", "[2 + n_sigma + 1, H, W]");
  TORCH_CHECK_VALUE(n_sigma == 1 || n_sigma == 2, op, ": `n_sigma` must be 1 or 2, got ",
                    n_sigma);
  TORCH_CHECK_VALUE(prediction.size(0) == 3 + n_sigma, op, ": `prediction` must have 2 + n_sigma",
                    " + 1 = ", 3 + n_sigma, " channels for n_sigma = ", n_sigma, ", got shape ",
                    prediction.sizes());
  const at::ScalarType acc = compute_dtype(prediction.scalar_type());
  TORCH_CHECK_VALUE(xs.dim() == 1 && xs.size(0) == prediction.size(2) && xs.scalar_type() == acc,
                    op, ": `xs` must be [W] = [", prediction.size(2), "] of ", acc, ", got ",
                    xs.sizes(), " of ", xs.scalar_type());
  TORCH_CHECK_VALUE(ys.dim() == 1 && ys.size(0) == prediction.size(1) && ys.scalar_type() == acc,
                    op, ": `ys` must be [H] = [", prediction.size(1), "] of ", acc, ", got ",
                    ys.sizes(), " of ", ys.scalar_type());
  check_same_device(prediction, xs, op, "prediction", "xs");
  check_same_device(prediction, ys, op, "prediction", "ys");
  check_not_nan(threshold, op, "threshold");
  check_not_nan(seed_threshold, op, "seed_threshold");
  check_nonneg(min_pixels, op, "min_pixels");
  check_capacity(max_instances, op, "max_instances");
}

}  // namespace segops
