// The schemas of torch.ops.fastpage.*. Implementations register per device with
// TORCH_LIBRARY_IMPL(fastpage, CPU|CUDA, m) and must use exactly the C++ signatures in ops.cpp:
// every tensor as `const at::Tensor&` (also the ones written to), Tensor? as
// `const std::optional<at::Tensor>&`, float as double, int as int64_t, Tensor[] as at::TensorList.
#include <torch/library.h>

TORCH_LIBRARY(fastpage, m) {
  m.def("reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
        "Tensor slot_mapping) -> ()");
  m.def("paged_attention(Tensor(a!) out, Tensor query, Tensor key_cache, Tensor value_cache, "
        "Tensor query_start_loc, Tensor context_lens, Tensor block_tables, float scale, "
        "int max_query_len, int max_context_len) -> ()");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("fused_add_rms_norm(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!) key, Tensor cos_sin_cache, "
        "int head_dim) -> ()");
  m.def("rotary_embedding_and_cache(Tensor positions, Tensor(a!) query, Tensor(b!) key, Tensor value, "
        "Tensor cos_sin_cache, int head_dim, Tensor(c!) key_cache, Tensor(d!) value_cache, "
        "Tensor slot_mapping) -> ()");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("copy_blocks(Tensor(a!)[] caches, Tensor block_mapping) -> ()");
  m.def("swap_blocks(Tensor src, Tensor(a!) dst, Tensor block_mapping) -> ()");
  m.def("small_batch_linear(Tensor(a!) out, Tensor x, Tensor weight, Tensor? bias) -> ()");
  m.def("small_batch_linear_silu_and_mul(Tensor(a!) out, Tensor x, Tensor weight) -> ()");
  m.def("sample_tokens(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
        "Tensor seeds, Tensor positions, Tensor? token_bitmask=None, Tensor? bitmask_index=None) -> Tensor");
  m.def("argmax_rows(Tensor logits) -> Tensor");
}
