#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "bindings.h"
#include "fastpage/engine_loop.h"
#include "fastpage/xgrammar_backend.h"

namespace py = pybind11;

namespace fastpage::bindings {

void bind_engine(py::module_& m) {
  py::class_<EngineStats>(m, "EngineStats")
      .def_readonly("num_running", &EngineStats::num_running)
      .def_readonly("num_waiting", &EngineStats::num_waiting)
      .def_readonly("num_swapped", &EngineStats::num_swapped)
      .def_readonly("num_device_blocks", &EngineStats::num_device_blocks)
      .def_readonly("num_free_device_blocks", &EngineStats::num_free_device_blocks)
      .def_readonly("num_preemptions", &EngineStats::num_preemptions)
      .def_readonly("prefix_cache_queries", &EngineStats::prefix_cache_queries)
      .def_readonly("prefix_cache_hits", &EngineStats::prefix_cache_hits)
      .def_readonly("prompt_tokens", &EngineStats::prompt_tokens)
      .def_readonly("generation_tokens", &EngineStats::generation_tokens);

  // Each read of a list field converts the whole vector: read every field once.
  py::class_<StepBatch>(m, "StepBatch")
      .def_readonly("handles", &StepBatch::handles)
      .def_readonly("seq_indices", &StepBatch::seq_indices)
      .def_readonly("token_offsets", &StepBatch::token_offsets)
      .def_readonly("token_ids", &StepBatch::token_ids)
      .def_readonly("finish_reasons", &StepBatch::finish_reasons)
      .def_readonly("stop_tokens", &StepBatch::stop_tokens)
      .def_readonly("cumulative_logprobs", &StepBatch::cumulative_logprobs)
      .def_readonly("num_cached_tokens", &StepBatch::num_cached_tokens)
      .def_readonly("logprob_rows", &StepBatch::logprob_rows)
      .def_readonly("logprobs", &StepBatch::logprobs)
      .def_readonly("prompt_logprob_rows", &StepBatch::prompt_logprob_rows)
      .def_readonly("prompt_logprobs", &StepBatch::prompt_logprobs)
      .def_readonly("rejected_handles", &StepBatch::rejected_handles)
      .def_readonly("rejected_reasons", &StepBatch::rejected_reasons)
      .def_readonly("timestamp", &StepBatch::timestamp)
      .def_readonly("num_steps", &StepBatch::num_steps)
      .def_readonly("stats", &StepBatch::stats)
      .def_readonly("failure", &StepBatch::failure)
      .def_property_readonly("num_rows", &StepBatch::num_rows);

  using Loop = EngineLoop;
  py::class_<Loop>(m, "EngineLoop")
      .def(py::init([](const ModelConfig& model, const EngineConfig& config, WeightMap weights,
                       const std::string& device, c10::ScalarType dtype) {
             return std::make_unique<Loop>(
                 std::make_unique<Engine>(model, config, std::move(weights), c10::Device(device), dtype));
           }),
           py::arg("model_config"), py::arg("engine_config"), py::arg("weights"), py::arg("device") = "cpu",
           py::arg("dtype") = at::kFloat, py::call_guard<py::gil_scoped_release>())
      .def("add_request", &Loop::add_request, py::arg("handle"), py::arg("request_id"), py::arg("prompt_token_ids"),
           py::arg("params"), py::arg("eos_token_ids") = std::vector<int32_t>{}, py::arg("priority") = 0)
      .def("abort_request", &Loop::abort_request, py::arg("request_id"))
      .def("finish_sequence", &Loop::finish_sequence, py::arg("request_id"), py::arg("seq_index"))
      .def(
          "set_grammar_backend",
          [](Loop& loop, uintptr_t xgrammar_compiler, int64_t vocab_size, int32_t compile_threads,
             double compile_timeout_s, int32_t fill_threads) {
            auto backend = make_xgrammar_backend(reinterpret_cast<void*>(xgrammar_compiler), vocab_size, fill_threads);
            loop.set_grammar_backend(std::move(backend), compile_threads, compile_timeout_s);
          },
          py::arg("xgrammar_compiler"), py::arg("vocab_size"), py::arg("compile_threads"), py::arg("compile_timeout_s"),
          py::arg("fill_threads"), py::call_guard<py::gil_scoped_release>())
      .def("start", &Loop::start)
      .def("stop", &Loop::stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("running", &Loop::running)
      .def("step", &Loop::step, py::call_guard<py::gil_scoped_release>())
      .def("take", &Loop::take, py::arg("timeout_s") = 0.0, py::call_guard<py::gil_scoped_release>())
      .def("has_unfinished", &Loop::has_unfinished)
      .def("stats", &Loop::stats)
      .def_property_readonly("step_cpu_seconds", &Loop::step_cpu_seconds)
      .def("check_invariants",
           [](Loop& loop) { loop.run_between_steps([](Engine& engine) { engine.check_invariants(); }); },
           py::call_guard<py::gil_scoped_release>())
      .def("reset_prefix_cache",
           [](Loop& loop) { loop.run_between_steps([](Engine& engine) { engine.reset_prefix_cache(); }); },
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("max_model_len", [](const Loop& loop) { return loop.engine().config().max_model_len; })
      .def_property_readonly("async_scheduling", [](const Loop& loop) { return loop.engine().async_scheduling(); });
}

}  // namespace fastpage::bindings
