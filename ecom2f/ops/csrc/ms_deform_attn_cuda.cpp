// Tensor-level CUDA entry points: checks, allocation, dtype, stream and kernel selection.
//
// Kernel selection (ECOM2F_MSDA_KERNEL, read on every call so tests can switch it):
// unset, "" or "default": the warp-per-row kernels of ms_deform_attn_kernel.cu;
// "vectorized": the kernels of ms_deform_attn_kernel_vectorized.cu where they apply, the
// default ones elsewhere; "vectorized-strict": the vectorized ones or an error saying why
// they do not apply (for tests and benchmarks, which must know what ran).
//
// Nothing here reads spatial_shapes / level_start_index on the host (that would be a
// device sync); the kernels skip any level whose tokens fall outside value instead.
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <string_view>

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

enum class KernelChoice { kDefault, kVectorized, kVectorizedStrict };

KernelChoice kernel_choice() {
  const char* env = std::getenv("ECOM2F_MSDA_KERNEL");
  const std::string_view name = env == nullptr ? "" : env;
  if (name.empty() || name == "default") return KernelChoice::kDefault;
  if (name == "vectorized") return KernelChoice::kVectorized;
  if (name == "vectorized-strict") return KernelChoice::kVectorizedStrict;
  TORCH_CHECK(false, "ECOM2F_MSDA_KERNEL=", name,
              " names no deformable-attention kernel; use default, vectorized or vectorized-strict (or unset it)");
}

// Whether this call runs the vectorized kernels; vector_a / vector_b as in
// msda_vectorized_unsupported.
bool use_vectorized(MsdaDtype dtype, const MsdaShape& s, const void* vector_a, const void* vector_b) {
  const KernelChoice choice = kernel_choice();
  if (choice == KernelChoice::kDefault) return false;
  const char* reason = msda_vectorized_unsupported(dtype, s, vector_a, vector_b);
  TORCH_CHECK(reason == nullptr || choice != KernelChoice::kVectorizedStrict,
              "ECOM2F_MSDA_KERNEL=vectorized-strict, but the vectorized kernel does not handle this call: ", reason,
              " (N=", s.batch, ", S=", s.tokens, ", H=", s.heads, ", D=", s.head_dim, ", Q=", s.queries,
              ", L=", s.levels, ", P=", s.points, "); use ECOM2F_MSDA_KERNEL=vectorized to fall back to the default kernel");
  return reason == nullptr;
}

// C10_CUDA_CHECK, with the fix for the one launch error a user can cause: a GPU this
// build has no code for (ECOM2F_CUDA_TARGETS lists what setup.py compiled).
void check_launch(cudaError_t error) {
  if (error == cudaErrorNoKernelImageForDevice) {
    int device = 0, major = 0, minor = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    TORCH_CHECK(false, "ms_deform_attn: ecom2f._C has no CUDA code for this GPU (compute capability ", major, ".",
                minor, "; the library holds ", *cuda_targets() ? cuda_targets() : "unrecorded targets",
                "). Rebuild it for this GPU: TORCH_CUDA_ARCH_LIST=", major, ".", minor,
                " pip install --no-build-isolation --no-deps -e .");
  }
  C10_CUDA_CHECK(error);
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
  const MsdaShape shape = to_shape(d);
  const MsdaDtype dtype = to_msda_dtype(value.scalar_type());
  const auto launch = use_vectorized(dtype, shape, value.data_ptr(), output.data_ptr())
                          ? launch_msda_forward_vectorized
                          : launch_msda_forward;
  check_launch(launch(dtype, to_msda_dtype(locations.scalar_type()), value.data_ptr(), shapes.data_ptr<int64_t>(),
                      starts.data_ptr<int64_t>(), locations.data_ptr(), weights.data_ptr(), output.data_ptr(), shape,
                      c10::cuda::getCurrentCUDAStream()));
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
  // grad_value is summed with atomicAdd, in whatever order the threads reach it.
  at::globalContext().alertNotDeterministic("ms_deform_attn_backward_cuda");
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto grad_output = grad_output_in.to(value_in.scalar_type()).contiguous();
  const auto value = value_in.contiguous();
  const auto locations = sampling_locations.contiguous();
  const auto weights = attention_weights.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto dtype = value.scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  // The atomics need a zeroed accumulator; the kernels write every element of the
  // location and weight gradients (in the locations' dtype: float32 when mixed).
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_dtype));
  auto grad_locations = at::empty(locations.sizes(), locations.options());
  auto grad_weights = at::empty(weights.sizes(), weights.options());
  if (grad_weights.numel() > 0 && value.numel() > 0) {
    const MsdaShape shape = to_shape(d);
    const MsdaDtype msda_dtype = to_msda_dtype(dtype);
    const auto launch = use_vectorized(msda_dtype, shape, value.data_ptr(), grad_output.data_ptr())
                            ? launch_msda_backward_vectorized
                            : launch_msda_backward;
    check_launch(launch(msda_dtype, to_msda_dtype(locations.scalar_type()), grad_output.data_ptr(), value.data_ptr(),
                        shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), locations.data_ptr(),
                        weights.data_ptr(), grad_value_acc.data_ptr(), grad_locations.data_ptr(),
                        grad_weights.data_ptr(), shape, c10::cuda::getCurrentCUDAStream()));
  } else {
    // Some dimension is zero: nothing is sampled, the gradients are zero (or empty).
    grad_locations.zero_();
    grad_weights.zero_();
  }
  auto grad_value = acc_dtype == dtype ? grad_value_acc : grad_value_acc.to(dtype);
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace ecom2f

TORCH_LIBRARY_IMPL(ecom2f, CUDA, m) {
  m.impl("ms_deform_attn", &ecom2f::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ecom2f::ms_deform_attn_backward_cuda);
}
