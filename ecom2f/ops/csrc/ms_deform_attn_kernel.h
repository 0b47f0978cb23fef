// Launchers of the CUDA kernels. Raw pointers only, so the .cu file needs no torch
// headers and compiles in seconds.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace ecom2f {

enum class MsdaDtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct MsdaShape {
  int64_t batch, tokens, heads, head_dim, queries, levels, points;
};

// value_dtype is the dtype of value, output and grad_output; location_dtype that of
// sampling_locations, attention_weights and their gradients: value_dtype, or kFloat32
// when value_dtype is kFloat16 / kBFloat16. Any other pairing returns cudaErrorInvalidValue.

// output: [N, Q, H*D] in value_dtype.
cudaError_t launch_msda_forward(MsdaDtype value_dtype, MsdaDtype location_dtype, const void* value,
                                const int64_t* spatial_shapes, const int64_t* level_start_index,
                                const void* sampling_locations, const void* attention_weights, void* output,
                                const MsdaShape& shape, cudaStream_t stream);

// grad_value_acc: [N, S, H, D], zero-initialised, float64 for float64 inputs and float32
// otherwise (fp16/bf16 gradients accumulate in fp32). grad_locations / grad_weights are
// written in location_dtype, every element (they need no initialisation).
cudaError_t launch_msda_backward(MsdaDtype value_dtype, MsdaDtype location_dtype, const void* grad_output,
                                 const void* value, const int64_t* spatial_shapes, const int64_t* level_start_index,
                                 const void* sampling_locations, const void* attention_weights, void* grad_value_acc,
                                 void* grad_locations, void* grad_weights, const MsdaShape& shape,
                                 cudaStream_t stream);

// The vectorized kernels (ms_deform_attn_kernel_vectorized.cu), opt-in through
// ECOM2F_MSDA_KERNEL (ms_deform_attn_cuda.cpp). Same contracts as the two launchers above,
// for the problems where msda_vectorized_unsupported returns nullptr; otherwise it returns
// why they do not apply, and the launchers return cudaErrorInvalidValue.
// vector_a / vector_b: the tensors read or written with 128-bit accesses (value and
// output in the forward, value and grad_output in the backward).
const char* msda_vectorized_unsupported(MsdaDtype value_dtype, const MsdaShape& shape, const void* vector_a,
                                        const void* vector_b);

cudaError_t launch_msda_forward_vectorized(MsdaDtype value_dtype, MsdaDtype location_dtype, const void* value,
                                           const int64_t* spatial_shapes, const int64_t* level_start_index,
                                           const void* sampling_locations, const void* attention_weights,
                                           void* output, const MsdaShape& shape, cudaStream_t stream);

// grad_value_acc is float32 here (value is never float64).
cudaError_t launch_msda_backward_vectorized(MsdaDtype value_dtype, MsdaDtype location_dtype,
                                            const void* grad_output, const void* value,
                                            const int64_t* spatial_shapes, const int64_t* level_start_index,
                                            const void* sampling_locations, const void* attention_weights,
                                            void* grad_value_acc, void* grad_locations, void* grad_weights,
                                            const MsdaShape& shape, cudaStream_t stream);

}  // namespace ecom2f
