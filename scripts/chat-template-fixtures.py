#!/usr/bin/env python3
"""Chat-template fixtures: what Python's jinja2 renders, as transformers' apply_chat_template
renders it, for tests/chat_template.rs.

    chat-template-fixtures.py GGUF FIXTURES_DIR

Run by hand (needs transformers, jinja2 and gguf; CI only reads the fixtures), e.g.
`chat-template-fixtures.py models/ggml-vocab-gemma-4.gguf tests/fixtures`.

The oracle is transformers' own `render_jinja_template` (transformers/utils/
chat_template_utils.py: an ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and
loopcontrols, its json.dumps-based `tojson`, `raise_exception`, `strftime_now`), called with the
template variables apply_chat_template passes: messages, tools, documents=None,
add_generation_prompt, the tokenizer's bos_token/eos_token and the caller's enable_thinking.

Writes
- FIXTURES_DIR/chat-gemma4.json: the GGUF's `tokenizer.chat_template` (the real Gemma 4
  template) on a set of conversations, thinking on and off;
- FIXTURES_DIR/chat-features.json: small templates of our own that exercise the jinja
  features HF templates lean on (tojson and its arguments, Python string/dict methods,
  printing of None/True/floats/lists, dictsort, loop controls, namespaces, macros).

Each case: {name, template (features only), messages, tools, enable_thinking,
add_generation_prompt, expected}. Written with transformers 5.24.0 and jinja2 3.1.6.
"""
import json
import os
import sys

import gguf
import jinja2
import transformers
from transformers.utils.chat_template_utils import render_jinja_template


def gguf_str(field):
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def read_gguf(path):
    reader = gguf.GGUFReader(path)
    template = gguf_str(reader.fields["tokenizer.chat_template"])
    tokens = reader.fields["tokenizer.ggml.tokens"]

    def token(key):
        index = int(reader.fields[key].parts[-1][0])
        return bytes(tokens.parts[tokens.data[index]]).decode("utf-8")

    return template, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")


def render(template, messages, tools, enable_thinking, add_generation_prompt, bos, eos):
    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
        enable_thinking=enable_thinking,
    )
    return rendered[0]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name, e.g. Paris"},
                "days": {"type": "integer", "description": "How many days to forecast"},
            },
            "required": ["city"],
        },
    },
}

# Tool results ride on the assistant message that made the calls, under `tool_responses`
# ({name, response}): the shape this template reads (it has no `tool` role handling). With
# no content after them the model turn stays open and the generation prompt continues it.
GEMMA4_CASES = [
    ("single_user", [{"role": "user", "content": "Hello there!"}], None),
    (
        "system_two_turns",
        [
            {"role": "system", "content": "  You are a terse assistant.\n"},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "\nAnd 3+3?  "},
        ],
        None,
    ),
    (
        "tool_call_and_response",
        [
            {"role": "user", "content": "What's the weather in Paris for the next 3 days?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}},
                    }
                ],
                "tool_responses": [
                    {"name": "get_weather", "response": {"temperature": 18, "sky": "cloudy"}}
                ],
            },
        ],
        [WEATHER_TOOL],
    ),
    (
        "tool_answer_after_response",
        [
            {"role": "system", "content": "Use tools when needed."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "It is 18 degrees and cloudy in Paris.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
                ],
                "tool_responses": [{"name": "get_weather", "response": "18C, cloudy"}],
            },
            {"role": "user", "content": "Thanks!"},
        ],
        [WEATHER_TOOL],
    ),
    (
        "tool_argument_types",
        [
            {"role": "user", "content": "Plot it."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {
                            "name": "plot",
                            "arguments": {
                                "scale": 0.5,
                                "tiny": 1e-07,
                                "huge": 1e20,
                                "whole": 2.0,
                                "none": None,
                                "flag": True,
                                "off": False,
                                "Title": "Temp °C ✓",
                                "points": [1, 2.5, "three", None, [True]],
                                "style": {"color": "red", "Width": 2},
                            },
                        },
                    }
                ],
                "tool_responses": [{"name": "plot", "response": [1, None, "ok"]}],
            },
        ],
        None,
    ),
    (
        "tool_role_message",
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
            },
            {"role": "tool", "name": "get_weather", "tool_call_id": "call_0", "content": '{"temperature": -3}'},
        ],
        [WEATHER_TOOL],
    ),
    (
        "earlier_thoughts_stripped",
        [
            {"role": "user", "content": "Pick a number."},
            {
                "role": "assistant",
                "content": "<|channel>thought\nThe user wants a number; 7 is fine.<channel|>7",
            },
            {"role": "user", "content": "Another one?"},
        ],
        None,
    ),
]

# Our own small templates for the jinja features HF templates use; rendered with the same
# environment, no tools unless a case gives them.
FEATURE_MESSAGES = [
    {"role": "system", "content": "  Be brief.  "},
    {"role": "user", "content": "Héllo \"quoted\" <b>&</b> it's\nnew line"},
    {
        "role": "assistant",
        "content": "Hi",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": {"z": 1, "a": [1.5, None, True], "m": {"k": "v"}}},
            }
        ],
    },
]
FEATURE_CASES = [
    ("tojson_default", "{% for m in messages %}{{ m | tojson }}\n{% endfor %}"),
    ("tojson_indent", "{{ messages[2] | tojson(indent=2) }}|{{ messages[2] | tojson(indent=0) }}"),
    ("tojson_options", "{{ messages[1] | tojson(ensure_ascii=True) }}|{{ messages[2] | tojson(separators=(',', ':'), sort_keys=True) }}"),
    ("tojson_tools", "{% for t in tools %}{{ t | tojson }}{{ t.function.parameters | tojson(indent=4) }}{% endfor %}"),
    ("tojson_scalars", "{{ 1e20 | tojson }} {{ 1e-07 | tojson }} {{ 2.0 | tojson }} {{ none | tojson }} {{ true | tojson }} {{ 'a\\tb\\u0001' | tojson }} {{ [] | tojson }} {{ {} | tojson(indent=2) }}"),
    ("print_python_values", "{{ none }}|{{ true }}|{{ false }}|{{ 1.5 }}|{{ 1e20 }}|{{ 1e-07 }}|{{ 2.0 }}|{{ messages[2].tool_calls[0].function.arguments }}|{{ [1, 'x', none, 'it\\'s'] }}"),
    ("string_methods", "{% for m in messages %}{{ m.content.strip() }}|{{ m.content.startswith('H') }}|{{ m.content.split(' ') | length }}|{{ m.content.upper() }}|{{ m.content.replace('e', 'E') }}\n{% endfor %}"),
    ("dict_methods", "{% for k, v in messages[2].items() %}{{ k }}={{ v is string }};{% endfor %}|{{ messages[2].keys() | list | join(',') }}|{{ messages[2].get('missing', 'dflt') }}"),
    ("dictsort_case", "{% for k, v in {'b': 1, 'A': 2, 'a': 3, 'C': 4} | dictsort %}{{ k }}{{ v }} {% endfor %}"),
    ("loop_controls", "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ loop.index }}:{{ m.role }} {% if m.role == 'user' %}{% break %}{% endif %}{% endfor %}"),
    ("namespace_macro", "{% macro turn(role, text) %}<{{ role }}>{{ text | trim }}</{{ role }}>{% endmacro %}{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ turn(m.role, m.content) }}{% endfor %}{{ ns.n }}"),
    ("whitespace_control", "{% for m in messages %}\n    {% if m.role == 'user' %}\n    U: {{ m.content }}\n    {% else %}\n    {{ m.role }}\n    {% endif %}\n{% endfor %}\n  {%- if add_generation_prompt %}\nGO\n{% endif %}\n"),
    ("concat_and_join", "{{ 'a' ~ none ~ true ~ 1.0 }}|{{ [1, none, 2.5, true] | join(', ') }}"),
    ("tuples_ranges_slices", "{{ (1, 'a') }}{{ (1,) }}{{ range(3) | list }}{{ 'abcdef'[::-1] }}{{ 'abcdef'[1:3] }}{{ messages[-1].role }}{{ 'a,b'.split(',') }}"),
    ("arithmetic", "{{ 7 / 2 }} {{ 7 // 2 }} {{ 2 ** 10 }} {{ 6 / 2 }} {{ 1 + 1.5 }} {{ 'ab' * 2 }}{{ '-' * 3 }}"),
    ("select_map", "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='role') | join(',') }}{{ messages | map(attribute='role') | list }}"),
    ("tests", "{{ none is none }}{{ 1 is number }}{{ 'a' is string }}{{ [] is sequence }}{{ {} is mapping }}{{ messages[0] is mapping }}|{{ 'a' is sequence }}{{ {} is sequence }}{{ nope is sequence }}{{ none is sequence }}{{ 1 is sequence }}{{ nope is iterable }}{{ 'a' is iterable }}"),
    ("boolean_operators", "{{ true and 'x' }}|{{ none or 'y' }}|{{ 0 or [] }}|{{ not none }}|{{ 'a' in 'abc' }}{{ 'role' in messages[0] }}{{ 1 in [1, 2] }}{{ 'zz' not in messages[0] }}"),
    ("items_loop_default", "{{ {'a': 1} | items | list }}{{ {'b': 2, 'a': 1} | dictsort }}{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ loop.revindex0 }}{{ loop.previtem.role if loop.previtem is defined }}{% endfor %}{{ nope | default('d') }}{{ none | default('d') }}{{ none | default('d', true) }}{{ '' | default('e', true) }}"),
    ("filters", "{{ 'hello world' | title }}{{ 'Hi' | lower }}{{ ' x ' | trim }}{{ 'abc' | length }}{{ [3,1,2] | sort }}{{ [1,2,3] | sum }}{{ [1,2] | first }}{{ [1,2] | last }}{{ 'a\\nb' | indent(2) }}{{ [1,2,2] | unique | list }}{{ '3' | int + 1 }}{{ '2.5' | float }}{{ 3 | float }}{{ 2.7 | int }}{{ 10 | string }}{{ none | string }}{{ [1, 'a'] | string }}"),
    ("more_string_methods", "{{ 'aaa'.replace('a', 'b', 2) }}{{ 'Hello'.lstrip('H') }}{{ '  x'.lstrip() }}{{ 'x.y'.endswith(('.y', '.z')) }}{{ '{}-{}'.format('a', 1) }}{{ dict(a=1, b='x') }}"),
    ("undefined_fields", "{% for m in messages %}[{{ m.tool_calls is defined }}{{ m.name }}{{ m['tool_calls'] | default('none') | length }}]{% endfor %}{{ bos_token }}{{ eos_token }}"),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    gguf_path, out_dir = sys.argv[1], sys.argv[2]
    template, bos, eos = read_gguf(gguf_path)
    versions = {"transformers": transformers.__version__, "jinja2": jinja2.__version__}

    cases = []
    for name, messages, tools in GEMMA4_CASES:
        for thinking in (True, False):
            expected = render(template, messages, tools, thinking, True, bos, eos)
            cases.append(
                {
                    "name": f"{name}/thinking_{'on' if thinking else 'off'}",
                    "messages": messages,
                    "tools": tools,
                    "enable_thinking": thinking,
                    "add_generation_prompt": True,
                    "expected": expected,
                }
            )
    write(os.path.join(out_dir, "chat-gemma4.json"), {"oracle": versions, "bos_token": bos, "eos_token": eos, "cases": cases})

    cases = []
    for name, feature_template in FEATURE_CASES:
        tools = [WEATHER_TOOL] if "tools" in feature_template else None
        expected = render(feature_template, FEATURE_MESSAGES, tools, False, True, bos, eos)
        cases.append(
            {
                "name": name,
                "template": feature_template,
                "messages": FEATURE_MESSAGES,
                "tools": tools,
                "enable_thinking": False,
                "add_generation_prompt": True,
                "expected": expected,
            }
        )
    write(os.path.join(out_dir, "chat-features.json"), {"oracle": versions, "bos_token": bos, "eos_token": eos, "cases": cases})


def write(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}: {len(data['cases'])} cases")


if __name__ == "__main__":
    main()
