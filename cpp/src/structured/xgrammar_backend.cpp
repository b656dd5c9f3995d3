#include "fastpage/xgrammar_backend.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/reflection/accessor.h>
#include <tvm/ffi/tvm_ffi.h>

#include <stdexcept>
#include <string>

namespace fastpage {
namespace {

namespace ffi = tvm::ffi;

constexpr const char* kCompiler = "xgrammar.tvm_ffi_binding.GrammarCompiler";
constexpr const char* kMatcher = "xgrammar.tvm_ffi_binding.GrammarMatcher";
constexpr const char* kBatchMatcher = "xgrammar.tvm_ffi_binding.BatchGrammarMatcher";

// xgrammar's methods, looked up once.
struct Methods {
  ffi::Function compile_json_schema = ffi::reflection::GetMethod(kCompiler, "compile_json_schema");
  ffi::Function compile_regex = ffi::reflection::GetMethod(kCompiler, "compile_regex");
  ffi::Function compile_ebnf = ffi::reflection::GetMethod(kCompiler, "compile_grammar_from_strings");
  ffi::Function compile_structural_tag = ffi::reflection::GetMethod(kCompiler, "compile_structural_tag");
  ffi::Function new_matcher = ffi::reflection::GetMethod(kMatcher, "__ffi_init__");
  ffi::Function accept_token = ffi::reflection::GetMethod(kMatcher, "accept_token");
  ffi::Function is_terminated = ffi::reflection::GetMethod(kMatcher, "is_terminated");
  ffi::Function fill_bitmask = ffi::reflection::GetMethod(kMatcher, "fill_next_token_bitmask");
  ffi::Function new_batch_matcher = ffi::reflection::GetMethod(kBatchMatcher, "__ffi_init__");
  ffi::Function batch_fill_bitmask = ffi::reflection::GetMethod(kBatchMatcher, "batch_fill_next_token_bitmask");
};

class XGrammarMatcher final : public GrammarMatcher {
 public:
  XGrammarMatcher(const Methods& methods, ffi::ObjectRef handle) : methods_(methods), handle_(std::move(handle)) {}
  bool accept(int32_t token) override {
    return methods_.accept_token(handle_, static_cast<int64_t>(token), false).cast<bool>();
  }
  bool terminated() const override { return methods_.is_terminated(handle_).cast<bool>(); }
  const ffi::ObjectRef& handle() const { return handle_; }

 private:
  const Methods& methods_;
  ffi::ObjectRef handle_;
};

class XGrammarCompiled final : public CompiledGrammar {
 public:
  XGrammarCompiled(const Methods& methods, ffi::ObjectRef handle) : methods_(methods), handle_(std::move(handle)) {}
  std::unique_ptr<GrammarMatcher> new_matcher() const override {
    // Stop tokens from the tokenizer info (the model's eos ids); the grammar ends with one.
    ffi::ObjectRef matcher = methods_.new_matcher(handle_, nullptr, false, -1, nullptr).cast<ffi::ObjectRef>();
    return std::make_unique<XGrammarMatcher>(methods_, std::move(matcher));
  }

 private:
  const Methods& methods_;
  ffi::ObjectRef handle_;
};

class XGrammarBackend final : public GrammarBackend {
 public:
  XGrammarBackend(ffi::ObjectRef compiler, int64_t vocab_size, int32_t fill_threads)
      : compiler_(std::move(compiler)), vocab_size_(vocab_size) {
    batch_matcher_ = methods_.new_batch_matcher(static_cast<int64_t>(fill_threads)).cast<ffi::ObjectRef>();
  }

  std::shared_ptr<const CompiledGrammar> compile(const StructuredOutput& output) override {
    ffi::Any compiled;
    try {
      switch (output.kind) {
        case GrammarKind::JsonSchema:
          // Strict mode: objects and arrays hold only what the schema lists (vLLM's default).
          compiled = methods_.compile_json_schema(compiler_, ffi::String(output.spec), output.any_whitespace,
                                                  nullptr, nullptr, true, nullptr, false);
          break;
        case GrammarKind::JsonObject:
          // Any object (xgrammar's builtin JSON grammar takes any value): a schema, not strict.
          compiled = methods_.compile_json_schema(compiler_, ffi::String(R"({"type": "object"})"),
                                                  output.any_whitespace, nullptr, nullptr, false, nullptr, false);
          break;
        case GrammarKind::Regex:
          compiled = methods_.compile_regex(compiler_, ffi::String(output.spec));
          break;
        case GrammarKind::Ebnf:
          compiled = methods_.compile_ebnf(compiler_, ffi::String(output.spec), ffi::String("root"));
          break;
        case GrammarKind::StructuralTag:
          compiled = methods_.compile_structural_tag(compiler_, ffi::String(output.spec));
          break;
        case GrammarKind::None:
          throw std::invalid_argument("structured_output: no grammar to compile");
      }
    } catch (const ffi::Error& e) {
      throw std::invalid_argument("structured_output: " + e.message());
    }
    return std::make_shared<XGrammarCompiled>(methods_, compiled.cast<ffi::ObjectRef>());
  }

  void fill_bitmasks(const std::vector<GrammarMatcher*>& matchers, int32_t* bitmask) override {
    if (matchers.empty()) return;
    int64_t shape[2] = {static_cast<int64_t>(matchers.size()), words_per_row()};
    DLTensor tensor{bitmask, DLDevice{kDLCPU, 0}, 2, DLDataType{kDLInt, 32, 1}, shape, nullptr, 0};
    if (matchers.size() == 1) {
      methods_.fill_bitmask(static_cast<XGrammarMatcher*>(matchers[0])->handle(), &tensor, 0, false);
      return;
    }
    ffi::Array<ffi::ObjectRef> handles;
    handles.reserve(static_cast<int64_t>(matchers.size()));
    for (GrammarMatcher* matcher : matchers) handles.push_back(static_cast<XGrammarMatcher*>(matcher)->handle());
    methods_.batch_fill_bitmask(batch_matcher_, handles, &tensor, nullptr, false);
  }

  int64_t vocab_size() const override { return vocab_size_; }

 private:
  Methods methods_;
  ffi::ObjectRef compiler_;
  ffi::ObjectRef batch_matcher_;
  int64_t vocab_size_ = 0;
};

int32_t type_index_of(const std::string& type_key) {
  int32_t index = 0;
  TVMFFIByteArray bytes{type_key.data(), type_key.size()};
  if (TVMFFITypeKeyToIndex(&bytes, &index) != 0) throw std::runtime_error(type_key + " is not registered: import xgrammar");
  return index;
}

}  // namespace

std::shared_ptr<GrammarBackend> make_xgrammar_backend(void* compiler_handle, int64_t vocab_size,
                                                      int32_t fill_threads) {
  if (compiler_handle == nullptr) throw std::invalid_argument("make_xgrammar_backend: null compiler handle");
  auto* object = static_cast<TVMFFIObject*>(compiler_handle);
  if (object->type_index != type_index_of(kCompiler)) {
    throw std::invalid_argument("make_xgrammar_backend: the handle is not an xgrammar GrammarCompiler");
  }
  TVMFFIObjectIncRef(compiler_handle);  // ours now, released with the ObjectRef
  ffi::ObjectRef compiler = ffi::details::ObjectUnsafe::ObjectRefFromObjectPtr<ffi::ObjectRef>(
      ffi::details::ObjectUnsafe::ObjectPtrFromOwned<ffi::Object>(object));
  return std::make_shared<XGrammarBackend>(std::move(compiler), vocab_size, fill_threads);
}

}  // namespace fastpage
