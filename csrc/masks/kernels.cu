// Masks family CUDA kernels (torch-free). Every value comes from csrc/common/masks.h, as on
// the CPU, and every pixel outside a mask's footprint gets the value 0 maps to without
// being evaluated, as on the CPU (docs/cost_model/masks.md has the cost model).
//
//  * assemble: a block stages the protos of 256 consecutive pixels in shared memory
//    (coalesced, transposed to [k][pixel]) and computes 16 masks' logits from them, each
//    pixel summing k = 0..K-1 in order;
//  * upsample / paste: a block writes 16 output rows of one mask. The mask's footprint is
//    computed once per block; each thread owns 4 consecutive columns, computes their taps
//    once and reuses them for the 16 rows, and writes the 4 outputs with one 4-byte store
//    (bool outputs whose rows are 4-byte aligned). Rows and columns outside the footprint
//    are filled with the background value without any arithmetic.
#include <type_traits>

#include "common/masks.h"
#include "core/half.cuh"
#include "masks/launch.h"

namespace segops {
namespace cuda {
namespace {

// ---- assemble ----

constexpr int kTile = 256;          // pixels per block (threads)
constexpr int kMasksPerBlock = 16;  // logits per thread, in registers

// Channels staged at once: 32 floats or 16 doubles per pixel (33 KiB of shared memory).
template <typename A>
struct StageChannels {
  static constexpr int value = sizeof(A) == 8 ? 16 : 32;
};

template <typename T, typename B>
__global__ void __launch_bounds__(kTile)
    assemble_kernel(const T* protos, const T* coeffs, const B* boxes, AssembleArgs a, T* out) {
  using A = acc_t<T>;
  constexpr int KC = StageChannels<A>::value;
  __shared__ A tile[KC][kTile + 1];  // +1: the transposing writes hit 32 banks
  __shared__ A coef[kMasksPerBlock][KC];
  __shared__ int64_t crop[kMasksPerBlock][4];  // x begin, x end, y begin, y end
  const int64_t plane = a.h * a.w;
  const int64_t groups = (a.n + kMasksPerBlock - 1) / kMasksPerBlock;
  const int t = threadIdx.x;
  const int64_t p0 = int64_t(blockIdx.x) * kTile, p = p0 + t;
  const int64_t y = p / a.w, x = p % a.w;
  for (int64_t grp = blockIdx.y; grp < groups; grp += gridDim.y) {
    const int64_t n0 = grp * kMasksPerBlock;
    const int nm = static_cast<int>(min_<int64_t>(kMasksPerBlock, a.n - n0));
    __syncthreads();  // the previous group is done with crop
    if (t < nm) {
      const B* b = boxes + 4 * (n0 + t);
      const IndexRange rx = crop_range<B>(b[0], b[2], a.w, a.padding);
      const IndexRange ry = crop_range<B>(b[1], b[3], a.h, a.padding);
      crop[t][0] = rx.begin;
      crop[t][1] = rx.end;
      crop[t][2] = ry.begin;
      crop[t][3] = ry.end;
    }
    A z[kMasksPerBlock];
#pragma unroll
    for (int m = 0; m < kMasksPerBlock; ++m) z[m] = A(0);
    for (int64_t k0 = 0; k0 < a.k; k0 += KC) {
      const int kc = static_cast<int>(min_<int64_t>(KC, a.k - k0));
      __syncthreads();  // the previous chunk is consumed
      // Pixel q's channels k0 .. k0 + kc are contiguous: runs of kc elements.
      for (int j = t; j < kTile * kc; j += kTile) {
        const int q = j / kc, c = j % kc;
        tile[c][q] = p0 + q < plane ? static_cast<A>(protos[(p0 + q) * a.k + k0 + c]) : A(0);
      }
      for (int j = t; j < kMasksPerBlock * kc; j += kTile) {
        const int m = j / kc, c = j % kc;
        coef[m][c] = m < nm ? static_cast<A>(coeffs[(n0 + m) * a.k + k0 + c]) : A(0);
      }
      __syncthreads();
      for (int c = 0; c < kc; ++c) {
        const A v = tile[c][t];
#pragma unroll
        for (int m = 0; m < kMasksPerBlock; ++m) z[m] += v * coef[m][c];
      }
    }
    if (p < plane) {
#pragma unroll
      for (int m = 0; m < kMasksPerBlock; ++m) {
        if (m >= nm) break;
        const bool inside = crop[m][0] <= x && x < crop[m][1] && crop[m][2] <= y && y < crop[m][3];
        out[(n0 + m) * plane + p] = inside ? static_cast<T>(sigmoid_(z[m])) : static_cast<T>(0.0f);
      }
    }
  }
}

// ---- row kernels: upsample and paste ----

constexpr int kRowThreads = 256;
constexpr int kRows = 16;  // output rows per block
constexpr int kCols = 4;   // consecutive output columns per thread

// Writes a thread's kCols outputs starting at column x0 of a row of `width` elements:
// one 4-byte store for bool rows that allow it, element stores otherwise.
template <typename O>
__device__ __forceinline__ void store_cols(O* row, int64_t x0, int64_t width, bool vec,
                                           const O (&v)[kCols]) {
  if constexpr (std::is_same<O, bool>::value) {
    if (vec) {  // width % 4 == 0 and a 4-byte aligned plane: x0 + 4 <= width
      *reinterpret_cast<uint32_t*>(row + x0) = uint32_t(v[0]) | uint32_t(v[1]) << 8 |
                                               uint32_t(v[2]) << 16 | uint32_t(v[3]) << 24;
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < kCols; ++j)
    if (x0 + j < width) row[x0 + j] = v[j];
}

constexpr int kChunk = kRowThreads * kCols;  // columns per pass of a block

// The column taps of one pass in shared memory, structure of arrays, column c0 + kCols * t
// + j at [j * kRowThreads + t]: the lanes of a warp read consecutive words.
template <typename A>
struct ColumnTaps {
  int64_t i0[kChunk], i1[kChunk];
  A l0[kChunk], l1[kChunk];
};

// Runs one block's rows [r0, r0 + kRows) of one output plane [oh, ow]: `rows` x `cols` is
// the footprint (both empty, or both non-empty), ty(y) / tx(x) the taps, at(i, j) the
// source (0 outside), and emit(v) the output of a blended value; every other pixel gets bg.
// The column taps of a pass are computed once (one column per thread and kCols) and read
// by all kRows rows.
template <typename A, typename O, typename TapY, typename TapX, typename At, typename Emit>
__device__ void render_rows(O* plane, int64_t oh, int64_t ow, int64_t r0, IndexRange rows,
                            IndexRange cols, TapY ty, TapX tx, At at, Emit emit, O bg, bool vec,
                            LinearTap<A>* sty, ColumnTaps<A>& ct) {
  const int64_t r1 = min_<int64_t>(r0 + kRows, oh);
  const int t = threadIdx.x;
  if (t < r1 - r0 && rows.contains(r0 + t)) sty[t] = ty(r0 + t);
  const bool rows_hit = rows.begin < r1 && r0 < rows.end;
  O bgv[kCols];
#pragma unroll
  for (int j = 0; j < kCols; ++j) bgv[j] = bg;
  for (int64_t c0 = 0; c0 < ow; c0 += kChunk) {
    const int64_t x0 = c0 + int64_t(t) * kCols;
    const bool hit = rows_hit && cols.begin < c0 + kChunk && c0 < cols.end;  // block-uniform
    bool mine = false;  // some of this thread's columns are in the footprint
    if (hit) {
      __syncthreads();  // the previous pass's taps are consumed (and sty is written)
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        if (!cols.contains(x0 + j)) continue;
        const LinearTap<A> c = tx(x0 + j);
        const int k = j * kRowThreads + t;
        ct.i0[k] = c.i0;
        ct.i1[k] = c.i1;
        ct.l0[k] = c.l0;
        ct.l1[k] = c.l1;
        mine = true;
      }
      __syncthreads();
    }
    if (x0 >= ow) continue;
    for (int64_t y = r0; y < r1; ++y) {
      O* row = plane + y * ow;
      if (!mine || !rows.contains(y)) {
        store_cols(row, x0, ow, vec, bgv);
        continue;
      }
      const LinearTap<A> yt = sty[y - r0];
      O v[kCols];
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        v[j] = bg;
        if (!cols.contains(x0 + j)) continue;
        const int k = j * kRowThreads + t;
        const LinearTap<A> c{ct.i0[k], ct.i1[k], ct.l0[k], ct.l1[k]};
        v[j] = emit(blend<A>(at(yt.i0, c.i0), at(yt.i0, c.i1), at(yt.i1, c.i0),
                             at(yt.i1, c.i1), yt, c));
      }
      store_cols(row, x0, ow, vec, v);
    }
  }
}

// The value emitted for an accumulated value v: v rounded to T, compared with thr.
template <typename T, typename A>
__device__ __forceinline__ bool binary_of(A v, A thr, bool strict) {
  const A r = static_cast<A>(static_cast<T>(v));
  return strict ? r > thr : r >= thr;
}

template <typename T, typename B>
// No __launch_bounds__: under it ptxas spilled registers; launched with kRowThreads.
__global__ void
    upsample_kernel(const T* cropped, const B* boxes, AssembleArgs a, int64_t oh, int64_t ow,
                    acc_t<T> thr, bool vec, bool* out) {
  using A = acc_t<T>;
  __shared__ LinearTap<A> sty[kRows];
  __shared__ ColumnTaps<A> ct;
  __shared__ int64_t fp[4];  // the mask's footprint: rows, cols
  const int64_t groups = (oh + kRows - 1) / kRows, total = a.n * groups;
  const bool bg = binary_of<T, A>(A(0), thr, /*strict=*/true);
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t i = blk / groups, r0 = (blk % groups) * kRows;
    __syncthreads();  // the previous block's fp and sty are consumed
    if (threadIdx.x < 2) {  // rows (thread 0) and columns (thread 1): two binary searches
      const B* b = boxes + 4 * i;
      const bool ax = threadIdx.x == 1;
      const IndexRange r = crop_range<B>(ax ? b[0] : b[1], ax ? b[2] : b[3], ax ? a.w : a.h,
                                         a.padding);
      const IndexRange o = resize_reach<A>(r, ax ? a.w : a.h, ax ? ow : oh);
      fp[2 * threadIdx.x] = o.begin;
      fp[2 * threadIdx.x + 1] = o.end;
    }
    __syncthreads();
    IndexRange rows{fp[0], fp[1]}, cols{fp[2], fp[3]};
    if (rows.begin >= rows.end || cols.begin >= cols.end) rows = cols = {0, 0};
    const T* src = cropped + i * a.h * a.w;
    const int64_t w = a.w;
    render_rows<A, bool>(
        out + i * oh * ow, oh, ow, r0, rows, cols,
        [&](int64_t y) { return resize_tap<A>(y, a.h, oh); },
        [&](int64_t x) { return resize_tap<A>(x, a.w, ow); },
        [&](int64_t r, int64_t c) { return static_cast<A>(src[r * w + c]); },
        [&](A v) { return binary_of<T, A>(v, thr, /*strict=*/true); }, bg, vec, sty, ct);
  }
}

template <typename T, typename A, typename O>
__global__ void __launch_bounds__(kRowThreads)
    paste_kernel(const T* masks, const A* boxes, PasteArgs a, bool vec, O* out) {
  __shared__ LinearTap<A> sty[kRows];
  __shared__ ColumnTaps<A> ct;
  __shared__ PasteGeometry<A> geo;
  const int64_t groups = (a.height + kRows - 1) / kRows, total = a.n * groups;
  const A thr = static_cast<A>(a.thr);
  const auto emit = [&](A v) -> O {
    if constexpr (std::is_same<O, bool>::value) {
      return binary_of<T, A>(v, thr, /*strict=*/false);
    } else {
      return static_cast<O>(v);
    }
  };
  const O bg = emit(A(0));
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t i = blk / groups, r0 = (blk % groups) * kRows;
    __syncthreads();
    if (threadIdx.x == 0)
      geo = paste_geometry<A>(boxes + 4 * i, a.detectron2, a.mh, a.mw, a.height, a.width);
    __syncthreads();
    const PasteGeometry<A>& g = geo;
    const IndexRange rows = g.empty() ? IndexRange{0, 0} : g.y.reach;
    const IndexRange cols = g.empty() ? IndexRange{0, 0} : g.x.reach;
    const T* m = masks + i * a.mh * a.mw;
    const int64_t mh = a.mh, mw = a.mw;
    render_rows<A, O>(
        out + i * a.height * a.width, a.height, a.width, r0, rows, cols,
        [&](int64_t y) { return g.y.tap(y); }, [&](int64_t x) { return g.x.tap(x); },
        [&](int64_t r, int64_t c) { return mask_at<T, A>(m, mh, mw, r, c); }, emit, bg, vec,
        sty, ct);
  }
}

// Row blocks for n planes of oh rows (grid-strided beyond the cap).
unsigned int row_blocks(int64_t n, int64_t oh) {
  const int64_t b = n * ((oh + kRows - 1) / kRows);
  return static_cast<unsigned int>(b < 1 ? 1 : (b > (1 << 30) ? (1 << 30) : b));
}

// 4-byte stores of 4 bool columns: rows of a multiple of 4 bytes in a 4-byte aligned buffer.
bool vector_rows(const void* out, int64_t width) {
  return width % kCols == 0 && reinterpret_cast<uintptr_t>(out) % kCols == 0;
}

}  // namespace

cudaError_t assemble_masks(Dtype dtype, const AssembleArgs& a, const void* protos,
                           const void* coeffs, const void* boxes, void* out,
                           cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t tiles = (a.h * a.w + kTile - 1) / kTile;
    const int64_t groups = (a.n + kMasksPerBlock - 1) / kMasksPerBlock;
    const dim3 grid(static_cast<unsigned int>(tiles),
                    static_cast<unsigned int>(groups < 65535 ? groups : 65535));
    if (a.boxes_double)
      assemble_kernel<T, double><<<grid, kTile, 0, stream>>>(
          static_cast<const T*>(protos), static_cast<const T*>(coeffs),
          static_cast<const double*>(boxes), a, static_cast<T*>(out));
    else
      assemble_kernel<T, float><<<grid, kTile, 0, stream>>>(
          static_cast<const T*>(protos), static_cast<const T*>(coeffs),
          static_cast<const float*>(boxes), a, static_cast<T*>(out));
  });
}

cudaError_t upsample_masks(Dtype dtype, const AssembleArgs& a, const void* cropped,
                           const void* boxes, int64_t oh, int64_t ow, double thr, bool* out,
                           cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = vector_rows(out, ow);
    if (a.boxes_double)
      upsample_kernel<T, double><<<row_blocks(a.n, oh), kRowThreads, 0, stream>>>(
          static_cast<const T*>(cropped), static_cast<const double*>(boxes), a, oh, ow,
          static_cast<acc_t<T>>(thr), vec, out);
    else
      upsample_kernel<T, float><<<row_blocks(a.n, oh), kRowThreads, 0, stream>>>(
          static_cast<const T*>(cropped), static_cast<const float*>(boxes), a, oh, ow,
          static_cast<acc_t<T>>(thr), vec, out);
  });
}

cudaError_t paste_masks(Dtype dtype, const PasteArgs& a, const void* masks, const void* boxes,
                        void* out, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const unsigned int blocks = row_blocks(a.n, a.height);
    const bool vec = a.binary && vector_rows(out, a.width);
    auto launch = [&](auto geometry) {
      using A = decltype(geometry);
      const T* m = static_cast<const T*>(masks);
      const A* b = static_cast<const A*>(boxes);
      if (a.binary)
        paste_kernel<T, A, bool><<<blocks, kRowThreads, 0, stream>>>(m, b, a, vec,
                                                                     static_cast<bool*>(out));
      else
        paste_kernel<T, A, T><<<blocks, kRowThreads, 0, stream>>>(m, b, a, false,
                                                                  static_cast<T*>(out));
    };
    if (a.geometry_double)
      launch(double{});
    else
      launch(float{});
  });
}

}  // namespace cuda
}  // namespace segops
