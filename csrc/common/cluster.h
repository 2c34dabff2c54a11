// Gaussian seed clustering (SpatialEmbeddings, docs/ops/cluster.md): per-pixel math shared by the CPU
// and CUDA kernels. Torch-free; every transcendental is portable (portable_math.h), so the
// two devices make the same seed, mask and proposal decisions bit for bit.
#pragma once

#include "macros.h"
#include "portable_math.h"

namespace segops {

// emb = tanh(offset) + coordinate, seed = sigmoid(logit).
template <typename A>
SEGOPS_HOST_DEVICE A embedding(A offset, A coordinate) {
  return tanh_portable(offset) + coordinate;
}

// The bandwidth of a seed's Gaussian along one axis: exp(sigma * 10).
template <typename A>
SEGOPS_HOST_DEVICE A bandwidth(A sigma) {
  return exp_portable(sigma * A(10));
}

// A pixel joins the seed's proposal iff exp(-d) > 0.5 with
// d = ((ex - cx)^2) * s_x + ((ey - cy)^2) * s_y, evaluated left to right as the original's
// torch.sum(torch.pow(emb - centre, 2) * s, 0).
template <typename A>
SEGOPS_HOST_DEVICE A proposal_distance(A ex, A ey, A cx, A cy, A s_x, A s_y) {
  const A dx = ex - cx, dy = ey - cy;
  return (dx * dx) * s_x + (dy * dy) * s_y;
}

template <typename A>
SEGOPS_HOST_DEVICE bool joins_proposal(A d) {
  return exp_portable(-d) > A(0.5);
}

template <typename A>
SEGOPS_HOST_DEVICE bool in_proposal(A ex, A ey, A cx, A cy, A s_x, A s_y) {
  return joins_proposal(proposal_distance(ex, ey, cx, cy, s_x, s_y));
}

// Distances that decide joins_proposal without the exponential: exp(-0.69) = 0.50158 and
// exp(-0.6963) = 0.49843 are thousands of ulp from 0.5, beyond exp_portable's 2 ulp, so
// every d < kJoinsBelow joins and every d > kLeavesAbove does not (ln 2 = 0.693147).
constexpr double kJoinsBelow = 0.69, kLeavesAbove = 0.6963;

// Half-width of the box around the centre, along an axis of bandwidth s, outside which no
// pixel can be in the proposal: there d >= (dx^2) s >= 0.7 > ln 2 (with margin for rounding
// and exp's 2 ulp), so exp(-d) < 0.5. Infinite (scan everything) when s is 0 or NaN.
SEGOPS_HOST_DEVICE double proposal_radius(double s) {
  return s > 0.0 ? sqrt(0.7 / s) : static_cast<double>(INFINITY);
}

// The accept rule: more than min_pixels proposal pixels, more than half of them unclustered,
// the ratio in float32 as the original's `.float() / .float() > 0.5`.
SEGOPS_HOST_DEVICE bool accept_proposal(int64_t proposal, int64_t unclustered,
                                        int64_t min_pixels) {
  return proposal > min_pixels &&
         static_cast<float>(unclustered) / static_cast<float>(proposal) > 0.5f;
}

}  // namespace segops
