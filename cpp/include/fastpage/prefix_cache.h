// Prefix caching policy over the block allocator: chained block hashes and longest-prefix lookup.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "fastpage/block_allocator.h"

namespace fastpage {

class PrefixCache {
 public:
  PrefixCache(BlockAllocator& blocks, int32_t block_size, bool enabled, uint64_t salt);

  bool enabled() const { return enabled_; }
  // hash(parent hash, the block's token ids, extra key such as a LoRA id); never kNoHash.
  BlockHash hash_block(BlockHash parent, std::span<const int32_t> tokens, uint64_t extra_key = 0) const;
  // Hashes of every full block of `tokens`, chained from the first.
  std::vector<BlockHash> hash_blocks(std::span<const int32_t> tokens, uint64_t extra_key = 0) const;
  // The longest run of cached blocks matching `hashes` (at most max_blocks), each with a reference taken.
  std::vector<BlockId> acquire_prefix(const std::vector<BlockHash>& hashes, int32_t max_blocks);
  // Makes a just-filled block findable under its hash (a no-op when disabled or already cached).
  void register_block(BlockId block, BlockHash hash);
  void reset();

  int64_t num_queried_tokens() const { return queried_tokens_; }
  int64_t num_hit_tokens() const { return hit_tokens_; }

 private:
  BlockAllocator& blocks_;
  int32_t block_size_;
  bool enabled_;
  uint64_t salt_;
  int64_t queried_tokens_ = 0;
  int64_t hit_tokens_ = 0;
};

}  // namespace fastpage
