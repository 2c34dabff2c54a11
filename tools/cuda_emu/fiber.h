// Fibers for the CUDA emulator: start a function on its own stack, switch between stacks.
// On x86-64 the switch is a few instructions (callee-saved registers, the SSE and x87
// control words, the stack pointer): a block barrier costs two switches per thread, and
// ucontext's swapcontext makes a system call for the signal mask in each. Elsewhere,
// ucontext.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer (build.py's asan build) must be told of every stack switch.
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace cuda_emu {

// The bounds of a stack, for AddressSanitizer; the scheduler's are learnt on its first switch.
struct StackBounds {
  const void* bottom = nullptr;
  size_t size = 0;
};

// Call on each side of a switch: before it with the target's stack, after it (first thing in
// a new fiber too) to learn the stack switched from.
inline void before_switch(const StackBounds& to) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(nullptr, to.bottom, to.size);
#else
  (void)to;
#endif
}
// A stack about to be reused: a thread abandoned by a failed launch left its frames'
// redzones poisoned there.
inline void fresh_stack(char* stack, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(stack, size);
#else
  (void)stack, (void)size;
#endif
}
inline void after_switch(StackBounds* from) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &from->bottom, &from->size);
#else
  (void)from;
#endif
}

}  // namespace cuda_emu

#if defined(__x86_64__) && defined(__linux__)

extern "C" void cuda_emu_switch(void** save_sp, void* load_sp);

namespace cuda_emu {

struct Context {
  void* sp = nullptr;
  StackBounds stack;
};

// Resumes `to`, saving the caller in `from`; `came_from` receives the bounds of the stack
// that later switches back here.
inline void switch_context(Context* from, Context* to, StackBounds* came_from) {
  before_switch(to->stack);
  cuda_emu_switch(&from->sp, to->sp);
  after_switch(came_from);
}

// Prepares `c` to run fn() (which must never return) on [stack, stack + size).
inline void start_context(Context* c, char* stack, size_t size, void (*fn)()) {
  c->stack = {stack, size};
  fresh_stack(stack, size);
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                    // fn's return address slot: never used
  *--sp = reinterpret_cast<uint64_t>(fn);       // popped by cuda_emu_switch's ret
  for (int i = 0; i < 6; ++i) *--sp = 0;        // rbp rbx r12 r13 r14 r15
  *--sp = uint64_t(0x1F80) | (uint64_t(0x037F) << 32);  // default MXCSR, x87 control word
  c->sp = sp;
}

}  // namespace cuda_emu

#else

#include <ucontext.h>

namespace cuda_emu {

struct Context {
  ucontext_t uc;
  StackBounds stack;
};

inline void switch_context(Context* from, Context* to, StackBounds* came_from) {
  before_switch(to->stack);
  swapcontext(&from->uc, &to->uc);
  after_switch(came_from);
}

inline void start_context(Context* c, char* stack, size_t size, void (*fn)()) {
  c->stack = {stack, size};
  fresh_stack(stack, size);
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = size;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, fn, 0);
}

}  // namespace cuda_emu

#endif
