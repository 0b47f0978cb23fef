// Reads lines "start height width tokens" from stdin and prints
// ecom2f::level_in_bounds(start, height, width, tokens) (0 or 1) for each: the level guard
// of every kernel, CPU and CUDA, tested on its own (test_ms_deform_attn_bounds.py).
#include <cstdio>

#include "ms_deform_attn_common.h"

int main() {
  long long start = 0, height = 0, width = 0, tokens = 0;
  while (std::scanf("%lld %lld %lld %lld", &start, &height, &width, &tokens) == 4) {
    std::printf("%d\n", ecom2f::level_in_bounds(start, height, width, tokens) ? 1 : 0);
  }
  return 0;
}
