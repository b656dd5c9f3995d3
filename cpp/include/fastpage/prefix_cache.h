// Prefix caching policy over the block allocator: chained block hashes and longest-prefix lookup.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "fastpage/block_allocator.h"

namespace fastpage {

// A cached block keeps its token ids, parent hash and extra key here, and every lookup checks
// them, so a 64-bit hash collision can only cost a miss, never a wrong prefix.
class PrefixCache {
 public:
  // `salt` seeds every hash (one random value per process keeps hashes unpredictable to clients).
  PrefixCache(BlockAllocator& blocks, int32_t block_size, bool enabled, uint64_t salt);

  bool enabled() const { return enabled_; }
  int32_t block_size() const { return block_size_; }
  // hash(parent hash, the block's token ids, extra key such as a LoRA id); never kNoHash.
  BlockHash hash_block(BlockHash parent, std::span<const int32_t> tokens, uint64_t extra_key = 0) const;
  // Hashes of every full block of `tokens`, chained from the first.
  std::vector<BlockHash> hash_blocks(std::span<const int32_t> tokens, uint64_t extra_key = 0) const;

  // The longest run of cached blocks holding tokens[0 : k * block_size], k <= max_blocks, where
  // `hashes` are hash_blocks(tokens). No reference taken, no statistics counted.
  std::vector<BlockId> find_prefix(std::span<const int32_t> tokens, const std::vector<BlockHash>& hashes,
                                   int32_t max_blocks, uint64_t extra_key = 0) const;
  // find_prefix, then a reference on each block found; counts tokens.size() queried tokens and
  // the found blocks' tokens as hits. Empty (and nothing counted) when disabled.
  std::vector<BlockId> acquire_prefix(std::span<const int32_t> tokens, const std::vector<BlockHash>& hashes,
                                      int32_t max_blocks, uint64_t extra_key = 0);
  // Makes a just-filled block findable under `hash` = hash_block(parent, tokens, extra_key).
  // A no-op when disabled or when another block already holds that hash.
  void register_block(BlockId block, BlockHash hash, BlockHash parent, std::span<const int32_t> tokens,
                      uint64_t extra_key = 0);
  // Forgets every cached prefix (statistics are kept: they are counters).
  void reset();

  int64_t num_queried_tokens() const { return queried_tokens_; }
  int64_t num_hit_tokens() const { return hit_tokens_; }

 private:
  bool holds(BlockId block, BlockHash parent, std::span<const int32_t> tokens, uint64_t extra_key) const;

  BlockAllocator& blocks_;
  int32_t block_size_;
  bool enabled_;
  uint64_t salt_;
  // What each block was registered with, to verify lookups: block_size_ tokens per block.
  std::vector<int32_t> tokens_;
  std::vector<BlockHash> parent_;
  std::vector<uint64_t> extra_key_;
  int64_t queried_tokens_ = 0;
  int64_t hit_tokens_ = 0;
};

}  // namespace fastpage
