// Declarations shared by the op's registration, CPU and CUDA translation units.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace ecom2f {

struct MsdaDims {
  int64_t batch;     // N
  int64_t tokens;    // S = sum over levels of h * w
  int64_t heads;     // H
  int64_t head_dim;  // D
  int64_t queries;   // Q
  int64_t levels;    // L
  int64_t points;    // P
};

// The GPU code compiled into this library, comma-separated as cuobjdump names it
// ("sm_80,sm_90,compute_90": cubins, then PTX); "" for a CPU-only build, or when setup.py
// could not tell (an arch list torch expands itself, such as "native").
const char* cuda_targets();

// Whether t is float16 or bfloat16.
bool is_reduced_float(at::ScalarType t);

// Allowed: all three of one floating dtype, or value float16/bfloat16 with float32
// sampling_locations and attention_weights (the mixed-precision case).
void check_msda_dtypes(at::ScalarType value, at::ScalarType locations, at::ScalarType weights);

// Ranks, sizes, dtypes and devices; raises c10::Error naming the argument.
MsdaDims check_msda_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                           const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                           const at::Tensor& attention_weights);

// Value-dependent layout checks (S == sum h*w, starts == cumulative sizes). Reads the
// two small index tensors, which must be on the CPU.
void check_level_layout(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t tokens);

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights);

}  // namespace ecom2f
