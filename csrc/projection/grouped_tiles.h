// Work decomposition of the CUDA grouped launch, shared by host and device: every layer's product is cut into
// kTileM x kTileN output tiles, the tiles of all layers are numbered one after another, and a block finds the
// layer that owns its tile by binary search over the layers' first tile numbers.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace oneformore {
namespace projection {

constexpr int kTileM = 64;  // output rows per block
constexpr int kTileN = 64;  // output columns per block
constexpr int kTileK = 16;  // reduction depth staged in shared memory per iteration

OFM_HOST_DEVICE int64_t tiles_of(int64_t m, int64_t n) {
  return ((m + kTileM - 1) / kTileM) * ((n + kTileN - 1) / kTileN);
}

// The problem owning flat tile `tile`: the last p with first[p] <= tile (first ascending, first[0] = 0).
OFM_HOST_DEVICE int64_t owning_problem(const int64_t* first, int64_t count, int64_t tile) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (first[mid] <= tile) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

}  // namespace projection
}  // namespace oneformore
