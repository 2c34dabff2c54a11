// Image-size outputs on the CPU. Writing a fresh 200 MB mask tensor costs more in 4 KiB page
// faults than in the kernel itself (about 50k faults for 100 masks at 1080x1920), so large
// outputs ask Linux for transparent huge pages before their first write: the same advice
// torch's own allocator gives under THP_MEM_ALLOC_ENABLE=1, taken here by default for the
// tensors that the kernel itself fills. Advisory only: where THP is off, or elsewhere than
// Linux, nothing changes. SEGOPS_HUGE_PAGES=0 turns it off (the first huge-page faults can
// cost the kernel a compaction when memory is fragmented; later ones are ~3x cheaper).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace segops {

inline bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("SEGOPS_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < 4 * kHuge || !huge_pages_enabled()) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// at::empty, advised to huge pages when large. Only for tensors the caller fills itself.
inline at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options) {
  at::Tensor out = at::empty(size, options);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

}  // namespace segops
