#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "bindings.h"
#include "fastpage/engine.h"

namespace py = pybind11;

namespace fastpage::bindings {

void bind_engine(py::module_& m) {
  py::class_<StepOutput>(m, "StepOutput")
      .def_readonly("request_id", &StepOutput::request_id)
      .def_readonly("seq_index", &StepOutput::seq_index)
      .def_readonly("new_token_ids", &StepOutput::new_token_ids)
      .def_readonly("logprobs", &StepOutput::logprobs)
      .def_readonly("prompt_logprobs", &StepOutput::prompt_logprobs)
      .def_readonly("cumulative_logprob", &StepOutput::cumulative_logprob)
      .def_readonly("finished", &StepOutput::finished)
      .def_readonly("finish_reason", &StepOutput::finish_reason)
      .def_readonly("stop_token", &StepOutput::stop_token)
      .def_readonly("num_prompt_tokens", &StepOutput::num_prompt_tokens)
      .def_readonly("num_cached_tokens", &StepOutput::num_cached_tokens);

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

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const ModelConfig& model, const EngineConfig& config, WeightMap weights,
                       const std::string& device, c10::ScalarType dtype) {
             return std::make_unique<Engine>(model, config, std::move(weights), c10::Device(device), dtype);
           }),
           py::arg("model_config"), py::arg("engine_config"), py::arg("weights"), py::arg("device") = "cpu",
           py::arg("dtype") = at::kFloat, py::call_guard<py::gil_scoped_release>())
      .def("add_request", &Engine::add_request, py::arg("request_id"), py::arg("prompt_token_ids"),
           py::arg("params"), py::arg("eos_token_ids") = std::vector<int32_t>{}, py::arg("priority") = 0)
      .def("abort_request", &Engine::abort_request, py::arg("request_id"))
      .def("finish_sequence", &Engine::finish_sequence, py::arg("request_id"), py::arg("seq_index"))
      .def("step", &Engine::step, py::call_guard<py::gil_scoped_release>())
      .def("has_unfinished", &Engine::has_unfinished)
      .def("stats", &Engine::stats)
      .def("check_invariants", [](const Engine& e) { e.scheduler().check_invariants(); })
      .def_property_readonly("max_model_len", [](const Engine& e) { return e.config().max_model_len; })
      .def_property_readonly("async_scheduling", &Engine::async_scheduling)
      .def_property_readonly("num_device_blocks",
                             [](const Engine& e) { return e.scheduler().device_blocks().num_blocks(); });
}

}  // namespace fastpage::bindings
