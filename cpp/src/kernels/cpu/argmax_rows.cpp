// argmax_rows on the CPU: ATen's argmax, whose rules (first index of the maximum, NaN larger than
// every number) the CUDA kernel reproduces.
#include <ATen/ops/argmax.h>

#include "cpu_kernels.h"

namespace fastpage::kernels::cpu {

at::Tensor argmax_rows(const at::Tensor& logits) {
  constexpr const char* op = "fastpage.argmax_rows: ";
  check_float_dtype(logits, op, "logits");
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, op, "logits must be [rows, vocab] with vocab > 0, got ",
              logits.sizes());
  return at::argmax(logits, /*dim=*/1);
}

}  // namespace fastpage::kernels::cpu
