// Shared by the CPU (.cpp) and CUDA (.cu) translation units: math written once as __host__ __device__
// functions, so the CPU tests exercise exactly the arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define OFM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define OFM_HOST_DEVICE inline
#endif
