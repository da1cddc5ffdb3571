"""A policy turn read as text: the one reader of tool calls that every host-side scorer shares.

The benchmark harnesses (InjecAgent, BFCL, Agent-SafetyBench in `agent_rl.evals`) read a turn with `parse_turn`, and
the sandbox's reference parser (`sandbox.reference`, the definition of the jitted byte parser) reads its layout and
call JSON with `layout` and `loads`, so one text gets one reading everywhere. Nothing here raises on model output:
any str is a turn (lone surrogates, NUL characters and 100k-character strings included).

Rules
-----
1. End of turn. A turn ends at its first `<|im_end|>`: the turn is over, so nothing after it (a call included) counts
   (`end_turn`). The reference parser reads the bytes before the end-of-turn token, so it has nothing to cut.
2. Think. A turn that starts with `<think>` and has a `</think>` after it has its actions after the first `</think>`;
   otherwise the whole turn is the action region (a stray or unclosed `<think>` is text).
3. Blocks. The action region is scanned left to right: the leftmost `<tool_call>` or `<tool_check>` opens a block
   that runs to the first matching closing tag after it; nothing nests (a `<tool_call>` inside a block is content).
   A block never closed makes the turn `unclosed` and is not counted. Tags match character for character: look-alikes
   (fullwidth `＜tool_call＞`, homoglyphs) are text, as they are to the byte parser.
4. Call JSON. A call block's content must be one strict JSON value: Python's `json` grammar with NaN, Infinity and
   -Infinity rejected (JSON has no such values), raw control characters (NUL included) rejected inside strings, and
   at most `MAX_DEPTH` nested containers (the top object counts 1; this also keeps `json` and every later walk of
   the value clear of Python's recursion limit).
5. Numbers (`read_call`; the reference keeps number literals as text instead, as the byte parser never evaluates one).
   A number must be a finite double: a literal that overflows one (`1e400`, an integer of magnitude >= 2**1024) is
   rejected as Infinity is; that also keeps integers far below Python's limit on int-string conversion.
6. Calls. A well-formed call is a JSON object whose member "name" is a string and whose member "arguments" is an
   object; other members are ignored, and for a repeated key the last one wins (as `json` does).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, NamedTuple

from sandbox import protocol

MAX_DEPTH = 32  # nested JSON containers allowed in a call; real tool calls stay far below it
_MAX_INT_DIGITS = 309  # 2**1024 has 309 digits: any longer integer literal overflows a double (JSON forbids 0-padding)


def end_turn(text: str) -> str:
    """The turn proper: `text` up to its first `<|im_end|>` (rule 1)."""
    return text.split(protocol.IM_END, 1)[0]


# ----------------------------------------------------------------------------------------------------------------
# Layout (rules 2 and 3).


class Block(NamedTuple):
    """One closed `<tool_call>` or `<tool_check>` block: kind "call" or "check", its content, and the offset just
    past its closing tag."""
    kind: str
    raw: str
    end: int


class Layout(NamedTuple):
    """Where the parts of a turn are. action_start: where the action region begins (0 without a well-formed think).
    gaps: the action region's text outside every block and tag, in order (before an unclosed block's tag, not after)."""
    think: str
    action_start: int
    blocks: tuple[Block, ...]
    gaps: tuple[str, ...]
    unclosed: bool


_OPEN = re.compile(re.escape(protocol.CALL_OPEN) + "|" + re.escape(protocol.CHECK_OPEN))


def layout(text: str) -> Layout:
    """The think, blocks and free text of a turn (rules 2 and 3); `text` is the turn proper (see `end_turn`)."""
    think, start = "", 0
    if text.startswith(protocol.THINK_OPEN):
        close = text.find(protocol.THINK_CLOSE, len(protocol.THINK_OPEN))
        if close >= 0:
            think, start = text[len(protocol.THINK_OPEN):close], close + len(protocol.THINK_CLOSE)
    blocks, gaps, pos = [], [], start
    while (m := _OPEN.search(text, pos)) is not None:
        gaps.append(text[pos:m.start()])
        is_call = m.group() == protocol.CALL_OPEN
        close = text.find(protocol.CALL_CLOSE if is_call else protocol.CHECK_CLOSE, m.end())
        if close < 0:
            return Layout(think, start, tuple(blocks), tuple(gaps), True)
        pos = close + len(protocol.CALL_CLOSE if is_call else protocol.CHECK_CLOSE)
        blocks.append(Block("call" if is_call else "check", text[m.end():close], pos))
    gaps.append(text[pos:])
    return Layout(think, start, tuple(blocks), tuple(gaps), False)


# ----------------------------------------------------------------------------------------------------------------
# Strict JSON (rules 4 and 5).

# A JSON string (an unterminated one runs to the end) or a bracket: brackets inside strings are not nesting.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def nests_deeper(text: str, limit: int) -> bool:
    """Whether the JSON text opens more than `limit` containers at once. Exact for valid JSON; for invalid JSON it
    only decides which error is reported. Linear, no recursion (runs before `json`, which would recurse)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for m in _STRING_OR_BRACKET.finditer(text):
        c = m.group()
        if c == "[" or c == "{":
            depth += 1
            if depth > limit:
                return True
        elif c == "]" or c == "}":
            depth -= 1
    return False


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def loads(text: str, max_depth: int = MAX_DEPTH, **hooks: Callable) -> tuple[Any, str]:
    """(value, "") for strict JSON text (rule 4), else (None, why). `hooks` go to `json.loads` (parse_int, ...);
    a hook rejects a value by raising ValueError. Never raises."""
    if nests_deeper(text, max_depth):
        return None, f"nested deeper than {max_depth} containers"
    try:
        return json.loads(text, parse_constant=_reject_constant, **hooks), ""
    except ValueError as e:  # JSONDecodeError, or a hook's rejection
        return None, str(e)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:20]}... overflows a double")
    return value


def _finite_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"integer {literal[:20]}... overflows a double")
    value = int(literal)
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"integer {literal[:20]}... overflows a double") from None
    return value


def loads_finite(text: str) -> tuple[Any, str]:
    """`loads` with numbers read as finite doubles / exact ints (rule 5)."""
    return loads(text, parse_float=_finite_float, parse_int=_finite_int)


# ----------------------------------------------------------------------------------------------------------------
# Calls and turns (rule 6).


class Action(NamedTuple):
    """One `<tool_call>` or `<tool_check>` block of a turn, in the order written.

    kind: "call" or "check". name: the called / checked tool ("" if a call block is malformed).
    arguments: the call's arguments object (None for checks and malformed calls). raw: the block's content.
    error: why a call block is malformed ("" if well-formed). end: offset in the turn just past the closing tag.
    is_json: the content is strict JSON (a malformed call with is_json has the wrong shape; BFCL tells them apart).
    """
    kind: str
    name: str
    arguments: dict | None
    raw: str
    error: str = ""
    end: int = 0
    is_json: bool = True


def read_call(raw: str) -> Action:
    """A call block's content as an Action (end left 0): well-formed, or with the reason it is not."""
    obj, why = loads_finite(raw)
    if why:
        return Action("call", "", None, raw, f"not JSON ({why})", is_json=False)
    if not isinstance(obj, dict):
        return Action("call", "", None, raw, "not a JSON object")
    if not isinstance(obj.get("name"), str):
        return Action("call", "", None, raw, 'no string "name"')
    if not isinstance(obj.get("arguments"), dict):
        return Action("call", obj["name"], None, raw, 'no object "arguments"')
    return Action("call", obj["name"], obj["arguments"], raw)


class Turn(NamedTuple):
    """A policy turn read as the protocol defines it.

    text: the turn proper (cut at `<|im_end|>`). think: the `<think>` content ("" if none). actions: every closed
    block. answer: the action region with all blocks removed (the final answer / refusal text), stripped.
    unclosed: a block was opened and never closed. action_start: where the action region starts in `text`.
    """
    text: str
    think: str
    actions: tuple[Action, ...]
    answer: str
    unclosed: bool
    action_start: int = 0

    @property
    def action_text(self) -> str:
        """The turn without its think block, stripped (what the agent shows the user)."""
        return self.text[self.action_start:].strip()

    @property
    def calls(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind == "call")

    @property
    def checks(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind == "check")

    @property
    def malformed(self) -> str:
        """Why the turn breaks the protocol ("" if it does not): an unclosed block or a call that is not
        `{"name": str, "arguments": {...}}` JSON."""
        if self.unclosed:
            return "unclosed block"
        bad = [a.error for a in self.calls if a.error]
        return f"malformed tool_call: {bad[0]}" if bad else ""

    @property
    def first_action(self) -> Action | None:
        return self.actions[0] if self.actions else None


def _action(block: Block) -> Action:
    if block.kind == "check":
        return Action("check", block.raw.strip(), None, block.raw, "", block.end)
    return read_call(block.raw)._replace(end=block.end)


def parse_turn(text: str) -> Turn:
    """Read one policy turn (rules 1-6)."""
    text = end_turn(text)
    lay = layout(text)
    actions = tuple(_action(b) for b in lay.blocks)
    return Turn(text, lay.think, actions, "".join(lay.gaps).strip(), lay.unclosed, lay.action_start)
