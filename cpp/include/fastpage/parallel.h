// What one rank holds of a model under tensor and pipeline parallelism. Shared by the C++ decoder
// (which expects its weights already sharded this way) and Python's loaders (which shard them).
#pragma once
#include <cstdint>
#include <utility>

#include "fastpage/config.h"

namespace fastpage {

// Layers [begin, end) of pipeline stage `pp_rank`. vLLM's split: every stage gets
// num_layers / pp_size, and the remainder goes one each to the stages before the last, latest first
// (10 layers over 4 stages: 2, 3, 3, 2). std::invalid_argument when a stage would get no layer.
std::pair<int64_t, int64_t> pipeline_layer_range(int64_t num_layers, int32_t pp_size, int32_t pp_rank);

// Megatron sharding: q heads, KV heads and the MLP's intermediate features are split over the
// tensor-parallel ranks (column-parallel qkv_proj / gate_up_proj / up_proj, row-parallel o_proj /
// down_proj); embed_tokens and lm_head are split by vocabulary rows; norms and learned positions are
// replicated. With fewer KV heads than ranks, each KV head is replicated on tp / num_kv_heads ranks.
struct ModelShard {
  int32_t tp_rank = 0, tp_size = 1, pp_rank = 0, pp_size = 1;
  int64_t num_heads = 0;          // this rank's query heads: num_heads / tp
  int64_t num_kv_heads = 0;       // this rank's KV heads: num_kv_heads / tp, or 1 when replicated
  int64_t kv_head_begin = 0;      // the first (global) KV head it holds
  int64_t intermediate_size = 0;  // intermediate_size / tp
  int64_t vocab_rows = 0;         // embed_tokens / lm_head rows per rank: ceil(vocab / tp), zero-padded
  int64_t layer_begin = 0, layer_end = 0;

  int64_t head_begin() const { return tp_rank * num_heads; }
  int64_t intermediate_begin() const { return tp_rank * intermediate_size; }
  int64_t vocab_begin() const { return tp_rank * vocab_rows; }
  int64_t num_layers() const { return layer_end - layer_begin; }
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp_size - 1; }
};

// This rank's shard; std::invalid_argument naming the field when the sizes do not divide
// (num_heads % tp, intermediate_size % tp, num_kv_heads vs tp, num_layers < pp).
ModelShard model_shard(const ModelConfig& model, const ParallelConfig& parallel);

}  // namespace fastpage
