#include "fastpage/prefix_cache.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace fastpage {
namespace {

// splitmix64's finalizer: a bijection on 64 bits with full avalanche.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

}  // namespace

PrefixCache::PrefixCache(BlockAllocator& blocks, int32_t block_size, bool enabled, uint64_t salt)
    : blocks_(blocks), block_size_(block_size), enabled_(enabled), salt_(salt) {
  if (block_size <= 0) {
    throw std::invalid_argument("PrefixCache: block_size must be positive, got " + std::to_string(block_size));
  }
  if (enabled_) {
    tokens_.assign(static_cast<size_t>(blocks.num_blocks()) * block_size, 0);
    parent_.assign(blocks.num_blocks(), kNoHash);
    extra_key_.assign(blocks.num_blocks(), 0);
  }
}

BlockHash PrefixCache::hash_block(BlockHash parent, std::span<const int32_t> tokens, uint64_t extra_key) const {
  // A sponge over 64-bit words: each word is xor-ed into the state, then the state is mixed by
  // a bijection, so the secret salt flows into every step.
  uint64_t state = mix64(salt_ ^ 0x9e3779b97f4a7c15ull);
  state = mix64(state ^ parent);
  state = mix64(state ^ extra_key);
  size_t i = 0;
  for (; i + 1 < tokens.size(); i += 2) {
    const uint64_t word = static_cast<uint32_t>(tokens[i]) | (static_cast<uint64_t>(static_cast<uint32_t>(tokens[i + 1])) << 32);
    state = mix64(state ^ word);
  }
  if (i < tokens.size()) state = mix64(state ^ static_cast<uint32_t>(tokens[i]) ^ (1ull << 63));
  state = mix64(state ^ tokens.size());
  return state == kNoHash ? 1 : state;
}

std::vector<BlockHash> PrefixCache::hash_blocks(std::span<const int32_t> tokens, uint64_t extra_key) const {
  std::vector<BlockHash> hashes;
  hashes.reserve(tokens.size() / block_size_);
  BlockHash parent = kNoHash;
  for (size_t start = 0; start + block_size_ <= tokens.size(); start += block_size_) {
    parent = hash_block(parent, tokens.subspan(start, block_size_), extra_key);
    hashes.push_back(parent);
  }
  return hashes;
}

bool PrefixCache::holds(BlockId block, BlockHash parent, std::span<const int32_t> tokens, uint64_t extra_key) const {
  const auto begin = tokens_.begin() + static_cast<size_t>(block) * block_size_;
  return parent_[block] == parent && extra_key_[block] == extra_key &&
         std::equal(tokens.begin(), tokens.end(), begin, begin + block_size_);
}

std::vector<BlockId> PrefixCache::find_prefix(std::span<const int32_t> tokens, const std::vector<BlockHash>& hashes,
                                              int32_t max_blocks, uint64_t extra_key) const {
  std::vector<BlockId> found;
  if (!enabled_) return found;
  const size_t limit = std::min({hashes.size(), tokens.size() / block_size_,
                                 static_cast<size_t>(std::max(max_blocks, 0))});
  for (size_t i = 0; i < limit; ++i) {
    const auto block = blocks_.lookup(hashes[i]);
    const BlockHash parent = i == 0 ? kNoHash : hashes[i - 1];
    if (!block || !holds(*block, parent, tokens.subspan(i * block_size_, block_size_), extra_key)) break;
    found.push_back(*block);
  }
  return found;
}

std::vector<BlockId> PrefixCache::acquire_prefix(std::span<const int32_t> tokens, const std::vector<BlockHash>& hashes,
                                                 int32_t max_blocks, uint64_t extra_key) {
  if (!enabled_) return {};
  std::vector<BlockId> found = find_prefix(tokens, hashes, max_blocks, extra_key);
  for (BlockId block : found) blocks_.incref(block);
  queried_tokens_ += static_cast<int64_t>(tokens.size());
  hit_tokens_ += static_cast<int64_t>(found.size()) * block_size_;
  return found;
}

void PrefixCache::register_block(BlockId block, BlockHash hash, BlockHash parent, std::span<const int32_t> tokens,
                                 uint64_t extra_key) {
  if (!enabled_) return;
  if (static_cast<int32_t>(tokens.size()) != block_size_) {
    throw std::invalid_argument("PrefixCache::register_block: a block holds " + std::to_string(block_size_) +
                                " tokens, got " + std::to_string(tokens.size()));
  }
  if (blocks_.hash_of(block) == hash) return;  // already registered
  if (!blocks_.set_hash(block, hash)) return;  // another block holds this prefix
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<size_t>(block) * block_size_);
  parent_[block] = parent;
  extra_key_[block] = extra_key;
}

void PrefixCache::reset() { blocks_.reset_hashes(); }

}  // namespace fastpage
