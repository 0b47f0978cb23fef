// CPU kernels of multi-scale deformable attention.
//
// Forward: parallel over (n, q); each task gathers the 4 corners of every sampling
// point and accumulates whole head vectors (D contiguous values), which vectorises.
// Backward: parallel over (n, h), so each task owns the grad_value slice
// [n, :, h, :] and scatters into it without atomics; the location and attention
// gradients come from one dot product per corner.
// Neither pass allocates anything proportional to N*Q*H*L*P*D. Both are deterministic:
// no atomics, and every output element is computed by one task in a fixed order, so the
// results do not depend on the number of threads.
//
// The entry points refuse an inconsistent level layout (check_level_layout: reading two
// small host tensors costs nothing here); the kernels still skip any level that fails
// level_in_bounds, as the CUDA kernels do, so they cannot go out of bounds on their own.
//
// scalar_t is the dtype of value (and of output / grad_output), loc_t that of the
// sampling locations and attention weights: either scalar_t, or float with fp16/bf16
// values (mixed precision). Accumulation is in acc_t (float, or double for double).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "ms_deform_attn.h"
#include "ms_deform_attn_common.h"

namespace ecom2f {
namespace {

// Where the compiler can, the row functions are also built for AVX2+FMA and picked at
// load time (GCC/Clang target_clones), so one wheel runs everywhere and fast on x86-64-v3.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define MSDA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MSDA_CPU_CLONES
#endif

// One output row (n, q, h): acc[D] = sum over levels, points and corners.
template <typename scalar_t, typename loc_t, typename acc_t>
MSDA_CPU_CLONES void forward_row(const scalar_t* value_nh, const int64_t* shapes, const int64_t* starts,
                                 const loc_t* locations, const loc_t* weights, acc_t* acc, scalar_t* out,
                                 int64_t L, int64_t P, int64_t D, int64_t tokens, int64_t token_stride) {
  BilinearCorners<acc_t> c;
  for (int64_t j = 0; j < D; ++j) acc[j] = acc_t(0);
  for (int64_t l = 0; l < L; ++l) {
    if (!level_in_bounds(starts[l], shapes[2 * l], shapes[2 * l + 1], tokens)) continue;
    const scalar_t* level_value = value_nh + starts[l] * token_stride;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = l * P + p;
      if (!bilinear_corners<acc_t>(locations[2 * i], locations[2 * i + 1], shapes[2 * l], shapes[2 * l + 1], c)) {
        continue;
      }
      const acc_t a = weights[i];
      for (int k = 0; k < 4; ++k) {
        if (c.token[k] < 0) continue;
        const acc_t coeff = a * c.weight[k];
        const scalar_t* v = level_value + c.token[k] * token_stride;
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) acc[j] += coeff * static_cast<acc_t>(v[j]);
      }
    }
  }
  for (int64_t j = 0; j < D; ++j) out[j] = static_cast<scalar_t>(acc[j]);
}

template <typename scalar_t, typename loc_t, typename acc_t>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts, const loc_t* locations,
                    const loc_t* weights, scalar_t* output, const MsdaDims& d) {
  const int64_t H = d.heads, D = d.head_dim, L = d.levels, P = d.points;
  const int64_t token_stride = H * D;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, H * L * P));
  at::parallel_for(0, d.batch * d.queries, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(D);
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / d.queries;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t row = nq * H + h;
        forward_row<scalar_t, loc_t, acc_t>(value + n * d.tokens * token_stride + h * D, shapes, starts,
                                            locations + 2 * row * L * P, weights + row * L * P, acc.data(),
                                            output + row * D, L, P, D, d.tokens, token_stride);
      }
    }
  });
}

// The gradients of one row (n, q, h); grad_value_nh is owned by the calling task.
template <typename scalar_t, typename loc_t, typename acc_t>
MSDA_CPU_CLONES void backward_row(const scalar_t* go, const scalar_t* value_nh, const int64_t* shapes,
                                  const int64_t* starts, const loc_t* locations, const loc_t* weights,
                                  acc_t* grad_value_nh, loc_t* grad_locations, loc_t* grad_weights,
                                  int64_t L, int64_t P, int64_t D, int64_t tokens, int64_t token_stride) {
  BilinearCorners<acc_t> c;
  for (int64_t l = 0; l < L; ++l) {
    if (!level_in_bounds(starts[l], shapes[2 * l], shapes[2 * l + 1], tokens)) {
      for (int64_t i = l * P; i < (l + 1) * P; ++i) {
        grad_weights[i] = loc_t(0);
        grad_locations[2 * i] = loc_t(0);
        grad_locations[2 * i + 1] = loc_t(0);
      }
      continue;
    }
    const scalar_t* level_value = value_nh + starts[l] * token_stride;
    acc_t* level_grad = grad_value_nh + starts[l] * token_stride;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = l * P + p;
      if (!bilinear_corners<acc_t>(locations[2 * i], locations[2 * i + 1], shapes[2 * l], shapes[2 * l + 1], c)) {
        grad_weights[i] = loc_t(0);
        grad_locations[2 * i] = loc_t(0);
        grad_locations[2 * i + 1] = loc_t(0);
        continue;
      }
      const acc_t a = weights[i];
      acc_t g_weight = 0, g_x = 0, g_y = 0;
      for (int k = 0; k < 4; ++k) {
        if (c.token[k] < 0) continue;
        const scalar_t* v = level_value + c.token[k] * token_stride;
        acc_t* gv = level_grad + c.token[k] * token_stride;
        const acc_t coeff = a * c.weight[k];
        acc_t dot = 0;  // <grad_output, value at this corner>
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < D; ++j) {
          const acc_t g = static_cast<acc_t>(go[j]);
          dot += g * static_cast<acc_t>(v[j]);
          gv[j] += coeff * g;
        }
        g_weight += c.weight[k] * dot;
        g_x += c.d_dx[k] * dot;
        g_y += c.d_dy[k] * dot;
      }
      grad_weights[i] = static_cast<loc_t>(g_weight);
      grad_locations[2 * i] = static_cast<loc_t>(a * g_x);
      grad_locations[2 * i + 1] = static_cast<loc_t>(a * g_y);
    }
  }
}

template <typename scalar_t, typename loc_t, typename acc_t>
void backward_kernel(const scalar_t* grad_output, const scalar_t* value, const int64_t* shapes,
                     const int64_t* starts, const loc_t* locations, const loc_t* weights,
                     acc_t* grad_value, loc_t* grad_locations, loc_t* grad_weights, const MsdaDims& d) {
  const int64_t H = d.heads, D = d.head_dim, L = d.levels, P = d.points, Q = d.queries;
  const int64_t token_stride = H * D;
  at::parallel_for(0, d.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const int64_t value_offset = n * d.tokens * token_stride + h * D;
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t row = (n * Q + q) * H + h;
        backward_row<scalar_t, loc_t, acc_t>(grad_output + row * D, value + value_offset, shapes, starts,
                                             locations + 2 * row * L * P, weights + row * L * P,
                                             grad_value + value_offset, grad_locations + 2 * row * L * P,
                                             grad_weights + row * L * P, L, P, D, d.tokens, token_stride);
      }
    }
  });
}

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Calls body.template operator()<loc_t>() with loc_t = scalar_t, or float for fp16/bf16
// values with float32 locations (check_msda_dtypes has refused every other pairing).
template <typename scalar_t, typename Body>
void dispatch_location_type(at::ScalarType location_type, Body&& body) {
  if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
    if (location_type == at::kFloat) {
      body.template operator()<float>();
      return;
    }
  }
  TORCH_INTERNAL_ASSERT(location_type == c10::CppTypeToScalarType<scalar_t>::value);
  body.template operator()<scalar_t>();
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value_in, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations_in,
                                      const at::Tensor& attention_weights_in) {
  const MsdaDims d =
      check_msda_inputs(value_in, spatial_shapes, level_start_index, sampling_locations_in, attention_weights_in);
  check_level_layout(spatial_shapes, level_start_index, d.tokens);
  const auto value = value_in.contiguous();
  const auto locations = sampling_locations_in.contiguous();
  const auto weights = attention_weights_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  auto output = at::empty({d.batch, d.queries, d.heads * d.head_dim}, value.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    dispatch_location_type<scalar_t>(locations.scalar_type(), [&]<typename loc_t>() {
      forward_kernel<scalar_t, loc_t, acc_type_t<scalar_t>>(
          value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
          locations.data_ptr<loc_t>(), weights.data_ptr<loc_t>(), output.data_ptr<scalar_t>(), d);
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& value_in, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in) {
  const MsdaDims d =
      check_msda_inputs(value_in, spatial_shapes, level_start_index, sampling_locations_in, attention_weights_in);
  check_level_layout(spatial_shapes, level_start_index, d.tokens);
  TORCH_CHECK(grad_output_in.dim() == 3 && grad_output_in.size(0) == d.batch && grad_output_in.size(1) == d.queries &&
                  grad_output_in.size(2) == d.heads * d.head_dim,
              "ms_deform_attn_backward: grad_output must be [N, Q, H*D] = [", d.batch, ", ", d.queries, ", ",
              d.heads * d.head_dim, "], got ", grad_output_in.sizes());
  const auto grad_output = grad_output_in.to(value_in.scalar_type()).contiguous();
  const auto value = value_in.contiguous();
  const auto locations = sampling_locations_in.contiguous();
  const auto weights = attention_weights_in.contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();

  // Reduced-precision grad_value accumulates in fp32 and is cast once at the end.
  const bool reduced = value.scalar_type() == at::kBFloat16 || value.scalar_type() == at::kHalf;
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(reduced ? at::kFloat : value.scalar_type()));
  auto grad_locations = at::empty(locations.sizes(), locations.options());
  auto grad_weights = at::empty(weights.sizes(), weights.options());
  if (grad_weights.numel() > 0 && value.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
      using acc_t = acc_type_t<scalar_t>;
      dispatch_location_type<scalar_t>(locations.scalar_type(), [&]<typename loc_t>() {
        backward_kernel<scalar_t, loc_t, acc_t>(
            grad_output.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
            starts.data_ptr<int64_t>(), locations.data_ptr<loc_t>(), weights.data_ptr<loc_t>(),
            grad_value_acc.data_ptr<acc_t>(), grad_locations.data_ptr<loc_t>(), grad_weights.data_ptr<loc_t>(), d);
      });
    });
  } else {
    grad_locations.zero_();
    grad_weights.zero_();
  }
  auto grad_value = reduced ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace ecom2f

TORCH_LIBRARY_IMPL(ecom2f, CPU, m) {
  m.impl("ms_deform_attn", &ecom2f::ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ecom2f::ms_deform_attn_backward_cpu);
}
