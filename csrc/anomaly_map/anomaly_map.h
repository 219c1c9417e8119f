// Math of the fused anomaly map, shared by the CPU and CUDA kernels: the per-pixel distance over channels,
// bilinear sampling with align_corners=True, and the Gaussian blur with scipy.ndimage's conventions.
#pragma once

#include <cmath>
#include <vector>

#include "common/macros.h"

namespace oneformore {
namespace anomaly_map {

enum Distance { kL2 = 0, kCosine = 1 };

// The epsilon of torch.nn.functional.cosine_similarity: cos = dot / sqrt(max(|a|^2 |b|^2, eps^2)).
constexpr float kCosineEps = 1e-8f;

// dist from the channel sums: ss = sum (a - b)^2 (L2); dot, na = |a|^2, nb = |b|^2 (cosine).
OFM_HOST_DEVICE float finish_distance(int kind, float ss, float dot, float na, float nb) {
  if (kind == kL2) return sqrtf(ss);
  const float denom = fmaxf(na * nb, kCosineEps * kCosineEps);
  return 1.f - dot / sqrtf(denom);
}

// Source coordinate of output index `dst` for a resize from `in` to `out` samples with align_corners=True.
struct Tap {
  int i0, i1;
  float w1;  // weight of i1; i0 gets 1 - w1
};

OFM_HOST_DEVICE Tap align_corners_tap(int dst, int in, int out) {
  const float scale = out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
  const float src = scale * static_cast<float>(dst);
  int i0 = static_cast<int>(src);
  if (i0 > in - 1) i0 = in - 1;
  Tap t;
  t.i0 = i0;
  t.i1 = i0 + 1 < in ? i0 + 1 : in - 1;
  t.w1 = src - static_cast<float>(i0);
  return t;
}

OFM_HOST_DEVICE float lerp_tap(const float* row, const Tap& t) {
  return row[t.i0] + t.w1 * (row[t.i1] - row[t.i0]);
}

// scipy.ndimage mode="reflect" (half-sample symmetric: d c b a | a b c d | d c b a), periodic with 2n, so it
// also holds when the kernel is wider than the image.
OFM_HOST_DEVICE int reflect_index(int i, int n) {
  const int period = 2 * n;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - 1 - i;
}

// scipy.ndimage.gaussian_filter's radius with truncate=4.0: int(4 * sigma + 0.5).
inline int gaussian_radius(double sigma) { return static_cast<int>(4.0 * sigma + 0.5); }

// Normalised 1-D Gaussian weights w[0..2r], as scipy.ndimage._gaussian_kernel1d.
inline std::vector<float> gaussian_weights(double sigma) {
  const int r = gaussian_radius(sigma);
  std::vector<double> w(2 * r + 1);
  double sum = 0.0;
  for (int j = -r; j <= r; ++j) {
    w[j + r] = std::exp(-0.5 * j * j / (sigma * sigma));
    sum += w[j + r];
  }
  std::vector<float> out(w.size());
  for (size_t j = 0; j < w.size(); ++j) out[j] = static_cast<float>(w[j] / sum);
  return out;
}

}  // namespace anomaly_map
}  // namespace oneformore
