"""Request models of the OpenAI API (plus vLLM's extra fields), with bounds, and the tool-call shapes
the tool parsers produce (responses are built as dicts in the serving modules).

Every field a client controls has a bound here (DESIGN.md safety rules); bounds that depend on the
model (token ids < vocab size, prompt + max_tokens <= context) are checked in the serving layer.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_N = 128
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
MAX_TOKEN_ID_LIST = 65536  # stop_token_ids, allowed_token_ids, logit_bias entries
MAX_BAD_WORDS = 1024
MAX_PROMPTS = 1024  # prompts in one /v1/completions request
MAX_MESSAGES = 4096
MAX_TOOLS = 256
MAX_SEED = 2**63 - 1


class FieldError(ValueError):
    """A validation error that knows which request field it is about (reported as `param`)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIModel(BaseModel):
    # Unknown fields are ignored, as OpenAI clients add new ones over time.
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class StreamOptions(OpenAIModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class JsonSchemaFormat(OpenAIModel):
    name: str = Field(..., max_length=256)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check_format(self):
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise FieldError("response_format", 'response_format of type "json_schema" needs json_schema.schema')
        return self


class SamplingFields(OpenAIModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_TOKEN_ID_LIST)
    seed: int | None = Field(None, ge=-MAX_SEED, le=MAX_SEED)
    stop: str | list[str] | None = Field(None, max_length=MAX_STOP_STRINGS)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extras
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_TOKEN_ID_LIST)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    allowed_token_ids: list[int] | None = Field(None, max_length=MAX_TOKEN_ID_LIST)
    bad_words: list[str] | None = Field(None, max_length=MAX_BAD_WORDS)
    # Structured outputs: OpenAI's response_format, vLLM's structured_outputs (StructuredOutputsParams'
    # fields) and its older guided_* fields; at most one of them (server/structured_fields.py).
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None
    guided_decoding_backend: str | None = None

    @model_validator(mode="after")
    def _check_common(self):
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        for s in stops:
            if len(s) > MAX_STOP_STRING_CHARS:
                raise FieldError("stop", f"stop strings must be at most {MAX_STOP_STRING_CHARS} characters")
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options", "stream_options can only be set when stream is true")
        if self.best_of is not None and self.best_of < self.n:
            raise FieldError("best_of", f"best_of must be >= n; got best_of={self.best_of}, n={self.n}")
        if self.stream and self.best_of is not None and self.best_of > self.n:
            raise FieldError("best_of", "best_of > n is not supported when streaming")
        for key in (self.logit_bias or {}):
            try:
                int(key)
            except ValueError:
                raise FieldError("logit_bias", f"logit_bias keys must be token ids; got {key!r}") from None
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


# ---------------------------------------------------------------- /v1/completions

class CompletionRequest(SamplingFields):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_completion(self):
        if self.suffix:
            raise FieldError("suffix", "suffix is not supported")
        if isinstance(self.prompt, list):
            if not self.prompt:
                raise FieldError("prompt", "prompt must not be empty")
            if isinstance(self.prompt[0], (str, list)) and len(self.prompt) > MAX_PROMPTS:
                raise FieldError("prompt", f"prompt may hold at most {MAX_PROMPTS} prompts")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: one string or token list each."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]
        return list(self.prompt)


# ---------------------------------------------------------------- /v1/chat/completions

class FunctionDefinition(OpenAIModel):
    name: str = Field(..., max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatTool(OpenAIModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class FunctionCall(OpenAIModel):
    name: str
    arguments: str


class ToolCall(OpenAIModel):
    id: str = Field(default_factory=lambda: random_id("chatcmpl-tool"))
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(OpenAIModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = True
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_chat(self):
        if self.top_logprobs and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs requires logprobs to be true")
        if self.continue_final_message and self.add_generation_prompt:
            raise FieldError("continue_final_message", "continue_final_message and add_generation_prompt cannot both be true")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise FieldError("continue_final_message", "continue_final_message needs the last message to be from the assistant")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise FieldError("tool_choice", f"tool_choice names function {self.tool_choice.function.name!r}, "
                                 "which is not in tools")
        if self.tool_choice == "required" and not self.tools:
            raise FieldError("tool_choice", "tool_choice 'required' needs tools")
        return self

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class DeltaFunctionCall(OpenAIModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(OpenAIModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class DeltaMessage(OpenAIModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] = Field(default_factory=list)


# ---------------------------------------------------------------- /tokenize, /detokenize

class TokenizeRequest(OpenAIModel):
    model: str | None = None
    prompt: str | None = Field(None, max_length=16 * 1024 * 1024)
    messages: list[ChatMessage] | None = Field(None, max_length=MAX_MESSAGES)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[ChatTool] | None = Field(None, max_length=MAX_TOOLS)

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise FieldError("prompt", "give exactly one of prompt or messages")
        return self


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[int] = Field(..., max_length=MAX_TOKEN_ID_LIST * 16)
