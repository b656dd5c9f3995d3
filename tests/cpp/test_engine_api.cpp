// The public C++ API on its own: a batch is deterministic, independent of its neighbours, and every
// block comes back. Exits non-zero with a message on the first failure.
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "fastpage/engine.h"
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

}  // namespace

int main() {
  const std::vector<int32_t> prompt{3, 14, 15, 92, 65, 35, 89, 79, 32, 38};
  auto alone = run({{"x", prompt}});
  auto batched = run({{"y", {1, 2}}, {"x", prompt}, {"z", std::vector<int32_t>(23, 5)}});
  expect(alone["x"].size() == 12, "max_tokens respected");
  expect(alone["x"] == batched["x"], "greedy output does not depend on the batch");
  try {
    run({{"bad", {1, 999}}});
    expect(false, "out-of-vocabulary prompt token rejected");
  } catch (const std::invalid_argument&) {
  }
  std::cout << "engine_api: ok\n";
  return 0;
}
