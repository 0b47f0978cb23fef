// Tensor-level CUDA entry points: checks, allocation, dtype and stream selection.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ms_deform_attn.h"
#include "ms_deform_attn_kernel.h"

namespace ecom2f {
namespace {

MsdaDtype to_msda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return MsdaDtype::kFloat32;
    case at::kDouble:
      return MsdaDtype::kFloat64;
    case at::kHalf:
      return MsdaDtype::kFloat16;
    case at::kBFloat16:
      return MsdaDtype::kBFloat16;
    default:
      TORCH_CHECK(false, "ms_deform_attn (CUDA): dtype ", t, " is not supported; use float32, float64, float16 or bfloat16");
  }
}

MsdaShape to_shape(const MsdaDims& d) {
  return MsdaShape{d.batch, d.tokens, d.heads, d.head_dim, d.queries, d.levels, d.points};
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value_in, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const MsdaDims d =
      check_msda_inputs(value_in, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto value = value_in.contiguous();
  const auto locations = sampling_locations.contiguous();
  const auto weights = attention_weights.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  auto output = at::empty({d.batch, d.queries, d.heads * d.head_dim}, value.options());
  if (output.numel() == 0) return output;
  if (value.numel() == 0) return output.zero_();
  C10_CUDA_CHECK(launch_msda_forward(to_msda_dtype(value.scalar_type()), value.data_ptr(), shapes.data_ptr<int64_t>(),
                                     starts.data_ptr<int64_t>(), locations.data_ptr(), weights.data_ptr(),
                                     output.data_ptr(), to_shape(d), c10::cuda::getCurrentCUDAStream()));
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output_in, const at::Tensor& value_in, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const MsdaDims d =
      check_msda_inputs(value_in, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output_in.dim() == 3 && grad_output_in.size(0) == d.batch && grad_output_in.size(1) == d.queries &&
                  grad_output_in.size(2) == d.heads * d.head_dim,
              "ms_deform_attn_backward: grad_output must be [N, Q, H*D] = [", d.batch, ", ", d.queries, ", ",
              d.heads * d.head_dim, "], got ", grad_output_in.sizes());
  TORCH_CHECK(grad_output_in.device() == value_in.device(), "ms_deform_attn_backward: grad_output is on ",
              grad_output_in.device(), " but value is on ", value_in.device());
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto grad_output = grad_output_in.to(value_in.scalar_type()).contiguous();
  const auto value = value_in.contiguous();
  const auto locations = sampling_locations.contiguous();
  const auto weights = attention_weights.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto dtype = value.scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_dtype));
  auto grad_locations = at::zeros(locations.sizes(), locations.options());
  auto grad_weights = at::zeros(weights.sizes(), weights.options());
  if (grad_weights.numel() > 0 && value.numel() > 0) {
    C10_CUDA_CHECK(launch_msda_backward(to_msda_dtype(dtype), grad_output.data_ptr(), value.data_ptr(),
                                        shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), locations.data_ptr(),
                                        weights.data_ptr(), grad_value_acc.data_ptr(), grad_locations.data_ptr(),
                                        grad_weights.data_ptr(), to_shape(d), c10::cuda::getCurrentCUDAStream()));
  }
  auto grad_value = acc_dtype == dtype ? grad_value_acc : grad_value_acc.to(dtype);
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace ecom2f

TORCH_LIBRARY_IMPL(ecom2f, CUDA, m) {
  m.impl("ms_deform_attn", &ecom2f::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ecom2f::ms_deform_attn_backward_cuda);
}
