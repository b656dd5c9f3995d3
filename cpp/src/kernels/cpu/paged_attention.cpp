// Varlen paged attention on the CPU: decode (one new token) and prefill chunks (many new tokens over
// a cached prefix) in one kernel. Each work item is (sequence, kv head, tile of new tokens): the
// query heads that share the kv head are processed together, so every key/value row is loaded and
// converted once per tile and reused by all of them (grouped-query attention). Keys are visited in
// chunks with an online softmax, so memory stays O(tile) whatever the context length. When there
// are fewer items than threads (small-batch decode), long contexts are split into key ranges whose
// partial softmax states are merged afterwards. The cache holds the query's dtype or float8_e4m3fn
// (kv_cache_dtype="fp8"); either way its rows are converted to float as they are loaded.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_kernels.h"
#include "fp8.h"
#include "row_dots.h"
#include "vector_exp.h"

namespace fastpage::kernels::cpu {
namespace {

constexpr int64_t kRowsPerTile = 32;  // query rows (tokens x heads of a group) per work item
constexpr int64_t kKeyChunk = 64;     // keys scored before one softmax rescale
constexpr int64_t kMinKeysPerSplit = 4 * kKeyChunk;  // below this a key range is not worth a thread

struct WorkItem {
  int64_t seq;
  int64_t kv_head;
  int64_t token_begin;  // tile of the sequence's new tokens, relative to its first new token
  int64_t token_end;
  int64_t key_begin = 0;  // key range (positions) of a split item; the whole causal range if not
  int64_t key_end = std::numeric_limits<int64_t>::max();
  int64_t partial = -1;  // split items write their softmax state to this slot of the partials
};

// A tile whose keys were split over items first_partial ... first_partial + num_partials - 1.
struct SplitTile {
  WorkItem tile;
  int64_t first_partial, num_partials;
};

struct Geometry {
  int64_t num_q_heads, num_kv_heads, group, head_dim, block_size, max_blocks;
  int64_t q_token_stride, q_head_stride, out_token_stride, out_head_stride;
};

// Scratch of one thread, sized for the largest tile.
struct Scratch {
  std::vector<float> query, acc, scores, keys, values, row_max, row_sum;
  std::vector<int64_t> num_valid;
  Scratch(int64_t rows, int64_t head_dim)
      : query(rows * head_dim), acc(rows * head_dim), scores(rows * kKeyChunk),
        keys(kKeyChunk * head_dim), values(kKeyChunk * head_dim), row_max(rows), row_sum(rows),
        num_valid(rows) {}
};

// The softmax weights get an AVX2+FMA clone chosen when the library loads; the build itself stays
// at baseline x86-64 (no -march), so the same binary runs everywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTPAGE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FASTPAGE_VECTOR_CLONES
#endif

// scores[k] = exp(scores[k] - max), returning their sum.
FASTPAGE_VECTOR_CLONES
float softmax_weights(float* scores, int64_t num_keys, float max) {
  for (int64_t k = 0; k < num_keys; ++k) scores[k] -= max;
  exp_in_place(scores, num_keys);
  float sum = 0.f;
  for (int64_t k = 0; k < num_keys; ++k) sum += scores[k];
  return sum;
}

// Output row r (token r / group, head r % group of the kv head's group) of a tile.
template <typename scalar_t>
scalar_t* output_row(const WorkItem& tile, const Geometry& g, scalar_t* out,
                     const int32_t* query_start_loc, int64_t r) {
  const int64_t token = query_start_loc[tile.seq] + tile.token_begin + r / g.group;
  return out + token * g.out_token_stride + (tile.kv_head * g.group + r % g.group) * g.out_head_stride;
}

template <typename scalar_t, typename cache_t>
void attend_tile(const WorkItem& item, const Geometry& g, const scalar_t* query,
                 const cache_t* key_cache, const cache_t* value_cache, scalar_t* out,
                 float* partials, int64_t rows_per_tile, const int32_t* query_start_loc,
                 const int32_t* context_lens, const int32_t* block_tables, float scale,
                 Scratch& scratch) {
  const int64_t D = g.head_dim;
  const int64_t q_start = query_start_loc[item.seq];
  const int64_t q_len = query_start_loc[item.seq + 1] - q_start;
  const int64_t first_position = context_lens[item.seq] - q_len;  // position of new token 0
  const int32_t* block_table = block_tables + item.seq * g.max_blocks;
  const int64_t num_tokens = item.token_end - item.token_begin;
  const int64_t rows = num_tokens * g.group;
  const int64_t kv_token_stride = g.num_kv_heads * D;

  // Row r = (token t, head hh of the group): scaled query in float, empty accumulators.
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t hh = 0; hh < g.group; ++hh) {
      const int64_t r = t * g.group + hh;
      const scalar_t* q = query + (q_start + item.token_begin + t) * g.q_token_stride +
                          (item.kv_head * g.group + hh) * g.q_head_stride;
      float* q_row = scratch.query.data() + r * D;
      for (int64_t d = 0; d < D; ++d) q_row[d] = static_cast<float>(q[d]) * scale;
    }
  }
  std::fill_n(scratch.acc.begin(), rows * D, 0.f);
  std::fill_n(scratch.row_max.begin(), rows, -std::numeric_limits<float>::infinity());
  std::fill_n(scratch.row_sum.begin(), rows, 0.f);

  // Causal: token t sees keys [0, first_position + token_begin + t]; the tile's last token the most.
  const int64_t keys_end = std::min(first_position + item.token_end, item.key_end);
  const auto cache_offset = [&](int64_t position) {
    const int64_t slot =
        static_cast<int64_t>(block_table[position / g.block_size]) * g.block_size + position % g.block_size;
    return slot * kv_token_stride + item.kv_head * D;
  };
  for (int64_t chunk_begin = item.key_begin; chunk_begin < keys_end; chunk_begin += kKeyChunk) {
    const int64_t chunk_len = std::min(kKeyChunk, keys_end - chunk_begin);
    const float* key_rows[kKeyChunk];
    const float* value_rows[kKeyChunk];
    for (int64_t k = 0; k < chunk_len; ++k) {
      const int64_t offset = cache_offset(chunk_begin + k);
      key_rows[k] = as_float_row(key_cache + offset, scratch.keys.data() + k * D, D);
      value_rows[k] = as_float_row(value_cache + offset, scratch.values.data() + k * D, D);
    }
    // The next chunk's rows are scattered over blocks (and strided by the kv heads within one), which
    // the hardware prefetcher follows poorly: ask for them into L2 while this chunk computes.
    for (int64_t position = chunk_begin + kKeyChunk; position < std::min(chunk_begin + 2 * kKeyChunk, keys_end);
         ++position) {
      const int64_t offset = cache_offset(position);
      prefetch_row(key_cache + offset, D);
      prefetch_row(value_cache + offset, D);
    }

    // Blocks of rows share every loaded key and value row. A block scores the keys that its most
    // advanced row sees; a row's weights past its own causal limit are zero.
    for (int64_t r0 = 0; r0 < rows; r0 += kDotRowBlock) {
      const int64_t block_rows = std::min(kDotRowBlock, rows - r0);
      int64_t block_keys = 0;
      for (int64_t r = r0; r < r0 + block_rows; ++r) {
        const int64_t token = item.token_begin + r / g.group;
        scratch.num_valid[r] = std::clamp<int64_t>(first_position + token + 1 - chunk_begin, 0, chunk_len);
        block_keys = std::max(block_keys, scratch.num_valid[r]);
      }
      if (block_keys == 0) continue;
      float* block_scores = scratch.scores.data() + r0 * kKeyChunk;
      dot_rows(scratch.query.data() + r0 * D, block_rows, key_rows, block_keys, D, block_scores, kKeyChunk);
      // The online-softmax update of each row's running max and sum.
      for (int64_t r = r0; r < r0 + block_rows; ++r) {
        const int64_t num_valid = scratch.num_valid[r];
        float* scores = scratch.scores.data() + r * kKeyChunk;
        std::fill(scores + num_valid, scores + block_keys, 0.f);
        if (num_valid == 0) continue;
        const float chunk_max = *std::max_element(scores, scores + num_valid);
        const float new_max = std::max(scratch.row_max[r], chunk_max);
        if (new_max > scratch.row_max[r]) {
          const float correction = std::exp(scratch.row_max[r] - new_max);
          scratch.row_sum[r] *= correction;
          float* acc = scratch.acc.data() + r * D;
          for (int64_t d = 0; d < D; ++d) acc[d] *= correction;
          scratch.row_max[r] = new_max;
        }
        scratch.row_sum[r] += softmax_weights(scores, num_valid, new_max);
      }
      accumulate_rows(scratch.acc.data() + r0 * D, block_rows, block_scores, kKeyChunk, value_rows, block_keys, D);
    }
  }

  if (item.partial >= 0) {
    // Row state of a split item: max, sum, unnormalized accumulator.
    float* state = partials + item.partial * rows_per_tile * (D + 2);
    for (int64_t r = 0; r < rows; ++r) {
      state[r * (D + 2)] = scratch.row_max[r];
      state[r * (D + 2) + 1] = scratch.row_sum[r];
      std::copy_n(scratch.acc.data() + r * D, D, state + r * (D + 2) + 2);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float inv_sum = 1.f / scratch.row_sum[r];
    const float* acc = scratch.acc.data() + r * D;
    scalar_t* o = output_row(item, g, out, query_start_loc, r);
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[d] * inv_sum);
  }
}

// Combines the softmax states of a split tile's key ranges into its output rows.
template <typename scalar_t>
void merge_split_tile(const SplitTile& split, const Geometry& g, const float* partials,
                      int64_t rows_per_tile, scalar_t* out, const int32_t* query_start_loc,
                      std::vector<float>& acc) {
  const int64_t D = g.head_dim;
  const int64_t rows = (split.tile.token_end - split.tile.token_begin) * g.group;
  const auto state = [&](int64_t p, int64_t r) {
    return partials + ((split.first_partial + p) * rows_per_tile + r) * (D + 2);
  };
  for (int64_t r = 0; r < rows; ++r) {
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t p = 0; p < split.num_partials; ++p) max = std::max(max, state(p, r)[0]);
    float sum = 0.f;
    std::fill_n(acc.begin(), D, 0.f);
    for (int64_t p = 0; p < split.num_partials; ++p) {
      const float* s = state(p, r);
      if (s[1] == 0.f) continue;  // this key range is past the row's causal limit
      const float weight = std::exp(s[0] - max);
      sum += s[1] * weight;
      for (int64_t d = 0; d < D; ++d) acc[d] += s[2 + d] * weight;
    }
    scalar_t* o = output_row(split.tile, g, out, query_start_loc, r);
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[d] / sum);
  }
}

void check_index_tensor(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kInt, "fastpage.paged_attention: ", name,
              " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "fastpage.paged_attention: ", name, " must have ", dim,
              " dims, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "fastpage.paged_attention: ", name, " must be contiguous");
}

}  // namespace

void paged_attention(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const at::Tensor& query_start_loc,
                     const at::Tensor& context_lens, const at::Tensor& block_tables, double scale,
                     int64_t max_query_len, int64_t max_context_len) {
  constexpr const char* op = "fastpage.paged_attention: ";
  check_float_dtype(query, op, "query");
  TORCH_CHECK(query.dim() == 3, op, "query must be [num_tokens, num_heads, head_dim], got ",
              query.sizes());
  TORCH_CHECK(out.sizes() == query.sizes(), op, "out shape ", out.sizes(),
              " must equal query shape ", query.sizes());
  TORCH_CHECK(query.stride(2) == 1 && out.stride(2) == 1, op,
              "query and out must be contiguous in head_dim");
  check_kv_caches(key_cache, value_cache, op);
  TORCH_CHECK(out.scalar_type() == query.scalar_type(), op, "out must have the query dtype ",
              query.scalar_type(), ", got ", out.scalar_type());
  check_kv_cache_dtype(key_cache, value_cache, query.scalar_type(), op);
  check_index_tensor(query_start_loc, "query_start_loc", 1);
  check_index_tensor(context_lens, "context_lens", 1);
  check_index_tensor(block_tables, "block_tables", 2);

  Geometry g{};
  g.num_q_heads = query.size(1);
  g.head_dim = query.size(2);
  g.num_kv_heads = key_cache.size(2);
  g.block_size = key_cache.size(1);
  g.max_blocks = block_tables.size(1);
  TORCH_CHECK(key_cache.size(3) == g.head_dim, op, "key_cache head_dim ", key_cache.size(3),
              " != query head_dim ", g.head_dim);
  TORCH_CHECK(g.num_kv_heads > 0 && g.num_q_heads % g.num_kv_heads == 0, op, "num_heads ",
              g.num_q_heads, " must be a multiple of num_kv_heads ", g.num_kv_heads);
  g.group = g.num_q_heads / g.num_kv_heads;
  g.q_token_stride = query.stride(0);
  g.q_head_stride = query.stride(1);
  g.out_token_stride = out.stride(0);
  g.out_head_stride = out.stride(1);

  const int64_t num_seqs = context_lens.size(0);
  const int64_t num_tokens = query.size(0);
  const int64_t num_blocks = key_cache.size(0);
  TORCH_CHECK(query_start_loc.size(0) == num_seqs + 1, op, "query_start_loc has ",
              query_start_loc.size(0), " entries, expected num_seqs + 1 = ", num_seqs + 1);
  TORCH_CHECK(block_tables.size(0) == num_seqs, op, "block_tables has ", block_tables.size(0),
              " rows, expected num_seqs = ", num_seqs);

  // Validate every sequence up front: the kernel below reads the cache through these indices.
  const int32_t* starts = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  TORCH_CHECK(num_seqs == 0 || starts[0] == 0, op, "query_start_loc[0] must be 0");
  TORCH_CHECK(starts[num_seqs] <= num_tokens, op, "query_start_loc[-1] = ", starts[num_seqs],
              " exceeds num_tokens ", num_tokens);
  const int64_t tokens_per_tile = std::max<int64_t>(1, kRowsPerTile / g.group);
  const int64_t rows_per_tile = tokens_per_tile * g.group;
  std::vector<WorkItem> items;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t q_len = starts[s + 1] - starts[s];
    const int64_t ctx = lens[s];
    TORCH_CHECK(q_len >= 0, op, "query_start_loc must be non-decreasing (sequence ", s, ")");
    TORCH_CHECK(q_len <= ctx, op, "sequence ", s, " has ", q_len,
                " new tokens but context_lens = ", ctx, " (context_lens counts the new tokens)");
    TORCH_CHECK(q_len <= max_query_len && ctx <= max_context_len, op, "sequence ", s,
                " (q_len ", q_len, ", context_len ", ctx, ") exceeds max_query_len ",
                max_query_len, " / max_context_len ", max_context_len);
    const int64_t used_blocks = (ctx + g.block_size - 1) / g.block_size;
    TORCH_CHECK(used_blocks <= g.max_blocks, op, "sequence ", s, " needs ", used_blocks,
                " blocks but block_tables has ", g.max_blocks, " columns");
    for (int64_t b = 0; b < used_blocks; ++b) {
      const int32_t block = tables[s * g.max_blocks + b];
      TORCH_CHECK(block >= 0 && block < num_blocks, op, "block_tables[", s, ", ", b, "] = ", block,
                  " is outside the cache's ", num_blocks, " blocks");
    }
    for (int64_t begin = 0; begin < q_len; begin += tokens_per_tile) {
      for (int64_t h = 0; h < g.num_kv_heads; ++h) {
        items.push_back({s, h, begin, std::min(q_len, begin + tokens_per_tile)});
      }
    }
  }

  // Fewer tiles than threads (small-batch decode): split long key ranges, in whole chunks, so that
  // every thread gets work.
  std::vector<SplitTile> splits;
  int64_t num_partials = 0;
  const int64_t num_tiles = static_cast<int64_t>(items.size());
  if (num_tiles > 0 && num_tiles < at::get_num_threads()) {
    const int64_t parts_wanted = (at::get_num_threads() + num_tiles - 1) / num_tiles;
    std::vector<WorkItem> split_items;
    for (const WorkItem& tile : items) {
      const int64_t keys_end = lens[tile.seq] - (starts[tile.seq + 1] - starts[tile.seq]) + tile.token_end;
      const int64_t num_parts = std::min(parts_wanted, keys_end / kMinKeysPerSplit);
      if (num_parts < 2) {
        split_items.push_back(tile);
        continue;
      }
      const int64_t num_chunks = (keys_end + kKeyChunk - 1) / kKeyChunk;
      const int64_t chunks_per_part = (num_chunks + num_parts - 1) / num_parts;
      SplitTile split{tile, num_partials, 0};
      for (int64_t chunk = 0; chunk < num_chunks; chunk += chunks_per_part) {
        WorkItem part = tile;
        part.key_begin = chunk * kKeyChunk;
        part.key_end = std::min(keys_end, (chunk + chunks_per_part) * kKeyChunk);
        part.partial = num_partials++;
        split_items.push_back(part);
        ++split.num_partials;
      }
      splits.push_back(split);
    }
    items = std::move(split_items);
  }

  // Later tiles of a prefill see more keys. parallel_for hands each thread a contiguous range, so
  // interleave cheap and expensive items (first, last, second, second to last, ...) to balance it.
  std::vector<WorkItem> order;
  order.reserve(items.size());
  for (size_t lo = 0, hi = items.size(); lo < hi;) {
    order.push_back(items[lo++]);
    if (lo < hi) order.push_back(items[--hi]);
  }

  // (query row, key) pairs the items score, each a head_dim dot product and accumulation: below
  // ATen's grain of work (a decode step over short contexts) one thread does all of it.
  int64_t num_pairs = 0;
  for (const WorkItem& item : items) {
    const int64_t q_len = starts[item.seq + 1] - starts[item.seq];
    num_pairs += (item.token_end - item.token_begin) * g.group * (lens[item.seq] - q_len + item.token_end);
  }
  const int64_t num_items = static_cast<int64_t>(order.size());
  const int64_t grain = num_pairs * g.head_dim <= kParallelGrain ? num_items : 1;
  const bool fp8_cache = key_cache.scalar_type() == at::kFloat8_e4m3fn;
  FASTPAGE_DISPATCH_FLOAT_TYPES(query.scalar_type(), "fastpage_paged_attention", [&] {
    const scalar_t* q = query.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    std::vector<float> partials(num_partials * rows_per_tile * (g.head_dim + 2));
    const auto attend_items = [&]<typename cache_t>() {
      const auto* k = static_cast<const cache_t*>(key_cache.const_data_ptr());
      const auto* v = static_cast<const cache_t*>(value_cache.const_data_ptr());
      at::parallel_for(0, num_items, grain, [&](int64_t begin, int64_t end) {
        Scratch scratch(rows_per_tile, g.head_dim);
        for (int64_t i = begin; i < end; ++i) {
          attend_tile<scalar_t, cache_t>(order[i], g, q, k, v, o, partials.data(), rows_per_tile, starts, lens,
                                         tables, static_cast<float>(scale), scratch);
        }
      });
    };
    if (fp8_cache) attend_items.template operator()<c10::Float8_e4m3fn>();
    else attend_items.template operator()<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(splits.size()), 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(g.head_dim);
      for (int64_t i = begin; i < end; ++i) {
        merge_split_tile<scalar_t>(splits[i], g, partials.data(), rows_per_tile, o, starts, acc);
      }
    });
  });
}

}  // namespace fastpage::kernels::cpu
