"""Chat templates render exactly as transformers' apply_chat_template does for the same template
(string and content-part messages, tools, continue_final_message, template kwargs), and the sandbox
stops templates from reaching Python internals or mutating their inputs."""

import importlib.resources
import json

import pytest

from fastpage.chat_template import render_chat
from fastpage.model_loader import default_model
from fastpage.server.tool_parsers import TOOL_PARSERS
from fastpage.tokenizer import Tokenizer, load_tokenizer
from tiny_tokenizer import CHATML_TEMPLATE, byte_level_bpe

TOOLS_TEMPLATE = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}You are helpful.{%- endif %}
{{- "\\n\\n# Tools\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == "user" or (message.role == "system" and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>assistant' }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls | default([]) %}
{{- '\\n<tool_call>\\n{"name": "' + tool_call.function.name + '", "arguments": ' }}
{{- tool_call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == "tool" %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and not enable_thinking %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"""

PARTS_TEMPLATE = """{{ bos_token }}{% set ns = namespace(count=0) %}
{% for message in messages %}{% set ns.count = ns.count + 1 %}
[{{ message['role'] | upper }}]
{% if message['content'] is string %}{{ message['content'] }}{% else %}
{% for part in message['content'] %}{% if part['type'] != 'text' %}{% continue %}{% endif %}<t>{{ part['text'] }}</t>{% endfor %}
{% endif %}
{% if message['role'] == 'assistant' %}{% generation %}{{ eos_token }}{% endgeneration %}{% endif %}
{% endfor %}
{% if ns.count > 10 %}{{ raise_exception('too many messages') }}{% endif %}
{% if add_generation_prompt %}[ASSISTANT]
{% endif %}"""

# Shipped with fastpage for the default model, whose own template drops `tools`.
SMOLLM2_TOOLS_TEMPLATE = (importlib.resources.files("fastpage") / "chat_templates"
                          / default_model.TOOLS_TEMPLATE).read_text(encoding="utf-8")

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city — ünïcode ok",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "日本語で?"}],
    [{"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": None, "tool_calls": [
         {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
     {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "c1"}],
]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(byte_level_bpe())


def hf_render(tokenizer, messages, template, **kwargs):
    return tokenizer.hf.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, TOOLS_TEMPLATE, PARTS_TEMPLATE, SMOLLM2_TOOLS_TEMPLATE])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_matches_transformers(tokenizer, template, add_generation_prompt):
    for messages in CONVERSATIONS:
        if template == CHATML_TEMPLATE and any(m["content"] is None for m in messages):
            continue  # this template needs string content
        for tools in (None, [WEATHER_TOOL]):
            ours = tokenizer.apply_chat_template(messages, chat_template=template, tools=tools,
                                                 add_generation_prompt=add_generation_prompt)
            assert ours == hf_render(tokenizer, messages, template, tools=tools,
                                     add_generation_prompt=add_generation_prompt)


def test_models_own_template_and_tokenize(tokenizer):
    messages = CONVERSATIONS[1]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True) == hf_render(
        tokenizer, messages, None, add_generation_prompt=True)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids == tokenizer.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)


def test_chat_template_kwargs(tokenizer):
    messages = CONVERSATIONS[0]
    ours = tokenizer.apply_chat_template(messages, chat_template=TOOLS_TEMPLATE, add_generation_prompt=True,
                                         chat_template_kwargs={"enable_thinking": False})
    assert ours.endswith("<think>\n\n</think>\n\n")
    assert ours == hf_render(tokenizer, messages, TOOLS_TEMPLATE, add_generation_prompt=True,
                             enable_thinking=False)
    with pytest.raises(ValueError, match="chat_template_kwargs"):
        tokenizer.apply_chat_template(messages, chat_template_kwargs={"messages": []})


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, PARTS_TEMPLATE])
def test_continue_final_message(tokenizer, template):
    for final in ("The answer is", "Trailing space "):
        messages = [{"role": "user", "content": "Say it"}, {"role": "assistant", "content": final}]
        ours = tokenizer.apply_chat_template(messages, chat_template=template, continue_final_message=True)
        assert ours == hf_render(tokenizer, messages, template, continue_final_message=True)
        assert ours.rstrip().endswith(final.rstrip())
    with pytest.raises(ValueError, match="continue_final_message"):
        tokenizer.apply_chat_template(messages, continue_final_message=True, add_generation_prompt=True)


def test_content_parts(tokenizer):
    parts = [{"type": "text", "text": "First part."}, {"type": "text", "text": "Second ✓"}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": [parts[0]]}]
    # A template that loops over content receives the parts as they are ...
    assert tokenizer.apply_chat_template(messages, chat_template=PARTS_TEMPLATE) == hf_render(
        tokenizer, messages, PARTS_TEMPLATE)
    # ... one that expects a string gets the text parts joined by newlines.
    joined = [{"role": "user", "content": "First part.\nSecond ✓"}, {"role": "assistant", "content": "First part."}]
    assert tokenizer.apply_chat_template(messages) == hf_render(tokenizer, joined, CHATML_TEMPLATE)
    with pytest.raises(ValueError, match="text content parts"):
        tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_template_errors_are_value_errors(tokenizer):
    many = [{"role": "user", "content": "x"}] * 11
    with pytest.raises(ValueError, match="too many messages"):
        tokenizer.apply_chat_template(many, chat_template=PARTS_TEMPLATE)
    with pytest.raises(ValueError, match="compile"):
        tokenizer.apply_chat_template(CONVERSATIONS[0], chat_template="{% for %}")
    with pytest.raises(ValueError, match="messages"):
        tokenizer.apply_chat_template([])
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(byte_level_bpe(), chat_template="").apply_chat_template(CONVERSATIONS[0])


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{{ namespace.__init__.__globals__ }}",
    "{% set ns = namespace(__class__=1) %}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ messages[0].update(role='x') }}",
    "{{ dict.__call__.__globals__ }}",
    "{{ (messages | first).items.__self__.__class__ }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
])
def test_sandbox_blocks_attribute_attacks(attack):
    with pytest.raises(ValueError, match="unsafe|not allowed"):
        render_chat([{"role": "user", "content": "hi"}], attack)


# --------------------------------------------------------------------- the default model with tools

def test_smollm2_tools_template_renders_tools_calls_and_results():
    messages = [{"role": "system", "content": "Be brief."}, *CONVERSATIONS[2]]
    rendered = render_chat(messages, SMOLLM2_TOOLS_TEMPLATE, tools=[WEATHER_TOOL], add_generation_prompt=True)
    system, user, assistant, tool, generation = rendered.split("<|im_start|>")[1:]
    # The tools, whole, in the one system prompt (after the conversation's own), and how to call them.
    assert system.startswith("system\nBe brief.\n\n# Tools")
    assert json.dumps(WEATHER_TOOL, ensure_ascii=False) in system
    assert '"name": "get_weather"' in system and '"properties": {"city": {"type": "string"}}' in system
    assert '<tool_call>\n{"name": <function-name>, "arguments": <arguments-object>}\n</tool_call>' in system
    assert user == "user\nWeather in Paris?<|im_end|>\n"
    # The assistant's call in the format it is asked for, which the hermes parser reads back.
    assert assistant.startswith("assistant\n") and assistant.endswith("<|im_end|>\n")
    call_text = assistant.removeprefix("assistant\n").removesuffix("<|im_end|>\n")
    [call] = TOOL_PARSERS["hermes"]().extract_tool_calls(call_text).tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert tool == 'tool\n{"temp": 21}<|im_end|>\n'
    assert generation == "assistant\n"


def test_smollm2_tools_template_writes_text_and_several_calls():
    messages = [{"role": "user", "content": "Paris and Rome?"},
                {"role": "assistant", "content": "Both:", "tool_calls": [
                    {"id": "a", "type": "function",
                     "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"id": "b", "type": "function",  # arguments as the JSON text the client sent
                     "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
                ]}]
    rendered = render_chat(messages, SMOLLM2_TOOLS_TEMPLATE, tools=[WEATHER_TOOL])
    assert rendered.endswith('<|im_start|>assistant\nBoth:\n<tool_call>\n{"name": "get_weather", "arguments": '
                             '{"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": '
                             '{"city": "Rome"}}\n</tool_call><|im_end|>\n')
    # Without the conversation's own system prompt, the model's default one holds the tools.
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                               "Hugging Face\n\n# Tools\n")


@pytest.fixture(scope="module")
def default_model_path():
    try:
        return default_model.default_model_path()
    except ValueError as error:
        pytest.skip(str(error))


def test_default_model_uses_the_tools_template_only_for_requests_with_tools(default_model_path):
    from fastpage.model_loader.gguf import load_gguf_tokenizer

    own = load_gguf_tokenizer(default_model_path)  # the file's own template, through transformers
    tokenizer = load_tokenizer(default_model_path)
    assert tokenizer.chat_template == {"default": own.chat_template, "tool_use": SMOLLM2_TOOLS_TEMPLATE}
    for messages in CONVERSATIONS[:2]:
        for add_generation_prompt in (False, True):
            without_tools = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
            assert without_tools == own.apply_chat_template(messages, tokenize=False,
                                                            add_generation_prompt=add_generation_prompt)
            # The tools template itself renders a conversation without tools as the model's own does.
            assert without_tools == render_chat(messages, SMOLLM2_TOOLS_TEMPLATE,
                                                add_generation_prompt=add_generation_prompt)
    with_tools = tokenizer.apply_chat_template(CONVERSATIONS[0], tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert with_tools == render_chat(CONVERSATIONS[0], SMOLLM2_TOOLS_TEMPLATE, tools=[WEATHER_TOOL],
                                     add_generation_prompt=True)
    assert "get_weather" in with_tools and '"required": ["city"]' in with_tools
    # A template given with the request (or --chat-template) still wins.
    assert tokenizer.apply_chat_template(CONVERSATIONS[0], chat_template=CHATML_TEMPLATE,
                                         tools=[WEATHER_TOOL]) == render_chat(CONVERSATIONS[0], CHATML_TEMPLATE)


def test_other_models_keep_their_template(tmp_path):
    assert default_model.with_tools_template(str(tmp_path / "other.gguf"), CHATML_TEMPLATE) == CHATML_TEMPLATE
    assert default_model.with_tools_template(str(tmp_path), None) is None
