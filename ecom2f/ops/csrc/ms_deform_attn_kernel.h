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

// output: [N, Q, H*D] in the input dtype.
cudaError_t launch_msda_forward(MsdaDtype dtype, const void* value, const int64_t* spatial_shapes,
                                const int64_t* level_start_index, const void* sampling_locations,
                                const void* attention_weights, void* output, const MsdaShape& shape,
                                cudaStream_t stream);

// grad_value_acc: [N, S, H, D], zero-initialised, float64 for float64 inputs and float32
// otherwise (fp16/bf16 gradients accumulate in fp32). grad_locations / grad_weights are
// written in the input dtype.
cudaError_t launch_msda_backward(MsdaDtype dtype, const void* grad_output, const void* value,
                                 const int64_t* spatial_shapes, const int64_t* level_start_index,
                                 const void* sampling_locations, const void* attention_weights, void* grad_value_acc,
                                 void* grad_locations, void* grad_weights, const MsdaShape& shape,
                                 cudaStream_t stream);

}  // namespace ecom2f
