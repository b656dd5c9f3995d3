// Structured outputs: a request's output held to a grammar (JSON schema, regex, EBNF, structural tag)
// while it is sampled. The request carries the grammar as text; a GrammarBackend compiles it off the
// step loop; each sequence advances its own GrammarMatcher with every accepted token, and before each
// draw the matcher writes the bitmask of the tokens the grammar allows next (bit t % 32 of word t / 32,
// xgrammar's layout), which the sampler applies to the logits.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fastpage {

enum class GrammarKind : uint8_t {
  None = 0,
  JsonSchema = 1,     // spec: a JSON schema
  JsonObject = 2,     // any JSON object; spec unused
  Regex = 3,          // spec: a regular expression the whole output matches
  Ebnf = 4,           // spec: an EBNF grammar with a `root` rule (xgrammar's GBNF dialect)
  StructuralTag = 5,  // spec: a structural tag (JSON), tool calls inside free text
};

struct StructuredOutput {
  GrammarKind kind = GrammarKind::None;
  std::string spec;
  bool any_whitespace = true;  // JSON: any whitespace between tokens, not only single spaces
  // Enforcement starts after the output contains these ids (a reasoning model's end of thinking);
  // empty: from the first output token.
  std::vector<int32_t> start_after;

  bool active() const { return kind != GrammarKind::None; }
};

// One sequence's position in its grammar. Used by one thread at a time.
class GrammarMatcher {
 public:
  virtual ~GrammarMatcher() = default;
  // Advances by one token; false (and no change) when the grammar does not allow it.
  virtual bool accept(int32_t token) = 0;
  // The grammar is complete and a stop token was accepted: nothing more may follow.
  virtual bool terminated() const = 0;
};

// A grammar compiled against the model's vocabulary; shared by every sequence that uses it.
class CompiledGrammar {
 public:
  virtual ~CompiledGrammar() = default;
  virtual std::unique_ptr<GrammarMatcher> new_matcher() const = 0;
};

class GrammarBackend {
 public:
  virtual ~GrammarBackend() = default;
  // Throws std::invalid_argument for a spec the backend cannot compile. Called from any thread.
  virtual std::shared_ptr<const CompiledGrammar> compile(const StructuredOutput& output) = 0;
  // Writes matchers[i]'s next-token bitmask to row i of `bitmask` ([matchers.size(), words_per_row()]
  // int32, rows contiguous). Matchers of this backend only.
  virtual void fill_bitmasks(const std::vector<GrammarMatcher*>& matchers, int32_t* bitmask) = 0;
  // The vocabulary the grammars are compiled for (the bitmask covers it).
  virtual int64_t vocab_size() const = 0;
  int64_t words_per_row() const { return (vocab_size() + 31) / 32; }
};

}  // namespace fastpage
