// Engine and model configuration: plain structs, filled by Python from HF/GGUF files or by a C++ service.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace fastpage {

enum class NormType : uint8_t { RMSNorm, LayerNorm };
enum class Activation : uint8_t { SiLU, GeluTanh, Gelu, ReLU };
enum class PositionType : uint8_t { Rotary, Learned };
// Element type of the paged KV cache (vLLM's kv_cache_dtype): Auto stores K/V in the model dtype;
// Fp8E4M3 stores float8_e4m3fn with per-tensor scales of 1.0 (values saturate to +-448), half the
// bytes of a 16-bit cache, so the same memory holds twice the blocks.
enum class KVCacheDtype : uint8_t { Auto, Fp8E4M3 };

// One config-driven decoder covers Llama/Mistral/Qwen2/Qwen3 (RMSNorm, rotary, gated SiLU MLP)
// and GPT-2/OPT (LayerNorm, learned positions, plain GELU/ReLU MLP, biases).
struct ModelConfig {
  std::string architecture;  // HF name, e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 0;
  NormType norm_type = NormType::RMSNorm;
  double norm_eps = 1e-6;
  Activation activation = Activation::SiLU;
  bool gated_mlp = true;        // gate_up_proj (SwiGLU) vs up_proj
  PositionType position_type = PositionType::Rotary;
  double rope_theta = 10000.0;
  // llama3 rope scaling; rope_scaling_factor == 1 means none.
  std::string rope_scaling_type;  // "", "llama3", "linear"
  double rope_scaling_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_position = 8192;
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;         // Qwen3: RMSNorm over each head of q and k
  bool tie_word_embeddings = false;
  int64_t learned_position_offset = 0;  // OPT stores positions shifted by 2
};

// Tensor (Megatron) and pipeline parallelism over torch.distributed process groups that the caller
// created (Python: fastpage.distributed); C++ finds them by ProcessGroup.group_name and runs the
// collectives. Rank 0 is the process that holds the Engine; ranks 1.. run fastpage::Worker.
struct ParallelConfig {
  int32_t tensor_parallel_size = 1;
  int32_t pipeline_parallel_size = 1;
  int32_t rank = 0;  // global rank = pp_rank * tensor_parallel_size + tp_rank
  // Group names; "" where the group would have one rank.
  std::string world_group;  // every rank, Gloo: rank 0's step plans and shutdown (created with a very long timeout)
  std::string tp_group;     // the ranks of this pipeline stage, in tp_rank order
  std::string pp_group;     // the ranks with this tp_rank, one per stage, in stage order
  // The data groups (tp, pp) were created with this timeout; startup agreement on the world group
  // waits this long too.
  double timeout_seconds = 60;

  int32_t world_size() const { return tensor_parallel_size * pipeline_parallel_size; }
  int32_t tp_rank() const { return rank % tensor_parallel_size; }
  int32_t pp_rank() const { return rank / tensor_parallel_size; }
};

// How the engine schedules and how big its KV cache is.
struct EngineConfig {
  int64_t block_size = 16;
  int64_t num_gpu_blocks = 0;  // > 0: exactly this many device blocks, whatever the budgets below
  int64_t num_cpu_blocks = 0;  // > 0: exactly this many host (swap) blocks
  double gpu_memory_utilization = 0.9;
  // KV budget in bytes. 0: on CUDA, gpu_memory_utilization of the card less weights and activations;
  // on CPU, 4 GiB (vLLM's default CPU KV space).
  int64_t kv_cache_memory_bytes = 0;
  int64_t swap_space_bytes = 0;  // host memory for swapped-out blocks; 0 preempts by recompute
  KVCacheDtype kv_cache_dtype = KVCacheDtype::Auto;
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 8192;
  int64_t max_model_len = 0;  // 0: the model's max_position_embeddings
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;
  bool enforce_eager = false;
  uint64_t seed = 0;
  int64_t max_logprobs = 20;
  // Launch step N+1 before step N's sampled ids reach the host (vLLM's async_scheduling): step()
  // then returns step N's outputs one call later. Unset: on for CUDA with world_size 1, else off.
  // true with world_size > 1 is an error (the workers would need the ids).
  std::optional<bool> async_scheduling;
  ParallelConfig parallel;
};

}  // namespace fastpage
