// RMSNorm and the fused residual-add + RMSNorm on the CPU, one row per task, statistics in float.
// Rounding follows HF transformers' LlamaRMSNorm: the normalized row is rounded to the activation
// dtype before the weight multiplies it.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <vector>

#include "cpu_kernels.h"

namespace fastpage::kernels::cpu {
namespace {

void check_weight(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  check_float_dtype(x, op, "x");
  TORCH_CHECK(x.dim() >= 1 && x.stride(-1) == 1, op, "x must be contiguous in its last dim");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && weight.is_contiguous(), op,
              "weight must be a contiguous [", x.size(-1), "] tensor, got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, "weight dtype ", weight.scalar_type(),
              " must equal the x dtype ", x.scalar_type());
}

// dst = round(round(row * inv_rms) * weight), with row already in float.
template <typename scalar_t>
void normalize_row(const float* row, const scalar_t* weight, scalar_t* dst, int64_t hidden,
                   double eps) {
  const float inv_rms =
      1.f / std::sqrt(sum_squares(row, hidden) / static_cast<float>(hidden) + static_cast<float>(eps));
  for (int64_t i = 0; i < hidden; ++i) {
    const auto normalized = static_cast<scalar_t>(row[i] * inv_rms);
    dst[i] = static_cast<scalar_t>(static_cast<float>(normalized) * static_cast<float>(weight[i]));
  }
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_weight(x, weight, "fastpage.rms_norm: ");
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(c10::MemoryFormat::Contiguous));
  const int64_t hidden = x.size(-1);
  if (hidden == 0) return out;
  const int64_t rows = x.numel() / hidden;
  const RowIndexer x_rows(x);
  FASTPAGE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "fastpage_rms_norm", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(hidden), [&](int64_t begin, int64_t end) {
      std::vector<float> buf(hidden);
      for (int64_t r = begin; r < end; ++r) {
        const float* row = as_float_row(src + x_rows.offset(r), buf.data(), hidden);
        normalize_row(row, w, dst + r * hidden, hidden, eps);
      }
    });
  });
  return out;
}

void fused_add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                        double eps) {
  constexpr const char* op = "fastpage.fused_add_rms_norm: ";
  check_weight(x, weight, op);
  TORCH_CHECK(residual.sizes() == x.sizes(), op, "residual shape ", residual.sizes(),
              " must equal x shape ", x.sizes());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type(), op, "residual dtype ",
              residual.scalar_type(), " must equal the x dtype ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous() && residual.is_contiguous(), op,
              "x and residual must be contiguous (both are written in place)");
  const int64_t hidden = x.size(-1);
  if (hidden == 0) return;
  const int64_t rows = x.numel() / hidden;
  FASTPAGE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "fastpage_fused_add_rms_norm", [&] {
    scalar_t* x_data = x.data_ptr<scalar_t>();
    scalar_t* res_data = residual.data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(hidden), [&](int64_t begin, int64_t end) {
      std::vector<float> sum(hidden);
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* xr = x_data + r * hidden;
        scalar_t* res = res_data + r * hidden;
        // The residual stream is stored in the activation dtype, so round the sum before using it.
        for (int64_t i = 0; i < hidden; ++i) {
          res[i] = static_cast<scalar_t>(static_cast<float>(res[i]) + static_cast<float>(xr[i]));
          sum[i] = static_cast<float>(res[i]);
        }
        normalize_row(sum.data(), w, xr, hidden, eps);
      }
    });
  });
}

}  // namespace fastpage::kernels::cpu
