// Gaussian seed clustering on the CPU (docs/ops/cluster.md).
//
// The greedy loop is the original's, with changes of cost that change no result:
//  * the next seed comes from a SeedQueue (blocks that remember their best unclustered
//    seed), instead of an argmax over every masked pixel per iteration;
//  * masked pixels are bucketed on a grid over their embeddings, and an iteration tests only
//    the buckets within proposal_radius() of the centre, outside which no pixel can join;
//  * seed and proposal decisions far from their thresholds are taken without the
//    exponential (SeedTest, kJoinsBelow / kLeavesAbove), the rest with it.
// So an iteration costs about its proposal's size, not the image's: rejected seeds (false
// positive speckles) no longer cost a full pass each.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include "cluster/checks.h"
#include "common/cluster.h"
#include "core/huge_pages.h"

namespace segops {
namespace {

// `sigmoid_(l) > t`, mostly without evaluating the sigmoid: outside a narrow band of
// logits around logit(t) the result is decided by comparing the logit itself. The band's
// edges are logit(t (1 -+ 1e-5)), rounded outwards; there the true sigmoid is 1e-5 away
// from t relatively, far beyond sigmoid_'s error (a few ulp: portable exp within 2 ulp, one
// rounding each for the sum and the quotient), so the shortcut decides as sigmoid_ would.
// For t outside [1e-30, 1) (where sigmoid_ flushes to 0, or nothing can pass) every logit
// is evaluated.
template <typename A>
struct SeedTest {
  A t, lo = -std::numeric_limits<A>::infinity(), hi = std::numeric_limits<A>::infinity();

  explicit SeedTest(A threshold) : t(threshold) {
    const double td = t;
    if (!(td >= 1e-30 && td < 1.0)) return;
    const double a = td * (1.0 - 1e-5), b = td * (1.0 + 1e-5);
    lo = round_down(std::log(a / (1.0 - a)));
    if (b < 1.0) hi = round_up(std::log(b / (1.0 - b)));
  }

  bool operator()(A logit) const {
    return logit > hi || (!(logit < lo) && sigmoid_(logit) > t);  // NaN: sigmoid_ is NaN
  }

 private:
  static A round_down(double v) {
    const A r = static_cast<A>(v);
    return static_cast<double>(r) > v ? std::nextafter(r, -std::numeric_limits<A>::infinity()) : r;
  }
  static A round_up(double v) {
    const A r = static_cast<A>(v);
    return static_cast<double>(r) < v ? std::nextafter(r, std::numeric_limits<A>::infinity()) : r;
  }
};

// The masked pixels (seed > seed_threshold) in raster order, as parallel arrays.
template <typename A>
struct MaskedPixels {
  std::vector<int64_t> index;  // raster index
  std::vector<A> ex, ey, seed;
};

// Two passes over the rows, one counting each row's masked pixels and one writing them,
// each deciding `seed > seed_threshold` with SeedTest (so about one sigmoid per masked
// pixel, not per pixel); the embeddings and seeds are then evaluated over each row's
// compacted masked pixels, in loops that vectorise.
template <typename A>
MaskedPixels<A> masked_pixels(const A* pred, const A* xs, const A* ys, int64_t h, int64_t w,
                              int64_t n_sigma, A seed_threshold) {
  const int64_t plane = h * w;
  const A* off_x = pred;
  const A* off_y = pred + plane;
  const A* logit = pred + (2 + n_sigma) * plane;
  const SeedTest<A> masked(seed_threshold);
  std::vector<int64_t> per_row(h + 1, 0);
  std::vector<uint8_t> undecided(h, 0);  // rows with logits in the band (or NaN)
  at::parallel_for(0, h, 16, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y) {
      const A* lr = logit + y * w;
      int64_t c = 0, band = 0;
      for (int64_t x = 0; x < w; ++x) {  // vectorises
        c += lr[x] > masked.hi;
        band += !(lr[x] < masked.lo) & !(lr[x] > masked.hi);
      }
      if (band) {
        undecided[y] = 1;
        c = 0;
        for (int64_t x = 0; x < w; ++x) c += masked(lr[x]);
      }
      per_row[y + 1] = c;
    }
  });
  std::partial_sum(per_row.begin(), per_row.end(), per_row.begin());
  const int64_t m = per_row[h];
  MaskedPixels<A> px;
  px.index.resize(m);
  px.ex.resize(m);
  px.ey.resize(m);
  px.seed.resize(m);
  at::parallel_for(0, h, 16, [&](int64_t y0, int64_t y1) {
    std::vector<A> ox(w), oy(w), lg(w), cx(w);
    std::vector<int64_t> col(w);
    for (int64_t y = y0; y < y1; ++y) {
      const int64_t o = per_row[y], c = per_row[y + 1] - o;
      if (c == 0) continue;
      const A* lr = logit + y * w;
      for (int64_t x = 0, j = 0; x < w; ++x) {  // compact the row's masked columns
        col[j] = x;
        j += undecided[y] ? masked(lr[x]) : lr[x] > masked.hi;
      }
      int64_t* index = px.index.data() + o;
      for (int64_t j = 0; j < c; ++j) {
        const int64_t i = y * w + col[j];
        index[j] = i;
        lg[j] = logit[i];
        cx[j] = xs[col[j]];
        ox[j] = off_x[i];
        oy[j] = off_y[i];
      }
      A* ex = px.ex.data() + o;
      A* ey = px.ey.data() + o;
      A* seed = px.seed.data() + o;
      const A cy = ys[y];
      for (int64_t j = 0; j < c; ++j) seed[j] = sigmoid_(lg[j]);  // these loops vectorise
      for (int64_t j = 0; j < c; ++j) ex[j] = embedding(ox[j], cx[j]);
      for (int64_t j = 0; j < c; ++j) ey[j] = embedding(oy[j], cy);
    }
  });
  return px;
}

// The masked pixels bucketed on a grid over their embeddings and stored bucket by bucket,
// so that an iteration scans contiguous runs: the buckets within proposal_radius() of its
// centre, outside which no pixel can join. Pixels with a NaN embedding (never in a
// proposal, but still seeds) form one last bucket that no scan reaches.
template <typename A>
struct EmbeddingGrid {
  double x0 = 0, y0 = 0, inv_cell = 1;
  int64_t gx = 1, gy = 1;
  std::vector<int64_t> start;  // [gx * gy + 2]: bucket b is [start[b], start[b + 1])
  // Per position in bucket order: raster index, embedding, seed.
  std::vector<int64_t> index;
  std::vector<A> ex, ey, seed;

  explicit EmbeddingGrid(const MaskedPixels<A>& px) {
    const int64_t m = static_cast<int64_t>(px.index.size());
    double x1 = -INFINITY, y1 = -INFINITY;
    x0 = y0 = INFINITY;
    for (int64_t i = 0; i < m; ++i) {
      if (!(px.ex[i] == px.ex[i]) || !(px.ey[i] == px.ey[i])) continue;
      x0 = std::min<double>(x0, px.ex[i]);
      x1 = std::max<double>(x1, px.ex[i]);
      y0 = std::min<double>(y0, px.ey[i]);
      y1 = std::max<double>(y1, px.ey[i]);
    }
    if (!(x0 <= x1)) x0 = x1 = y0 = y1 = 0;  // no finite embedding
    // About eight pixels per bucket on average, at most 4096 buckets per axis.
    const double area = std::max((x1 - x0) * (y1 - y0), 1e-12);
    double cell = std::max(std::sqrt(area * 8.0 / std::max<double>(m, 1.0)), 1e-9);
    cell = std::max({cell, (x1 - x0) / 4095.0, (y1 - y0) / 4095.0});
    inv_cell = 1.0 / cell;
    gx = static_cast<int64_t>((x1 - x0) * inv_cell) + 1;
    gy = static_cast<int64_t>((y1 - y0) * inv_cell) + 1;
    const int32_t nan_bucket = static_cast<int32_t>(gx * gy);
    std::vector<int32_t> bucket(m);
    at::parallel_for(0, m, 1 << 14, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        bucket[i] = px.ex[i] == px.ex[i] && px.ey[i] == px.ey[i]
                        ? static_cast<int32_t>(cell_y(px.ey[i]) * gx + cell_x(px.ex[i]))
                        : nan_bucket;
    });
    start.assign(gx * gy + 2, 0);
    for (int64_t i = 0; i < m; ++i) ++start[bucket[i] + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    index.resize(m);
    ex.resize(m);
    ey.resize(m);
    seed.resize(m);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t k = fill[bucket[i]]++;
      index[k] = px.index[i];
      ex[k] = px.ex[i];
      ey[k] = px.ey[i];
      seed[k] = px.seed[i];
    }
  }

  int64_t cell_x(double v) const { return clamp_cell((v - x0) * inv_cell, gx); }
  int64_t cell_y(double v) const { return clamp_cell((v - y0) * inv_cell, gy); }
  static int64_t clamp_cell(double c, int64_t n) {
    if (!(c > 0)) return 0;  // also -inf
    return c >= static_cast<double>(n - 1) ? n - 1 : static_cast<int64_t>(c);
  }

  // Calls fn(k0, k1) for the runs [k0, k1) of bucket order covering the buckets that
  // overlap [cx +- rx] x [cy +- ry] (one run per row of buckets). cell_x and cell_y are
  // monotone, so every pixel inside the box lies in one of these buckets.
  template <typename Fn>
  void for_each_near(double cx, double cy, double rx, double ry, Fn&& fn) const {
    const int64_t bx0 = cell_x(cx - rx), bx1 = cell_x(cx + rx);
    const int64_t by0 = cell_y(cy - ry), by1 = cell_y(cy + ry);
    for (int64_t by = by0; by <= by1; ++by) fn(start[by * gx + bx0], start[by * gx + bx1 + 1]);
  }
};

// The best unclustered seed (highest seed, ties: lowest raster index) under clustering,
// without sorting: the positions are cut into blocks that remember their best, and a
// block is rescanned only after one of its pixels is clustered. A clustered pixel's seed
// is set to -1 (seeds are sigmoids, >= 0).
template <typename A>
class SeedQueue {
 public:
  static constexpr int64_t kBlock = 256;

  SeedQueue(std::vector<A> seed, const std::vector<int64_t>& index)
      : seed_(std::move(seed)), index_(index),
        best_((static_cast<int64_t>(seed_.size()) + kBlock - 1) / kBlock),
        dirty_(best_.size(), 0) {
    at::parallel_for(0, static_cast<int64_t>(best_.size()), 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) rescan(b);
    });
  }

  bool alive(int64_t k) const { return seed_[k] >= A(0); }
  A seed(int64_t k) const { return seed_[k]; }

  void cluster(int64_t k) {
    seed_[k] = A(-1);
    const int64_t b = k / kBlock;
    if (!dirty_[b]) {
      dirty_[b] = 1;
      dirty_list_.push_back(b);
    }
  }

  // Position of the best unclustered seed; -1 when every pixel is clustered.
  int64_t top() {
    for (const int64_t b : dirty_list_) {
      rescan(b);
      dirty_[b] = 0;
    }
    dirty_list_.clear();
    int64_t best = -1;
    for (const int64_t k : best_)
      if (k >= 0 && (best < 0 || better(k, best))) best = k;
    return best;
  }

 private:
  bool better(int64_t a, int64_t b) const {
    return seed_[a] > seed_[b] || (seed_[a] == seed_[b] && index_[a] < index_[b]);
  }
  void rescan(int64_t b) {
    const int64_t k1 = std::min<int64_t>((b + 1) * kBlock, seed_.size());
    int64_t best = -1;
    for (int64_t k = b * kBlock; k < k1; ++k)
      if (alive(k) && (best < 0 || better(k, best))) best = k;
    best_[b] = best;
  }

  std::vector<A> seed_;
  const std::vector<int64_t>& index_;
  std::vector<int64_t> best_;
  std::vector<uint8_t> dirty_;
  std::vector<int64_t> dirty_list_;
};

template <typename A>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_impl(
    const at::Tensor& prediction, const A* pred, const A* xs, const A* ys, int64_t n_sigma,
    double threshold, double seed_threshold, int64_t min_pixels, int64_t max_instances) {
  const int64_t h = prediction.size(1), w = prediction.size(2), plane = h * w;
  const auto acc = prediction.options().dtype(compute_dtype(prediction.scalar_type()));
  at::Tensor map = empty_output({h, w}, prediction.options().dtype(at::kInt)).zero_();
  std::vector<A> scores;
  MaskedPixels<A> px =
      masked_pixels<A>(pred, xs, ys, h, w, n_sigma, static_cast<A>(seed_threshold));
  if (static_cast<int64_t>(px.index.size()) > min_pixels) {
    EmbeddingGrid<A> grid(px);
    px = MaskedPixels<A>();  // free
    const A* sig_x = pred + 2 * plane;
    const A* sig_y = pred + (n_sigma == 2 ? 3 : 2) * plane;
    SeedQueue<A> queue(std::move(grid.seed), grid.index);
    std::vector<int64_t> proposal;
    std::vector<uint8_t> flags;
    std::vector<A> dist;
    std::vector<int32_t> id_of(grid.index.size(), 0);  // per position; to the map at the end
    int64_t unclustered = static_cast<int64_t>(grid.index.size());
    while (unclustered > min_pixels &&
           (max_instances < 0 || static_cast<int64_t>(scores.size()) < max_instances)) {
      const int64_t s = queue.top();
      const int64_t si = grid.index[s];
      const A seed = queue.seed(s);
      if (static_cast<double>(seed) < threshold) break;
      const A cx = grid.ex[s], cy = grid.ey[s];
      queue.cluster(s);
      --unclustered;
      const A bx = bandwidth(sig_x[si]), by = n_sigma == 2 ? bandwidth(sig_y[si]) : bx;
      proposal.clear();
      int64_t fresh = 0;
      if (cx == cx && cy == cy) {
        grid.for_each_near(cx, cy, proposal_radius(bx), proposal_radius(by),
                           [&](int64_t k0, int64_t k1) {
          const int64_t n = k1 - k0;
          flags.resize(static_cast<size_t>(n));
          dist.resize(static_cast<size_t>(n));
          const A* gx = grid.ex.data() + k0;
          const A* gy = grid.ey.data() + k0;
          int64_t band = 0;
          for (int64_t k = 0; k < n; ++k) {  // vectorises
            dist[k] = proposal_distance(gx[k], gy[k], cx, cy, bx, by);
            flags[k] = dist[k] < A(kJoinsBelow);
            band += !(dist[k] < A(kJoinsBelow)) & !(dist[k] > A(kLeavesAbove));
          }
          if (band)  // the rare distances that need the exponential (or NaN)
            for (int64_t k = 0; k < n; ++k)
              if (!(dist[k] < A(kJoinsBelow)) && !(dist[k] > A(kLeavesAbove)))
                flags[k] = joins_proposal(dist[k]);
          for (int64_t k = 0; k < n; ++k) {
            if (!flags[k]) continue;
            proposal.push_back(k0 + k);
            fresh += queue.alive(k0 + k);
          }
        });
      }
      const int64_t count = static_cast<int64_t>(proposal.size());
      if (accept_proposal(count, fresh, min_pixels)) {
        scores.push_back(seed);
        const int32_t id = static_cast<int32_t>(scores.size());
        for (const int64_t k : proposal) id_of[k] = id;
      }
      for (const int64_t k : proposal) {
        if (!queue.alive(k)) continue;
        --unclustered;
        queue.cluster(k);
      }
    }
    int32_t* ids = map.mutable_data_ptr<int32_t>();
    for (size_t k = 0; k < id_of.size(); ++k)
      if (id_of[k]) ids[grid.index[k]] = id_of[k];
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
