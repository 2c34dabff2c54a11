// Fibers for the CUDA emulator: start a function on its own stack, switch between stacks.
// On x86-64 the switch is a few instructions (callee-saved registers, the SSE and x87
// control words, the stack pointer): a block barrier costs two switches per thread, and
// ucontext's swapcontext makes a system call for the signal mask in each. Elsewhere,
// ucontext.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) && defined(__linux__)

extern "C" void cuda_emu_switch(void** save_sp, void* load_sp);

namespace cuda_emu {

struct Context {
  void* sp = nullptr;
};

// Resumes `to`, saving the caller in `from`.
inline void switch_context(Context* from, Context* to) { cuda_emu_switch(&from->sp, to->sp); }

// Prepares `c` to run fn() (which must never return) on [stack, stack + size).
inline void start_context(Context* c, char* stack, size_t size, void (*fn)()) {
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
};

inline void switch_context(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }

inline void start_context(Context* c, char* stack, size_t size, void (*fn)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = size;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, fn, 0);
}

}  // namespace cuda_emu

#endif
