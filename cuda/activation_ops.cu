// CUDA launcher for silu_and_mul.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "activation_kernels.cuh"

namespace fastpage::cuda {
namespace {

at::Tensor silu_and_mul(const at::Tensor& x) {
  constexpr const char* op = "silu_and_mul";
  check_cuda(x, op, "x");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, op, ": x must be [..., 2 * d], got ", x.sizes());
  const int64_t d = x.size(-1) / 2;
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = d;
  auto out = at::empty(out_sizes, x.options());
  const int64_t rows = d == 0 ? 0 : out.numel() / d;
  if (rows == 0) return out;
  // 2-D inputs keep their row stride (a slice of a larger matmul output); others are made contiguous.
  const at::Tensor in = x.dim() == 2 && x.stride(1) == 1 ? x : x.contiguous();
  const int64_t in_stride = in.dim() == 2 ? in.stride(0) : 2 * d;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float_types(x.scalar_type(), op, [&]<typename T>() {
    constexpr int kVec = 16 / sizeof(T);
    const bool vec_ok = d % kVec == 0 && in_stride % kVec == 0 && is_aligned16(in.data_ptr()) &&
                        is_aligned16(out.data_ptr());
    auto launch = [&]<int VEC>() {
      const int threads = static_cast<int>(std::clamp<int64_t>((d / VEC + 31) / 32 * 32, 32, 1024));
      silu_and_mul_kernel<T, VEC><<<grid_size(rows, op), threads, 0, stream>>>(
          static_cast<T*>(out.data_ptr()), static_cast<const T*>(in.data_ptr()), in_stride, d,
          static_cast<int>(d));
    };
    if (vec_ok) launch.template operator()<kVec>();
    else launch.template operator()<1>();
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace fastpage::cuda

TORCH_LIBRARY_IMPL(fastpage, CUDA, m) { m.impl("silu_and_mul", &fastpage::cuda::silu_and_mul); }
