// The GrammarBackend over xgrammar (the grammar engine vLLM and SGLang use by default), called through
// its tvm-ffi C ABI: the objects are created in Python (xgrammar.GrammarCompiler, which needs the HF
// tokenizer), and from then on everything runs here, without the GIL.
#pragma once
#include <memory>

#include "fastpage/structured_output.h"

namespace fastpage {

// `compiler_handle` is the tvm-ffi object handle of an xgrammar GrammarCompiler (Python:
// `compiler._handle.__chandle__()`); the backend holds a reference of its own. `vocab_size`: that of
// the compiler's TokenizerInfo. `fill_threads`: the threads that fill a step's bitmasks.
std::shared_ptr<GrammarBackend> make_xgrammar_backend(void* compiler_handle, int64_t vocab_size, int32_t fill_threads);

}  // namespace fastpage
