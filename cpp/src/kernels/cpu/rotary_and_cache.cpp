// rotary_embedding_and_cache on the CPU: the two kernels in turn (the fusion saves a launch on a GPU;
// here there is nothing to save). The cache inputs are checked first, so a bad cache argument raises
// before query and key are rotated.
#include "cpu_kernels.h"

namespace fastpage::kernels::cpu {

void rotary_embedding_and_cache(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, const at::Tensor& cos_sin_cache, int64_t head_dim,
                                const at::Tensor& key_cache, const at::Tensor& value_cache,
                                const at::Tensor& slot_mapping) {
  check_cache_write_inputs(key, value, key_cache, value_cache, slot_mapping,
                           "fastpage.rotary_embedding_and_cache: ");
  rotary_embedding(positions, query, key, cos_sin_cache, head_dim);
  reshape_and_cache(key, value, key_cache, value_cache, slot_mapping);
}

}  // namespace fastpage::kernels::cpu
