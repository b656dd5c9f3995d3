#include <pybind11/native_enum.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "fastpage/config.h"
#include "fastpage/sampling_params.h"

namespace py = pybind11;

namespace fastpage::bindings {

void bind_config(py::module_& m) {
  py::native_enum<NormType>(m, "NormType", "enum.Enum")
      .value("RMSNorm", NormType::RMSNorm)
      .value("LayerNorm", NormType::LayerNorm)
      .finalize();
  py::native_enum<Activation>(m, "Activation", "enum.Enum")
      .value("SiLU", Activation::SiLU)
      .value("GeluTanh", Activation::GeluTanh)
      .value("Gelu", Activation::Gelu)
      .value("ReLU", Activation::ReLU)
      .finalize();
  py::native_enum<PositionType>(m, "PositionType", "enum.Enum")
      .value("Rotary", PositionType::Rotary)
      .value("Learned", PositionType::Learned)
      .finalize();
  py::native_enum<KVCacheDtype>(m, "KVCacheDtype", "enum.Enum")
      .value("Auto", KVCacheDtype::Auto)
      .value("Fp8E4M3", KVCacheDtype::Fp8E4M3)
      .finalize();

  py::class_<ModelConfig>(m, "ModelConfig")
      .def(py::init<>())
      .def_readwrite("architecture", &ModelConfig::architecture)
      .def_readwrite("vocab_size", &ModelConfig::vocab_size)
      .def_readwrite("hidden_size", &ModelConfig::hidden_size)
      .def_readwrite("num_layers", &ModelConfig::num_layers)
      .def_readwrite("num_heads", &ModelConfig::num_heads)
      .def_readwrite("num_kv_heads", &ModelConfig::num_kv_heads)
      .def_readwrite("head_dim", &ModelConfig::head_dim)
      .def_readwrite("intermediate_size", &ModelConfig::intermediate_size)
      .def_readwrite("max_position_embeddings", &ModelConfig::max_position_embeddings)
      .def_readwrite("norm_type", &ModelConfig::norm_type)
      .def_readwrite("norm_eps", &ModelConfig::norm_eps)
      .def_readwrite("activation", &ModelConfig::activation)
      .def_readwrite("gated_mlp", &ModelConfig::gated_mlp)
      .def_readwrite("position_type", &ModelConfig::position_type)
      .def_readwrite("rope_theta", &ModelConfig::rope_theta)
      .def_readwrite("rope_scaling_type", &ModelConfig::rope_scaling_type)
      .def_readwrite("rope_scaling_factor", &ModelConfig::rope_scaling_factor)
      .def_readwrite("rope_low_freq_factor", &ModelConfig::rope_low_freq_factor)
      .def_readwrite("rope_high_freq_factor", &ModelConfig::rope_high_freq_factor)
      .def_readwrite("rope_original_max_position", &ModelConfig::rope_original_max_position)
      .def_readwrite("qkv_bias", &ModelConfig::qkv_bias)
      .def_readwrite("o_bias", &ModelConfig::o_bias)
      .def_readwrite("mlp_bias", &ModelConfig::mlp_bias)
      .def_readwrite("qk_norm", &ModelConfig::qk_norm)
      .def_readwrite("tie_word_embeddings", &ModelConfig::tie_word_embeddings)
      .def_readwrite("learned_position_offset", &ModelConfig::learned_position_offset);

  py::class_<ParallelConfig>(m, "ParallelConfig")
      .def(py::init<>())
      .def_readwrite("tensor_parallel_size", &ParallelConfig::tensor_parallel_size)
      .def_readwrite("pipeline_parallel_size", &ParallelConfig::pipeline_parallel_size)
      .def_readwrite("rank", &ParallelConfig::rank)
      .def_readwrite("world_group", &ParallelConfig::world_group)
      .def_readwrite("tp_group", &ParallelConfig::tp_group)
      .def_readwrite("pp_group", &ParallelConfig::pp_group)
      .def_readwrite("timeout_seconds", &ParallelConfig::timeout_seconds)
      .def_property_readonly("world_size", &ParallelConfig::world_size)
      .def_property_readonly("tp_rank", &ParallelConfig::tp_rank)
      .def_property_readonly("pp_rank", &ParallelConfig::pp_rank);

  py::class_<EngineConfig>(m, "EngineConfig")
      .def(py::init<>())
      .def_readwrite("block_size", &EngineConfig::block_size)
      .def_readwrite("num_gpu_blocks", &EngineConfig::num_gpu_blocks)
      .def_readwrite("num_cpu_blocks", &EngineConfig::num_cpu_blocks)
      .def_readwrite("gpu_memory_utilization", &EngineConfig::gpu_memory_utilization)
      .def_readwrite("kv_cache_memory_bytes", &EngineConfig::kv_cache_memory_bytes)
      .def_readwrite("swap_space_bytes", &EngineConfig::swap_space_bytes)
      .def_readwrite("kv_cache_dtype", &EngineConfig::kv_cache_dtype)
      .def_readwrite("max_num_seqs", &EngineConfig::max_num_seqs)
      .def_readwrite("max_num_batched_tokens", &EngineConfig::max_num_batched_tokens)
      .def_readwrite("max_model_len", &EngineConfig::max_model_len)
      .def_readwrite("enable_prefix_caching", &EngineConfig::enable_prefix_caching)
      .def_readwrite("enable_chunked_prefill", &EngineConfig::enable_chunked_prefill)
      .def_readwrite("enforce_eager", &EngineConfig::enforce_eager)
      .def_readwrite("seed", &EngineConfig::seed)
      .def_readwrite("max_logprobs", &EngineConfig::max_logprobs)
      .def_readwrite("async_scheduling", &EngineConfig::async_scheduling)
      .def_readwrite("parallel", &EngineConfig::parallel);

  py::native_enum<GrammarKind>(m, "GrammarKind", "enum.Enum")
      .value("None_", GrammarKind::None)
      .value("JsonSchema", GrammarKind::JsonSchema)
      .value("JsonObject", GrammarKind::JsonObject)
      .value("Regex", GrammarKind::Regex)
      .value("Ebnf", GrammarKind::Ebnf)
      .value("StructuralTag", GrammarKind::StructuralTag)
      .finalize();

  py::class_<StructuredOutput>(m, "StructuredOutput")
      .def(py::init<>())
      .def_readwrite("kind", &StructuredOutput::kind)
      .def_readwrite("spec", &StructuredOutput::spec)
      .def_readwrite("any_whitespace", &StructuredOutput::any_whitespace)
      .def_readwrite("start_after", &StructuredOutput::start_after);

  // The C++ view of sampling parameters; Python's fastpage.SamplingParams validates and converts.
  py::class_<SamplingParams>(m, "CSamplingParams")
      .def(py::init<>())
      .def_readwrite("n", &SamplingParams::n)
      .def_readwrite("best_of", &SamplingParams::best_of)
      .def_readwrite("temperature", &SamplingParams::temperature)
      .def_readwrite("top_p", &SamplingParams::top_p)
      .def_readwrite("top_k", &SamplingParams::top_k)
      .def_readwrite("min_p", &SamplingParams::min_p)
      .def_readwrite("seed", &SamplingParams::seed)
      .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
      .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
      .def_readwrite("repetition_penalty", &SamplingParams::repetition_penalty)
      .def_readwrite("stop_token_ids", &SamplingParams::stop_token_ids)
      .def_readwrite("bad_words", &SamplingParams::bad_words)
      .def_readwrite("ignore_eos", &SamplingParams::ignore_eos)
      .def_readwrite("max_tokens", &SamplingParams::max_tokens)
      .def_readwrite("min_tokens", &SamplingParams::min_tokens)
      .def_readwrite("logprobs", &SamplingParams::logprobs)
      .def_readwrite("prompt_logprobs", &SamplingParams::prompt_logprobs)
      .def_readwrite("logit_bias", &SamplingParams::logit_bias)
      .def_readwrite("allowed_token_ids", &SamplingParams::allowed_token_ids)
      .def_readwrite("structured_output", &SamplingParams::structured_output);
}

}  // namespace fastpage::bindings
