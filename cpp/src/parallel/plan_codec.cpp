#include "plan_codec.h"

#include <stdexcept>
#include <string>

namespace fastpage {
namespace {

// Header: num_seqs, num_tokens, max_blocks_per_seq, num_decode_seqs, copies, swap_out, swap_in, logits.
constexpr int64_t kHeaderSize = 8;
constexpr int64_t kFieldsPerSeq = 5;  // seq_id, num_new_tokens, start_position, sample, prompt_logprobs

template <typename T>
void append(std::vector<int64_t>& out, const std::vector<T>& values) {
  out.insert(out.end(), values.begin(), values.end());
}

void append_pairs(std::vector<int64_t>& out, const std::vector<std::pair<BlockId, BlockId>>& pairs) {
  for (const auto& [a, b] : pairs) {
    out.push_back(a);
    out.push_back(b);
  }
}

class Reader {
 public:
  Reader(const int64_t* data, int64_t size) : data_(data), size_(size) {}
  int64_t next() {
    if (pos_ >= size_) throw std::invalid_argument("encoded StepPlan is truncated");
    return data_[pos_++];
  }
  template <typename T>
  std::vector<T> array(int64_t n) {
    std::vector<T> values(n);
    for (auto& v : values) v = static_cast<T>(next());
    return values;
  }
  std::vector<std::pair<BlockId, BlockId>> pairs(int64_t n) {
    std::vector<std::pair<BlockId, BlockId>> values(n);
    for (auto& [a, b] : values) {
      a = static_cast<BlockId>(next());
      b = static_cast<BlockId>(next());
    }
    return values;
  }
  bool done() const { return pos_ == size_; }

 private:
  const int64_t* data_;
  int64_t size_;
  int64_t pos_ = 0;
};

}  // namespace

std::vector<int64_t> encode_plan(const StepPlan& plan, const std::vector<int64_t>& logits_indices) {
  const auto n = [](const auto& v) { return static_cast<int64_t>(v.size()); };
  std::vector<int64_t> out{n(plan.seqs), plan.num_tokens(), plan.max_blocks_per_seq, plan.num_decode_seqs,
                           n(plan.block_copies), n(plan.swap_out), n(plan.swap_in), n(logits_indices)};
  out.reserve(kHeaderSize + kFieldsPerSeq * n(plan.seqs) + 3 * plan.num_tokens() + 2 * n(plan.seqs) + 1 +
              n(plan.block_tables) + 2 * (out[4] + out[5] + out[6]) + n(logits_indices));
  for (const ScheduledSeq& s : plan.seqs) {
    out.insert(out.end(), {s.seq_id, s.num_new_tokens, s.start_position, s.sample, s.prompt_logprobs});
  }
  append(out, plan.input_ids);
  append(out, plan.positions);
  append(out, plan.slot_mapping);
  append(out, plan.query_start_loc);
  append(out, plan.context_lens);
  append(out, plan.block_tables);
  append_pairs(out, plan.block_copies);
  append_pairs(out, plan.swap_out);
  append_pairs(out, plan.swap_in);
  append(out, logits_indices);
  return out;
}

void decode_plan(const int64_t* data, int64_t size, StepPlan& plan, std::vector<int64_t>& logits_indices) {
  Reader r(data, size);
  const int64_t num_seqs = r.next(), num_tokens = r.next();
  plan = StepPlan();
  plan.max_blocks_per_seq = static_cast<int32_t>(r.next());
  plan.num_decode_seqs = static_cast<int32_t>(r.next());
  const int64_t num_copies = r.next(), num_swap_out = r.next(), num_swap_in = r.next(), num_logits = r.next();
  plan.seqs.resize(num_seqs);
  for (ScheduledSeq& s : plan.seqs) {
    s.seq_id = r.next();
    s.num_new_tokens = static_cast<int32_t>(r.next());
    s.start_position = static_cast<int32_t>(r.next());
    s.sample = r.next() != 0;
    s.prompt_logprobs = r.next() != 0;
  }
  plan.input_ids = r.array<int32_t>(num_tokens);
  plan.positions = r.array<int32_t>(num_tokens);
  plan.slot_mapping = r.array<int64_t>(num_tokens);
  plan.query_start_loc = r.array<int32_t>(num_seqs + 1);
  plan.context_lens = r.array<int32_t>(num_seqs);
  plan.block_tables = r.array<int32_t>(num_seqs * plan.max_blocks_per_seq);
  plan.block_copies = r.pairs(num_copies);
  plan.swap_out = r.pairs(num_swap_out);
  plan.swap_in = r.pairs(num_swap_in);
  logits_indices = r.array<int64_t>(num_logits);
  if (!r.done()) throw std::invalid_argument("encoded StepPlan has " + std::to_string(size) + " values, more than its header says");
}

}  // namespace fastpage
