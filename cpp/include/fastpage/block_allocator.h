// Fixed pool of KV blocks in flat arrays: refcounts, and a free list that is also the LRU evictor.
#pragma once
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace fastpage {

using BlockId = int32_t;
using BlockHash = uint64_t;
constexpr BlockHash kNoHash = 0;  // computed hashes are never 0

// Check-then-act: callers test can_allocate() before allocate(); allocating from an empty pool,
// freeing a free block or passing an id outside the pool throws (std::logic_error / std::out_of_range).
class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_count_.size()); }
  // Free blocks include cached ones that nobody uses (they are evictable).
  int32_t num_free_blocks() const { return num_free_; }
  int32_t num_used_blocks() const { return num_blocks() - num_free_; }
  bool can_allocate(int32_t count) const { return count <= num_free_; }

  // Pops the least recently freed block; if it held a cached prefix, that entry is evicted.
  BlockId allocate();
  std::vector<BlockId> allocate(int32_t count);
  // Takes one more reference (fork, prefix hit); a free cached block leaves the free list.
  void incref(BlockId block);
  // Drops one reference; at zero the block goes to the tail of the free list (most recent).
  void free(BlockId block);
  // Frees a sequence's blocks tail first, so its tail blocks are evicted before its prefix.
  void free_all(const std::vector<BlockId>& blocks);
  int32_t ref_count(BlockId block) const { return ref_count_[checked(block)]; }

  // The cached-prefix index: a block registered under a hash stays findable until it is reused.
  std::optional<BlockId> lookup(BlockHash hash) const;
  // Registers `block` under `hash`. Returns false (and changes nothing) when another block is
  // already registered under that hash; a block keeps one hash until allocate() reuses it.
  bool set_hash(BlockId block, BlockHash hash);
  BlockHash hash_of(BlockId block) const { return hash_[checked(block)]; }
  int32_t num_cached_blocks() const { return static_cast<int32_t>(cached_.size()); }
  // Forgets every cached hash; blocks in use keep their contents but are no longer findable.
  void reset_hashes();

  // Free blocks from the next to be evicted to the last; for tests and debugging.
  std::vector<BlockId> free_list() const;
  // Throws std::logic_error if free + used != total, a refcount is negative, the free list is
  // broken, or the hash index disagrees with the per-block hashes.
  void check_invariants() const;

 private:
  BlockId checked(BlockId block) const;
  void unlink(BlockId block);
  void push_back(BlockId block);
  BlockId sentinel() const { return num_blocks(); }

  std::vector<int32_t> ref_count_;
  std::vector<BlockHash> hash_;
  std::vector<BlockId> prev_, next_;  // intrusive doubly linked free list; head sentinel = num_blocks
  int32_t num_free_ = 0;
  std::unordered_map<BlockHash, BlockId> cached_;
};

}  // namespace fastpage
