// What one engine step runs: the scheduler's decision, flattened for the model runner.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "fastpage/block_allocator.h"

namespace fastpage {

struct ScheduledSeq {
  int64_t seq_id = -1;
  int32_t num_new_tokens = 0;  // tokens computed this step (a prefill chunk, or 1 when decoding)
  int32_t start_position = 0;  // num_computed_tokens before this step
  bool sample = false;         // this chunk reaches the sequence's last token: sample the next one
  bool prompt_logprobs = false;  // the runner must return logits for every new prompt token
};

// Executed in this order before the forward pass: swap_out, swap_in, block_copies.
struct StepPlan {
  std::vector<ScheduledSeq> seqs;  // decodes first, then prefills
  // Flattened per-token inputs, seqs in order.
  std::vector<int32_t> input_ids;
  std::vector<int32_t> positions;
  std::vector<int64_t> slot_mapping;   // block_id * block_size + offset, per new token
  std::vector<int32_t> query_start_loc;  // size seqs + 1 (cumulative new tokens)
  std::vector<int32_t> context_lens;     // per seq: tokens in the cache after this step
  std::vector<int32_t> block_tables;     // seqs x max_blocks_per_seq, row-major, padded with 0
  int32_t max_blocks_per_seq = 0;
  int32_t num_decode_seqs = 0;           // the first num_decode_seqs seqs have one new token each
  std::vector<std::pair<BlockId, BlockId>> block_copies;  // copy-on-write: (src, dst) on the device
  std::vector<std::pair<BlockId, BlockId>> swap_out;      // (device block, host block)
  std::vector<std::pair<BlockId, BlockId>> swap_in;       // (host block, device block)
  std::vector<int64_t> preempted_seq_ids;

  int32_t num_tokens() const { return static_cast<int32_t>(input_ids.size()); }
  bool empty() const { return seqs.empty(); }
};

}  // namespace fastpage
