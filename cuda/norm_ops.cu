// CUDA launchers for rms_norm and fused_add_rms_norm.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "norm_kernels.cuh"

namespace fastpage::cuda {
namespace {

// [..., hidden] as rows: a 2-D tensor keeps its row stride, others must be contiguous.
int64_t row_stride(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() >= 1 && t.stride(-1) == 1, op, ": ", name, " must be contiguous in its last dim");
  if (t.dim() == 2) return t.stride(0);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " with ", t.dim(), " dims must be contiguous");
  return t.size(-1);
}

void check_weight(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  check_cuda(weight, op, "weight");
  check_same_device(x, weight, op, "weight");
  check_dtype(weight, x.scalar_type(), op, "weight");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && weight.is_contiguous(), op,
                    ": weight must be contiguous [", x.size(-1), "], got ", weight.sizes());
}

int threads_for(int64_t hidden, int vec) {
  return static_cast<int>(std::clamp<int64_t>((hidden / vec + 31) / 32 * 32, 32, 1024));
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  constexpr const char* op = "rms_norm";
  check_cuda(x, op, "x");
  check_weight(x, weight, op);
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const at::Tensor in = x.dim() == 2 && x.stride(-1) == 1 ? x : x.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  const int64_t hidden = x.size(-1), rows = hidden == 0 ? 0 : x.numel() / hidden;
  if (rows == 0) return out;
  const int64_t in_stride = row_stride(in, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float_types(x.scalar_type(), op, [&]<typename T>() {
    constexpr int kVec = 16 / sizeof(T);
    const bool vec_ok = hidden % kVec == 0 && in_stride % kVec == 0 && is_aligned16(in.data_ptr()) &&
                        is_aligned16(weight.data_ptr()) && is_aligned16(out.data_ptr());
    auto launch = [&]<int VEC>() {
      rms_norm_kernel<T, VEC><<<grid_size(rows, op), threads_for(hidden, VEC), 0, stream>>>(
          static_cast<T*>(out.data_ptr()), static_cast<const T*>(in.data_ptr()),
          static_cast<const T*>(weight.data_ptr()), in_stride, hidden, static_cast<int>(hidden),
          static_cast<float>(eps));
    };
    if (vec_ok) launch.template operator()<kVec>();
    else launch.template operator()<1>();
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void fused_add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps) {
  constexpr const char* op = "fused_add_rms_norm";
  check_cuda(x, op, "x");
  check_cuda(residual, op, "residual");
  check_same_device(x, residual, op, "residual");
  check_dtype(residual, x.scalar_type(), op, "residual");
  TORCH_CHECK(residual.sizes() == x.sizes(), op, ": residual shape ", residual.sizes(), " != x shape ",
                    x.sizes());
  check_weight(x, weight, op);
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const int64_t hidden = x.size(-1), rows = hidden == 0 ? 0 : x.numel() / hidden;
  const int64_t x_stride = row_stride(x, op, "x"), r_stride = row_stride(residual, op, "residual");
  if (rows == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float_types(x.scalar_type(), op, [&]<typename T>() {
    constexpr int kVec = 16 / sizeof(T);
    const bool vec_ok = hidden % kVec == 0 && x_stride % kVec == 0 && r_stride % kVec == 0 &&
                        is_aligned16(x.data_ptr()) && is_aligned16(residual.data_ptr()) &&
                        is_aligned16(weight.data_ptr());
    auto launch = [&]<int VEC>() {
      fused_add_rms_norm_kernel<T, VEC><<<grid_size(rows, op), threads_for(hidden, VEC), 0, stream>>>(
          static_cast<T*>(x.data_ptr()), static_cast<T*>(residual.data_ptr()),
          static_cast<const T*>(weight.data_ptr()), x_stride, r_stride, static_cast<int>(hidden),
          static_cast<float>(eps));
    };
    if (vec_ok) launch.template operator()<kVec>();
    else launch.template operator()<1>();
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) {
  m.impl("rms_norm", &fastpage::cuda::rms_norm);
  m.impl("fused_add_rms_norm", &fastpage::cuda::fused_add_rms_norm);
}
