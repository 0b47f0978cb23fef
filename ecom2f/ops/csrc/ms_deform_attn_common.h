// Bilinear sampling geometry shared by the CPU and CUDA kernels, so both compute the
// same corners, weights and weight derivatives (the error-prone part) from one source.
//
// Conventions (Deformable-DETR, grid_sample with align_corners=False, zero padding):
// a normalised location (x, y) in [0, 1] maps to the pixel (x * w - 0.5, y * h - 0.5);
// corners outside the map contribute zero.
//
// Level bounds: every kernel checks each level with level_in_bounds before touching its
// tokens and skips a level that fails (zero output, zero gradients). The CUDA entry
// points cannot afford the host read that would reject such a layout, and torch.compile,
// CUDA-graph capture and direct torch.ops calls skip the Python check, so this guard is
// what keeps an inconsistent spatial_shapes / level_start_index from reading (or, in the
// backward, writing) out of bounds.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

namespace ecom2f {

// Longest side of a level: above 2^24, fp32 pixel coordinates can no longer tell
// neighbouring pixels apart, and the corner indices below are computed in int.
constexpr int64_t kMaxLevelSide = int64_t(1) << 24;

// Whether the level's tokens [start, start + height * width) lie inside [0, tokens) and
// its sides are in (0, kMaxLevelSide]. Overflow-safe for any int64 inputs.
MSDA_HOST_DEVICE bool level_in_bounds(int64_t start, int64_t height, int64_t width, int64_t tokens) {
  if (start < 0 || start > tokens || height <= 0 || width <= 0) return false;
  if (height > kMaxLevelSide || width > kMaxLevelSide) return false;
  return height * width <= tokens - start;  // at most 2^48: no overflow
}

MSDA_HOST_DEVICE int floor_to_int(float v) { return static_cast<int>(floorf(v)); }
MSDA_HOST_DEVICE int floor_to_int(double v) { return static_cast<int>(floor(v)); }

// The four corners of one sampling location, in the order
// (y0, x0), (y0, x1), (y1, x0), (y1, x1). index_t: int64_t, or int where the caller
// knows every token index fits.
template <typename acc_t, typename index_t = int64_t>
struct BilinearCorners {
  index_t token[4];  // row * w + col inside the level, or -1 when the corner is outside
  acc_t weight[4];   // bilinear weight of each corner
  acc_t d_dx[4];     // d weight / d x, with x the normalised location (already times w)
  acc_t d_dy[4];     // d weight / d y (already times h)
};

// Returns false when the location lies entirely outside the map (then nothing is
// sampled and every gradient is zero); NaN locations also return false. The level must
// have passed level_in_bounds.
template <typename acc_t, typename index_t = int64_t>
MSDA_HOST_DEVICE bool bilinear_corners(acc_t loc_x, acc_t loc_y, index_t height, index_t width,
                                       BilinearCorners<acc_t, index_t>& c) {
  const acc_t x = loc_x * static_cast<acc_t>(width) - acc_t(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(height) - acc_t(0.5);
  if (!(x > acc_t(-1) && y > acc_t(-1) && x < static_cast<acc_t>(width) && y < static_cast<acc_t>(height))) {
    return false;
  }
  const int x0 = floor_to_int(x);
  const int y0 = floor_to_int(y);
  const int x1 = x0 + 1;
  const int y1 = y0 + 1;
  const acc_t lx = x - static_cast<acc_t>(x0);
  const acc_t ly = y - static_cast<acc_t>(y0);
  const acc_t hx = acc_t(1) - lx;
  const acc_t hy = acc_t(1) - ly;
  const bool x0_in = x0 >= 0;
  const bool x1_in = x1 < width;
  const bool y0_in = y0 >= 0;
  const bool y1_in = y1 < height;

  c.token[0] = (y0_in && x0_in) ? static_cast<index_t>(y0) * width + x0 : index_t(-1);
  c.token[1] = (y0_in && x1_in) ? static_cast<index_t>(y0) * width + x1 : index_t(-1);
  c.token[2] = (y1_in && x0_in) ? static_cast<index_t>(y1) * width + x0 : index_t(-1);
  c.token[3] = (y1_in && x1_in) ? static_cast<index_t>(y1) * width + x1 : index_t(-1);

  c.weight[0] = hy * hx;
  c.weight[1] = hy * lx;
  c.weight[2] = ly * hx;
  c.weight[3] = ly * lx;

  const acc_t w = static_cast<acc_t>(width);
  const acc_t h = static_cast<acc_t>(height);
  c.d_dx[0] = -hy * w;
  c.d_dx[1] = hy * w;
  c.d_dx[2] = -ly * w;
  c.d_dx[3] = ly * w;
  c.d_dy[0] = -hx * h;
  c.d_dy[1] = -lx * h;
  c.d_dy[2] = hx * h;
  c.d_dy[3] = lx * h;
  return true;
}

}  // namespace ecom2f
