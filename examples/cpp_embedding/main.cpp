// Embedding fastpage in a C++ service: no Python in the process. Build with the tests
// (cmake -DFASTPAGE_BUILD_TESTS=ON) and run build/.../fastpage_embed_example.
#include <iostream>

#include "fastpage/engine.h"
#include "tiny_llama.h"

int main() {
  const fastpage::ModelConfig model = fastpage_example::tiny_llama_config();
  fastpage::EngineConfig config;
  config.num_gpu_blocks = 64;
  fastpage::Engine engine(model, config, fastpage_example::random_weights(model, 0), c10::Device("cpu"),
                          c10::ScalarType::Float);

  fastpage::SamplingParams greedy;
  greedy.temperature = 0.0f;
  greedy.max_tokens = 8;
  engine.add_request("a", {1, 2, 3, 4, 5}, greedy);
  engine.add_request("b", {7, 8, 9}, greedy);
  while (engine.has_unfinished()) {
    for (const fastpage::StepOutput& out : engine.step()) {
      std::cout << out.request_id << ": " << out.new_token_ids[0] << (out.finished ? " (done)" : "") << "\n";
    }
  }
  return 0;
}
