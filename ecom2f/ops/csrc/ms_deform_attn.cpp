// Schema of the ecom2f::ms_deform_attn op, its input checks, and the Python module stub
// that loads this library (the kernels register themselves from their own files).
#include <Python.h>
#include <torch/library.h>

#include "ms_deform_attn.h"
#include "ms_deform_attn_common.h"

// setup.py passes the CUDA targets it compiled as -DECOM2F_CUDA_TARGETS=sm_80,sm_90,compute_90
// (plain tokens, so no quoting survives or breaks the build commands).
#define ECOM2F_STRINGIFY(...) #__VA_ARGS__
#define ECOM2F_EXPAND_STRINGIFY(...) ECOM2F_STRINGIFY(__VA_ARGS__)

namespace ecom2f {

const char* cuda_targets() {
#if defined(ECOM2F_CUDA_TARGETS)
  return ECOM2F_EXPAND_STRINGIFY(ECOM2F_CUDA_TARGETS);
#else
  return "";
#endif
}

bool is_reduced_float(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

void check_msda_dtypes(at::ScalarType value, at::ScalarType locations, at::ScalarType weights) {
  TORCH_CHECK(value == at::kFloat || value == at::kDouble || is_reduced_float(value),
              "ms_deform_attn: value must be float32, float64, float16 or bfloat16, got ", value);
  // bf16 locations quantise to 2^-8 of the map (up to ~0.6 px on a 167-wide level), so
  // half-precision values may pair with fp32 locations and weights.
  const auto allowed = [&](at::ScalarType t) { return t == value || (is_reduced_float(value) && t == at::kFloat); };
  TORCH_CHECK(allowed(locations) && allowed(weights), "ms_deform_attn: sampling_locations (", locations,
              ") and attention_weights (", weights, ") do not fit value (", value,
              "): they must have value's dtype, or float32 when value is float16/bfloat16 (cast them with .float())");
  TORCH_CHECK(locations == weights, "ms_deform_attn: sampling_locations (", locations, ") and attention_weights (",
              weights, ") must share one dtype; cast both with .float()");
}

MsdaDims check_msda_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                           const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                           const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be [N, S, H, D], got shape ", value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be [L, 2] (h, w), got shape ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1, "ms_deform_attn: level_start_index must be [L], got shape ",
              level_start_index.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be [N, Q, H, L, P, 2], got shape ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, "ms_deform_attn: attention_weights must be [N, Q, H, L, P], got shape ",
              attention_weights.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64, got ",
              spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());
  check_msda_dtypes(value.scalar_type(), sampling_locations.scalar_type(), attention_weights.scalar_type());
  const auto device = value.device();
  TORCH_CHECK(spatial_shapes.device() == device && level_start_index.device() == device &&
                  sampling_locations.device() == device && attention_weights.device() == device,
              "ms_deform_attn: all inputs must be on one device; value is on ", device, ", spatial_shapes on ",
              spatial_shapes.device(), ", level_start_index on ", level_start_index.device(),
              ", sampling_locations on ", sampling_locations.device(), ", attention_weights on ",
              attention_weights.device());

  MsdaDims d{value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
             spatial_shapes.size(0), sampling_locations.size(4)};
  TORCH_CHECK(level_start_index.size(0) == d.levels, "ms_deform_attn: level_start_index has ",
              level_start_index.size(0), " entries but spatial_shapes has ", d.levels, " levels");
  TORCH_CHECK(sampling_locations.size(0) == d.batch && sampling_locations.size(2) == d.heads &&
                  sampling_locations.size(3) == d.levels,
              "ms_deform_attn: sampling_locations ", sampling_locations.sizes(), " does not match N=", d.batch,
              ", H=", d.heads, ", L=", d.levels, " from value and spatial_shapes");
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights ", attention_weights.sizes(),
              " must equal sampling_locations.shape[:5] = ", sampling_locations.sizes().slice(0, 5));
  return d;
}

void check_level_layout(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t tokens) {
  TORCH_INTERNAL_ASSERT(spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu());
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const int64_t* hw = shapes.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    TORCH_CHECK(hw[2 * l] > 0 && hw[2 * l + 1] > 0, "ms_deform_attn: spatial_shapes[", l, "] = (", hw[2 * l], ", ",
                hw[2 * l + 1], ") must be positive");
    TORCH_CHECK(hw[2 * l] <= kMaxLevelSide && hw[2 * l + 1] <= kMaxLevelSide, "ms_deform_attn: spatial_shapes[", l,
                "] = (", hw[2 * l], ", ", hw[2 * l + 1], ") has a side above ", kMaxLevelSide,
                " (2^24), beyond which float32 cannot address single pixels");
    TORCH_CHECK(start[l] == total, "ms_deform_attn: level_start_index[", l, "] = ", start[l],
                " is inconsistent with spatial_shapes (expected ", total, ", the sum of h*w of the levels before)");
    // Sides are at most 2^24, so h*w cannot overflow; stopping once past S keeps the sum small.
    total += hw[2 * l] * hw[2 * l + 1];
    TORCH_CHECK(total <= tokens, "ms_deform_attn: value has S=", tokens, " tokens but spatial_shapes[0..", l,
                "] already sum to ", total, " (S must equal sum of h*w)");
  }
  TORCH_CHECK(total == tokens, "ms_deform_attn: value has S=", tokens,
              " tokens but spatial_shapes sums to ", total, " (S must equal sum of h*w)");
}

}  // namespace ecom2f

TORCH_LIBRARY(ecom2f, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
}

// `import ecom2f._C` loads this library, which registers the op with the dispatcher. The
// module's one attribute, cuda_targets, says which GPU code it holds (see cuda_targets()).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "ecom2f custom ops", -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr && PyModule_AddStringConstant(m, "cuda_targets", ecom2f::cuda_targets()) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
