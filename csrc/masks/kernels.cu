// Masks family CUDA kernels (torch-free): one thread per output element. Every value comes
// from csrc/common/masks.h, as on the CPU; where the CPU skips pixels outside a box's
// footprint, these threads compute them and get the same 0.
#include <type_traits>

#include "common/masks.h"
#include "core/half.cuh"
#include "masks/launch.h"

namespace segops {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// The value emitted for an accumulated value v: v rounded to T, or that compared with thr.
template <typename T, typename A>
__device__ __forceinline__ bool binary_of(A v, A thr, bool strict) {
  const A r = static_cast<A>(static_cast<T>(v));
  return strict ? r > thr : r >= thr;
}

template <typename T, typename B>
__global__ void assemble_kernel(const T* protos, const T* coeffs, const B* boxes,
                                AssembleArgs a, T* out) {
  const int64_t total = a.n * a.h * a.w;
  SEGOPS_GRID_STRIDE(e, total) {
    const int64_t x = e % a.w, y = (e / a.w) % a.h, i = e / (a.w * a.h);
    const B* b = boxes + 4 * i;
    const bool inside = crop_range<B>(b[0], b[2], a.w, a.padding).contains(x) &&
                        crop_range<B>(b[1], b[3], a.h, a.padding).contains(y);
    T v = static_cast<T>(0.0f);
    if (inside)
      v = static_cast<T>(sigmoid_(proto_logit<T>(protos + (y * a.w + x) * a.k, 1,
                                                 coeffs + i * a.k, a.k)));
    out[e] = v;
  }
}

template <typename T>
__global__ void upsample_kernel(const T* cropped, AssembleArgs a, int64_t oh, int64_t ow,
                                acc_t<T> thr, bool* out) {
  using A = acc_t<T>;
  const int64_t total = a.n * oh * ow;
  SEGOPS_GRID_STRIDE(e, total) {
    const int64_t x = e % ow, y = (e / ow) % oh, i = e / (ow * oh);
    const LinearTap<A> ty = resize_tap<A>(y, a.h, oh), tx = resize_tap<A>(x, a.w, ow);
    const T* plane = cropped + i * a.h * a.w;
    const T* row0 = plane + ty.i0 * a.w;
    const T* row1 = plane + ty.i1 * a.w;
    const A v = blend<A>(static_cast<A>(row0[tx.i0]), static_cast<A>(row0[tx.i1]),
                         static_cast<A>(row1[tx.i0]), static_cast<A>(row1[tx.i1]), ty, tx);
    out[e] = binary_of<T, A>(v, thr, /*strict=*/true);
  }
}

// The value of pixel (y, x) of mask i pasted into the image, in A: the bilinear blend of
// its two taps per axis over the mask read as 0 outside (blend()'s order, as the CPU).
template <typename T, typename A>
__device__ A paste_value(const T* mask, const A* b, const PasteArgs& a, int64_t y, int64_t x) {
  if (!(is_finite(b[0]) && is_finite(b[1]) && is_finite(b[2]) && is_finite(b[3]))) return A(0);
  LinearTap<A> ty, tx;
  if (a.detectron2) {
    if (!(b[2] > b[0]) || !(b[3] > b[1])) return A(0);
    ty = grid_tap<A>(y, b[1], b[3], a.mh);
    tx = grid_tap<A>(x, b[0], b[2], a.mw);
  } else {
    const A scale = static_cast<A>(static_cast<double>(a.mw + 2) / static_cast<double>(a.mw));
    const PasteBox pb = torchvision_paste_box<A>(b[0], b[1], b[2], b[3], scale);
    if (x < pb.x0 || x > pb.x1 || y < pb.y0 || y > pb.y1) return A(0);
    ty = torchvision_tap<A>(y, pb.y0, pb.h, a.mh);
    tx = torchvision_tap<A>(x, pb.x0, pb.w, a.mw);
  }
  return blend<A>(mask_at<T, A>(mask, a.mh, a.mw, ty.i0, tx.i0),
                  mask_at<T, A>(mask, a.mh, a.mw, ty.i0, tx.i1),
                  mask_at<T, A>(mask, a.mh, a.mw, ty.i1, tx.i0),
                  mask_at<T, A>(mask, a.mh, a.mw, ty.i1, tx.i1), ty, tx);
}

template <typename T, typename A, typename O>
__global__ void paste_kernel(const T* masks, const A* boxes, PasteArgs a, O* out) {
  const int64_t total = a.n * a.height * a.width;
  const A thr = static_cast<A>(a.thr);
  SEGOPS_GRID_STRIDE(e, total) {
    const int64_t x = e % a.width, y = (e / a.width) % a.height, i = e / (a.width * a.height);
    const A v = paste_value<T, A>(masks + i * a.mh * a.mw, boxes + 4 * i, a, y, x);
    if constexpr (std::is_same<O, bool>::value) {
      out[e] = binary_of<T, A>(v, thr, /*strict=*/false);
    } else {
      out[e] = static_cast<T>(v);
    }
  }
}

}  // namespace

cudaError_t assemble_masks(Dtype dtype, const AssembleArgs& a, const void* protos,
                           const void* coeffs, const void* boxes, void* out,
                           cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const unsigned int blocks = blocks_for(a.n * a.h * a.w, kThreads);
    if (a.boxes_double)
      assemble_kernel<T, double><<<blocks, kThreads, 0, stream>>>(
          static_cast<const T*>(protos), static_cast<const T*>(coeffs),
          static_cast<const double*>(boxes), a, static_cast<T*>(out));
    else
      assemble_kernel<T, float><<<blocks, kThreads, 0, stream>>>(
          static_cast<const T*>(protos), static_cast<const T*>(coeffs),
          static_cast<const float*>(boxes), a, static_cast<T*>(out));
  });
}

cudaError_t upsample_masks(Dtype dtype, const AssembleArgs& a, const void* cropped, int64_t oh,
                           int64_t ow, double thr, bool* out, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    upsample_kernel<T><<<blocks_for(a.n * oh * ow, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(cropped), a, oh, ow, static_cast<acc_t<T>>(thr), out);
  });
}

cudaError_t paste_masks(Dtype dtype, const PasteArgs& a, const void* masks, const void* boxes,
                        void* out, cudaStream_t stream) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    const unsigned int blocks = blocks_for(a.n * a.height * a.width, kThreads);
    auto launch = [&](auto geometry) {
      using A = decltype(geometry);
      const T* m = static_cast<const T*>(masks);
      const A* b = static_cast<const A*>(boxes);
      if (a.binary)
        paste_kernel<T, A, bool><<<blocks, kThreads, 0, stream>>>(m, b, a,
                                                                  static_cast<bool*>(out));
      else
        paste_kernel<T, A, T><<<blocks, kThreads, 0, stream>>>(m, b, a, static_cast<T*>(out));
    };
    if (a.geometry_double)
      launch(double{});
    else
      launch(float{});
  });
}

}  // namespace cuda
}  // namespace segops
