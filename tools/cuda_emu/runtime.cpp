// CUDA emulation runtime: runs a launch's blocks one after another and each block's threads
// as fibers (fiber.h) on the calling thread. A thread runs until it finishes, reaches
// __syncthreads() or votes in a warp (__ballot_sync); the scheduler releases a barrier when
// every thread of the block (or lane of the warp) has reached it, and fails the launch on
// a barrier that cannot be released (a deadlock in CUDA, or undefined behaviour). With a
// schedule seed the block order and the order threads run in between barriers are shuffled,
// so results that depend on scheduling show up as differences between runs.
//
// Fibers cost context switches; kernels that cannot synchronise (build.py reads which can)
// run as plain calls, thread after thread. Should one reach a barrier after all, the launch
// fails loudly rather than mis-run.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "fiber.h"

#if defined(__x86_64__) && defined(__linux__)
// void cuda_emu_switch(void** save_sp, void* load_sp): push the callee-saved registers and
// the control words, save rsp in *save_sp, load rsp and pop the other stack's.
asm(R"(
  .text
  .globl cuda_emu_switch
  .type cuda_emu_switch, @function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch
)");
#endif

namespace cuda_emu {
namespace {

enum class State { Ready, AtBlockBarrier, AtWarpVote, Done };

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kSharedLimit = 48 * 1024;  // dynamic shared memory without opt-in

struct Fiber {
  Context ctx;
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
  State state = State::Done;
};

struct Emulator {
  std::mutex launch_mutex;
  uint64_t seed = 0;
  bool capture = false;
  bool dry_run = false;  // count launches, run no thread (cost tables at large sizes)
  int multiprocessors = 4;
  int64_t nms_mask_budget_words = 256;
  cudaError_t error = cudaSuccess;
  std::string message, last_message;
  // The launch being run.
  std::vector<std::unique_ptr<Fiber>> fibers;
  Context scheduler;
  int current = -1, nthreads = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::vector<unsigned> vote_bits, vote_result;
  std::vector<unsigned char> shared;
  bool failed = false;
  bool direct = false;  // running threads as plain calls
  // Counters, for tests that the emulator really switched threads.
  uint64_t launches = 0, blocks = 0, threads = 0, barriers = 0, votes = 0;
};

Emulator& emu() {
  static Emulator e;
  return e;
}

void set_thread_index(int i) {
  threadIdx.x = i % blockDim.x;
  threadIdx.y = (i / blockDim.x) % blockDim.y;
  threadIdx.z = i / (blockDim.x * blockDim.y);
}

void record_error(cudaError_t code, const std::string& what) {
  Emulator& e = emu();
  if (e.error == cudaSuccess) {
    e.error = code;
    e.message = what;
  }
}

// Back to the scheduler; returns when the scheduler resumes this thread.
void yield_to_scheduler() {
  Emulator& e = emu();
  switch_context(&e.fibers[e.current]->ctx, &e.scheduler, &e.scheduler.stack);
  set_thread_index(e.current);
}

// A fiber's function: runs its thread, then hands back for good (it is restarted, not
// resumed, for the next block).
void thread_entry() {
  Emulator& e = emu();
  after_switch(&e.scheduler.stack);
  e.body(e.ctx);
  e.fibers[e.current]->state = State::Done;
  for (;;) yield_to_scheduler();
}

std::string block_name() {
  return "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ")";
}

struct DirectModeBarrier {};

// Runs the current block's threads one after another as plain calls.
void run_block_directly(std::vector<int>& order, std::mt19937_64& rng) {
  Emulator& e = emu();
  if (e.seed != 0) std::shuffle(order.begin(), order.end(), rng);
  for (int i : order) {
    e.current = i;
    set_thread_index(i);
    e.body(e.ctx);
  }
}

// Runs the current block to completion; false when the launch failed.
bool run_block(std::mt19937_64& rng) {
  Emulator& e = emu();
  const int n = e.nthreads;
  for (int i = 0; i < n; ++i) {
    Fiber& f = *e.fibers[i];
    start_context(&f.ctx, f.stack.get(), kStackBytes, thread_entry);
    f.state = State::Ready;
  }
  const int warps = (n + 31) / 32;
  e.vote_bits.assign(warps, 0u);
  e.vote_result.assign(warps, 0u);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  for (;;) {
    if (e.seed != 0) std::shuffle(order.begin(), order.end(), rng);
    for (int i : order) {
      if (e.fibers[i]->state != State::Ready) continue;
      e.current = i;
      set_thread_index(i);
      StackBounds fiber;
      switch_context(&e.scheduler, &e.fibers[i]->ctx, &fiber);
      if (e.failed) return false;
    }
    // Nothing is ready: release complete warp votes first, then the block barrier.
    bool released = false;
    int done = 0, at_barrier = 0, at_vote = 0;
    for (int w = 0; w < warps; ++w) {
      const int lo = 32 * w, hi = std::min(n, lo + 32);
      int voting = 0;
      for (int i = lo; i < hi; ++i) voting += e.fibers[i]->state == State::AtWarpVote;
      if (voting > 0 && voting == hi - lo) {
        e.vote_result[w] = e.vote_bits[w];
        e.vote_bits[w] = 0;
        for (int i = lo; i < hi; ++i) e.fibers[i]->state = State::Ready;
        released = true;
        ++e.votes;
      }
    }
    if (released) continue;
    for (int i = 0; i < n; ++i) {
      const State s = e.fibers[i]->state;
      done += s == State::Done;
      at_barrier += s == State::AtBlockBarrier;
      at_vote += s == State::AtWarpVote;
    }
    if (done == n) return true;
    if (at_vote > 0) {
      record_error(cudaErrorLaunchFailure,
                   block_name() + ": a warp vote (__ballot_sync) was not reached by every lane "
                   "of its warp (" + std::to_string(at_vote) + " threads stuck in a vote)");
      return false;
    }
    if (done > 0) {
      record_error(cudaErrorLaunchFailure,
                   block_name() + ": __syncthreads() reached by " + std::to_string(at_barrier) +
                   " threads while " + std::to_string(done) + " had exited");
      return false;
    }
    for (int i = 0; i < n; ++i) e.fibers[i]->state = State::Ready;
    ++e.barriers;
  }
}

bool valid_config(const Config& c, std::string* why) {
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64) {
    *why = "block (" + std::to_string(c.block.x) + "," + std::to_string(c.block.y) + "," +
           std::to_string(c.block.z) + ") is not a valid block shape";
    return false;
  }
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 2147483647u ||
      c.grid.y > 65535 || c.grid.z > 65535) {
    *why = "grid (" + std::to_string(c.grid.x) + "," + std::to_string(c.grid.y) + "," +
           std::to_string(c.grid.z) + ") is not a valid grid shape";
    return false;
  }
  if (c.shared > kSharedLimit) {
    *why = "dynamic shared memory of " + std::to_string(c.shared) + " bytes exceeds 48 KiB";
    return false;
  }
  return true;
}

}  // namespace

void run(const Config& c, const char* name, bool synchronises, void (*body)(void*),
         void* ctx) {
  Emulator& e = emu();
  std::lock_guard<std::mutex> lock(e.launch_mutex);
  // After a device-side assertion the context is unusable until the error is read: later
  // launches do not run (on a GPU they fail), so nothing reads what the failed one left.
  if (e.error == cudaErrorAssert) return;
  std::string why;
  if (!valid_config(c, &why)) {
    record_error(cudaErrorInvalidConfiguration, "invalid launch: " + why);
    return;
  }
  ++e.launches;
  trace_launch(name, c.grid, c.block, c.shared);
  if (e.dry_run) return;
  gridDim = c.grid;
  blockDim = c.block;
  e.nthreads = static_cast<int>(c.block.x * c.block.y * c.block.z);
  while (static_cast<int>(e.fibers.size()) < e.nthreads) e.fibers.emplace_back(new Fiber);
  e.body = body;
  e.ctx = ctx;
  e.failed = false;
  std::mt19937_64 rng(e.seed * 0x9E3779B97F4A7C15ull + e.launches);
  const uint64_t nblocks = uint64_t(c.grid.x) * c.grid.y * c.grid.z;
  std::vector<uint64_t> blocks(nblocks);
  std::iota(blocks.begin(), blocks.end(), uint64_t{0});
  if (e.seed != 0) std::shuffle(blocks.begin(), blocks.end(), rng);
  e.direct = !synchronises;
  std::vector<int> order(e.nthreads);
  std::iota(order.begin(), order.end(), 0);
  for (uint64_t b : blocks) {
    blockIdx.x = static_cast<unsigned>(b % c.grid.x);
    blockIdx.y = static_cast<unsigned>((b / c.grid.x) % c.grid.y);
    blockIdx.z = static_cast<unsigned>(b / (uint64_t(c.grid.x) * c.grid.y));
    // Shared memory starts as garbage on a GPU: poison it so reads before writes show.
    e.shared.assign(std::max<size_t>(c.shared, 16), 0xA5);
    ++e.blocks;
    e.threads += e.nthreads;
    if (e.direct) {
      try {
        run_block_directly(order, rng);
      } catch (const DirectModeBarrier&) {
        if (!e.failed)
          record_error(cudaErrorLaunchFailure,
                       block_name() + ": a kernel that tools/cuda_emu/build.py found no "
                       "barrier in reached one; it cannot run without fibers");
        break;
      }
    } else if (!run_block(rng)) {
      break;
    }
  }
  e.direct = false;
  e.current = -1;
}

void syncthreads() {
  Emulator& e = emu();
  if (e.current < 0) fail("__syncthreads() called outside a kernel");
  if (e.direct) throw DirectModeBarrier{};
  e.fibers[e.current]->state = State::AtBlockBarrier;
  yield_to_scheduler();
}

unsigned ballot(unsigned mask, bool pred) {
  Emulator& e = emu();
  if (e.direct) throw DirectModeBarrier{};
  const int lane = e.current % 32, warp = e.current / 32;
  if (mask != 0xffffffffu || 32 * warp + 32 > e.nthreads)
    fail("__ballot_sync: the emulator supports full-warp votes over complete warps only");
  if (pred) e.vote_bits[warp] |= 1u << lane;
  e.fibers[e.current]->state = State::AtWarpVote;
  yield_to_scheduler();
  return e.vote_result[warp];
}

void* dynamic_shared() { return emu().shared.data(); }

void fail(const char* what) {
  Emulator& e = emu();
  record_error(cudaErrorLaunchFailure, block_name() + ", thread " + std::to_string(e.current) +
                                           ": " + what);
  e.failed = true;
  if (e.direct) throw DirectModeBarrier{};
  if (e.current >= 0) {
    // Abandon this thread's stack: the launch is over.
    e.fibers[e.current]->state = State::Done;
    yield_to_scheduler();
  }
}

void device_assert(const char* condition, const char* file, int line) {
  Emulator& e = emu();
  std::string where = std::string(file);
  where = where.substr(where.rfind('/') == std::string::npos ? 0 : where.rfind('/') + 1);
  if (e.error != cudaErrorAssert) {
    e.error = cudaErrorAssert;
    e.message = "device-side assert triggered: " + where + ":" + std::to_string(line) +
                ": Assertion `" + condition + "` failed (" + block_name() + ", thread " +
                std::to_string(e.current) + ")";
  }
  e.failed = true;
  if (e.direct) throw DirectModeBarrier{};
  if (e.current >= 0) {
    e.fibers[e.current]->state = State::Done;
    yield_to_scheduler();
  }
}

int multiprocessors() { return emu().multiprocessors; }
int64_t nms_mask_budget_words() { return emu().nms_mask_budget_words; }

cudaError_t take_error() {
  Emulator& e = emu();
  const cudaError_t err = e.error;
  if (err != cudaSuccess) e.last_message = e.message;
  e.error = cudaSuccess;
  e.message.clear();
  return err;
}

const char* error_string(cudaError_t) { return emu().last_message.c_str(); }

bool capturing() { return emu().capture; }

}  // namespace cuda_emu

namespace cuda_emu {
std::string selftest(const std::string& name);  // selftest.cu
void bind_trace(pybind11::module& m);          // trace.cpp
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "segops' CUDA kernels and glue, run on the CPU by an emulator (tools/cuda_emu); "
            "ops live in torch.ops.segops_emu";
  m.def("set_schedule_seed", [](uint64_t s) { cuda_emu::emu().seed = s; },
        "0: blocks and threads run in index order; otherwise shuffled, seeded.");
  m.def("set_capturing", [](bool c) { cuda_emu::emu().capture = c; },
        "Report an active CUDA-graph capture to the glue (it then reads nothing back).");
  m.def("selftest", &cuda_emu::selftest,
        "Runs one of the emulator's self-test kernels (selftest.cu); '' when it behaved.");
  m.def("set_dry_run", [](bool d) { cuda_emu::emu().dry_run = d; },
        "Launches are checked, counted and traced but run no thread (cost tables at large "
        "sizes: outputs are then garbage).");
  m.def("set_multiprocessors", [](int n) { cuda_emu::emu().multiprocessors = n; },
        "What cudaDevAttrMultiProcessorCount reports (4 by default).");
  m.def("set_nms_mask_budget_words", [](int64_t w) { cuda_emu::emu().nms_mask_budget_words = w; },
        "Greedy NMS's mask budget in words (256 here by default; 2**24 on a GPU).");
  cuda_emu::bind_trace(m);
  m.def("stats", [] {
    const auto& e = cuda_emu::emu();
    pybind11::dict d;
    d["launches"] = e.launches;
    d["blocks"] = e.blocks;
    d["threads"] = e.threads;
    d["barriers"] = e.barriers;
    d["votes"] = e.votes;
    return d;
  });
}
