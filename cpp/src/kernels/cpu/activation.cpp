// SiLU-and-mul (the gated MLP of Llama-style models) on the CPU: x [..., 2 * d] holds the gate
// projection in its first half and the up projection in its second; the result is computed in float
// and rounded once.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <vector>

#include "cpu_kernels.h"
#include "vector_exp.h"

namespace fastpage::kernels::cpu {

at::Tensor silu_and_mul(const at::Tensor& x) {
  constexpr const char* op = "fastpage.silu_and_mul: ";
  check_float_dtype(x, op, "x");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, op, "x must be [..., 2 * d], got ", x.sizes());
  TORCH_CHECK(x.stride(-1) == 1, op, "x must be contiguous in its last dim");
  const int64_t d = x.size(-1) / 2;
  std::vector<int64_t> out_sizes = x.sizes().vec();
  out_sizes.back() = d;
  at::Tensor out = at::empty(out_sizes, x.options().memory_format(c10::MemoryFormat::Contiguous));
  if (d == 0) return out;
  const int64_t rows = x.numel() / (2 * d);
  const RowIndexer x_rows(x);
  FASTPAGE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "fastpage_silu_and_mul", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(2 * d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* gate = src + x_rows.offset(r);
        const scalar_t* up = gate + d;
        scalar_t* o = dst + r * d;
        // In blocks, so that the exp runs over float arrays and vectorizes.
        constexpr int64_t kBlock = 64;
        float g[kBlock], e[kBlock];
        for (int64_t i0 = 0; i0 < d; i0 += kBlock) {
          const int64_t n = std::min(kBlock, d - i0);
          for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(gate[i0 + i]);
          for (int64_t i = 0; i < n; ++i) e[i] = -g[i];
          exp_in_place(e, n);
          for (int64_t i = 0; i < n; ++i) {
            o[i0 + i] = static_cast<scalar_t>(g[i] / (1.f + e[i]) * static_cast<float>(up[i0 + i]));
          }
        }
      }
    });
  });
  return out;
}

}  // namespace fastpage::kernels::cpu
