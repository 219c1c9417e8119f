// CPU kernel of anomaly_map. Per scale one pass over both feature maps computes the small per-pixel distance
// map (vectorised over pixels for NCHW, over channels for NHWC), which the bilinear resize then accumulates
// into the [B, H, W] output; the Gaussian blur runs as two vectorised 1-D passes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/cpu_vec.h"
#include "anomaly_map/anomaly_map.h"
#include "anomaly_map/anomaly_map_host.h"

namespace oneformore {
namespace anomaly_map {
namespace {

using cpu_vec::kBlock;
using cpu_vec::load2;
using cpu_vec::Vec;

inline float hsum(const Vec& v) {
  float buf[Vec::size()];
  v.store(buf);
  float s = 0.f;
  for (int j = 0; j < Vec::size(); ++j) s += buf[j];
  return s;
}

// NCHW: accumulate one channel row of n pixels into the per-pixel sums.
template <typename scalar_t, bool kCos>
inline void accumulate_row(const scalar_t* a, const scalar_t* b, int64_t n, float* ss, float* dot, float* na,
                           float* nb) {
  int64_t x = 0;
  for (; x + kBlock <= n; x += kBlock) {
    Vec a0, a1, b0, b1;
    load2(a + x, a0, a1);
    load2(b + x, b0, b1);
    if constexpr (kCos) {
      (Vec::loadu(dot + x) + a0 * b0).store(dot + x);
      (Vec::loadu(dot + x + Vec::size()) + a1 * b1).store(dot + x + Vec::size());
      (Vec::loadu(na + x) + a0 * a0).store(na + x);
      (Vec::loadu(na + x + Vec::size()) + a1 * a1).store(na + x + Vec::size());
      (Vec::loadu(nb + x) + b0 * b0).store(nb + x);
      (Vec::loadu(nb + x + Vec::size()) + b1 * b1).store(nb + x + Vec::size());
    } else {
      const Vec d0 = a0 - b0, d1 = a1 - b1;
      (Vec::loadu(ss + x) + d0 * d0).store(ss + x);
      (Vec::loadu(ss + x + Vec::size()) + d1 * d1).store(ss + x + Vec::size());
    }
  }
  for (; x < n; ++x) {
    const float av = static_cast<float>(a[x]), bv = static_cast<float>(b[x]);
    if constexpr (kCos) {
      dot[x] += av * bv;
      na[x] += av * av;
      nb[x] += bv * bv;
    } else {
      ss[x] += (av - bv) * (av - bv);
    }
  }
}

// NHWC: the sums over the C contiguous channels of one pixel.
template <typename scalar_t, bool kCos>
inline float pixel_distance(const scalar_t* a, const scalar_t* b, int64_t channels) {
  Vec vss(0.f), vdot(0.f), vna(0.f), vnb(0.f);
  int64_t c = 0;
  for (; c + kBlock <= channels; c += kBlock) {
    Vec a0, a1, b0, b1;
    load2(a + c, a0, a1);
    load2(b + c, b0, b1);
    if constexpr (kCos) {
      vdot = vdot + a0 * b0 + a1 * b1;
      vna = vna + a0 * a0 + a1 * a1;
      vnb = vnb + b0 * b0 + b1 * b1;
    } else {
      const Vec d0 = a0 - b0, d1 = a1 - b1;
      vss = vss + d0 * d0 + d1 * d1;
    }
  }
  float ss = hsum(vss), dot = hsum(vdot), na = hsum(vna), nb = hsum(vnb);
  for (; c < channels; ++c) {
    const float av = static_cast<float>(a[c]), bv = static_cast<float>(b[c]);
    ss += (av - bv) * (av - bv);
    dot += av * bv;
    na += av * av;
    nb += bv * bv;
  }
  return finish_distance(kCos ? kCosine : kL2, ss, dot, na, nb);
}

// The [B, h, w] distance map of one scale.
template <typename scalar_t, bool kCos>
void distance_map(const Scale& s, float* dist) {
  const int64_t batch = s.a.size(0), channels = s.a.size(1), h = s.a.size(2), w = s.a.size(3);
  const scalar_t* a = s.a.const_data_ptr<scalar_t>();
  const scalar_t* b = s.b.const_data_ptr<scalar_t>();
  at::parallel_for(0, batch * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sums(kCos ? 3 * w : w);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bi = row / h, y = row % h;
      float* out = dist + row * w;
      if (s.channels_last) {
        for (int64_t x = 0; x < w; ++x) {
          const int64_t off = ((bi * h + y) * w + x) * channels;
          out[x] = pixel_distance<scalar_t, kCos>(a + off, b + off, channels);
        }
        continue;
      }
      std::fill(sums.begin(), sums.end(), 0.f);
      float* ss = sums.data();
      float* dot = sums.data();
      float* na = sums.data() + w;
      float* nb = sums.data() + (kCos ? 2 * w : 0);
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t off = ((bi * channels + c) * h + y) * w;
        accumulate_row<scalar_t, kCos>(a + off, b + off, w, ss, dot, na, nb);
      }
      for (int64_t x = 0; x < w; ++x) {
        out[x] = kCos ? finish_distance(kCosine, 0.f, dot[x], na[x], nb[x]) : finish_distance(kL2, ss[x], 0.f, 0.f, 0.f);
      }
    }
  });
}

// acc[B, H, W] += weight * bilinear(dist[B, h, w]) with align_corners=True.
void accumulate_resized(const float* dist, int64_t batch, int64_t h, int64_t w, float weight, float* acc,
                        int64_t height, int64_t width) {
  std::vector<Tap> xs(width);
  for (int64_t x = 0; x < width; ++x) xs[x] = align_corners_tap(x, w, width);
  at::parallel_for(0, batch * height, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(w);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bi = r / height, y = r % height;
      const Tap ty = align_corners_tap(y, h, height);
      const float* r0 = dist + (bi * h + ty.i0) * w;
      const float* r1 = dist + (bi * h + ty.i1) * w;
      for (int64_t x = 0; x < w; ++x) row[x] = r0[x] + ty.w1 * (r1[x] - r0[x]);  // vertical lerp first
      float* out = acc + r * width;
      for (int64_t x = 0; x < width; ++x) out[x] += weight * lerp_tap(row.data(), xs[x]);
    }
  });
}

// Separable Gaussian blur of [B, H, W] in place (scipy.ndimage.gaussian_filter, mode="reflect", truncate=4).
void gaussian_blur(float* img, int64_t batch, int64_t height, int64_t width, double sigma) {
  const std::vector<float> k = gaussian_weights(sigma);
  const int64_t r = (static_cast<int64_t>(k.size()) - 1) / 2;
  std::vector<float> tmp(batch * height * width);
  // Horizontal: out[x] = sum_j k[j] * padded[x + j], vectorised over x on a reflect-padded copy of the row.
  at::parallel_for(0, batch * height, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> padded(width + 2 * r);
    for (int64_t row = begin; row < end; ++row) {
      const float* src = img + row * width;
      for (int64_t x = 0; x < width + 2 * r; ++x) padded[x] = src[reflect_index(x - r, width)];
      float* dst = tmp.data() + row * width;
      int64_t x = 0;
      for (; x + Vec::size() <= width; x += Vec::size()) {
        Vec sum(0.f);
        for (size_t j = 0; j < k.size(); ++j) sum = at::vec::fmadd(Vec(k[j]), Vec::loadu(padded.data() + x + j), sum);
        sum.store(dst + x);
      }
      for (; x < width; ++x) {
        float sum = 0.f;
        for (size_t j = 0; j < k.size(); ++j) sum += k[j] * padded[x + j];
        dst[x] = sum;
      }
    }
  });
  // Vertical: out[y] = sum_j k[j] * tmp[reflect(y - r + j)], whole rows at a time (source rows looked up once).
  at::parallel_for(0, batch * height, 16, [&](int64_t begin, int64_t end) {
    std::vector<const float*> rows(k.size());
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bi = row / height, y = row % height;
      float* dst = img + row * width;
      const float* plane = tmp.data() + bi * height * width;
      for (int64_t j = 0; j <= 2 * r; ++j) {
        rows[j] = plane + static_cast<int64_t>(reflect_index(static_cast<int>(y - r + j), static_cast<int>(height))) * width;
      }
      int64_t x = 0;
      for (; x + Vec::size() <= width; x += Vec::size()) {
        Vec sum(0.f);
        for (size_t j = 0; j < k.size(); ++j) sum = at::vec::fmadd(Vec(k[j]), Vec::loadu(rows[j] + x), sum);
        sum.store(dst + x);
      }
      for (; x < width; ++x) {
        float sum = 0.f;
        for (size_t j = 0; j < k.size(); ++j) sum += k[j] * rows[j][x];
        dst[x] = sum;
      }
    }
  });
}

at::Tensor anomaly_map_cpu(at::TensorList feats_in, at::TensorList feats_rec, at::IntArrayRef out_size,
                           c10::string_view distance, c10::string_view fusion,
                           std::optional<at::ArrayRef<double>> weights, double sigma) {
  OFM_CHECK_ARG(std::isfinite(sigma) && sigma >= 0.0, "sigma", "expected a finite value >= 0, got ", sigma);
  const Plan plan = make_plan(feats_in, feats_rec, out_size, std::string(distance), std::string(fusion), weights);
  at::Tensor out = at::zeros({plan.batch, 1, plan.height, plan.width}, feats_in[0].options().dtype(at::kFloat));
  float* acc = out.mutable_data_ptr<float>();
  for (const Scale& s : plan.scales) {
    const int64_t h = s.a.size(2), w = s.a.size(3);
    std::vector<float> dist(plan.batch * h * w);
    AT_DISPATCH_SWITCH(s.a.scalar_type(), "oneformore_anomaly_map", OFM_ANOMALY_DISPATCH_CASES([&] {
      if (plan.distance == kCosine) {
        distance_map<scalar_t, true>(s, dist.data());
      } else {
        distance_map<scalar_t, false>(s, dist.data());
      }
    }));
    accumulate_resized(dist.data(), plan.batch, h, w, s.weight, acc, plan.height, plan.width);
  }
  if (sigma > 0.0) gaussian_blur(acc, plan.batch, plan.height, plan.width, sigma);
  return out;
}

}  // namespace
}  // namespace anomaly_map
}  // namespace oneformore

TORCH_LIBRARY_IMPL(oneformore, CPU, m) {
  m.impl("anomaly_map", &oneformore::anomaly_map::anomaly_map_cpu);
}
