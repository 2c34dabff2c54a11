#include "patches/checks.h"

#include <ATen/ops/ge.h>
#include <ATen/ops/logical_or.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/any.h>

namespace segops {

void check_index_range(const at::Tensor& index, int64_t n, const char* op, const char* name) {
  if (index.numel() == 0) return;
  const bool bad = at::any(at::logical_or(at::lt(index, 0), at::ge(index, n))).item<bool>();
  TORCH_CHECK_VALUE(!bad, op, ": every `", name, "` entry must be in [0, ", n, ")");
}

}  // namespace segops
