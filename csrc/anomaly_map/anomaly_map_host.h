// Host-side checks and per-scale plan shared by the CPU and CUDA entry points of anomaly_map.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <string>
#include <vector>

#include "anomaly_map/anomaly_map.h"
#include "common/checks.h"

#define OFM_ANOMALY_DISPATCH_CASES(...)                 \
  AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
  AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__)

namespace oneformore {
namespace anomaly_map {

struct Scale {
  at::Tensor a, b;  // both contiguous or both channels_last
  bool channels_last;
  float weight;     // already divided by the weight sum for fusion="mean"
};

struct Plan {
  std::vector<Scale> scales;
  int64_t batch, height, width;
  int distance;
};

inline Plan make_plan(const at::TensorList feats_in, const at::TensorList feats_rec, at::IntArrayRef out_size,
                      const std::string& distance, const std::string& fusion,
                      const std::optional<at::ArrayRef<double>>& weights) {
  OFM_CHECK_ARG(!feats_in.empty(), "feats_in", "expected at least one feature map");
  OFM_CHECK_ARG(feats_in.size() == feats_rec.size(), "feats_rec", "expected ", feats_in.size(),
                " feature maps (like feats_in), got ", feats_rec.size());
  OFM_CHECK_ARG(out_size.size() == 2 && out_size[0] > 0 && out_size[1] > 0, "out_size",
                "expected two positive sizes (H, W), got ", out_size);
  OFM_CHECK_ARG(distance == "l2" || distance == "cosine", "distance", "expected 'l2' or 'cosine', got '", distance,
                "'");
  OFM_CHECK_ARG(fusion == "sum" || fusion == "mean", "fusion", "expected 'sum' or 'mean', got '", fusion, "'");
  const size_t n = feats_in.size();
  if (weights) {
    OFM_CHECK_ARG(weights->size() == n, "weights", "expected ", n, " weights (one per scale), got ", weights->size());
  }
  double total = 0.0;
  for (size_t s = 0; s < n; ++s) total += weights ? (*weights)[s] : 1.0;
  if (fusion == "mean") OFM_CHECK_ARG(total > 0.0, "weights", "fusion='mean' needs a positive weight sum");

  Plan plan;
  plan.batch = feats_in[0].dim() == 4 ? feats_in[0].size(0) : 0;
  plan.height = out_size[0];
  plan.width = out_size[1];
  plan.distance = distance == "l2" ? kL2 : kCosine;
  for (size_t s = 0; s < n; ++s) {
    const at::Tensor& a = feats_in[s];
    const at::Tensor& b = feats_rec[s];
    OFM_CHECK_ARG(a.dim() == 4, "feats_in", "scale ", s, ": expected [B, C, h, w], got ", a.sizes());
    OFM_CHECK_ARG(a.sizes() == b.sizes(), "feats_rec", "scale ", s, ": expected shape ", a.sizes(),
                  " (that of feats_in), got ", b.sizes());
    OFM_CHECK_ARG(a.size(0) == plan.batch, "feats_in", "scale ", s, ": expected batch ", plan.batch, ", got ",
                  a.size(0));
    OFM_CHECK_ARG(a.scalar_type() == b.scalar_type(), "feats_rec", "scale ", s, ": expected dtype ",
                  a.scalar_type(), ", got ", b.scalar_type());
    const auto t = a.scalar_type();
    OFM_CHECK_ARG(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "feats_in", "scale ", s,
                  ": expected float32, float16 or bfloat16, got ", t);
    OFM_CHECK_ARG(a.device() == feats_in[0].device() && b.device() == a.device(), "feats_rec", "scale ", s,
                  ": expected every feature map on ", feats_in[0].device());
    OFM_CHECK_ARG(a.size(2) > 0 && a.size(3) > 0, "feats_in", "scale ", s, ": empty spatial size");
    const bool cl = !a.is_contiguous() && a.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                    b.is_contiguous(at::MemoryFormat::ChannelsLast);
    const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    const double w = weights ? (*weights)[s] : 1.0;
    plan.scales.push_back({a.contiguous(fmt), b.contiguous(fmt), cl,
                           static_cast<float>(fusion == "mean" ? w / total : w)});
  }
  return plan;
}

}  // namespace anomaly_map
}  // namespace oneformore
