// Suppression family on the CPU: nms / batched_nms (greedy, per class in parallel),
// fast_nms (YOLACT, per class in parallel) and matrix_nms (SOLOv2, bit-packed masks).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

#include "common/box_iou.h"
#include "nms/checks.h"

namespace segops {
namespace {

// Scores are compared as doubles (exact for every float dtype).
std::vector<double> as_doubles(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.const_data_ptr<double>(), d.const_data_ptr<double>() + d.numel());
}

template <typename G>
std::vector<Box<G>> load_boxes(const at::Tensor& boxes) {
  const at::Tensor b = boxes.to(c10::CppTypeToScalarType<G>::value).contiguous();
  const G* p = b.const_data_ptr<G>();
  std::vector<Box<G>> out(b.size(0));
  for (int64_t i = 0; i < b.size(0); ++i) out[i] = load_box<G>(p + 4 * i);
  return out;
}

// Greedy NMS over boxes in rank order: keep[i] = 1 for the kept ones. The candidates
// still alive are kept compacted in rank order, so each kept box only visits the boxes that
// survived every earlier one. IoU (in G) is compared with the threshold in double, as
// torchvision's kernels do.
template <typename G>
void greedy_nms(const Box<G>* b, int64_t n, double threshold, char* keep) {
  std::vector<G> area(n);
  for (int64_t i = 0; i < n; ++i) area[i] = box_area(b[i]);
  std::vector<int64_t> alive(n);
  std::iota(alive.begin(), alive.end(), int64_t(0));
  for (size_t head = 0; head < alive.size(); ++head) {
    const int64_t i = alive[head];
    keep[i] = 1;
    size_t out = head + 1;
    for (size_t r = head + 1; r < alive.size(); ++r) {
      const int64_t j = alive[r];
      if (!(static_cast<double>(box_iou(b[i], area[i], b[j], area[j])) > threshold))
        alive[out++] = j;
    }
    alive.resize(out);
  }
}

template <typename G>
int64_t batched_nms_impl(const at::Tensor& boxes, const std::vector<double>& score,
                         const std::vector<int64_t>& cls, double threshold, int64_t* out,
                         int64_t capacity) {
  const int64_t N = boxes.size(0);
  const std::vector<Box<G>> box = load_boxes<G>(boxes);
  // Present boxes, by class, then score descending, then index.
  std::vector<int64_t> order;
  for (int64_t i = 0; i < N; ++i)
    if (box_finite(box[i]) && score[i] == score[i]) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return cls[a] != cls[b] ? cls[a] < cls[b] : score[a] > score[b];
  });
  std::vector<int64_t> seg_begin;
  for (size_t p = 0; p < order.size(); ++p)
    if (p == 0 || cls[order[p]] != cls[order[p - 1]]) seg_begin.push_back(p);
  seg_begin.push_back(order.size());
  std::vector<Box<G>> sorted(order.size());
  for (size_t p = 0; p < order.size(); ++p) sorted[p] = box[order[p]];
  std::vector<char> keep(order.size(), 0);
  at::parallel_for(0, seg_begin.size() - 1, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s)
      greedy_nms(sorted.data() + seg_begin[s], seg_begin[s + 1] - seg_begin[s],
                 threshold, keep.data() + seg_begin[s]);
  });
  std::vector<int64_t> kept;
  for (size_t p = 0; p < order.size(); ++p)
    if (keep[p]) kept.push_back(order[p]);
  std::sort(kept.begin(), kept.end());
  std::stable_sort(kept.begin(), kept.end(),
                   [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  const int64_t count = std::min<int64_t>(kept.size(), capacity);
  std::copy(kept.begin(), kept.begin() + count, out);
  return count;
}

std::tuple<at::Tensor, at::Tensor> batched_nms_cpu(const at::Tensor& boxes,
                                                   const at::Tensor& scores,
                                                   const c10::optional<at::Tensor>& idxs,
                                                   double iou_threshold, int64_t max_out,
                                                   const char* op) {
  check_nms_inputs(op, boxes, scores, idxs, iou_threshold, max_out);
  const int64_t N = boxes.size(0);
  const int64_t capacity = max_out < 0 ? N : max_out;
  at::Tensor keep = at::full({capacity}, -1, boxes.options().dtype(at::kLong));
  at::Tensor count = at::zeros({}, boxes.options().dtype(at::kLong));
  if (N == 0 || capacity == 0) return {keep, count};
  const std::vector<double> score = as_doubles(scores);
  std::vector<int64_t> cls(N, 0);
  if (idxs.has_value()) {
    const at::Tensor c = idxs->to(at::kLong).contiguous();
    std::copy(c.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>() + N, cls.begin());
  }
  int64_t* out = keep.mutable_data_ptr<int64_t>();
  const int64_t n = boxes.scalar_type() == at::kDouble
                        ? batched_nms_impl<double>(boxes, score, cls, iou_threshold, out, capacity)
                        : batched_nms_impl<float>(boxes, score, cls, iou_threshold, out, capacity);
  count.fill_(n);
  return {keep, count};
}

std::tuple<at::Tensor, at::Tensor> nms_op_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                              double iou_threshold, int64_t max_out) {
  return batched_nms_cpu(boxes, scores, c10::nullopt, iou_threshold, max_out, "nms");
}

std::tuple<at::Tensor, at::Tensor> batched_nms_op_cpu(const at::Tensor& boxes,
                                                      const at::Tensor& scores,
                                                      const at::Tensor& idxs,
                                                      double iou_threshold, int64_t max_out) {
  return batched_nms_cpu(boxes, scores, idxs, iou_threshold, max_out, "batched_nms");
}

// ---------------------------------------------------------------- fast_nms

struct Detection {
  double score;
  int64_t cls, rank, anchor;
};

// Fast NMS over one class's ranked candidates: appends the kept ones to `out`.
// The first `d` prefiltered anchors (pre[n] != 0, listed in `anchors`) by (score descending,
// index ascending) --
// a stable sort's prefix -- as (score, anchor) pairs in that order. A buffer is cut back to
// its best d whenever it holds 2d; from then on only scores above the d-th best can enter
// (anchors come in index order, so an equal score loses its tie), and blocks with none are
// skipped by a vectorised test. O(n).
template <typename V>
std::vector<std::pair<double, int64_t>> top_d(const V* v, const uint8_t* pre,
                                              const std::vector<int64_t>& anchors, int64_t n,
                                              int64_t d) {
  using Entry = std::pair<double, int64_t>;
  auto better = [](const Entry& a, const Entry& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  std::vector<Entry> buf;
  if (d <= 0) return buf;
  buf.reserve(2 * d);
  const auto full = [&] { return static_cast<int64_t>(buf.size()) >= 2 * d; };
  // The first 2d prefiltered anchors come from their list. The rest: through the list when
  // it is sparse, else along the row, skipping blocks with nothing above the cut.
  const int64_t count = anchors.size();
  const int64_t first = std::min<int64_t>(2 * d, count);
  for (int64_t a = 0; a < first; ++a)
    buf.emplace_back(static_cast<double>(v[anchors[a]]), anchors[a]);
  V cut{};
  auto cut_back = [&] {
    std::nth_element(buf.begin(), buf.begin() + (d - 1), buf.end(), better);
    buf.resize(d);
    cut = static_cast<V>(buf[d - 1].first);  // exact: it is one of the values
  };
  if (2 * count < n) {
    for (int64_t a = first; a < count; ++a) {
      if (full()) cut_back();
      const int64_t k = anchors[a];
      if (v[k] > cut) buf.emplace_back(static_cast<double>(v[k]), k);
    }
  } else {
    constexpr int64_t kBlock = 32;
    int64_t k = first < count ? anchors[first] : n;
    while (k < n) {
      cut_back();
      while (k < n && !full()) {
        const int64_t e = std::min(n, k + kBlock);
        uint32_t any = 0;
        for (int64_t i = k; i < e; ++i) any |= pre[i] & static_cast<uint32_t>(v[i] > cut);
        if (!any) {
          k = e;
          continue;
        }
        for (; k < e && !full(); ++k)
          if (pre[k] && v[k] > cut) buf.emplace_back(static_cast<double>(v[k]), k);
      }
    }
  }
  if (static_cast<int64_t>(buf.size()) > d) {
    std::nth_element(buf.begin(), buf.begin() + (d - 1), buf.end(), better);
    buf.resize(d);
  }
  std::sort(buf.begin(), buf.end(), better);
  return buf;
}

// Whether ranked candidate j of a class is kept. x86-64 builds also get an AVX2 clone,
// picked at load time where the CPU has it (AVX2 without FMA: the same IEEE operations,
// twice the lanes).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SEGOPS_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define SEGOPS_AVX2_CLONE
#endif
SEGOPS_AVX2_CLONE bool fast_nms_keep_one(const BoxColumns<float>& b, int64_t j, float t) {
  return fast_nms_keep(b, j, t);
}
SEGOPS_AVX2_CLONE bool fast_nms_keep_one(const BoxColumns<double>& b, int64_t j, double t) {
  return fast_nms_keep(b, j, t);
}

// One class's candidates in rank order, (score, anchor), with their boxes as columns.
template <typename G>
struct RankedClass {
  std::vector<std::pair<double, int64_t>> cand;
  std::vector<G> cols;

  RankedClass() = default;
  RankedClass(const std::vector<Box<G>>& box, std::vector<std::pair<double, int64_t>> ranked)
      : cand(std::move(ranked)), cols(5 * cand.size()) {
    const int64_t d = cand.size();
    for (int64_t r = 0; r < d; ++r) {
      const Box<G>& b = box[cand[r].second];
      cols[r] = b.x1, cols[d + r] = b.y1, cols[2 * d + r] = b.x2, cols[3 * d + r] = b.y2;
      cols[4 * d + r] = box_area(b);
    }
  }
  bool keep(int64_t r, G threshold) const {
    const int64_t d = cand.size();
    const G* c = cols.data();
    return fast_nms_keep_one(BoxColumns<G>{c, c + d, c + 2 * d, c + 3 * d, c + 4 * d}, r,
                             threshold);
  }
};

// Scores are read in their own dtype (S) and compared as doubles, which is exact. Returns at
// most `capacity` detections, in output order.
template <typename G, typename S>
std::vector<Detection> fast_nms_impl(const at::Tensor& boxes, const S* s, int64_t C, int64_t N,
                                     double iou_threshold, int64_t top_k, double score_threshold,
                                     bool cross_class, bool second_threshold, int64_t capacity) {
  const std::vector<Box<G>> box = load_boxes<G>(boxes);
  // Prefilter: finite boxes whose max class score (NaN-propagating, as torch.max; ties to
  // the first class) passes. Branch-free over rows in memory order, so that it vectorises.
  using A = acc_t<S>;
  std::vector<A> best(N);
  std::vector<int32_t> best_cls(N, 0);
  at::parallel_for(0, N, 4096, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) best[n] = static_cast<A>(s[n]);
    for (int64_t c = 1; c < C; ++c) {
      const S* row = s + c * N;
      for (int64_t n = n0; n < n1; ++n) {
        const A v = static_cast<A>(row[n]), b = best[n];
        const bool take = b == b && (v > b || v != v);
        best[n] = take ? v : b;
        best_cls[n] = take ? static_cast<int32_t>(c) : best_cls[n];
      }
    }
  });
  std::vector<uint8_t> pre(N);
  std::vector<int64_t> anchors;
  for (int64_t n = 0; n < N; ++n) {
    pre[n] = best[n] > score_threshold && box_finite(box[n]);
    if (pre[n]) anchors.push_back(n);
  }
  const int64_t d = std::min<int64_t>(top_k, anchors.size());
  const G threshold = static_cast<G>(iou_threshold);
  auto passes = [&](double score) { return !second_threshold || score > score_threshold; };
  std::vector<Detection> kept;
  if (cross_class) {  // output in rank order, class = argmax
    const RankedClass<G> rc(box, top_d(best.data(), pre.data(), anchors, N, d));
    for (int64_t r = 0; r < d && static_cast<int64_t>(kept.size()) < capacity; ++r) {
      const auto& [score, anchor] = rc.cand[r];
      if (passes(score) && rc.keep(r, threshold))
        kept.push_back({score, best_cls[anchor], r, anchor});
    }
    return kept;
  }
  std::vector<RankedClass<G>> ranked(C);
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      ranked[c] = RankedClass<G>(box, top_d(s + c * N, pre.data(), anchors, N, d));
  });
  // Every candidate in output order: by score, then class, then rank -- a stable descending
  // sort of the class-major list. Keep flags are decided lazily in that order until
  // `capacity` are kept: a candidate's flag depends only on the higher-ranked candidates of
  // its class, kept or not, so the rest never need deciding.
  struct Ref {
    double score;
    int64_t cls, rank;
  };
  std::vector<Ref> all;
  all.reserve(C * d);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t r = 0; r < d; ++r) all.push_back({ranked[c].cand[r].first, c, r});
  auto before = [](const Ref& a, const Ref& b) {
    if (a.score != b.score) return a.score > b.score;
    return a.cls != b.cls ? a.cls < b.cls : a.rank < b.rank;
  };
  for (size_t done = 0; done < all.size() && static_cast<int64_t>(kept.size()) < capacity;) {
    const size_t next = std::min(all.size(), done + 2 * static_cast<size_t>(capacity) + 64);
    std::nth_element(all.begin() + done, all.begin() + next, all.end(), before);
    std::sort(all.begin() + done, all.begin() + next, before);
    for (; done < next && static_cast<int64_t>(kept.size()) < capacity; ++done) {
      const Ref& e = all[done];
      if (passes(e.score) && ranked[e.cls].keep(e.rank, threshold))
        kept.push_back({e.score, e.cls, e.rank, ranked[e.cls].cand[e.rank].second});
    }
  }
  return kept;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fast_nms_cpu(
    const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t top_k,
    double score_threshold, int64_t max_detections, bool cross_class, bool second_threshold) {
  check_fast_nms_inputs(boxes, scores, iou_threshold, top_k, score_threshold, max_detections);
  // As YOLACT's tensor comparisons: IoU against a float32 (float64) threshold, scores
  // against a threshold of the scores' dtype.
  iou_threshold = as_dtype(iou_threshold, compute_dtype(boxes.scalar_type()));
  score_threshold = as_dtype(score_threshold, scores.scalar_type());
  const int64_t capacity = cross_class ? top_k : max_detections;
  const auto longs = boxes.options().dtype(at::kLong);
  at::Tensor indices = at::full({capacity}, -1, longs);
  at::Tensor classes = at::full({capacity}, -1, longs);
  at::Tensor out_scores = at::zeros({capacity}, scores.options().dtype(at::kDouble));
  at::Tensor count = at::zeros({}, longs);
  if (scores.numel() > 0 && capacity > 0) {
    const at::Tensor sc_in = scores.contiguous();
    std::vector<Detection> kept;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sc_in.scalar_type(), "fast_nms", [&] {
      const scalar_t* s = sc_in.const_data_ptr<scalar_t>();
      const int64_t C = sc_in.size(0), N = sc_in.size(1);
      kept = boxes.scalar_type() == at::kDouble
                 ? fast_nms_impl<double>(boxes, s, C, N, iou_threshold, top_k, score_threshold,
                                         cross_class, second_threshold, capacity)
                 : fast_nms_impl<float>(boxes, s, C, N, iou_threshold, top_k, score_threshold,
                                        cross_class, second_threshold, capacity);
    });
    const int64_t n = std::min<int64_t>(kept.size(), capacity);
    int64_t* idx = indices.mutable_data_ptr<int64_t>();
    int64_t* cls = classes.mutable_data_ptr<int64_t>();
    double* sc = out_scores.mutable_data_ptr<double>();
    for (int64_t k = 0; k < n; ++k) idx[k] = kept[k].anchor, cls[k] = kept[k].cls, sc[k] = kept[k].score;
    count.fill_(n);
  }
  return {indices, classes, out_scores.to(scores.scalar_type()), count};
}

// ---------------------------------------------------------------- matrix_nms

// Eight bools (bytes 0 or 1) as eight bits, byte k -> bit k: the multiplication puts every
// byte's bit into the top byte without carries.
inline uint64_t pack8(const uint8_t* p) {
  uint64_t x;
  std::memcpy(&x, p, 8);
  return (x * 0x0102040810204080ULL) >> 56;
}

// Masks as rows of 64-bit words, one bit a pixel (bit order within a word is irrelevant to
// intersections, as long as every row uses the same).
std::vector<uint64_t> pack_masks(const at::Tensor& masks, const std::vector<int64_t>& order,
                                 int64_t words) {
  const int64_t N = masks.size(0), P = masks.size(1) * masks.size(2);
  const at::Tensor m =
      (masks.scalar_type() == at::kBool ? masks : masks.ne(0)).contiguous().view(at::kByte);
  const uint8_t* p = m.const_data_ptr<uint8_t>();
  std::vector<uint64_t> packed(N * words, 0);
  at::parallel_for(0, N, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* src = p + order[r] * P;
      uint64_t* dst = packed.data() + r * words;
      int64_t i = 0;
      for (; i + 64 <= P; i += 64) {
        uint64_t w = 0;
        for (int b = 0; b < 8; ++b) w |= pack8(src + i + 8 * b) << (8 * b);
        dst[i >> 6] = w;
      }
      for (; i < P; ++i) dst[i >> 6] |= uint64_t(src[i]) << (i & 63);
    }
  });
  return packed;
}

// Intersection of two packed masks. x86-64 builds get the popcnt instruction through a
// target attribute (the default -O3 build calls libgcc's bit-twiddling popcount instead).
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("popcnt")))
#endif
int64_t popcount_and(const uint64_t* a, const uint64_t* b, int64_t words) {
  int64_t n = 0;
  for (int64_t w = 0; w < words; ++w) n += __builtin_popcountll(a[w] & b[w]);
  return n;
}

// Matrix NMS reads the IoU of a pair only when both masks have the same label (the decay
// and the compensation both ignore other pairs), so only those intersections are counted:
// per label, the masks in score order.
template <typename G>
std::vector<G> matrix_nms_sorted(const std::vector<uint64_t>& packed, int64_t N, int64_t words,
                                 const std::vector<int64_t>& label, bool gaussian, G sigma) {
  std::vector<G> area(N), iou(N * N, G(0)), comp(N, G(0)), decay(N);
  at::parallel_for(0, N, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const uint64_t* row = packed.data() + i * words;
      area[i] = static_cast<G>(popcount_and(row, row, words));
    }
  });
  std::vector<int64_t> by_label(N);  // positions grouped by label, ascending within a group
  std::iota(by_label.begin(), by_label.end(), 0);
  std::stable_sort(by_label.begin(), by_label.end(),
                   [&](int64_t a, int64_t b) { return label[a] < label[b]; });
  std::vector<int64_t> group_end(N);  // for by_label[k]: the end of its group
  for (int64_t k = N - 1; k >= 0; --k)
    group_end[k] = k + 1 < N && label[by_label[k + 1]] == label[by_label[k]] ? group_end[k + 1]
                                                                               : k + 1;
  at::parallel_for(0, N, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t i = by_label[k];
      const uint64_t* a = packed.data() + i * words;
      for (int64_t l = k + 1; l < group_end[k]; ++l) {
        const int64_t j = by_label[l];  // j > i: a later mask of the same label
        iou[i * N + j] = mask_iou(
            static_cast<G>(popcount_and(a, packed.data() + j * words, words)), area[i], area[j]);
      }
    }
  });
  for (int64_t j = 0; j < N; ++j)
    for (int64_t i = 0; i < j; ++i)
      if (label[i] == label[j]) comp[j] = max_(comp[j], iou[i * N + j]);
  at::parallel_for(0, N, 16, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j)
      decay[j] = matrix_nms_decay<G>(
          j, comp.data(), gaussian, sigma, [&](int64_t i) { return iou[i * N + j]; },
          [&](int64_t i) { return label[i] == label[j]; });
  });
  return decay;
}

at::Tensor matrix_nms_cpu(const at::Tensor& masks, const at::Tensor& labels,
                          const at::Tensor& scores, c10::string_view kernel, double sigma) {
  const bool gaussian = check_matrix_nms_inputs(masks, labels, scores, kernel, sigma);
  const int64_t N = masks.size(0);
  if (N == 0) return at::empty({0}, scores.options());
  const at::Tensor order_t = std::get<1>(at::sort(scores, /*stable=*/true, 0, /*descending=*/true));
  const std::vector<int64_t> order(order_t.const_data_ptr<int64_t>(),
                                   order_t.const_data_ptr<int64_t>() + N);
  const at::Tensor lab = labels.to(at::kLong).contiguous();
  std::vector<int64_t> label(N);
  for (int64_t r = 0; r < N; ++r) label[r] = lab.const_data_ptr<int64_t>()[order[r]];
  const int64_t words = (masks.size(1) * masks.size(2) + 63) / 64;
  const std::vector<uint64_t> packed = pack_masks(masks, order, words);
  const std::vector<double> score = as_doubles(scores);
  at::Tensor out = at::empty({N}, scores.options().dtype(at::kDouble));
  double* o = out.mutable_data_ptr<double>();
  // Decayed score = score * decay, rounded as the scores' dtype (float32 or float64) does.
  if (scores.scalar_type() == at::kDouble) {
    const auto decay = matrix_nms_sorted<double>(packed, N, words, label, gaussian, sigma);
    for (int64_t r = 0; r < N; ++r) o[order[r]] = score[order[r]] * decay[r];
  } else {
    const auto decay = matrix_nms_sorted<float>(packed, N, words, label, gaussian,
                                                static_cast<float>(sigma));
    for (int64_t r = 0; r < N; ++r)
      o[order[r]] = static_cast<float>(score[order[r]]) * decay[r];
  }
  return out.to(scores.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("nms", &nms_op_cpu);
  m.impl("batched_nms", &batched_nms_op_cpu);
  m.impl("fast_nms", &fast_nms_cpu);
  m.impl("matrix_nms", &matrix_nms_cpu);
}

}  // namespace segops
