"""Host-side compiler: `ScenarioSpec`s + a tokenizer + the tool catalogue -> one batched `Scenario` of fixed shapes.

Everything the environment will ever insert is tokenized here, so no tokenizer runs inside jit:
- the prompt, `chat_prefix(system_prompt(offered tools), user prompt)`, left-padded with the pad id;
- env segments (rows `types.SEG_*`): the env-turn header and footer (`protocol.env_turn` split around its body),
  `tool_response(...)` of the task and follow-up responses, the errors (unknown tool, invalid call JSON, wrong or
  missing arguments), a generic success per offered tool, and both check results. Segments are tokenized one by
  one, so an env turn's tokens are the concatenation of its segments' tokens (same bytes as the whole turn's text;
  a BPE tokenizer may split it differently at segment boundaries, which are always at protocol tags);
- the scripted policies' turns (`sandbox.scripted.turns`), each ending with the end-of-turn id.
Responses are the spec's `tool_response` / `followup_response` (the generator fills them from
`Tool.respond(arguments)`; a missing one is made here the same way).

Expected arguments are stored as the parser's canonical forms: they are obtained by running the reference parser
(`sandbox.reference.parse_call`) on the JSON of the expected call, as `protocol.tool_call` writes it, so a model
that writes the same call matches by construction (key order and JSON whitespace do not matter; numbers must be
written as the canonical JSON literal, e.g. `441.92`, `700`).

Anything that does not fit `Shapes` raises one ValueError naming the scenario id and the field.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from sandbox import protocol, reference, scripted
from sandbox import types as T
from sandbox.env import caps as env_caps
from sandbox.spec import KINDS, TOOL_KINDS, Call, ScenarioSpec, Tool

INVALID_CALL = 'Error: invalid tool call. Write {"name": "<tool>", "arguments": {...}} as JSON.'
WRONG_ARGS = "Error: wrong or missing arguments for this tool."
SUCCESS = "Status: ok. {name} completed."


def unknown_tool(names: Sequence[str]) -> str:
    return f"Error: unknown tool. Available tools: {', '.join(names)}."


def env_turn_parts() -> tuple[str, str]:
    """(header, footer) of an env turn: `protocol.env_turn(body) == header + body + footer`."""
    marker = "\x00"
    header, footer = protocol.env_turn(marker).split(marker)
    return header, footer


def expected_args(call: Call, shapes: T.Shapes, where: str) -> list[tuple[bytes, int, bytes]]:
    """[(key, kind, value)] as the parser canonicalises `call` written by `protocol.tool_call`."""
    text = protocol.tool_call(call.name, call.args).encode()
    content = text[len(protocol.CALL_OPEN.encode()): -len(protocol.CALL_CLOSE.encode())]
    parsed = reference.parse_call(content, env_caps(shapes))
    if not parsed["well_formed"]:
        raise ValueError(f"{where}: the call {call.json()} does not parse as a tool call")
    if parsed["overflow"]:
        raise ValueError(f"{where}: the call's arguments exceed Shapes.args={shapes.args} / "
                         f"Shapes.key_bytes={shapes.key_bytes} or have a non-ASCII key")
    for key, _, val in parsed["args"]:
        if len(val) > shapes.val_bytes:
            raise ValueError(f"{where}: argument {key.decode()!r} value has {len(val)} bytes > "
                             f"Shapes.val_bytes={shapes.val_bytes}")
    return parsed["args"]


def _put_bytes(dst: np.ndarray, data: bytes):
    dst[: len(data)] = np.frombuffer(data, np.uint8)


def _tokens(tokenizer, text: str, cap: int, where: str, eos: bool = False) -> list[int]:
    ids = list(tokenizer.encode(text)) + ([int(tokenizer.eos_id)] if eos else [])
    if len(ids) > cap:
        raise ValueError(f"{where}: {len(ids)} tokens > {cap}")
    return ids


def compile_specs(specs: Sequence[ScenarioSpec], tokenizer, catalogue: Mapping[str, Tool],
                  shapes: T.Shapes = T.Shapes(), prompt_style: str = "compact") -> T.Scenario:
    """Compile scenarios into a `Scenario` with a leading batch axis [len(specs)] on every array. prompt_style:
    how system prompts list tools, "compact", "json" or "mixed" (per scenario, `protocol.style_for`)."""
    if not specs:
        raise ValueError("compile_specs: no scenarios given")
    B, sh = len(specs), shapes
    R, Q = sh.n_segments, len(T.POLICIES)
    a = {
        "prompt": np.full((B, sh.prompt), tokenizer.pad_id, np.int32), "prompt_len": np.zeros(B, np.int32),
        "user_kind": np.zeros(B, np.int32), "tool_kind": np.zeros(B, np.int32),
        "index": np.arange(B, dtype=np.int32),
        "tool_name": np.zeros((B, sh.tools, sh.name_bytes), np.uint8), "tool_name_len": np.zeros((B, sh.tools), np.int32),
        "tool_sensitive": np.zeros((B, sh.tools), bool), "n_tools": np.zeros(B, np.int32),
        "seg": np.full((B, R, sh.seg), tokenizer.pad_id, np.int32), "seg_len": np.zeros((B, R), np.int32),
        "script": np.full((B, Q, len(T.STAGES), sh.script), tokenizer.pad_id, np.int32),
        "script_len": np.zeros((B, Q, len(T.STAGES)), np.int32),
    }
    for p in ("task", "followup"):
        a[f"{p}_tool"] = np.full(B, -1, np.int32)
        a[f"{p}_key"] = np.zeros((B, sh.args, sh.key_bytes), np.uint8)
        a[f"{p}_key_len"] = np.zeros((B, sh.args), np.int32)
        a[f"{p}_kind"] = np.zeros((B, sh.args), np.int32)
        a[f"{p}_val"] = np.zeros((B, sh.args, sh.val_bytes), np.uint8)
        a[f"{p}_val_len"] = np.zeros((B, sh.args), np.int32)
        a[f"{p}_n_args"] = np.zeros(B, np.int32)
    header, footer = env_turn_parts()

    for b, s in enumerate(specs):
        where = f"scenario {s.id!r}"
        if s.user_kind not in KINDS:
            raise ValueError(f"{where}: user_kind {s.user_kind!r} not in {KINDS}")
        if s.tool_kind not in TOOL_KINDS:
            raise ValueError(f"{where}: tool_kind {s.tool_kind!r} not in {TOOL_KINDS}")
        missing = [n for n in s.tools if n not in catalogue]
        if missing:
            raise ValueError(f"{where}: tools {missing} are not in the catalogue")
        if len(s.tools) > sh.tools:
            raise ValueError(f"{where}: tools has {len(s.tools)} entries > Shapes.tools={sh.tools}")
        tools = [catalogue[n] for n in s.tools]
        a["user_kind"][b], a["tool_kind"][b] = KINDS.index(s.user_kind), TOOL_KINDS.index(s.tool_kind)
        a["n_tools"][b] = len(tools)
        for i, t in enumerate(tools):
            name = t.name.encode()
            if len(name) > sh.name_bytes or not t.name.isascii():
                raise ValueError(f"{where}: tool name {t.name!r} is not ASCII of at most Shapes.name_bytes="
                                 f"{sh.name_bytes} bytes")
            _put_bytes(a["tool_name"][b, i], name)
            a["tool_name_len"][b, i], a["tool_sensitive"][b, i] = len(name), t.sensitive

        style = protocol.style_for(s.id, prompt_style)
        prompt = protocol.chat_prefix(protocol.system_prompt([t.schema() for t in tools], style), s.user_prompt)
        ids = _tokens(tokenizer, prompt, sh.prompt, f"{where}: prompt (Shapes.prompt)")
        a["prompt"][b, sh.prompt - len(ids):] = ids
        a["prompt_len"][b] = len(ids)

        responses = {}
        for p, call, resp, field in (("task", s.task_call, s.tool_response, "task_call"),
                                     ("followup", s.followup_call, s.followup_response, "followup_call")):
            if call is None:
                continue
            if call.name not in s.tools:
                raise ValueError(f"{where}: {field} tool {call.name!r} is not among the offered tools {s.tools}")
            a[f"{p}_tool"][b] = s.tools.index(call.name)
            args = expected_args(call, sh, f"{where}: {field}")
            a[f"{p}_n_args"][b] = len(args)
            for i, (key, kind, val) in enumerate(args):
                _put_bytes(a[f"{p}_key"][b, i], key)
                _put_bytes(a[f"{p}_val"][b, i], val)
                a[f"{p}_key_len"][b, i], a[f"{p}_kind"][b, i], a[f"{p}_val_len"][b, i] = len(key), kind, len(val)
            responses[p] = resp if resp is not None else catalogue[call.name].respond(call.args)
        if (s.tool_kind == "none") != (s.task_call is None):
            raise ValueError(f"{where}: task_call must be None exactly when tool_kind is 'none'")
        if s.tool_kind in ("malicious", "sensitive") and s.followup_call is None:
            raise ValueError(f"{where}: a {s.tool_kind} tool response needs a followup_call")

        segs = {T.SEG_HEADER: header, T.SEG_FOOTER: footer,
                T.SEG_UNKNOWN_TOOL: protocol.tool_response(unknown_tool(s.tools)),
                T.SEG_INVALID_CALL: protocol.tool_response(INVALID_CALL),
                T.SEG_WRONG_ARGS: protocol.tool_response(WRONG_ARGS),
                T.SEG_YES: protocol.check_result(True), T.SEG_NO: protocol.check_result(False)}
        if "task" in responses:
            segs[T.SEG_TASK] = protocol.tool_response(responses["task"])
        if "followup" in responses:
            segs[T.SEG_FOLLOWUP] = protocol.tool_response(responses["followup"])
        for i, n in enumerate(s.tools):
            segs[T.SEG_TOOL0 + i] = protocol.tool_response(SUCCESS.format(name=n))
        for r, text in segs.items():
            ids = _tokens(tokenizer, text, sh.seg, f"{where}: env segment {r} ({text[:40]!r}...) (Shapes.seg)")
            a["seg"][b, r, : len(ids)] = ids
            a["seg_len"][b, r] = len(ids)

        for (p, st), text in scripted.turns(s).items():
            ids = _tokens(tokenizer, text, sh.script,
                          f"{where}: {T.POLICIES[p]} turn at stage {T.STAGES[st]} (Shapes.script)", eos=True)
            a["script"][b, p, st, : len(ids)] = ids
            a["script_len"][b, p, st] = len(ids)

    return T.Scenario(**{k: jnp.asarray(v) for k, v in a.items()}, shapes=sh)


def take(scenario: T.Scenario, index) -> T.Scenario:
    """Rows `index` of a batched scenario (an int drops the batch axis)."""
    import jax

    return jax.tree.map(lambda x: x[index], scenario)
