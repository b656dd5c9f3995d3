#include "fastpage/block_allocator.h"

#include <stdexcept>
#include <string>

namespace fastpage {

BlockAllocator::BlockAllocator(int32_t num_blocks) {
  if (num_blocks < 0) {
    throw std::invalid_argument("BlockAllocator: num_blocks must be >= 0, got " + std::to_string(num_blocks));
  }
  ref_count_.assign(num_blocks, 0);
  hash_.assign(num_blocks, kNoHash);
  prev_.assign(num_blocks + 1, num_blocks);
  next_.assign(num_blocks + 1, num_blocks);
  for (BlockId block = 0; block < num_blocks; ++block) push_back(block);
  num_free_ = num_blocks;
}

BlockId BlockAllocator::checked(BlockId block) const {
  if (block < 0 || block >= num_blocks()) {
    throw std::out_of_range("BlockAllocator: block id " + std::to_string(block) + " is outside [0, " +
                            std::to_string(num_blocks()) + ")");
  }
  return block;
}

void BlockAllocator::unlink(BlockId block) {
  next_[prev_[block]] = next_[block];
  prev_[next_[block]] = prev_[block];
}

void BlockAllocator::push_back(BlockId block) {
  const BlockId tail = prev_[sentinel()];
  next_[tail] = block;
  prev_[block] = tail;
  next_[block] = sentinel();
  prev_[sentinel()] = block;
}

BlockId BlockAllocator::allocate() {
  if (num_free_ == 0) throw std::logic_error("BlockAllocator: allocate() with no free block");
  const BlockId block = next_[sentinel()];
  unlink(block);
  --num_free_;
  if (hash_[block] != kNoHash) {  // evict the cached prefix this block held
    cached_.erase(hash_[block]);
    hash_[block] = kNoHash;
  }
  ref_count_[block] = 1;
  return block;
}

std::vector<BlockId> BlockAllocator::allocate(int32_t count) {
  if (count < 0 || !can_allocate(count)) {
    throw std::logic_error("BlockAllocator: cannot allocate " + std::to_string(count) + " blocks, " +
                           std::to_string(num_free_) + " free");
  }
  std::vector<BlockId> blocks(count);
  for (auto& block : blocks) block = allocate();
  return blocks;
}

void BlockAllocator::incref(BlockId block) {
  checked(block);
  if (ref_count_[block] == 0) {
    unlink(block);
    --num_free_;
  }
  ++ref_count_[block];
}

void BlockAllocator::free(BlockId block) {
  checked(block);
  if (ref_count_[block] <= 0) {
    throw std::logic_error("BlockAllocator: block " + std::to_string(block) + " freed while already free");
  }
  if (--ref_count_[block] == 0) {
    push_back(block);
    ++num_free_;
  }
}

void BlockAllocator::free_all(const std::vector<BlockId>& blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) free(*it);
}

std::optional<BlockId> BlockAllocator::lookup(BlockHash hash) const {
  auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  return it->second;
}

bool BlockAllocator::set_hash(BlockId block, BlockHash hash) {
  checked(block);
  if (hash == kNoHash) throw std::invalid_argument("BlockAllocator: set_hash with kNoHash");
  if (hash_[block] == hash) return true;
  if (hash_[block] != kNoHash) {
    throw std::logic_error("BlockAllocator: block " + std::to_string(block) + " already has another hash");
  }
  if (!cached_.emplace(hash, block).second) return false;
  hash_[block] = hash;
  return true;
}

void BlockAllocator::reset_hashes() {
  for (const auto& [hash, block] : cached_) hash_[block] = kNoHash;
  cached_.clear();
}

std::vector<BlockId> BlockAllocator::free_list() const {
  std::vector<BlockId> blocks;
  blocks.reserve(num_free_);
  for (BlockId block = next_[sentinel()]; block != sentinel() && blocks.size() <= ref_count_.size();
       block = next_[block]) {
    blocks.push_back(block);
  }
  return blocks;
}

void BlockAllocator::check_invariants() const {
  auto fail = [](const std::string& what) { throw std::logic_error("BlockAllocator invariant: " + what); };
  std::vector<bool> in_list(num_blocks(), false);
  int32_t listed = 0;
  BlockId prev = sentinel();
  for (BlockId block = next_[sentinel()]; block != sentinel(); block = next_[block]) {
    if (block < 0 || block >= num_blocks()) fail("free list holds an invalid id " + std::to_string(block));
    if (in_list[block] || listed >= num_blocks()) fail("free list has a cycle at block " + std::to_string(block));
    if (prev_[block] != prev) fail("free list back link broken at block " + std::to_string(block));
    in_list[block] = true;
    ++listed;
    prev = block;
  }
  if (prev_[sentinel()] != prev) fail("free list tail link broken");
  if (listed != num_free_) {
    fail("free list has " + std::to_string(listed) + " blocks but num_free is " + std::to_string(num_free_));
  }
  int32_t used = 0;
  int32_t hashed = 0;
  for (BlockId block = 0; block < num_blocks(); ++block) {
    const int32_t refs = ref_count_[block];
    if (refs < 0) fail("block " + std::to_string(block) + " has refcount " + std::to_string(refs));
    if ((refs == 0) != in_list[block]) {
      fail("block " + std::to_string(block) + " with refcount " + std::to_string(refs) +
           (in_list[block] ? " is on the free list" : " is missing from the free list"));
    }
    used += refs > 0;
    if (hash_[block] != kNoHash) {
      ++hashed;
      auto it = cached_.find(hash_[block]);
      if (it == cached_.end() || it->second != block) fail("block " + std::to_string(block) + " hash not indexed");
    }
  }
  if (used + num_free_ != num_blocks()) fail("free + used != total");
  if (hashed != static_cast<int32_t>(cached_.size())) fail("hash index has stale entries");
}

}  // namespace fastpage
