#include <algorithm>
#include <stdexcept>
#include <string>
#include <tuple>

#include "fastpage/parallel.h"

namespace fastpage {
namespace {

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

}  // namespace

std::pair<int64_t, int64_t> pipeline_layer_range(int64_t num_layers, int32_t pp_size, int32_t pp_rank) {
  if (pp_size < 1) fail("pipeline_parallel_size must be at least 1, got " + std::to_string(pp_size));
  if (pp_rank < 0 || pp_rank >= pp_size) {
    fail("pipeline rank " + std::to_string(pp_rank) + " is outside [0, " + std::to_string(pp_size) + ")");
  }
  if (num_layers < pp_size) {
    fail("pipeline_parallel_size " + std::to_string(pp_size) + " is larger than ModelConfig.num_layers (" +
         std::to_string(num_layers) + ")");
  }
  const int64_t base = num_layers / pp_size;
  const int64_t extra = num_layers % pp_size;
  // Stages pp_size - 1 - extra .. pp_size - 2 get one layer more.
  const int64_t first_extra = pp_size - 1 - extra;
  const auto layers_before = [&](int64_t stage) {
    const int64_t extras = std::max<int64_t>(0, std::min<int64_t>(stage, pp_size - 1) - first_extra);
    return stage * base + extras;
  };
  return {layers_before(pp_rank), layers_before(pp_rank + 1)};
}

ModelShard model_shard(const ModelConfig& m, const ParallelConfig& p) {
  const int32_t tp = p.tensor_parallel_size;
  if (tp < 1) fail("tensor_parallel_size must be at least 1, got " + std::to_string(tp));
  if (p.rank < 0 || p.rank >= p.world_size()) {
    fail("ParallelConfig.rank " + std::to_string(p.rank) + " is outside [0, " + std::to_string(p.world_size()) + ")");
  }
  const auto divides = [&](int64_t value, const char* field) {
    if (value % tp != 0) {
      fail("tensor_parallel_size " + std::to_string(tp) + " must divide ModelConfig." + field + " (" +
           std::to_string(value) + ")");
    }
  };
  if (m.num_heads <= 0 || m.num_kv_heads <= 0) fail("ModelConfig.num_heads and num_kv_heads must be positive");
  divides(m.num_heads, "num_heads");
  divides(m.intermediate_size, "intermediate_size");
  if (m.num_kv_heads >= tp) {
    divides(m.num_kv_heads, "num_kv_heads");
  } else if (tp % m.num_kv_heads != 0) {
    fail("ModelConfig.num_kv_heads (" + std::to_string(m.num_kv_heads) + ") must divide tensor_parallel_size " +
         std::to_string(tp) + " when it is smaller");
  }
  ModelShard s;
  s.tp_rank = p.tp_rank();
  s.tp_size = tp;
  s.pp_rank = p.pp_rank();
  s.pp_size = p.pipeline_parallel_size;
  s.num_heads = m.num_heads / tp;
  if (m.num_kv_heads >= tp) {
    s.num_kv_heads = m.num_kv_heads / tp;
    s.kv_head_begin = s.tp_rank * s.num_kv_heads;
  } else {
    s.num_kv_heads = 1;
    s.kv_head_begin = s.tp_rank / (tp / m.num_kv_heads);
  }
  s.intermediate_size = m.intermediate_size / tp;
  s.vocab_rows = (m.vocab_size + tp - 1) / tp;
  std::tie(s.layer_begin, s.layer_end) = pipeline_layer_range(m.num_layers, s.pp_size, s.pp_rank);
  return s;
}

}  // namespace fastpage
