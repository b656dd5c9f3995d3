// The engine's kernels, called through the torch dispatcher (schemas in cpp/src/ops/registry.cpp;
// CPU implementations in cpp/src/kernels/, CUDA ones in cuda/). Same names as torch.ops.fastpage.*.
//
// Layouts: the KV cache of one layer is key_cache / value_cache [num_blocks, block_size, num_kv_heads,
// head_dim]; tokens are flattened [num_tokens, heads, head_dim]; sequences are described by
// query_start_loc [num_seqs + 1] (cumulative new tokens), context_lens [num_seqs] (tokens in the
// cache after this step, new ones included) and block_tables [num_seqs, max_blocks] (int32).
// Index dtypes: query_start_loc, context_lens, block_tables int32; slot_mapping, block_mapping int64;
// positions int32 or int64. Activations float32, bfloat16 or float16 (kernels accumulate in float).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

#include <vector>

namespace fastpage::ops {

// key_cache/value_cache[slot / block_size, slot % block_size] = key/value; slot < 0 is skipped.
void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, const at::Tensor& key_cache,
                       const at::Tensor& value_cache, const at::Tensor& slot_mapping);

// Each sequence's new tokens attend causally to its whole cached context (prefix hits and earlier
// chunks included): new token j of sequence s sits at position context_lens[s] - q_len_s + j.
// max_query_len / max_context_len are host-side bounds (launch sizes; no device sync).
void paged_attention(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const at::Tensor& query_start_loc,
                     const at::Tensor& context_lens, const at::Tensor& block_tables, double scale,
                     int64_t max_query_len, int64_t max_context_len);

// out = x / rms(x) * weight
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
// In place: residual += x; x = rms_norm(residual) * weight.
void fused_add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                        double eps);
// In place, rotate-half (NeoX/HF) layout; cos_sin_cache [max_position, rotary_dim] = [cos | sin]
// (float32 or the activation dtype), rotary_dim == head_dim; query/key [T, H * D] or [T, H, D].
void rotary_embedding(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                      const at::Tensor& cos_sin_cache, int64_t head_dim);
// rotary_embedding(positions, query, key, cos_sin_cache, head_dim) followed by
// reshape_and_cache(key, value, key_cache, value_cache, slot_mapping), with the same results bit for bit
// (the rotated key is what the cache receives), in one kernel on CUDA: a decode step's two small
// launches per layer become one. key/value [T, H_kv, D]; slot_mapping int64; rotary_dim == head_dim.
void rotary_embedding_and_cache(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, const at::Tensor& cos_sin_cache, int64_t head_dim,
                                const at::Tensor& key_cache, const at::Tensor& value_cache,
                                const at::Tensor& slot_mapping);
// x [..., 2 * d] -> silu(x[..., :d]) * x[..., d:]
at::Tensor silu_and_mul(const at::Tensor& x);

// Copy-on-write: for each row (src, dst) of block_mapping [n, 2] (int64), copy block src to dst in
// every cache tensor of `caches` (all layers, K and V).
void copy_blocks(const std::vector<at::Tensor>& caches, const at::Tensor& block_mapping);
// Swap: dst[:, mapping[i,1]] = src[:, mapping[i,0]] between device and host caches [planes, num_blocks,
// ...] (block index is dim 1, so one call moves every layer's K and V) that differ only in
// num_blocks; block_mapping lives on the host.
void swap_blocks(const at::Tensor& src, const at::Tensor& dst, const at::Tensor& block_mapping);

// out [rows, N] = x [rows, K] @ weight [N, K].T (+ bias [N]) for decode-sized x: a stream over the
// weights. CPU: float32, at most 64 rows. CUDA: bfloat16/float16, at most 4 rows, K % 8 == 0. All
// contiguous; bias may be undefined.
void small_batch_linear(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                        const at::Tensor& bias);
// The gated MLP's first half in one kernel: out [rows, I] = silu_and_mul(x [rows, K] @ weight.T) with
// weight [2 * I, K] = [gate; up], bit-identical to small_batch_linear into [rows, 2 * I] followed by
// silu_and_mul (the projections are rounded to the dtype first). Same inputs as small_batch_linear.
void small_batch_linear_silu_and_mul(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight);

// One token per row of processed float32 logits [rows, vocab] (contiguous): rows with temperature
// <= 0 take their argmax (first index of the largest logit); the others divide by their temperature,
// keep tokens by min_p, top_k and top_p (vLLM v1's order; top_k <= 0 or >= vocab and top_p >= 1 are
// off) and draw by Gumbel-max over the counter-based noise of (seeds[r], positions[r], token id)
// (cpp/src/sampling/counter_rng.h), so a row's token depends on nothing else in the batch and the
// CPU and CUDA kernels draw the same token from the same logits. Per-row tensors [rows] on the
// logits' device: temperature, top_p, min_p float32; top_k, seeds (uint64 bits), positions int64.
// Structured outputs: token_bitmask [masks, ceil(vocab / 32)] int32 (bit t % 32 of word t / 32: token t
// allowed) and bitmask_index [rows] int64, the row's mask or -1 for none; a row draws as if the tokens
// its mask clears had logit -inf. Returns int64 [rows].
at::Tensor sample_tokens(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                         const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seeds,
                         const at::Tensor& positions, const std::optional<at::Tensor>& token_bitmask = std::nullopt,
                         const std::optional<at::Tensor>& bitmask_index = std::nullopt);

// Greedy ids: int64 [rows], the first index of each row's maximum in logits [rows, vocab] (float32,
// bfloat16 or float16, last dim contiguous), as torch.argmax(logits, 1): NaN counts as larger than
// every number (a row with NaN gives its first NaN), -0.0 equals 0.0. On CUDA one launch of several
// blocks per row (a 1 x 128k row is spread over the GPU, not one block) that count in a per-device
// ticket table: calls on one device must not run concurrently on two streams. Graph-capturable.
at::Tensor argmax_rows(const at::Tensor& logits);

}  // namespace fastpage::ops
