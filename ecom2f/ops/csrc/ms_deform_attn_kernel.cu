// CUDA kernels of multi-scale deformable attention.
//
// Template parameters: scalar_t is the dtype of value / output / grad_output, loc_t that
// of the sampling locations, attention weights and their gradients (scalar_t, or float
// with fp16/bf16 values).
//
// One warp per output row (n, q, h); its 32 lanes walk the D channels of the head, so
// every corner gather reads D contiguous values (coalesced). The corner geometry comes
// from ms_deform_attn_common.h, shared with the CPU kernels. Accumulation is in fp32
// (fp64 for fp64 inputs). In the backward, grad_value is scattered with atomics into an
// fp32/fp64 buffer, and the location / attention gradients are reduced across the warp
// with shuffles: nothing of size N*Q*H*L*P*D is materialised. The backward writes every
// element of grad_locations / grad_weights itself (zeros for points outside the map and
// for skipped levels), so those need no memset.
//
// A level that fails level_in_bounds is skipped. The test depends only on the level, so
// it is uniform across the warp and the full-mask shuffles stay safe.
#include "ms_deform_attn_common.h"
#include "ms_deform_attn_device.cuh"
#include "ms_deform_attn_kernel.h"

namespace ecom2f {
namespace {

constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = 8;  // warps per block

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename loc_t>
__global__ void msda_forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                                    const int64_t* __restrict__ starts, const loc_t* __restrict__ locations,
                                    const loc_t* __restrict__ weights, scalar_t* __restrict__ output,
                                    const MsdaShape s) {
  using acc_t = typename AccOf<scalar_t>::type;
  const int64_t rows = s.batch * s.queries * s.heads;
  const int64_t token_stride = s.heads * s.head_dim;
  const int lane = threadIdx.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t h = row % s.heads;
    const int64_t n = row / (s.queries * s.heads);
    const int64_t first = row * s.levels * s.points;  // index of (n, q, h, 0, 0)
    for (int64_t d0 = 0; d0 < s.head_dim; d0 += kWarpSize) {
      const int64_t j = d0 + lane;
      const bool active = j < s.head_dim;
      acc_t acc = 0;
      for (int64_t l = 0; l < s.levels; ++l) {
        const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
        if (!level_in_bounds(starts[l], height, width, s.tokens)) continue;
        const scalar_t* level_value = value + (n * s.tokens + starts[l]) * token_stride + h * s.head_dim + j;
        for (int64_t p = 0; p < s.points; ++p) {
          const int64_t i = first + l * s.points + p;
          BilinearCorners<acc_t> c;
          if (!bilinear_corners<acc_t>(to_acc(locations[2 * i]), to_acc(locations[2 * i + 1]), height, width, c)) {
            continue;
          }
          if (!active) continue;
          const acc_t a = to_acc(weights[i]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (c.token[k] >= 0) acc += a * c.weight[k] * to_acc(level_value[c.token[k] * token_stride]);
          }
        }
      }
      if (active) output[row * s.head_dim + j] = from_acc<scalar_t>(acc);
    }
  }
}

template <typename scalar_t, typename loc_t>
__global__ void msda_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ value,
                                     const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                                     const loc_t* __restrict__ locations, const loc_t* __restrict__ weights,
                                     typename AccOf<scalar_t>::type* __restrict__ grad_value,
                                     loc_t* __restrict__ grad_locations, loc_t* __restrict__ grad_weights,
                                     const MsdaShape s) {
  using acc_t = typename AccOf<scalar_t>::type;
  const int64_t rows = s.batch * s.queries * s.heads;
  const int64_t token_stride = s.heads * s.head_dim;
  const int lane = threadIdx.x;
  // `row` is the same for the 32 lanes of a warp, so every branch below is warp-uniform
  // and the full-mask shuffles are safe.
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.y) {
    const int64_t h = row % s.heads;
    const int64_t n = row / (s.queries * s.heads);
    const int64_t first = row * s.levels * s.points;
    const scalar_t* go = grad_output + row * s.head_dim;
    for (int64_t l = 0; l < s.levels; ++l) {
      const int64_t height = shapes[2 * l], width = shapes[2 * l + 1];
      if (!level_in_bounds(starts[l], height, width, s.tokens)) {
        for (int64_t i = first + l * s.points + lane; i < first + (l + 1) * s.points; i += kWarpSize) {
          write_point_grads(grad_locations, grad_weights, i, 0.0f, 0.0f, 0.0f);
        }
        continue;
      }
      const int64_t level_offset = (n * s.tokens + starts[l]) * token_stride + h * s.head_dim;
      const scalar_t* level_value = value + level_offset;
      acc_t* level_grad = grad_value + level_offset;
      for (int64_t p = 0; p < s.points; ++p) {
        const int64_t i = first + l * s.points + p;
        BilinearCorners<acc_t> c;
        if (!bilinear_corners<acc_t>(to_acc(locations[2 * i]), to_acc(locations[2 * i + 1]), height, width, c)) {
          if (lane == 0) write_point_grads(grad_locations, grad_weights, i, 0.0f, 0.0f, 0.0f);
          continue;
        }
        const acc_t a = to_acc(weights[i]);
        acc_t g_weight = 0, g_x = 0, g_y = 0;
        for (int64_t j = lane; j < s.head_dim; j += kWarpSize) {
          const acc_t g = to_acc(go[j]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (c.token[k] < 0) continue;
            const int64_t offset = c.token[k] * token_stride + j;
            const acc_t dot = g * to_acc(level_value[offset]);
            g_weight += c.weight[k] * dot;
            g_x += c.d_dx[k] * dot;
            g_y += c.d_dy[k] * dot;
            atomicAdd(level_grad + offset, a * c.weight[k] * g);
          }
        }
        g_weight = warp_sum(g_weight);
        g_x = warp_sum(g_x);
        g_y = warp_sum(g_y);
        if (lane == 0) write_point_grads(grad_locations, grad_weights, i, a * g_x, a * g_y, g_weight);
      }
    }
  }
}

dim3 grid_for(const MsdaShape& s) {
  const int64_t rows = s.batch * s.queries * s.heads;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  return dim3(static_cast<unsigned>(blocks < (1 << 30) ? blocks : (1 << 30)));
}

template <typename scalar_t, typename loc_t>
cudaError_t forward_typed(const void* value, const int64_t* shapes, const int64_t* starts, const void* locations,
                          const void* weights, void* output, const MsdaShape& s, cudaStream_t stream) {
  if (s.batch * s.queries * s.heads == 0) return cudaSuccess;
  msda_forward_kernel<scalar_t, loc_t><<<grid_for(s), dim3(kWarpSize, kRowsPerBlock), 0, stream>>>(
      static_cast<const scalar_t*>(value), shapes, starts, static_cast<const loc_t*>(locations),
      static_cast<const loc_t*>(weights), static_cast<scalar_t*>(output), s);
  return cudaGetLastError();
}

template <typename scalar_t, typename loc_t>
cudaError_t backward_typed(const void* grad_output, const void* value, const int64_t* shapes, const int64_t* starts,
                           const void* locations, const void* weights, void* grad_value, void* grad_locations,
                           void* grad_weights, const MsdaShape& s, cudaStream_t stream) {
  if (s.batch * s.queries * s.heads == 0) return cudaSuccess;
  using acc_t = typename AccOf<scalar_t>::type;
  msda_backward_kernel<scalar_t, loc_t><<<grid_for(s), dim3(kWarpSize, kRowsPerBlock), 0, stream>>>(
      static_cast<const scalar_t*>(grad_output), static_cast<const scalar_t*>(value), shapes, starts,
      static_cast<const loc_t*>(locations), static_cast<const loc_t*>(weights), static_cast<acc_t*>(grad_value),
      static_cast<loc_t*>(grad_locations), static_cast<loc_t*>(grad_weights), s);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_msda_forward(MsdaDtype value_dtype, MsdaDtype location_dtype, const void* value,
                                const int64_t* spatial_shapes, const int64_t* level_start_index,
                                const void* sampling_locations, const void* attention_weights, void* output,
                                const MsdaShape& shape, cudaStream_t stream) {
  return dispatch_dtypes(value_dtype, location_dtype, [&]<typename scalar_t, typename loc_t>() {
    return forward_typed<scalar_t, loc_t>(value, spatial_shapes, level_start_index, sampling_locations,
                                          attention_weights, output, shape, stream);
  });
}

cudaError_t launch_msda_backward(MsdaDtype value_dtype, MsdaDtype location_dtype, const void* grad_output,
                                 const void* value, const int64_t* spatial_shapes, const int64_t* level_start_index,
                                 const void* sampling_locations, const void* attention_weights, void* grad_value_acc,
                                 void* grad_locations, void* grad_weights, const MsdaShape& shape,
                                 cudaStream_t stream) {
  return dispatch_dtypes(value_dtype, location_dtype, [&]<typename scalar_t, typename loc_t>() {
    return backward_typed<scalar_t, loc_t>(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                                           attention_weights, grad_value_acc, grad_locations, grad_weights, shape,
                                           stream);
  });
}

}  // namespace ecom2f
