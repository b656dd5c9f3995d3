"""fastpage: high-throughput LLM inference and serving on a C++/CUDA core."""

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from fastpage import _C  # noqa: F401
from fastpage.beam_search import BeamSearchOutput, BeamSearchParams, BeamSearchSequence
from fastpage.engine_args import EngineArgs
from fastpage.llm import LLM
from fastpage.llm_engine import LLMEngine
from fastpage.outputs import CompletionOutput, Logprob, RequestOutput
from fastpage.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "LLMEngine", "EngineArgs", "SamplingParams", "RequestOutputKind", "RequestOutput", "CompletionOutput",
           "Logprob",
           "BeamSearchParams", "BeamSearchOutput", "BeamSearchSequence"]
