// Gaussian seed clustering on the CPU (SPEC §4).
//
// The greedy loop is the original's, with two changes of cost that change no result:
//  * the next seed is the first unclustered pixel of one stable descending sort by seed,
//    instead of an argmax over every masked pixel per iteration;
//  * masked pixels are bucketed on a grid over their embeddings, and an iteration tests only
//    the buckets within proposal_radius() of the centre, outside which no pixel can join.
// So an iteration costs about its proposal's size, not the image's: rejected seeds (false
// positive speckles) no longer cost a full pass each.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <numeric>
#include <tuple>
#include <vector>

#include "../cluster_checks.h"
#include "../common/cluster.h"

namespace segops {
namespace {

// The masked pixels (seed > seed_threshold) in raster order.
template <typename A>
std::vector<SeedPixel<A>> masked_pixels(const A* pred, const A* xs, const A* ys, int64_t h,
                                        int64_t w, int64_t n_sigma, A seed_threshold) {
  const int64_t plane = h * w;
  const A* off_x = pred;
  const A* off_y = pred + plane;
  const A* sig_x = pred + 2 * plane;
  const A* sig_y = pred + (n_sigma == 2 ? 3 : 2) * plane;
  const A* logit = pred + (2 + n_sigma) * plane;
  std::vector<A> seed(plane);
  std::vector<int64_t> per_row(h + 1, 0);
  at::parallel_for(0, h, 16, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y) {
      A* sr = seed.data() + y * w;
      const A* lr = logit + y * w;
      for (int64_t x = 0; x < w; ++x) sr[x] = sigmoid_(lr[x]);  // vectorises
      int64_t c = 0;
      for (int64_t x = 0; x < w; ++x) c += sr[x] > seed_threshold;
      per_row[y + 1] = c;
    }
  });
  std::partial_sum(per_row.begin(), per_row.end(), per_row.begin());
  std::vector<SeedPixel<A>> px(per_row[h]);
  at::parallel_for(0, h, 16, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y) {
      SeedPixel<A>* out = px.data() + per_row[y];
      for (int64_t x = 0; x < w; ++x) {
        const int64_t i = y * w + x;
        if (!(seed[i] > seed_threshold)) continue;
        *out++ = {i, embedding(off_x[i], xs[x]), embedding(off_y[i], ys[y]), sig_x[i], sig_y[i],
                  seed[i]};
      }
    }
  });
  return px;
}

// Indices of the masked pixels by seed, descending, ties in raster order: a stable LSD
// radix sort on the seeds' bits (seeds are >= 0, so their bit patterns order as they do),
// 11 bits a pass, skipping the digits where every key agrees.
template <typename A>
std::vector<int64_t> seed_order(const std::vector<SeedPixel<A>>& px) {
  using K = std::conditional_t<sizeof(A) == 8, uint64_t, uint32_t>;
  const size_t m = px.size();
  std::vector<K> key(m), key2(m);
  std::vector<int64_t> idx(m), idx2(m);
  for (size_t i = 0; i < m; ++i) {
    K bits;
    std::memcpy(&bits, &px[i].seed, sizeof bits);
    key[i] = ~bits;  // descending
    idx[i] = static_cast<int64_t>(i);
  }
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  std::vector<size_t> count(kBuckets + 1);
  for (size_t shift = 0; shift < 8 * sizeof(K); shift += kBits) {
    std::fill(count.begin(), count.end(), 0);
    for (size_t i = 0; i < m; ++i) ++count[((key[i] >> shift) & (kBuckets - 1)) + 1];
    if (std::any_of(count.begin() + 1, count.end(), [&](size_t c) { return c == m; })) continue;
    for (int b = 0; b < kBuckets; ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < m; ++i) {
      const size_t d = count[(key[i] >> shift) & (kBuckets - 1)]++;
      key2[d] = key[i];
      idx2[d] = idx[i];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
  return idx;
}

// Masked pixels bucketed on a grid over their embeddings (pixels with a NaN embedding are
// never in a proposal and are left out).
template <typename A>
struct EmbeddingGrid {
  double x0 = 0, y0 = 0, cell = 1;
  int64_t gx = 1, gy = 1;
  std::vector<int64_t> start;   // [gx * gy + 1], row-major (y, then x)
  std::vector<int64_t> pixels;  // masked-pixel indices, bucket by bucket
  std::vector<A> ex, ey;        // their embeddings, in the same order (contiguous scans)

  explicit EmbeddingGrid(const std::vector<SeedPixel<A>>& px) {
    double x1 = -INFINITY, y1 = -INFINITY;
    x0 = y0 = INFINITY;
    for (const auto& p : px) {
      if (!(p.ex == p.ex) || !(p.ey == p.ey)) continue;
      x0 = std::min<double>(x0, p.ex);
      x1 = std::max<double>(x1, p.ex);
      y0 = std::min<double>(y0, p.ey);
      y1 = std::max<double>(y1, p.ey);
    }
    if (!(x0 <= x1)) x0 = x1 = y0 = y1 = 0;  // no finite embedding
    // About eight pixels per bucket on average, at most 4096 buckets per axis.
    const double area = std::max((x1 - x0) * (y1 - y0), 1e-12);
    cell = std::max(std::sqrt(area * 8.0 / std::max<double>(px.size(), 1.0)), 1e-9);
    cell = std::max({cell, (x1 - x0) / 4095.0, (y1 - y0) / 4095.0});
    gx = static_cast<int64_t>((x1 - x0) / cell) + 1;
    gy = static_cast<int64_t>((y1 - y0) / cell) + 1;
    start.assign(gx * gy + 1, 0);
    std::vector<int64_t> bucket(px.size(), -1);
    for (size_t i = 0; i < px.size(); ++i) {
      if (!(px[i].ex == px[i].ex) || !(px[i].ey == px[i].ey)) continue;
      bucket[i] = cell_y(px[i].ey) * gx + cell_x(px[i].ex);
      ++start[bucket[i] + 1];
    }
    std::partial_sum(start.begin(), start.end(), start.begin());
    pixels.resize(start.back());
    ex.resize(start.back());
    ey.resize(start.back());
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < px.size(); ++i) {
      if (bucket[i] < 0) continue;
      const int64_t k = fill[bucket[i]]++;
      pixels[k] = static_cast<int64_t>(i);
      ex[k] = px[i].ex;
      ey[k] = px[i].ey;
    }
  }

  int64_t cell_x(double v) const { return clamp_cell((v - x0) / cell, gx); }
  int64_t cell_y(double v) const { return clamp_cell((v - y0) / cell, gy); }
  static int64_t clamp_cell(double c, int64_t n) {
    if (!(c > 0)) return 0;  // also -inf
    return c >= static_cast<double>(n - 1) ? n - 1 : static_cast<int64_t>(c);
  }

  // Calls fn(k0, k1) for the runs [k0, k1) of bucket order covering the buckets that
  // overlap [cx +- rx] x [cy +- ry] (one run per row of buckets).
  template <typename Fn>
  void for_each_near(double cx, double cy, double rx, double ry, Fn&& fn) const {
    const int64_t bx0 = cell_x(cx - rx), bx1 = cell_x(cx + rx);
    const int64_t by0 = cell_y(cy - ry), by1 = cell_y(cy + ry);
    for (int64_t by = by0; by <= by1; ++by) fn(start[by * gx + bx0], start[by * gx + bx1 + 1]);
  }
};

template <typename A>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_impl(
    const at::Tensor& prediction, const A* pred, const A* xs, const A* ys, int64_t n_sigma,
    double threshold, double seed_threshold, int64_t min_pixels, int64_t max_instances) {
  const int64_t h = prediction.size(1), w = prediction.size(2);
  const auto acc = prediction.options().dtype(compute_dtype(prediction.scalar_type()));
  at::Tensor map = at::zeros({h, w}, prediction.options().dtype(at::kInt));
  std::vector<A> scores;
  const std::vector<SeedPixel<A>> px =
      masked_pixels<A>(pred, xs, ys, h, w, n_sigma, static_cast<A>(seed_threshold));
  const int64_t m = static_cast<int64_t>(px.size());
  if (m > min_pixels) {
    const std::vector<int64_t> order = seed_order(px);
    const EmbeddingGrid<A> grid(px);
    std::vector<uint8_t> clustered(m, 0);
    std::vector<int64_t> proposal;
    std::vector<uint8_t> flags;
    std::vector<int32_t> id_of(m, 0);  // per masked pixel; written to the map at the end
    int64_t unclustered = m, next = 0;
    while (unclustered > min_pixels &&
           (max_instances < 0 || static_cast<int64_t>(scores.size()) < max_instances)) {
      while (clustered[order[next]]) ++next;
      const SeedPixel<A>& s = px[order[next]];
      if (static_cast<double>(s.seed) < threshold) break;
      clustered[order[next]] = 1;
      --unclustered;
      const A bx = bandwidth(s.sx), by = n_sigma == 2 ? bandwidth(s.sy) : bx;
      proposal.clear();
      int64_t fresh = 0;
      if (s.ex == s.ex && s.ey == s.ey) {
        grid.for_each_near(s.ex, s.ey, proposal_radius(bx), proposal_radius(by),
                           [&](int64_t k0, int64_t k1) {
          flags.resize(static_cast<size_t>(k1 - k0));
          const A* gx = grid.ex.data() + k0;
          const A* gy = grid.ey.data() + k0;
          for (int64_t k = 0; k < k1 - k0; ++k)  // vectorises
            flags[k] = in_proposal(gx[k], gy[k], s.ex, s.ey, bx, by);
          for (int64_t k = 0; k < k1 - k0; ++k) {
            if (!flags[k]) continue;
            const int64_t p = grid.pixels[k0 + k];
            proposal.push_back(p);
            fresh += !clustered[p];
          }
        });
      }
      const int64_t count = static_cast<int64_t>(proposal.size());
      if (accept_proposal(count, fresh, min_pixels)) {
        scores.push_back(s.seed);
        const int32_t id = static_cast<int32_t>(scores.size());
        for (const int64_t p : proposal) id_of[p] = id;
      }
      for (const int64_t p : proposal) {
        unclustered -= !clustered[p];
        clustered[p] = 1;
      }
    }
    int32_t* ids = map.mutable_data_ptr<int32_t>();
    for (int64_t p = 0; p < m; ++p)  // raster order: sequential writes
      if (id_of[p]) ids[px[p].index] = id_of[p];
  }
  const int64_t found = static_cast<int64_t>(scores.size());
  at::Tensor out = at::zeros({max_instances >= 0 ? max_instances : found}, acc);
  std::copy(scores.begin(), scores.end(), out.mutable_data_ptr<A>());
  return {map, out, at::scalar_tensor(found, prediction.options().dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_seeds_cpu(
    const at::Tensor& prediction, const at::Tensor& xs, const at::Tensor& ys, int64_t n_sigma,
    double threshold, double seed_threshold, int64_t min_pixels, int64_t max_instances) {
  check_cluster("cluster_seeds", prediction, xs, ys, n_sigma, threshold, seed_threshold,
                min_pixels, max_instances);
  const at::Tensor p = prediction.to(compute_dtype(prediction.scalar_type())).contiguous();
  const at::Tensor x = xs.contiguous(), y = ys.contiguous();
  if (p.scalar_type() == at::kDouble)
    return cluster_impl<double>(prediction, p.const_data_ptr<double>(),
                                x.const_data_ptr<double>(), y.const_data_ptr<double>(), n_sigma,
                                threshold, seed_threshold, min_pixels, max_instances);
  return cluster_impl<float>(prediction, p.const_data_ptr<float>(), x.const_data_ptr<float>(),
                             y.const_data_ptr<float>(), n_sigma, threshold, seed_threshold,
                             min_pixels, max_instances);
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) { m.impl("cluster_seeds", &cluster_seeds_cpu); }

}  // namespace segops
