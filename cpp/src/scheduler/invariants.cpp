// Scheduler::State::check_invariants(): every reference a block holds is accounted for.
#include <stdexcept>
#include <string>

#include "state.h"

namespace fastpage {
namespace {

[[noreturn]] void fail(const std::string& what) { throw std::logic_error("Scheduler invariant: " + what); }

void check_refs(const BlockAllocator& blocks, const std::vector<int32_t>& expected, const char* pool) {
  blocks.check_invariants();
  for (BlockId block = 0; block < blocks.num_blocks(); ++block) {
    if (blocks.ref_count(block) != expected[block]) {
      fail(std::string(pool) + " block " + std::to_string(block) + " has refcount " +
           std::to_string(blocks.ref_count(block)) + " but sequences hold " + std::to_string(expected[block]));
    }
  }
}

}  // namespace

void Scheduler::State::check_invariants() const {
  std::vector<int32_t> device_refs(device.num_blocks(), 0);
  std::vector<int32_t> host_refs(host.num_blocks(), 0);
  size_t num_waiting = 0, num_running = 0, num_swapped = 0;
  for (const auto& [seq_id, seq] : seqs) {
    const std::string name = "seq " + std::to_string(seq_id);
    if (seq.num_computed_tokens < 0 || seq.num_computed_tokens > seq.num_tokens()) {
      fail(name + " computed " + std::to_string(seq.num_computed_tokens) + " of " + std::to_string(seq.num_tokens()));
    }
    for (BlockId block : seq.block_table) ++device_refs.at(block);
    for (BlockId block : seq.swapped_blocks) ++host_refs.at(block);
    const size_t blocks_for_computed = (seq.num_computed_tokens + block_size - 1) / block_size;
    switch (seq.status) {
      case SequenceStatus::Waiting:
        ++num_waiting;
        if (!waiting.contains(key(seq))) fail(name + " is Waiting but not queued");
        if (!seq.block_table.empty() || !seq.swapped_blocks.empty() || seq.num_computed_tokens != 0) {
          fail(name + " is Waiting but holds blocks or computed tokens");
        }
        break;
      case SequenceStatus::Running:
        ++num_running;
        if (!running.contains(key(seq))) fail(name + " is Running but not queued");
        if (seq.block_table.size() != blocks_for_computed || !seq.swapped_blocks.empty()) {
          fail(name + " holds " + std::to_string(seq.block_table.size()) + " blocks for " +
               std::to_string(seq.num_computed_tokens) + " computed tokens");
        }
        break;
      case SequenceStatus::Swapped:
        ++num_swapped;
        if (!swapped.contains(key(seq))) fail(name + " is Swapped but not queued");
        if (seq.swapped_blocks.size() != blocks_for_computed || !seq.block_table.empty()) {
          fail(name + " is Swapped with " + std::to_string(seq.swapped_blocks.size()) + " host blocks");
        }
        break;
      case SequenceStatus::Finished:
        if (!seq.block_table.empty() || !seq.swapped_blocks.empty()) fail(name + " is Finished but holds blocks");
        break;
    }
  }
  if (num_waiting != waiting.size() || num_running != running.size() || num_swapped != swapped.size()) {
    fail("queue sizes disagree with sequence statuses");
  }
  check_refs(device, device_refs, "device");
  check_refs(host, host_refs, "host");
  // Implied by the refcount check, stated for the reader: an idle scheduler holds no block.
  if (waiting.empty() && running.empty() && swapped.empty() &&
      (device.num_free_blocks() != device.num_blocks() || host.num_free_blocks() != host.num_blocks())) {
    fail("idle but blocks are in use");
  }
}

}  // namespace fastpage
