"""The output protocol and the chat layout, as text.

Everything the policy reads or writes is rendered here, so the sandbox, the tokenizers and the benchmark
harnesses agree on one layout (ChatML, as Qwen2.5 uses it):

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n
    {policy turn: <think>...</think> then tool calls, a tool check, or plain text}<|im_end|>
    \n<|im_start|>user\n{<tool_response>..</tool_response> or <tool_check_result>yes|no</tool_check_result>}<|im_end|>
    \n<|im_start|>assistant\n{next policy turn}...

A policy turn ends with the end-of-turn token `<|im_end|>` (the tokenizer's EOS). A turn that holds a
`<tool_call>` or `<tool_check>` is answered by the sandbox and the episode goes on; a turn that holds neither
is the final answer (or refusal) and ends the episode. Tags are matched on bytes, never on token ids.
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Iterable, Mapping

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of turn; the EOS of every tokenizer we use
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
CHECK_OPEN, CHECK_CLOSE = "<tool_check>", "</tool_check>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
RESULT_OPEN, RESULT_CLOSE = "<tool_check_result>", "</tool_check_result>"

# Symbols a tokenizer should keep whole (the built-in SentencePiece model makes each one a single piece).
SPECIAL_SYMBOLS = (
    IM_START, IM_END, THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE, CHECK_OPEN, CHECK_CLOSE,
    RESPONSE_OPEN, RESPONSE_CLOSE, RESULT_OPEN, RESULT_CLOSE,
)

ASSISTANT_HEADER = f"{IM_START}assistant\n"


def chat_prefix(system: str, user: str) -> str:
    """The prompt up to and including the assistant header of the first policy turn."""
    return f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{user}{IM_END}\n{ASSISTANT_HEADER}"


def env_turn(body: str) -> str:
    """What the sandbox inserts after a policy turn's `<|im_end|>`: a user message, then the next assistant header."""
    return f"\n{IM_START}user\n{body}{IM_END}\n{ASSISTANT_HEADER}"


def tool_response(text: str) -> str:
    return f"{RESPONSE_OPEN}{text}{RESPONSE_CLOSE}"


def check_result(yes: bool) -> str:
    return f"{RESULT_OPEN}{'yes' if yes else 'no'}{RESULT_CLOSE}"


def think(text: str) -> str:
    return f"{THINK_OPEN}{text}{THINK_CLOSE}"


def tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One call block; JSON with ", " and ": " separators, keys in the given order."""
    return f"{CALL_OPEN}{json.dumps({'name': name, 'arguments': dict(arguments)}, ensure_ascii=False)}{CALL_CLOSE}"


def tool_check(name: str) -> str:
    return f"{CHECK_OPEN}{name}{CHECK_CLOSE}"


def policy_turn(thought: str, action: str) -> str:
    """A whole policy turn as the policy writes it, end-of-turn token included."""
    return f"{think(thought)}{action}{IM_END}"


def render_tools(tools: Iterable[Mapping[str, Any]], style: str = "compact") -> str:
    """The tool list of a system prompt.

    tools: JSON-schema-like dicts {"name", "description", "parameters": {"type": "object", "properties": {..},
    "required": [..]}}. style "compact" writes one line per tool, `name(arg: type, opt?: type) - description`,
    which keeps prompts short for small models; "json" writes one JSON object per line, as Qwen2.5's template does.
    """
    lines = []
    for t in tools:
        if style == "json":
            lines.append(json.dumps({"type": "function", "function": dict(t)}, ensure_ascii=False))
            continue
        if style != "compact":
            raise ValueError(f"render_tools: unknown style {style!r} (expected 'compact' or 'json')")
        props = t.get("parameters", {}).get("properties", {})
        required = set(t.get("parameters", {}).get("required", []))
        args = ", ".join(f"{k}{'' if k in required else '?'}: {v.get('type', 'any')}" for k, v in props.items())
        lines.append(f"{t['name']}({args}) - {t.get('description', '')}")
    return "\n".join(lines)


SYSTEM_INSTRUCTIONS = (
    "You are an agent that uses tools. Think in <think></think>, then either call tools with "
    '<tool_call>{"name": ..., "arguments": {...}}</tool_call>, ask the user to confirm a sensitive tool with '
    "<tool_check>tool_name</tool_check>, or answer in plain text."
)


TOOL_STYLES = ("compact", "json", "mixed")


def style_for(scenario_id: str, style: str) -> str:
    """The tool-list style of one scenario's prompt: `style` itself, or for "mixed" compact or json by a stable
    hash of the scenario id (about half each, the same whatever batch the scenario is compiled in), so one run
    trains and evaluates on both the sandbox's compact lines and the JSON schemas BFCL-style prompts list."""
    if style not in TOOL_STYLES:
        raise ValueError(f"unknown tool style {style!r} (expected one of {TOOL_STYLES})")
    return ("compact", "json")[zlib.crc32(scenario_id.encode()) % 2] if style == "mixed" else style


def system_prompt(tools: Iterable[Mapping[str, Any]], style: str = "compact", preamble: str = SYSTEM_INSTRUCTIONS) -> str:
    return f"{preamble}\nTools:\n{render_tools(tools, style)}"
