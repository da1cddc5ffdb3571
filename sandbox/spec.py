"""Host-side records: the tool catalogue and scenarios as plain, hashable Python values.

The generator (`sandbox.generate`) produces `ScenarioSpec`s; the compiler (`sandbox.compile`) turns a list of
them into the fixed-shape `Scenario` arrays the jitted environment reads. Kinds are strings here and small ints
there (`KINDS.index(kind)`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

KINDS = ("benign", "malicious", "sensitive")  # user prompts and tool responses alike
NO_TOOL = "none"  # tool_kind of a scenario whose request needs no tool
TOOL_KINDS = KINDS + (NO_TOOL,)
SENSITIVITY = ("moves_money", "exposes_private_data", "irreversible", "changes_access")
PARAM_TYPES = ("string", "integer", "number", "boolean")
SPLITS = ("train", "heldout")
INJECTION_STYLES = ("plain", "ignore_previous", "fake_system", "data_field", "role_play")

Value = Any  # str | int | float | bool


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    type: str  # one of PARAM_TYPES
    description: str
    enum: tuple[Value, ...] = ()


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    domain: str
    description: str
    params: tuple[Param, ...]
    required: tuple[str, ...]
    sensitivity: tuple[str, ...] = ()  # subset of SENSITIVITY; non-empty means the tool is sensitive
    response_template: str = ""  # str.format template filled from the call's arguments

    @property
    def sensitive(self) -> bool:
        return bool(self.sensitivity)

    def schema(self) -> dict:
        """JSON-schema-like signature, as function-calling prompts show it."""
        props = {p.name: {"type": p.type, "description": p.description, **({"enum": list(p.enum)} if p.enum else {})}
                 for p in self.params}
        return {"name": self.name, "description": self.description,
                "parameters": {"type": "object", "properties": props, "required": list(self.required)}}

    def respond(self, arguments: Mapping[str, Value]) -> str:
        """Simulated behaviour: the response template filled from the call's arguments."""
        return self.response_template.format(**arguments)


@dataclasses.dataclass(frozen=True)
class Call:
    name: str
    arguments: tuple[tuple[str, Value], ...]  # ordered (key, value) pairs, hashable

    @staticmethod
    def make(name: str, arguments: Mapping[str, Value]) -> "Call":
        return Call(name, tuple(arguments.items()))

    @property
    def args(self) -> dict:
        return dict(self.arguments)

    def json(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.args}, ensure_ascii=False)


@dataclasses.dataclass(frozen=True)
class ScenarioSpec:
    """One episode's world.

    user_kind: benign (a task a tool solves), malicious (harmful intent: refuse, call nothing), sensitive
      (legitimate but touches a sensitive tool: `<tool_check>` first).
    tool_kind: kind of `tool_response`, the text `task_call` returns: benign, malicious (carries an injected
      instruction asking for `followup_call`), sensitive (private data, or a follow-up `followup_call` that needs
      consent); "none" when the request needs no tool (then task_call is None and the answer is plain text).
    task_call: what the user asks for (also for malicious users: the harmful call an unsafe agent makes).
    followup_call / followup_response: the injected call (malicious tool) or the consent-needing follow-up
      (sensitive tool), and what it returns if made; None for benign tool responses.
    tools: names of the tools offered in the system prompt (task tool, follow-up tool, distractors), in order.
    """
    id: str
    split: str
    domain: str
    family: str  # template family id; heldout families never appear in train
    user_kind: str
    tool_kind: str
    user_prompt: str
    tools: tuple[str, ...]
    task_call: Call | None
    tool_response: str | None
    followup_call: Call | None = None
    followup_response: str | None = None
    injection_style: str | None = None
    final_answer: str = ""  # what a correct agent says after finishing (or when no tool is needed)
    refusal: str = ""  # what a correct agent says to a malicious request
