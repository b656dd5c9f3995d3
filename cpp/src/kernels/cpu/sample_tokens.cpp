// sample_tokens on the CPU: each row through the CPU sampler's own argmax / seeded draw
// (cpp/src/sampling/random_draw.h), so the op and Sampler agree by construction.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "../../sampling/logits_processors.h"
#include "../../sampling/random_draw.h"

namespace fastpage::kernels::cpu {
namespace {

void check_row_tensor(const at::Tensor& t, int64_t rows, at::ScalarType dtype, const char* name) {
  constexpr const char* op = "fastpage.sample_tokens: ";
  TORCH_CHECK(t.device().is_cpu(), op, name, " must be on the CPU like logits");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, op, name, " must be [", rows, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, op, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
}

}  // namespace

at::Tensor sample_tokens(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                         const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& seeds,
                         const at::Tensor& positions, const std::optional<at::Tensor>& token_bitmask,
                         const std::optional<at::Tensor>& bitmask_index) {
  constexpr const char* op = "fastpage.sample_tokens: ";
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, op, "logits must be [rows, vocab], got ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat && logits.is_contiguous(), op,
              "logits must be contiguous float32, got ", logits.scalar_type());
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  check_row_tensor(temperature, rows, at::kFloat, "temperature");
  check_row_tensor(top_k, rows, at::kLong, "top_k");
  check_row_tensor(top_p, rows, at::kFloat, "top_p");
  check_row_tensor(min_p, rows, at::kFloat, "min_p");
  check_row_tensor(seeds, rows, at::kLong, "seeds");
  check_row_tensor(positions, rows, at::kLong, "positions");
  TORCH_CHECK(token_bitmask.has_value() == bitmask_index.has_value(), op,
              "token_bitmask and bitmask_index come together");
  const int64_t words = (vocab + 31) / 32;
  at::Tensor masks, mask_of_row;
  if (token_bitmask) {
    masks = token_bitmask->contiguous();
    TORCH_CHECK(masks.device().is_cpu() && masks.scalar_type() == at::kInt && masks.dim() == 2 &&
                    masks.size(1) == words, op, "token_bitmask must be int32 [masks, ", words, "] on the CPU, got ",
                masks.sizes());
    check_row_tensor(*bitmask_index, rows, at::kLong, "bitmask_index");
    mask_of_row = bitmask_index->contiguous();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t index = mask_of_row.const_data_ptr<int64_t>()[r];
      TORCH_CHECK(index >= -1 && index < masks.size(0), op, "bitmask_index ", index, " is outside [-1, ",
                  masks.size(0), ")");
    }
  }

  at::Tensor tokens = at::empty({rows}, logits.options().dtype(at::kLong));
  int64_t* out = tokens.data_ptr<int64_t>();
  const float* data = logits.const_data_ptr<float>();
  const auto t = temperature.contiguous(), k = top_k.contiguous(), p = top_p.contiguous(),
             m = min_p.contiguous(), s = seeds.contiguous(), pos = positions.contiguous();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(vocab);
    sampling::DrawScratch scratch;
    for (int64_t r = begin; r < end; ++r) {
      const float* source = data + r * vocab;
      const int64_t mask = masks.defined() ? mask_of_row.const_data_ptr<int64_t>()[r] : -1;
      if (mask >= 0) {
        std::copy(source, source + vocab, row.begin());
        sampling::apply_token_bitmask(row.data(), vocab, masks.const_data_ptr<int32_t>() + mask * words);
        source = row.data();
      }
      if (t.const_data_ptr<float>()[r] <= 0.0f) {
        out[r] = sampling::argmax(source, vocab);
        continue;
      }
      SamplingParams params;
      params.temperature = t.const_data_ptr<float>()[r];
      params.top_k = static_cast<int32_t>(std::clamp<int64_t>(k.const_data_ptr<int64_t>()[r], 0, vocab));
      params.top_p = p.const_data_ptr<float>()[r];
      params.min_p = m.const_data_ptr<float>()[r];
      if (source != row.data()) std::copy(source, source + vocab, row.begin());
      out[r] = sampling::draw_token(row.data(), vocab, params,
                                    static_cast<uint64_t>(s.const_data_ptr<int64_t>()[r]),
                                    pos.const_data_ptr<int64_t>()[r], scratch);
    }
  });
  return tokens;
}

}  // namespace fastpage::kernels::cpu
