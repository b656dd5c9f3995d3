// Embedding fastpage in a C++ service: no Python in the process. Compile against the headers in
// fastpage/include and link fastpage/lib/libfastpage.so plus torch's libraries (tests/test_cpp_embedding.py
// shows the exact command). The engine runs on the loop's thread; this thread adds requests and
// takes each step's outputs, as the Python server does.
#include <iostream>
#include <map>
#include <string>

#include "fastpage/engine_loop.h"
#include "tiny_llama.h"

int main() {
  fastpage::EngineLoop loop(fastpage_example::tiny_llama_engine(/*num_blocks=*/64, /*block_size=*/16));
  const std::map<fastpage::RequestHandle, std::string> names{{0, "a"}, {1, "b"}};
  loop.add_request(0, "a", {1, 2, 3, 4, 5}, fastpage_example::greedy(8));
  loop.add_request(1, "b", {7, 8, 9}, fastpage_example::greedy(8));
  loop.start();
  size_t unfinished = names.size();
  while (unfinished > 0) {
    const fastpage::StepBatch batch = loop.take(/*timeout_s=*/1.0);
    if (!batch.failure.empty()) {
      std::cerr << "engine failed: " << batch.failure << "\n";
      return 1;
    }
    for (size_t row = 0; row < batch.num_rows(); ++row) {
      const bool finished = batch.finish_reasons[row] != static_cast<uint8_t>(fastpage::FinishReason::None);
      for (int32_t i = batch.token_offsets[row]; i < batch.token_offsets[row + 1]; ++i) {
        const bool last = i + 1 == batch.token_offsets[row + 1];
        std::cout << names.at(batch.handles[row]) << ": " << batch.token_ids[i] << (finished && last ? " (done)" : "")
                  << "\n";
      }
      if (finished) --unfinished;
    }
  }
  loop.stop();
  return 0;
}
