// A request and its sequences as the scheduler tracks them. Token ids only.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fastpage/block_allocator.h"
#include "fastpage/sampling_params.h"

namespace fastpage {

enum class SequenceStatus : uint8_t { Waiting, Running, Swapped, Finished };
// Stop: EOS or a stop token id (stop_token says which). Length: max_tokens or max_model_len.
enum class FinishReason : uint8_t { None, Stop, Length, Abort };

// The last token id of a sequence whose sampled token has not reached the host yet (async
// scheduling): Scheduler::reserve appends it, Scheduler::fill replaces it.
inline constexpr int32_t kPlaceholderToken = -1;

struct Sequence {
  int64_t seq_id = -1;
  int64_t request_index = -1;  // index of the owning Request in the scheduler
  int32_t index = 0;           // 0..best_of-1 within the request
  std::vector<int32_t> token_ids;  // prompt, then output
  int32_t num_prompt_tokens = 0;
  int32_t num_computed_tokens = 0;  // tokens whose K/V are in the cache (or scheduled this step)
  int32_t num_cached_prompt_tokens = 0;  // prefix-cache hit at its first admission
  std::vector<BlockId> block_table;
  std::vector<BlockId> swapped_blocks;  // CPU block ids while Swapped
  std::vector<BlockHash> block_hashes;  // chained hashes of every full block of token_ids (none with caching off)
  SequenceStatus status = SequenceStatus::Waiting;
  FinishReason finish_reason = FinishReason::None;
  int32_t stop_token = -1;
  double cumulative_logprob = 0.0;
  int32_t num_preemptions = 0;
  bool awaiting_token = false;  // the last token id is kPlaceholderToken
  bool ends_with_awaited_token = false;  // that token is its last by length: not scheduled again

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  bool finished() const { return status == SequenceStatus::Finished; }
};

// The caller's number for a request (EngineLoop numbers them); step outputs carry it.
using RequestHandle = int64_t;

struct Request {
  std::string request_id;
  RequestHandle handle = -1;
  SamplingParams params;
  std::vector<int32_t> eos_token_ids;
  int32_t priority = 0;     // lower runs first (vLLM's convention)
  int64_t arrival_order = 0;
  std::vector<int64_t> seq_ids;  // first is the parent; forks follow
};

}  // namespace fastpage
