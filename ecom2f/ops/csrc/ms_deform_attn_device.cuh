// Device helpers shared by the two CUDA kernels (ms_deform_attn_kernel.cu, the default,
// and ms_deform_attn_kernel_vectorized.cu): accumulation types, conversions, and the
// dispatch from the runtime dtype pair to template arguments.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "ms_deform_attn_kernel.h"

namespace ecom2f {

// fp32 accumulation for fp32/fp16/bf16 values, fp64 for fp64.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// The gradients of sampling point i: (d x, d y) into grad_locations[2i, 2i+1] and the
// attention weight's into grad_weights[i]. Also writes the zeros of points that sample
// nothing, which is why the gradients need no memset.
template <typename loc_t, typename A>
__device__ __forceinline__ void write_point_grads(loc_t* grad_locations, loc_t* grad_weights, int64_t i, A g_x, A g_y,
                                                  A g_weight) {
  grad_locations[2 * i] = from_acc<loc_t>(g_x);
  grad_locations[2 * i + 1] = from_acc<loc_t>(g_y);
  grad_weights[i] = from_acc<loc_t>(g_weight);
}

// Calls launch.template operator()<scalar_t, loc_t>() for the allowed dtype pairs:
// both the same, or fp16/bf16 values with fp32 locations.
template <typename Launch>
cudaError_t dispatch_dtypes(MsdaDtype value_dtype, MsdaDtype location_dtype, Launch&& launch) {
  const bool fp32_locations = location_dtype == MsdaDtype::kFloat32;
  if (location_dtype != value_dtype && !fp32_locations) return cudaErrorInvalidValue;
  switch (value_dtype) {
    case MsdaDtype::kFloat32:
      return launch.template operator()<float, float>();
    case MsdaDtype::kFloat64:
      return fp32_locations ? cudaErrorInvalidValue : launch.template operator()<double, double>();
    case MsdaDtype::kFloat16:
      return fp32_locations ? launch.template operator()<__half, float>() : launch.template operator()<__half, __half>();
    case MsdaDtype::kBFloat16:
      return fp32_locations ? launch.template operator()<__nv_bfloat16, float>()
                            : launch.template operator()<__nv_bfloat16, __nv_bfloat16>();
  }
  return cudaErrorInvalidValue;
}

}  // namespace ecom2f
