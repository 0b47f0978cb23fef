// Vectorized CUDA kernels of multi-scale deformable attention. Opt-in
// (ECOM2F_MSDA_KERNEL=vectorized, see ms_deform_attn_cuda.cpp) until a GPU run has
// compared them with the default kernels of ms_deform_attn_kernel.cu, which stay the
// fallback for every problem these do not handle (msda_vectorized_unsupported).
//
// Work layout: one thread per (n, q, h, chunk), a chunk being the V channels that one
// 128-bit access holds (8 fp16/bf16 or 4 fp32 values). The G = D / V threads of a head
// are adjacent lanes of one warp (G is a power of two, at most 32), so a warp covers
// 32 / G heads: all 8 heads of a query at D = 32 in bf16. Levels and points are template
// parameters (L = 3 or 4, P = 4), so the point loops unroll. Index math is int32: the
// host side has checked that every index fits.
//
// Accumulation is in fp32. The backward scatters grad_value with fp32 atomics into an fp32
// buffer and sums the per-point gradients over the G lanes of a head with xor shuffles
// (which stay inside aligned groups of G lanes). Like the default kernels, both skip a
// level that fails level_in_bounds and write every element of their outputs, zeros
// included.
#include <climits>
#include <cstdint>
#include <type_traits>

#include "ms_deform_attn_common.h"
#include "ms_deform_attn_device.cuh"
#include "ms_deform_attn_kernel.h"

namespace ecom2f {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kPoints = 4;

template <typename scalar_t>
constexpr int kVec = 16 / static_cast<int>(sizeof(scalar_t));

// V values of one chunk, aligned so that one load or store is a single 128-bit access.
template <typename scalar_t>
struct alignas(16) Chunk {
  scalar_t v[kVec<scalar_t>];
};

template <typename scalar_t>
__device__ __forceinline__ void load_chunk(const scalar_t* p, float (&out)[kVec<scalar_t>]) {
  const Chunk<scalar_t> c = *reinterpret_cast<const Chunk<scalar_t>*>(p);
#pragma unroll
  for (int j = 0; j < kVec<scalar_t>; ++j) out[j] = to_acc(c.v[j]);
}

template <typename scalar_t>
__device__ __forceinline__ void store_chunk(scalar_t* p, const float (&in)[kVec<scalar_t>]) {
  Chunk<scalar_t> c;
#pragma unroll
  for (int j = 0; j < kVec<scalar_t>; ++j) c.v[j] = from_acc<scalar_t>(in[j]);
  *reinterpret_cast<Chunk<scalar_t>*>(p) = c;
}

// Sum over each aligned group of 2^group_log2 lanes; every lane of the warp must call it.
__device__ __forceinline__ float group_sum(float v, int group_log2) {
  for (int offset = (1 << group_log2) >> 1; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// int32 sizes of one problem (see msda_vectorized_unsupported for why they fit).
struct VecShape {
  int tokens, heads, head_dim, queries;
  int group_log2;  // log2 of G, the threads per head
  int threads;     // N * Q * H * G
};

// Where thread t works: row = (n * Q + q) * H + h, and the first channel of its chunk.
struct ThreadPlace {
  int row, n, chunk, channel;
};

template <typename scalar_t>
__device__ __forceinline__ ThreadPlace place_of(int t, const VecShape& s) {
  ThreadPlace p;
  p.row = t >> s.group_log2;
  p.chunk = t & ((1 << s.group_log2) - 1);
  p.n = p.row / (s.queries * s.heads);
  p.channel = (p.row % s.heads) * s.head_dim + p.chunk * kVec<scalar_t>;
  return p;
}

template <typename scalar_t, typename loc_t, int L>
__global__ void __launch_bounds__(kThreadsPerBlock)
    msda_forward_vectorized(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                            const int64_t* __restrict__ starts, const loc_t* __restrict__ locations,
                            const loc_t* __restrict__ weights, scalar_t* __restrict__ output, const VecShape s) {
  constexpr int V = kVec<scalar_t>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x;
  if (t >= s.threads) return;  // the forward has no shuffles
  const ThreadPlace place = place_of<scalar_t>(static_cast<int>(t), s);
  const int token_stride = s.heads * s.head_dim;
  const scalar_t* value_n = value + place.n * s.tokens * token_stride + place.channel;
  const loc_t* loc = locations + place.row * (L * kPoints * 2);
  const loc_t* att = weights + place.row * (L * kPoints);
  float acc[V] = {};
#pragma unroll
  for (int l = 0; l < L; ++l) {
    const int64_t start = starts[l], height = shapes[2 * l], width = shapes[2 * l + 1];
    if (!level_in_bounds(start, height, width, s.tokens)) continue;
    const scalar_t* level_value = value_n + static_cast<int>(start) * token_stride;
#pragma unroll
    for (int p = 0; p < kPoints; ++p) {
      const int i = l * kPoints + p;
      BilinearCorners<float, int> c;
      if (!bilinear_corners<float, int>(to_acc(loc[2 * i]), to_acc(loc[2 * i + 1]), static_cast<int>(height),
                                        static_cast<int>(width), c)) {
        continue;
      }
      const float a = to_acc(att[i]);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (c.token[k] < 0) continue;
        float v[V];
        load_chunk(level_value + c.token[k] * token_stride, v);
        const float coeff = a * c.weight[k];
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += coeff * v[j];
      }
    }
  }
  store_chunk(output + place.row * s.head_dim + place.chunk * V, acc);
}

template <typename scalar_t, typename loc_t, int L>
__global__ void __launch_bounds__(kThreadsPerBlock)
    msda_backward_vectorized(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ value,
                             const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                             const loc_t* __restrict__ locations, const loc_t* __restrict__ weights,
                             float* __restrict__ grad_value, loc_t* __restrict__ grad_locations,
                             loc_t* __restrict__ grad_weights, const VecShape s) {
  constexpr int V = kVec<scalar_t>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x;
  // Every lane of a warp must reach the shuffles, so only wholly idle warps leave. The
  // idle lanes of the last warp redo the last thread's reads but write nothing; since
  // s.threads is a multiple of G they fill whole groups and never mix with live lanes.
  if (t - static_cast<int64_t>(threadIdx.x % 32) >= s.threads) return;
  const bool live = t < s.threads;
  const ThreadPlace place = place_of<scalar_t>(live ? static_cast<int>(t) : s.threads - 1, s);
  const bool leader = live && place.chunk == 0;
  const int token_stride = s.heads * s.head_dim;
  const int value_offset = place.n * s.tokens * token_stride + place.channel;
  const int first = place.row * (L * kPoints);  // index of the thread's point (l, p) = (0, 0)
  float g[V];
  load_chunk(grad_output + place.row * s.head_dim + place.chunk * V, g);
#pragma unroll
  for (int l = 0; l < L; ++l) {
    const int64_t start = starts[l], height = shapes[2 * l], width = shapes[2 * l + 1];
    // The same for every thread of the grid, so the shuffles below stay uniform.
    if (!level_in_bounds(start, height, width, s.tokens)) {
      if (leader) {
        for (int i = first + l * kPoints; i < first + (l + 1) * kPoints; ++i) {
          write_point_grads(grad_locations, grad_weights, i, 0.0f, 0.0f, 0.0f);
        }
      }
      continue;
    }
    const int level_offset = value_offset + static_cast<int>(start) * token_stride;
#pragma unroll
    for (int p = 0; p < kPoints; ++p) {
      const int i = first + l * kPoints + p;
      BilinearCorners<float, int> c;
      const bool inside = bilinear_corners<float, int>(to_acc(locations[2 * i]), to_acc(locations[2 * i + 1]),
                                                       static_cast<int>(height), static_cast<int>(width), c);
      const float a = to_acc(weights[i]);
      float g_weight = 0.0f, g_x = 0.0f, g_y = 0.0f;
      if (inside) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.token[k] < 0) continue;
          const int offset = level_offset + c.token[k] * token_stride;
          float v[V];
          load_chunk(value + offset, v);
          float dot = 0.0f;  // <grad_output, value at this corner> over the chunk
#pragma unroll
          for (int j = 0; j < V; ++j) dot += g[j] * v[j];
          g_weight += c.weight[k] * dot;
          g_x += c.d_dx[k] * dot;
          g_y += c.d_dy[k] * dot;
          if (live) {
            const float coeff = a * c.weight[k];
#pragma unroll
            for (int j = 0; j < V; ++j) atomicAdd(grad_value + offset + j, coeff * g[j]);
          }
        }
      }
      g_weight = group_sum(g_weight, s.group_log2);
      g_x = group_sum(g_x, s.group_log2);
      g_y = group_sum(g_y, s.group_log2);
      if (leader) write_point_grads(grad_locations, grad_weights, i, a * g_x, a * g_y, g_weight);
    }
  }
}

// The checks of msda_vectorized_unsupported hold, so every size fits in int.
template <typename scalar_t>
VecShape vec_shape(const MsdaShape& s) {
  int group_log2 = 0;
  while ((int64_t(1) << group_log2) < s.head_dim / kVec<scalar_t>) ++group_log2;
  const int64_t threads = s.batch * s.queries * s.heads * (s.head_dim / kVec<scalar_t>);
  return VecShape{static_cast<int>(s.tokens), static_cast<int>(s.heads), static_cast<int>(s.head_dim),
                  static_cast<int>(s.queries), group_log2, static_cast<int>(threads)};
}

unsigned blocks_for(const VecShape& v) {
  return static_cast<unsigned>((static_cast<int64_t>(v.threads) + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

template <typename scalar_t, typename loc_t>
cudaError_t forward_typed(const void* value, const int64_t* shapes, const int64_t* starts, const void* locations,
                          const void* weights, void* output, const MsdaShape& s, cudaStream_t stream) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return cudaErrorInvalidValue;
  } else {
    const VecShape v = vec_shape<scalar_t>(s);
    if (v.threads == 0) return cudaSuccess;
    auto kernel = s.levels == 3 ? msda_forward_vectorized<scalar_t, loc_t, 3> : msda_forward_vectorized<scalar_t, loc_t, 4>;
    kernel<<<blocks_for(v), kThreadsPerBlock, 0, stream>>>(
        static_cast<const scalar_t*>(value), shapes, starts, static_cast<const loc_t*>(locations),
        static_cast<const loc_t*>(weights), static_cast<scalar_t*>(output), v);
    return cudaGetLastError();
  }
}

template <typename scalar_t, typename loc_t>
cudaError_t backward_typed(const void* grad_output, const void* value, const int64_t* shapes, const int64_t* starts,
                           const void* locations, const void* weights, void* grad_value, void* grad_locations,
                           void* grad_weights, const MsdaShape& s, cudaStream_t stream) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return cudaErrorInvalidValue;
  } else {
    const VecShape v = vec_shape<scalar_t>(s);
    if (v.threads == 0) return cudaSuccess;
    auto kernel =
        s.levels == 3 ? msda_backward_vectorized<scalar_t, loc_t, 3> : msda_backward_vectorized<scalar_t, loc_t, 4>;
    kernel<<<blocks_for(v), kThreadsPerBlock, 0, stream>>>(
        static_cast<const scalar_t*>(grad_output), static_cast<const scalar_t*>(value), shapes, starts,
        static_cast<const loc_t*>(locations), static_cast<const loc_t*>(weights), static_cast<float*>(grad_value),
        static_cast<loc_t*>(grad_locations), static_cast<loc_t*>(grad_weights), v);
    return cudaGetLastError();
  }
}

}  // namespace

const char* msda_vectorized_unsupported(MsdaDtype value_dtype, const MsdaShape& s, const void* vector_a,
                                        const void* vector_b) {
  if (value_dtype == MsdaDtype::kFloat64) return "value is float64 (it handles float32, float16 and bfloat16)";
  if ((s.levels != 3 && s.levels != 4) || s.points != kPoints) return "it handles L = 3 or 4 levels of P = 4 points";
  const int64_t vec = value_dtype == MsdaDtype::kFloat32 ? 4 : 8;
  const int64_t group = s.head_dim / vec;
  if (s.head_dim % vec != 0 || group < 1 || group > 32 || (group & (group - 1)) != 0) {
    return "the head dim D must be 4, 8, 16, ..., 128 for float32 (8, 16, ..., 256 for float16/bfloat16)";
  }
  if (reinterpret_cast<uintptr_t>(vector_a) % 16 != 0 || reinterpret_cast<uintptr_t>(vector_b) % 16 != 0) {
    return "value, output and grad_output must start on a 16-byte boundary";
  }
  const int64_t rows = s.batch * s.queries * s.heads;
  if (s.batch * s.tokens * s.heads * s.head_dim > INT_MAX || rows * s.head_dim > INT_MAX ||
      rows * s.levels * s.points * 2 > INT_MAX) {
    return "value, output or sampling_locations has more than 2^31 - 1 elements (its indices are int32)";
  }
  return nullptr;
}

cudaError_t launch_msda_forward_vectorized(MsdaDtype value_dtype, MsdaDtype location_dtype, const void* value,
                                           const int64_t* spatial_shapes, const int64_t* level_start_index,
                                           const void* sampling_locations, const void* attention_weights,
                                           void* output, const MsdaShape& shape, cudaStream_t stream) {
  if (msda_vectorized_unsupported(value_dtype, shape, value, output) != nullptr) return cudaErrorInvalidValue;
  return dispatch_dtypes(value_dtype, location_dtype, [&]<typename scalar_t, typename loc_t>() {
    return forward_typed<scalar_t, loc_t>(value, spatial_shapes, level_start_index, sampling_locations,
                                          attention_weights, output, shape, stream);
  });
}

cudaError_t launch_msda_backward_vectorized(MsdaDtype value_dtype, MsdaDtype location_dtype,
                                            const void* grad_output, const void* value,
                                            const int64_t* spatial_shapes, const int64_t* level_start_index,
                                            const void* sampling_locations, const void* attention_weights,
                                            void* grad_value_acc, void* grad_locations, void* grad_weights,
                                            const MsdaShape& shape, cudaStream_t stream) {
  if (msda_vectorized_unsupported(value_dtype, shape, value, grad_output) != nullptr) return cudaErrorInvalidValue;
  return dispatch_dtypes(value_dtype, location_dtype, [&]<typename scalar_t, typename loc_t>() {
    return backward_typed<scalar_t, loc_t>(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                                           attention_weights, grad_value_acc, grad_locations, grad_weights, shape,
                                           stream);
  });
}

}  // namespace ecom2f
