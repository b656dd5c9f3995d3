"""Chat templates: render a conversation into a prompt exactly as transformers'
`apply_chat_template` does, inside jinja2's ImmutableSandboxedEnvironment (templates come from
model files and users, so they are untrusted code).

Content parts (OpenAI's [{"type": "text", "text": ...}]) are passed as they are to templates that
loop over a message's content, and joined into one string (newline-separated, as vLLM does) for
templates that expect a string.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Appended to the final message to find where it ends in the rendered text (continue_final_message).
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_RESERVED_KWARGS = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


def resolve_chat_template(requested: str | None, model_template: str | dict | None,
                          tools: list | None) -> str:
    """The template to use: the requested one (a template, or the name of one of the model's
    named templates), else the model's ("tool_use" when tools are given and it has one)."""
    if isinstance(model_template, dict):
        if requested is not None:
            return model_template.get(requested, requested)
        if tools is not None and "tool_use" in model_template:
            return model_template["tool_use"]
        if "default" in model_template:
            return model_template["default"]
        raise ValueError(f"chat_template: the model has several templates and none is the default; "
                         f"pass one of {sorted(model_template)} or a template.")
    template = requested if requested is not None else model_template
    if not template:
        raise ValueError("chat_template: the model has no chat template; pass one (chat_template=...).")
    return template


def render_chat(messages: list[dict[str, Any]], chat_template: str, *, tools: list[dict] | None = None,
                documents: list[dict] | None = None, add_generation_prompt: bool = False,
                continue_final_message: bool = False, chat_template_kwargs: dict[str, Any] | None = None,
                special_tokens: dict[str, str] | None = None) -> str:
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt cannot both be set.")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list.")
    kwargs = _plain_data(chat_template_kwargs or {}, "chat_template_kwargs")
    reserved = _RESERVED_KWARGS & set(kwargs)
    if reserved:
        raise ValueError(f"chat_template_kwargs cannot set {sorted(reserved)}.")
    template = _compile(chat_template)
    parts_as_list = _loops_over_content(chat_template)
    messages = [_prepare_message(m, parts_as_list) for m in _plain_data(messages, "messages")]

    final_text = None
    if continue_final_message:
        final_text = _tag_final_message(messages[-1])
    try:
        rendered = template.render(messages=messages, tools=_plain_data(tools, "tools"),
                                   documents=_plain_data(documents, "documents"),
                                   add_generation_prompt=add_generation_prompt,
                                   **{**(special_tokens or {}), **kwargs})
    except jinja2.TemplateError as error:
        raise ValueError(f"chat template error: {error}") from error
    if final_text is not None:
        rendered = _cut_after_final_message(rendered, final_text)
    return rendered


# ---------------------------------------------------------------------- messages
def _plain_data(value: Any, field: str) -> Any:
    """A copy made only of JSON types, so the template sees no object with methods of its own."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {_plain_data(k, field): _plain_data(v, field) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_data(v, field) for v in value]
    raise ValueError(f"{field} may contain only strings, numbers, booleans, lists and dicts; "
                     f"got {type(value).__name__}.")


def _prepare_message(message: Any, parts_as_list: bool) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ValueError(f"messages: each message must be a dict, got {message!r}.")
    # Keys set to None are dropped, as transformers does (templates handle a missing key).
    message = {k: v for k, v in message.items() if v is not None}
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict) or part.get("type", "text") != "text" or "text" not in part:
                raise ValueError(f"messages: only text content parts are supported, got {part!r}.")
        if not parts_as_list:
            message["content"] = "\n".join(part["text"] for part in content)
    return message


def _tag_final_message(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        message["content"] = content + _CONTINUE_TAG
        return content
    if isinstance(content, list) and content:
        last = content[-1]
        content[-1] = {**last, "text": last["text"] + _CONTINUE_TAG}
        return last["text"]
    raise ValueError("continue_final_message is set but the final message has no content to continue.")


def _cut_after_final_message(rendered: str, final_text: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if tag not in rendered or final_text.strip() not in rendered:
        raise ValueError("continue_final_message: the chat template does not render the final message "
                         "as given, so it cannot be continued.")
    cut = rendered.rindex(tag)
    if rendered[cut:cut + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:cut]
    # The template trimmed the trailing space of the tag, so it trimmed the message too.
    return rendered[:cut].rstrip()


# ---------------------------------------------------------------------- environment
class _GenerationTag(jinja2.ext.Extension):
    """Accepts transformers' {% generation %}...{% endgeneration %} (assistant masks) and renders
    its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


class _SafeNamespace(jinja2.utils.Namespace):
    """namespace() that refuses underscore names, so a template cannot reach Python internals."""

    def __init__(*args, **kwargs):  # same signature trick as jinja2's Namespace (allows self=...)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed.")


class _DictConstructor:
    """`dict(...)` for templates, without exposing the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Unlike jinja2's own tojson, no HTML escaping (templates emit JSON for the model).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format_string):
    return datetime.datetime.now().strftime(format_string)


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """jinja2's sandbox turns an unsafe attribute (`__class__`, `append` on an input list) into an
    undefined value that fails only when used further; here touching one fails the render at once."""

    def unsafe_undefined(self, obj, attribute):
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe.")


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _DictConstructor()
    env.globals["namespace"] = _SafeNamespace
    return env


@functools.lru_cache(maxsize=32)
def _compile(chat_template: str) -> jinja2.Template:
    try:
        return _environment().from_string(chat_template)
    except jinja2.TemplateError as error:
        raise ValueError(f"chat_template does not compile: {error}") from error


@functools.lru_cache(maxsize=32)
def _loops_over_content(chat_template: str) -> bool:
    """Whether the template iterates over a message's content (expects content parts)."""
    tree = _environment().parse(chat_template)
    for loop in tree.find_all(jinja2.nodes.For):
        target = loop.iter
        while isinstance(target, jinja2.nodes.Filter) and target.node is not None:
            target = target.node
        if isinstance(target, jinja2.nodes.Getattr) and target.attr == "content":
            return True
        if (isinstance(target, jinja2.nodes.Getitem) and isinstance(target.arg, jinja2.nodes.Const)
                and target.arg.value == "content"):
            return True
    return False
