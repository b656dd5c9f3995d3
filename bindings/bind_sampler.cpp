#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <stdexcept>

#include "bindings.h"
#include "fastpage/sampler.h"

namespace py = pybind11;

namespace fastpage::bindings {
namespace {

// Python's SamplingRow owns what the C++ SamplingRow points to, so the data outlives the call.
struct OwnedSamplingRow {
  int64_t logits_row = 0;
  SamplingParams params;
  std::vector<int32_t> token_ids;
  int32_t num_prompt_tokens = 0;
  std::vector<int32_t> eos_token_ids;
  uint64_t seed = 0;
  int64_t position = 0;

  SamplingRow view() const {
    return {logits_row, &params, &token_ids, num_prompt_tokens, &eos_token_ids, seed, position};
  }
};

SampleResult sample(const Sampler& sampler, const at::Tensor& logits,
                    const std::vector<OwnedSamplingRow*>& rows) {
  std::vector<SamplingRow> views;
  views.reserve(rows.size());
  for (const OwnedSamplingRow* row : rows) {
    if (row == nullptr) throw std::invalid_argument("rows: expected SamplingRow, got None");
    views.push_back(row->view());
  }
  return sampler.sample(logits, views);
}

}  // namespace

void bind_sampler(py::module_& m) {
  py::class_<OwnedSamplingRow>(m, "SamplingRow")
      .def(py::init([](int64_t logits_row, const SamplingParams& params, std::vector<int32_t> token_ids,
                       int32_t num_prompt_tokens, std::vector<int32_t> eos_token_ids, uint64_t seed,
                       int64_t position) {
             return OwnedSamplingRow{logits_row, params, std::move(token_ids), num_prompt_tokens,
                                     std::move(eos_token_ids), seed, position};
           }),
           py::arg("logits_row"), py::arg("params"), py::arg("token_ids") = std::vector<int32_t>{},
           py::arg("num_prompt_tokens") = 0, py::arg("eos_token_ids") = std::vector<int32_t>{},
           py::arg("seed") = 0, py::arg("position") = 0)
      .def_readwrite("logits_row", &OwnedSamplingRow::logits_row)
      .def_readwrite("params", &OwnedSamplingRow::params)
      .def_readwrite("token_ids", &OwnedSamplingRow::token_ids)
      .def_readwrite("num_prompt_tokens", &OwnedSamplingRow::num_prompt_tokens)
      .def_readwrite("eos_token_ids", &OwnedSamplingRow::eos_token_ids)
      .def_readwrite("seed", &OwnedSamplingRow::seed)
      .def_readwrite("position", &OwnedSamplingRow::position);

  py::class_<TokenLogprobs>(m, "TokenLogprobs")
      .def_readonly("token", &TokenLogprobs::token)
      .def_readonly("logprob", &TokenLogprobs::logprob)
      .def_readonly("rank", &TokenLogprobs::rank)
      .def_readonly("top_ids", &TokenLogprobs::top_ids)
      .def_readonly("top_logprobs", &TokenLogprobs::top_logprobs);

  py::class_<SampleResult>(m, "SampleResult")
      .def_readonly("tokens", &SampleResult::tokens)
      .def_readonly("logprobs", &SampleResult::logprobs);

  m.def("wants_logprobs", &wants_logprobs, py::arg("params"));

  py::class_<Sampler>(m, "Sampler")
      .def(py::init<>())
      .def("sample", &sample, py::arg("logits"), py::arg("rows"), py::call_guard<py::gil_scoped_release>())
      .def_static("score", &Sampler::score, py::arg("logits"), py::arg("tokens"), py::arg("num_top") = 0,
                  py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastpage::bindings
