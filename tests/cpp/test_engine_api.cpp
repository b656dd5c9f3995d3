// The public C++ API on its own: a batch is deterministic, independent of its neighbours, and every
// block comes back. Exits non-zero with a message on the first failure.
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "fastpage/engine.h"
#include "fastpage/engine_loop.h"
#include "tiny_llama.h"

namespace {

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    std::exit(1);
  }
}

std::map<std::string, std::vector<int32_t>> run(const std::vector<std::pair<std::string, std::vector<int32_t>>>& prompts) {
  auto owned = fastpage_example::tiny_llama_engine(/*num_blocks=*/32, /*block_size=*/8);
  fastpage::Engine& engine = *owned;
  std::map<fastpage::RequestHandle, std::string> names;
  for (const auto& [id, tokens] : prompts) names[engine.add_request(id, tokens, fastpage_example::greedy(12))] = id;
  std::map<std::string, std::vector<int32_t>> out;
  while (engine.has_unfinished()) {
    for (const auto& step : engine.step()) {
      for (int32_t t : step.new_token_ids) out[names.at(step.handle)].push_back(t);
    }
  }
  engine.check_invariants();
  expect(engine.stats().num_free_device_blocks == engine.stats().num_device_blocks, "all blocks free when idle");
  return out;
}

// The same requests through EngineLoop, stepped by the caller three steps per take(): each take
// returns one row per sequence with the tokens of all the steps since the last one.
std::map<std::string, std::vector<int32_t>> run_loop(
    const std::vector<std::pair<std::string, std::vector<int32_t>>>& prompts) {
  fastpage::EngineLoop loop(fastpage_example::tiny_llama_engine(/*num_blocks=*/32, /*block_size=*/8));
  std::map<fastpage::RequestHandle, std::string> names;
  for (const auto& [id, tokens] : prompts) {
    const auto handle = static_cast<fastpage::RequestHandle>(names.size());
    names[handle] = id;
    loop.add_request(handle, id, tokens, fastpage_example::greedy(12));
  }
  std::map<std::string, std::vector<int32_t>> out;
  while (loop.has_unfinished()) {
    for (int i = 0; i < 3; ++i) loop.step();
    const fastpage::StepBatch batch = loop.take(0.0);
    expect(batch.num_steps == 3 && batch.failure.empty(), "a take after three steps reports three");
    for (size_t row = 0; row < batch.num_rows(); ++row) {
      std::vector<int32_t>& tokens = out[names.at(batch.handles[row])];
      for (size_t r = 0; r < row; ++r) expect(batch.handles[r] != batch.handles[row], "one row per sequence");
      tokens.insert(tokens.end(), batch.token_ids.begin() + batch.token_offsets[row],
                    batch.token_ids.begin() + batch.token_offsets[row + 1]);
    }
  }
  loop.run_between_steps([](fastpage::Engine& engine) {
    engine.check_invariants();
    expect(engine.stats().num_free_device_blocks == engine.stats().num_device_blocks, "loop: all blocks free");
  });
  return out;
}

}  // namespace

int main() {
  const std::vector<int32_t> prompt{3, 14, 15, 92, 65, 35, 89, 79, 32, 38};
  auto alone = run({{"x", prompt}});
  auto batched = run({{"y", {1, 2}}, {"x", prompt}, {"z", std::vector<int32_t>(23, 5)}});
  expect(alone["x"].size() == 12, "max_tokens respected");
  expect(alone["x"] == batched["x"], "greedy output does not depend on the batch");
  expect(run_loop({{"y", {1, 2}}, {"x", prompt}, {"z", std::vector<int32_t>(23, 5)}}) == batched,
         "the loop's merged outputs equal the engine's step by step");
  try {
    run({{"bad", {1, 999}}});
    expect(false, "out-of-vocabulary prompt token rejected");
  } catch (const std::invalid_argument&) {
  }
  std::cout << "engine_api: ok\n";
  return 0;
}
