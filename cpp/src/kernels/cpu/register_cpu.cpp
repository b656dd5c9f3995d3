// Registers the CPU kernels for torch.ops.fastpage.* (schemas in cpp/src/ops/registry.cpp).
#include <torch/library.h>

#include "cpu_kernels.h"
#include "small_batch_linear.h"

TORCH_LIBRARY_IMPL(fastpage, CPU, m) {
  namespace cpu = fastpage::kernels::cpu;
  m.impl("reshape_and_cache", &cpu::reshape_and_cache);
  m.impl("paged_attention", &cpu::paged_attention);
  m.impl("rms_norm", &cpu::rms_norm);
  m.impl("fused_add_rms_norm", &cpu::fused_add_rms_norm);
  m.impl("rotary_embedding", &cpu::rotary_embedding);
  m.impl("rotary_embedding_and_cache", &cpu::rotary_embedding_and_cache);
  m.impl("silu_and_mul", &cpu::silu_and_mul);
  m.impl("copy_blocks", &cpu::copy_blocks);
  m.impl("swap_blocks", &cpu::swap_blocks);
  m.impl("small_batch_linear", &cpu::small_batch_linear_op);
  m.impl("small_batch_linear_silu_and_mul", &cpu::small_batch_linear_silu_and_mul_op);
  m.impl("sample_tokens", &cpu::sample_tokens);
  m.impl("argmax_rows", &cpu::argmax_rows);
}
