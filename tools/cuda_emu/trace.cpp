// The trace of an emulated op call: what the CUDA glue asks of the device and of ATen, for
// the cost checks (tools/cuda_emu/costs.py, tests/tools/test_cuda_costs.py).
//
// Between trace_begin() and trace_end() on the calling thread, in call order:
//  * every dispatched ATen op, with its depth below the traced call (a thread-local
//    RecordFunction callback: the op call itself is depth 1, the glue's own ATen calls are
//    depth 2, what those call internally is deeper), and whether it was asked to move a
//    tensor to the CPU (aten::to / aten::_to_copy with a CPU device: a read-back on a GPU);
//  * every kernel launch (runtime.cpp), with its grid, block and dynamic shared memory;
//  * every host synchronisation the glue makes through the CUDA runtime (shims in
//    include/: cudaStreamSynchronize, cudaDeviceSynchronize, device-to-host copies,
//    c10::cuda::CUDAStream::synchronize);
//  * the bytes allocated and freed on the CPU allocator (the emulator's "device" memory),
//    through the allocator's memory-profiling hook: the peak of what was live, counting
//    only allocations made inside the window.
#include <ATen/record_function.h>
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace cuda_emu {
namespace {

enum Kind { kAten = 0, kLaunch = 1, kSync = 2 };

struct Event {
  Kind kind;
  std::string name, overload, detail;
  int depth;
};

struct Trace {
  bool on = false;
  int depth = 0;
  std::vector<Event> events;
  at::CallbackHandle handle = 0;
  int64_t live = 0, peak = 0, allocated = 0, allocations = 0;
};

Trace& trace() {
  thread_local Trace t;
  return t;
}

class MemoryTracker final : public c10::MemoryReportingInfoBase {
 public:
  void reportMemoryUsage(void* ptr, int64_t bytes, size_t, size_t, c10::Device) override {
    Trace& t = trace();
    if (!t.on) return;
    if (bytes > 0) {
      sizes_[ptr] = bytes;
      t.live += bytes;
      t.allocated += bytes;
      ++t.allocations;
      t.peak = std::max(t.peak, t.live);
    } else if (auto it = sizes_.find(ptr); it != sizes_.end()) {
      t.live -= it->second;
      sizes_.erase(it);
    }
  }
  bool memoryProfilingEnabled() const override { return true; }

 private:
  std::unordered_map<void*, int64_t> sizes_;  // allocations made inside the window
};

bool moves_to_cpu(const at::RecordFunction& fn) {
  const std::string name = fn.name();
  if (name != "aten::to" && name != "aten::_to_copy") return false;
  try {  // some dispatch paths record no inputs (inputs() then throws)
    for (const c10::IValue& v : fn.inputs())
      if (v.isDevice() && v.toDevice().is_cpu()) return true;
  } catch (const c10::Error&) {
  }
  return false;
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  Trace& t = trace();
  if (!t.on) return nullptr;
  ++t.depth;
  t.events.push_back(
      {kAten, fn.name(), fn.overload_name(), moves_to_cpu(fn) ? "to(cpu)" : "", t.depth});
  return nullptr;
}

void on_end(const at::RecordFunction&, at::ObserverContext*) {
  Trace& t = trace();
  if (t.on) --t.depth;
}

std::string dims(const dim3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

pybind11::dict finish() {
  Trace& t = trace();
  pybind11::list events;
  for (const Event& e : t.events) {
    pybind11::dict d;
    d["kind"] = e.kind == kAten ? "aten" : e.kind == kLaunch ? "launch" : "sync";
    d["name"] = e.name;
    d["overload"] = e.overload;
    d["detail"] = e.detail;
    d["depth"] = e.depth;
    events.append(d);
  }
  pybind11::dict out;
  out["events"] = events;
  out["peak_bytes"] = t.peak;
  out["live_bytes"] = t.live;
  out["allocated_bytes"] = t.allocated;
  out["allocations"] = t.allocations;
  return out;
}

}  // namespace

void trace_launch(const char* kernel, const dim3& grid, const dim3& block, size_t shared) {
  Trace& t = trace();
  if (!t.on) return;
  t.events.push_back({kLaunch, kernel, "",
                      "grid " + dims(grid) + " block " + dims(block) + " shared " +
                          std::to_string(shared),
                      t.depth + 1});
}

void trace_sync(const char* what) {
  Trace& t = trace();
  if (t.on) t.events.push_back({kSync, what, "", "", t.depth + 1});
}

void bind_trace(pybind11::module& m) {
  m.def("trace_begin", [] {
    Trace& t = trace();
    TORCH_CHECK(!t.on, "cuda_emu: a trace is already running on this thread");
    t = Trace{};
    t.on = true;
    t.handle = at::addThreadLocalCallback(
        at::RecordFunctionCallback(on_start, on_end)
            .needsInputs(true)
            .scopes({at::RecordScope::FUNCTION}));
    c10::ThreadLocalDebugInfo::_push(c10::DebugInfoKind::PROFILER_STATE,
                                     std::make_shared<MemoryTracker>());
  }, "Starts tracing this thread's ATen calls, kernel launches, syncs and allocations.");
  m.def("trace_end", [] {
    Trace& t = trace();
    TORCH_CHECK(t.on, "cuda_emu: no trace is running on this thread");
    c10::ThreadLocalDebugInfo::_pop(c10::DebugInfoKind::PROFILER_STATE);
    at::removeCallback(t.handle);
    t.on = false;
    pybind11::dict out = finish();
    t.events.clear();
    return out;
  }, "Ends the trace: {events: [{kind, name, overload, detail, depth}], peak_bytes, "
     "live_bytes, allocated_bytes, allocations}.");
}

}  // namespace cuda_emu
