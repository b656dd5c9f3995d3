#include <pybind11/native_enum.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "fastpage/block_allocator.h"
#include "fastpage/prefix_cache.h"
#include "fastpage/scheduler.h"
#include "fastpage/sequence.h"

namespace py = pybind11;

namespace fastpage::bindings {

void bind_core(py::module_& m) {
  py::native_enum<SequenceStatus>(m, "SequenceStatus", "enum.Enum")
      .value("Waiting", SequenceStatus::Waiting)
      .value("Running", SequenceStatus::Running)
      .value("Swapped", SequenceStatus::Swapped)
      .value("Finished", SequenceStatus::Finished)
      .finalize();
  py::native_enum<FinishReason>(m, "FinishReason", "enum.Enum")
      .value("None_", FinishReason::None)
      .value("Stop", FinishReason::Stop)
      .value("Length", FinishReason::Length)
      .value("Abort", FinishReason::Abort)
      .finalize();

  py::class_<BlockAllocator>(m, "BlockAllocator")
      .def(py::init<int32_t>(), py::arg("num_blocks"))
      .def_property_readonly("num_blocks", &BlockAllocator::num_blocks)
      .def_property_readonly("num_free_blocks", &BlockAllocator::num_free_blocks)
      .def_property_readonly("num_used_blocks", &BlockAllocator::num_used_blocks)
      .def_property_readonly("num_cached_blocks", &BlockAllocator::num_cached_blocks)
      .def("can_allocate", &BlockAllocator::can_allocate, py::arg("count"))
      .def("allocate", py::overload_cast<>(&BlockAllocator::allocate))
      .def("allocate", py::overload_cast<int32_t>(&BlockAllocator::allocate), py::arg("count"))
      .def("incref", &BlockAllocator::incref, py::arg("block"))
      .def("free", &BlockAllocator::free, py::arg("block"))
      .def("free_all", &BlockAllocator::free_all, py::arg("blocks"))
      .def("ref_count", &BlockAllocator::ref_count, py::arg("block"))
      .def("lookup", &BlockAllocator::lookup, py::arg("hash"))
      .def("set_hash", &BlockAllocator::set_hash, py::arg("block"), py::arg("hash"))
      .def("hash_of", &BlockAllocator::hash_of, py::arg("block"))
      .def("reset_hashes", &BlockAllocator::reset_hashes)
      .def("free_list", &BlockAllocator::free_list)
      .def("check_invariants", &BlockAllocator::check_invariants);

  // Spans are taken as Python lists of token ids.
  using Tokens = const std::vector<int32_t>&;
  py::class_<PrefixCache>(m, "PrefixCache")
      .def(py::init<BlockAllocator&, int32_t, bool, uint64_t>(), py::arg("blocks"), py::arg("block_size"),
           py::arg("enabled"), py::arg("salt"), py::keep_alive<1, 2>())
      .def_property_readonly("enabled", &PrefixCache::enabled)
      .def_property_readonly("block_size", &PrefixCache::block_size)
      .def("hash_block",
           [](const PrefixCache& c, BlockHash parent, Tokens tokens, uint64_t extra) {
             return c.hash_block(parent, tokens, extra);
           },
           py::arg("parent"), py::arg("tokens"), py::arg("extra_key") = 0)
      .def("hash_blocks", [](const PrefixCache& c, Tokens tokens, uint64_t extra) { return c.hash_blocks(tokens, extra); },
           py::arg("tokens"), py::arg("extra_key") = 0)
      .def("find_prefix",
           [](const PrefixCache& c, Tokens tokens, const std::vector<BlockHash>& hashes, int32_t max_blocks,
              uint64_t extra) { return c.find_prefix(tokens, hashes, max_blocks, extra); },
           py::arg("tokens"), py::arg("hashes"), py::arg("max_blocks"), py::arg("extra_key") = 0)
      .def("acquire_prefix",
           [](PrefixCache& c, Tokens tokens, const std::vector<BlockHash>& hashes, int32_t max_blocks,
              uint64_t extra) { return c.acquire_prefix(tokens, hashes, max_blocks, extra); },
           py::arg("tokens"), py::arg("hashes"), py::arg("max_blocks"), py::arg("extra_key") = 0)
      .def("register_block",
           [](PrefixCache& c, BlockId block, BlockHash hash, BlockHash parent, Tokens tokens, uint64_t extra) {
             c.register_block(block, hash, parent, tokens, extra);
           },
           py::arg("block"), py::arg("hash"), py::arg("parent"), py::arg("tokens"), py::arg("extra_key") = 0)
      .def("reset", &PrefixCache::reset)
      .def_property_readonly("num_queried_tokens", &PrefixCache::num_queried_tokens)
      .def_property_readonly("num_hit_tokens", &PrefixCache::num_hit_tokens);

  py::class_<Sequence>(m, "Sequence")
      .def_readonly("seq_id", &Sequence::seq_id)
      .def_readonly("request_index", &Sequence::request_index)
      .def_readonly("index", &Sequence::index)
      .def_readonly("token_ids", &Sequence::token_ids)
      .def_readonly("num_prompt_tokens", &Sequence::num_prompt_tokens)
      .def_readonly("num_computed_tokens", &Sequence::num_computed_tokens)
      .def_readonly("num_cached_prompt_tokens", &Sequence::num_cached_prompt_tokens)
      .def_readonly("block_table", &Sequence::block_table)
      .def_readonly("swapped_blocks", &Sequence::swapped_blocks)
      .def_readonly("block_hashes", &Sequence::block_hashes)
      .def_readonly("status", &Sequence::status)
      .def_readonly("finish_reason", &Sequence::finish_reason)
      .def_readonly("stop_token", &Sequence::stop_token)
      .def_readonly("cumulative_logprob", &Sequence::cumulative_logprob)
      .def_readonly("num_preemptions", &Sequence::num_preemptions)
      .def_readonly("awaiting_token", &Sequence::awaiting_token)
      .def_readonly("ends_with_awaited_token", &Sequence::ends_with_awaited_token)
      .def_property_readonly("num_tokens", &Sequence::num_tokens)
      .def_property_readonly("num_output_tokens", &Sequence::num_output_tokens)
      .def_property_readonly("finished", &Sequence::finished);

  py::class_<Request>(m, "Request")
      .def_readonly("request_id", &Request::request_id)
      .def_readonly("params", &Request::params)
      .def_readonly("eos_token_ids", &Request::eos_token_ids)
      .def_readonly("priority", &Request::priority)
      .def_readonly("arrival_order", &Request::arrival_order)
      .def_readonly("seq_ids", &Request::seq_ids);

  py::class_<SampledToken>(m, "SampledToken")
      .def(py::init([](int64_t seq_id, int32_t token, float logprob) { return SampledToken{seq_id, token, logprob}; }),
           py::arg("seq_id"), py::arg("token"), py::arg("logprob") = 0.0f)
      .def_readwrite("seq_id", &SampledToken::seq_id)
      .def_readwrite("token", &SampledToken::token)
      .def_readwrite("logprob", &SampledToken::logprob);

  py::class_<FinishedSeq>(m, "FinishedSeq")
      .def_readonly("seq_id", &FinishedSeq::seq_id)
      .def_readonly("reason", &FinishedSeq::reason)
      .def_readonly("stop_token", &FinishedSeq::stop_token);

  py::class_<FilledToken>(m, "FilledToken")
      .def_property_readonly("accepted", [](const FilledToken& f) { return f.seq != nullptr; })
      .def_readonly("finish_reason", &FilledToken::finish_reason)
      .def_readonly("stop_token", &FilledToken::stop_token);

  m.attr("PLACEHOLDER_TOKEN") = kPlaceholderToken;

  using gil_release = py::call_guard<py::gil_scoped_release>;
  py::class_<Scheduler>(m, "Scheduler")
      .def(py::init<const EngineConfig&, int64_t, int32_t, int32_t>(), py::arg("config"), py::arg("max_model_len"),
           py::arg("num_device_blocks"), py::arg("num_host_blocks") = 0)
      .def("add_request", &Scheduler::add_request, py::arg("request_id"), py::arg("prompt_token_ids"),
           py::arg("params"), py::arg("eos_token_ids") = std::vector<int32_t>{}, py::arg("priority") = 0,
           py::arg("handle") = -1)
      .def("abort_request", &Scheduler::abort_request, py::arg("request_id"))
      .def("schedule", &Scheduler::schedule, gil_release())
      .def("update", &Scheduler::update, py::arg("tokens"), gil_release())
      .def("reserve", &Scheduler::reserve, py::arg("seq_ids"))
      .def("fill", &Scheduler::fill, py::arg("tokens"))
      .def("fork", &Scheduler::fork, py::arg("seq_id"))
      .def("finish_sequence", &Scheduler::finish_sequence, py::arg("seq_id"), py::arg("reason"))
      .def("has_unfinished", &Scheduler::has_unfinished)
      .def_property_readonly("num_waiting", &Scheduler::num_waiting)
      .def_property_readonly("num_running", &Scheduler::num_running)
      .def_property_readonly("num_swapped", &Scheduler::num_swapped)
      .def_property_readonly("num_preemptions", &Scheduler::num_preemptions)
      // Copies: a Python view must not outlive the sequence it shows.
      .def("sequence", &Scheduler::sequence, py::arg("seq_id"), py::return_value_policy::copy)
      .def("request_of", &Scheduler::request_of, py::arg("seq_id"), py::return_value_policy::copy)
      .def(
          "find_request",
          [](const Scheduler& s, const std::string& id) -> std::optional<Request> {
            const Request* request = s.find_request(id);
            return request ? std::optional<Request>(*request) : std::nullopt;
          },
          py::arg("request_id"))
      .def("request_index", &Scheduler::request_index, py::arg("request_id"))
      .def_property_readonly("device_blocks", py::overload_cast<>(&Scheduler::device_blocks, py::const_),
                             py::return_value_policy::reference_internal)
      .def_property_readonly("host_blocks", &Scheduler::host_blocks, py::return_value_policy::reference_internal)
      .def_property_readonly("prefix_cache", &Scheduler::prefix_cache, py::return_value_policy::reference_internal)
      .def("reset_prefix_cache", &Scheduler::reset_prefix_cache)
      .def("check_invariants", &Scheduler::check_invariants);
}

}  // namespace fastpage::bindings
