// Self-test kernels for the CUDA emulator (tools/cuda_emu): written as CUDA, translated by
// build.py like the kernels in csrc/<family>/, run through cuda_emu.selftest(name) from tests/test_cuda_emu.py.
// Each case returns "" when the emulator behaved as a GPU would, else what went wrong.
#include <cuda_runtime_api.h>

#include <string>
#include <vector>

namespace {

__global__ void reverse_kernel(int* out) {
  __shared__ int s[256];
  const int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  out[t] = s[blockDim.x - 1 - t];
}

__global__ void ballot_kernel(unsigned* out) {
  out[threadIdx.x] = __ballot_sync(0xffffffffu, threadIdx.x % 3 == 0);
}

__global__ void exited_kernel() {
  if (threadIdx.x >= 16) return;
  __syncthreads();
}

__global__ void index_kernel(int* out) {
  const int t = (blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x * blockDim.y +
                threadIdx.y * blockDim.x + threadIdx.x;
  out[t] = t;
}

__global__ void dynamic_shared_kernel(unsigned char* out) {
  extern __shared__ unsigned char scratch[];
  out[threadIdx.x] = scratch[threadIdx.x];
}

std::string expect_error(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return std::string("no error; expected: ") + what;
  const std::string message = cudaGetErrorString(e);
  return message.find(what) == std::string::npos ? "wrong error: " + message : "";
}

std::string expect_success() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? "" : std::string("launch failed: ") + cudaGetErrorString(e);
}

}  // namespace

namespace cuda_emu {

std::string selftest(const std::string& name) {
  if (name == "barrier") {  // every thread sees the others' writes after __syncthreads
    std::vector<int> out(256, -1);
    reverse_kernel<<<1, 256>>>(out.data());
    for (int t = 0; t < 256; ++t)
      if (out[t] != 255 - t) return "thread " + std::to_string(t) + " read " + std::to_string(out[t]);
    return expect_success();
  }
  if (name == "ballot") {  // a vote sees every lane of its warp
    std::vector<unsigned> out(64, 0);
    ballot_kernel<<<1, 64>>>(out.data());
    unsigned low = 0, high = 0;  // warp 0: threads 0..31, warp 1: threads 32..63
    for (int lane = 0; lane < 32; ++lane) {
      low |= unsigned(lane % 3 == 0) << lane;
      high |= unsigned((32 + lane) % 3 == 0) << lane;
    }
    for (int t = 0; t < 64; ++t)
      if (out[t] != (t < 32 ? low : high)) return "lane " + std::to_string(t) + " voted wrong";
    return expect_success();
  }
  if (name == "indices") {  // blockIdx / threadIdx over a 2-D grid of 2-D blocks
    std::vector<int> out(3 * 2 * 8 * 4, -1);
    index_kernel<<<dim3(3, 2), dim3(8, 4)>>>(out.data());
    for (int t = 0; t < static_cast<int>(out.size()); ++t)
      if (out[t] != t) return "element " + std::to_string(t) + " is " + std::to_string(out[t]);
    return expect_success();
  }
  if (name == "poisoned_shared") {  // dynamic shared memory starts as garbage, not zeros
    std::vector<unsigned char> out(32, 0);
    dynamic_shared_kernel<<<1, 32, 32>>>(out.data());
    for (unsigned char v : out)
      if (v != 0xA5) return "dynamic shared memory was not poisoned";
    return expect_success();
  }
  if (name == "exited_barrier") {  // undefined behaviour on a GPU: must fail here
    exited_kernel<<<1, 32>>>();
    return expect_error("had exited");
  }
  if (name == "partial_warp_vote") {
    std::vector<unsigned> out(48, 0);
    ballot_kernel<<<1, 48>>>(out.data());
    return expect_error("full-warp votes");
  }
  if (name == "block_too_large") {
    std::vector<int> out(2048, 0);
    reverse_kernel<<<1, 2048>>>(out.data());
    return expect_error("not a valid block shape");
  }
  if (name == "grid_too_large") {
    index_kernel<<<dim3(1, 70000), 32>>>(nullptr);
    return expect_error("not a valid grid shape");
  }
  return "unknown self-test " + name;
}

}  // namespace cuda_emu
