// Embedding fastpage in a C++ service: no Python in the process. Compile against the headers in
// fastpage/include and link fastpage/lib/libfastpage.so plus torch's libraries (tests/test_cpp_embedding.py
// shows the exact command).
#include <iostream>

#include "fastpage/engine.h"
#include "tiny_llama.h"

int main() {
  auto engine = fastpage_example::tiny_llama_engine(/*num_blocks=*/64, /*block_size=*/16);
  engine->add_request("a", {1, 2, 3, 4, 5}, fastpage_example::greedy(8));
  engine->add_request("b", {7, 8, 9}, fastpage_example::greedy(8));
  while (engine->has_unfinished()) {
    for (const fastpage::StepOutput& out : engine->step()) {
      std::cout << out.request_id << ": " << out.new_token_ids[0] << (out.finished ? " (done)" : "") << "\n";
    }
  }
  return 0;
}
