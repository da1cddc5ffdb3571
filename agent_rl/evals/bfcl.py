"""BFCL (Berkeley Function Calling Leaderboard, V4) single-turn harness.

Loads the official question / possible-answer files, renders each case as a chat prompt in our protocol
(`sandbox.protocol`), reads the policy's `<tool_call>` blocks with the reader every harness shares
(`sandbox.turns`: strict JSON, nothing after `<|im_end|>`), and scores them with a re-implementation
of BFCL's rule-based AST checker (`bfcl_eval/eval_checker/ast_eval/ast_checker.py`), quirks included, so numbers are
comparable with the leaderboard:

- name match (dotted names compared verbatim; with `underscore_names=True` the expected name has `.` -> `_`, as
  BFCL does for providers whose tool schema forbids dots), required params present, no params outside the doc and
  the ground truth, type check against the doc type (int accepted for float; one level of item types for
  array/tuple; a value of the ground truth's own type counts as a "variable" and passes), value check (strings
  standardised: spaces and `,./-_*^` removed, lowercased, `'` -> `"`; lists order-sensitive; dicts key by key;
  lists of dicts position by position; anything else by membership), every non-optional ground-truth param present;
- `parallel*`: same number of calls, greedy order-free matching in ground-truth order; `multiple*`: exactly one call;
  `simple*`: exactly one call against the only function doc;
- irrelevance: correct iff the output holds no call (a malformed call counts as none, as upstream);
  relevance: correct iff it holds at least one well-formed call, arguments unchecked.

Java and JavaScript take every argument as a source string and convert it with ports of BFCL's type converters
(three of its patterns rewritten to give the same results without catastrophic backtracking; a source string over
MAX_SOURCE_CHARS is left unconverted, as values BFCL cannot convert are).
Summaries follow `eval_runner_helper.py`: `non_live/overall` is the unweighted mean of simple (itself the unweighted
mean of the simple_* categories scored), multiple, parallel and parallel_multiple; `live/overall` is the
count-weighted mean of the four live AST categories. A summary is reported only when all its parts were scored.
"""
from __future__ import annotations

import copy
import json
import pathlib
import re
from typing import Iterable, Mapping, NamedTuple, Sequence

from agent_rl.evals import common, policies
from sandbox import protocol

DATA_SUBDIR = pathlib.Path("berkeley-function-call-leaderboard/bfcl_eval/data")
FILE_PREFIX = "BFCL_v4_"

SIMPLE = ("simple_python", "simple_java", "simple_javascript")
NON_LIVE_AST = SIMPLE + ("multiple", "parallel", "parallel_multiple")
LIVE_AST = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
IRRELEVANCE = ("irrelevance", "live_irrelevance")
RELEVANCE = ("live_relevance",)
CATEGORIES = NON_LIVE_AST + ("irrelevance",) + LIVE_AST + ("live_irrelevance", "live_relevance")

LANGUAGE = {"simple_java": "java", "simple_javascript": "javascript"}  # everything else is Python
LANGUAGE_HINT = {
    "python": " Note that the provided function is in Python 3 syntax.",
    "java": " Note that the provided function is in Java 8 SDK syntax.",
    "javascript": " Note that the provided function is in JavaScript syntax.",
}

PYTHON_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
                "dict": dict, "any": str}
JAVA_TYPES = {"byte": int, "short": int, "integer": int, "float": float, "double": float, "long": int,
              "boolean": bool, "char": str, "Array": list, "ArrayList": list, "Set": set, "HashMap": dict,
              "Hashtable": dict, "Queue": list, "Stack": list, "String": str, "any": str}
JS_TYPES = {"String": str, "integer": int, "float": float, "Bigint": int, "Boolean": bool, "dict": dict,
            "array": list, "any": str}
LANGUAGE_TYPES = {"python": PYTHON_TYPES, "java": JAVA_TYPES, "javascript": JS_TYPES}
# Longest Java / JavaScript source string converted (the longest ground-truth value is 152 characters): BFCL's
# converter patterns backtrack, and on longer hostile strings they could run for minutes.
MAX_SOURCE_CHARS = 1024
NESTED_TYPES = {"python": ("array", "tuple"), "java": ("Array", "ArrayList"), "javascript": ("array",)}

# BFCL doc type -> JSON-schema type, as BFCL converts docs for function-calling models.
JSON_SCHEMA_TYPES = {
    "string": "string", "integer": "integer", "float": "number", "number": "number", "boolean": "boolean",
    "bool": "boolean", "array": "array", "list": "array", "tuple": "array", "dict": "object", "object": "object",
    "any": "string", "byte": "integer", "short": "integer", "long": "integer", "double": "number", "char": "string",
    "ArrayList": "array", "Array": "array", "HashMap": "object", "Hashtable": "object", "Queue": "array",
    "Stack": "array", "String": "string", "Boolean": "boolean", "Bigint": "integer",
}


class Case(NamedTuple):
    """One single-turn BFCL test.

    messages: the turn's `{role, content}` messages in order (system messages included).
    functions: the function docs offered, as in the data file (BFCL type names).
    ground_truth: `({func_name: {param: [acceptable values]}}, ...)`; None for (ir)relevance categories.
    """
    id: str
    category: str
    messages: tuple[dict, ...]
    functions: tuple[dict, ...]
    ground_truth: tuple[dict, ...] | None

    @property
    def language(self) -> str:
        return LANGUAGE.get(self.category, "python")


class Verdict(NamedTuple):
    valid: bool
    error_type: str  # BFCL's error type name; "" when valid
    message: str


OK = Verdict(True, "", "")


# ---------------------------------------------------------------------------------------------------- loading


def _data_folder(data_dir) -> pathlib.Path:
    root = pathlib.Path(data_dir)
    if (root / DATA_SUBDIR).is_dir():  # the benchmark root (.../benchdata/bfcl)
        return root / DATA_SUBDIR
    if not root.is_dir():
        raise FileNotFoundError(f"BFCL data directory not found: {root}")
    return root


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    """The records of a BFCL file (JSON Lines despite the .json name), each an object with a string "id"."""
    records = []
    for line_no, rec in common.load_jsonl_lines(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            raise common.DataError(f"{path}: line {line_no}: record is not an object with a string 'id'")
        records.append(rec)
    return records


def _bad(path, rec_id, field, why):
    return ValueError(f"{path}: record {rec_id!r}: field {field!r} {why}")


def _validate_function(path, rec_id, i, fn, language):
    where = f"function[{i}]"
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad(path, rec_id, where, "must be an object with a string 'name'")
    params = fn.get("parameters")
    if not isinstance(params, dict) or not isinstance(params.get("properties"), dict):
        raise _bad(path, rec_id, f"{where}.parameters", "must be an object with 'properties'")
    if not isinstance(params.get("required"), list):
        raise _bad(path, rec_id, f"{where}.parameters.required", "must be a list")
    types = LANGUAGE_TYPES[language]
    for name, spec in params["properties"].items():
        field = f"{where}.parameters.properties.{name}.type"
        if not isinstance(spec, dict) or spec.get("type") not in types:
            raise _bad(path, rec_id, field, f"must be one of the {language} types {sorted(types)}")
        if spec["type"] in NESTED_TYPES[language]:
            item_type = spec.get("items", {}).get("type") if isinstance(spec.get("items"), dict) else None
            if item_type not in types:
                raise _bad(path, rec_id, f"{where}.parameters.properties.{name}.items.type",
                           f"must be one of the {language} types {sorted(types)}")


def _validate_question(path, rec):
    rec_id = rec["id"]
    q = rec.get("question")
    if not (isinstance(q, list) and len(q) == 1 and isinstance(q[0], list) and q[0]):
        raise _bad(path, rec_id, "question", "must be a list holding exactly one turn (a non-empty list of messages)")
    for j, m in enumerate(q[0]):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)):
            raise _bad(path, rec_id, f"question[0][{j}]", "must be {role: system|user|assistant, content: str}")
    if not isinstance(rec.get("function"), list):
        raise _bad(path, rec_id, "function", "must be a list of function docs")


def _validate_answer(path, rec):
    gt = rec.get("ground_truth")
    if not (isinstance(gt, list) and gt and all(
            isinstance(c, dict) and len(c) == 1 and isinstance(next(iter(c.values())), dict)
            and all(isinstance(v, list) for v in next(iter(c.values())).values()) for c in gt)):
        raise _bad(path, rec["id"], "ground_truth", "must be a non-empty list of {func_name: {param: [values]}}")


def load_cases(data_dir, categories: Iterable[str] | None = None) -> dict[str, list[Case]]:
    """Reads the question (and possible-answer) files of the given categories (default: all in CATEGORIES).

    data_dir: the BFCL data folder (holding BFCL_v4_<category>.json and possible_answer/), or the benchmark root
    that holds it under berkeley-function-call-leaderboard/bfcl_eval/data.
    """
    categories = list(CATEGORIES if categories is None else categories)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown BFCL categories {unknown}; supported: {list(CATEGORIES)}")
    folder = _data_folder(data_dir)
    out = {}
    for cat in categories:
        qpath = folder / f"{FILE_PREFIX}{cat}.json"
        questions = _read_jsonl(qpath)
        answers = None
        if cat not in IRRELEVANCE + RELEVANCE:
            apath = folder / "possible_answer" / f"{FILE_PREFIX}{cat}.json"
            answers = {}
            for rec in _read_jsonl(apath):
                _validate_answer(apath, rec)
                answers[rec["id"]] = rec["ground_truth"]
        cases, seen = [], set()
        for rec in questions:
            if rec["id"] in seen:
                raise _bad(qpath, rec["id"], "id", "occurs twice")
            seen.add(rec["id"])
            _validate_question(qpath, rec)
            language = LANGUAGE.get(cat, "python")
            for i, fn in enumerate(rec["function"]):
                _validate_function(qpath, rec["id"], i, fn, language)
            gt = None
            if answers is not None:
                if rec["id"] not in answers:
                    raise ValueError(f"{qpath}: record {rec['id']!r} has no ground truth in "
                                     f"{folder / 'possible_answer' / qpath.name}")
                gt = tuple(answers.pop(rec["id"]))
                names = {fn["name"] for fn in rec["function"]}
                for call in gt:
                    if next(iter(call)) not in names:
                        raise _bad(folder / "possible_answer" / qpath.name, rec["id"], "ground_truth",
                                   f"calls {next(iter(call))!r}, which is not among the offered functions")
            cases.append(Case(rec["id"], cat, tuple(rec["question"][0]), tuple(rec["function"]), gt))
        if answers:
            raise ValueError(f"{folder / 'possible_answer' / qpath.name}: ground truth for ids not in {qpath}: "
                             f"{sorted(answers)[:5]}")
        out[cat] = cases
    return out


# ---------------------------------------------------------------------------------------------------- prompts


def _schema(spec: dict) -> dict:
    """One BFCL parameter spec -> JSON schema (recursively), as BFCL's `convert_to_tool` does."""
    spec = dict(spec)
    bfcl_type = spec.get("type")
    if bfcl_type == "float":
        spec["description"] = spec.get("description", "") + " This is a float type value."
    spec["type"] = JSON_SCHEMA_TYPES.get(bfcl_type, "string")
    if isinstance(spec.get("properties"), dict):
        spec["properties"] = {k: _schema(v) for k, v in spec["properties"].items()}
    if isinstance(spec.get("items"), dict):
        spec["items"] = _schema(spec["items"])
    return spec


def _language_doc(fn: dict, language: str) -> dict:
    """BFCL's `func_doc_language_specific_pre_processing`: a language hint, and for Java / JavaScript every
    parameter typed `string` with its real type in the description."""
    fn = copy.deepcopy(fn)
    fn["description"] = fn.get("description", "") + LANGUAGE_HINT[language]
    if language == "python":
        return fn
    lang_name = "Java" if language == "java" else "JavaScript"
    for spec in fn["parameters"]["properties"].values():
        t = spec["type"]
        if t == "any":
            spec["description"] = spec.get("description", "") + (
                f" This parameter can be of any type of {lang_name} object in string representation.")
        else:
            spec["description"] = spec.get("description", "") + (
                f" This is {lang_name} {t} type parameter in string representation.")
        if t in NESTED_TYPES[language]:
            spec["description"] += (f" The list elements are of type {spec['items']['type']}; "
                                    "they are not in string representation.")
            del spec["items"]
        if language == "javascript" and t == "dict" and "properties" in spec:
            spec["description"] += (" The dictionary entries have the following schema; they are not in string "
                                    f"representation. {json.dumps(spec['properties'])}")
            del spec["properties"]
        spec["type"] = "string"
    return fn


def tool_schemas(case: Case, underscore_names: bool = False) -> list[dict]:
    """The case's function docs as JSON-schema tools (`{name, description, parameters: {type: object, ..}}`)."""
    tools = []
    for fn in case.functions:
        fn = _language_doc(fn, case.language)
        params = dict(fn["parameters"])
        params["type"] = "object"
        params["properties"] = {k: _schema(v) for k, v in params["properties"].items()}
        name = fn["name"].replace(".", "_") if underscore_names else fn["name"]
        tools.append({"name": name, "description": fn["description"], "parameters": params})
    return tools


def render_prompt(case: Case, underscore_names: bool = False) -> str:
    """The chat prefix the policy continues: our system prompt with the case's tools (JSON style), then the
    turn's messages in order (a system message of the case is appended to our system prompt), then the
    assistant header."""
    system = protocol.system_prompt(tool_schemas(case, underscore_names), style="json")
    extra = [m["content"] for m in case.messages if m["role"] == "system"]
    if extra:
        system = "\n\n".join([system] + extra)
    rest = [m for m in case.messages if m["role"] != "system"]
    if len(rest) == 1 and rest[0]["role"] == "user":
        return protocol.chat_prefix(system, rest[0]["content"])
    body = "".join(f"{protocol.IM_START}{m['role']}\n{m['content']}{protocol.IM_END}\n" for m in rest)
    return f"{protocol.IM_START}system\n{system}{protocol.IM_END}\n{body}{protocol.ASSISTANT_HEADER}"


# ---------------------------------------------------------------------------------------------------- decoding


class DecodeError(ValueError):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def decode_calls(output: str) -> list[dict]:
    """Protocol text -> BFCL's decoded form `[{func_name: {param: value}}, ...]` (empty: no call).

    The turn is read by the shared reader (`sandbox.turns.parse_turn`: calls after `<|im_end|>` or inside a closed
    think do not count). Raises DecodeError with BFCL's `ast_decoder:*` error types when the turn breaks the
    protocol: `decoder_failed` for an unclosed block or a call that is not strict JSON, `decoder_wrong_output_format`
    for JSON that is not `{"name": str, "arguments": object}`.
    """
    turn = common.parse_turn(output)
    if turn.unclosed:
        raise DecodeError("ast_decoder:decoder_failed", "unclosed <tool_call> or <tool_check> block")
    for call in turn.calls:
        if call.error:
            error_type = "decoder_wrong_output_format" if call.is_json else "decoder_failed"
            raise DecodeError(f"ast_decoder:{error_type}", f"tool call {call.error}: {call.raw!r}")
    return [{call.name: call.arguments} for call in turn.calls]


# ---------------------------------------------------------------------------------------------------- Java / JavaScript values


def _convert(conv, text: str, fallback: str):
    """conv(text), or `fallback` where that fails. BFCL leaves values it cannot convert as strings; this also covers
    the failures it does not foresee, which would stop the evaluation: a digit string past Python's int-conversion
    limit, or a suffixed literal followed by a newline (which the patterns' `$` lets through)."""
    try:
        return conv(text)
    except ValueError:
        return fallback


# The number types of BFCL's Java and JavaScript converters: type -> (the pattern a literal must match, its conversion,
# how many suffix characters (`5L`, `2.5f`, `7n`) are dropped before converting).
_INT, _DECIMAL = r"^-?\d+$", r"^-?\d+(\.\d+)?([eE][+-]?\d+)?"
JAVA_LITERALS = {"byte": (_INT, int, 0), "short": (_INT, int, 0), "integer": (_INT, int, 0),
                 "long": (r"^-?\d+[lL]$", int, 1), "float": (_DECIMAL + "[fF]$", float, 1),
                 "double": (_DECIMAL + "$", float, 0)}
JS_LITERALS = {"integer": (_INT, int, 0), "float": (r"^-?\d+(\.\d+)?$", float, 0), "Bigint": (r"^-?\d+n$", int, 1)}


def _literal(value: str, pattern: str, conv, suffix: int):
    """A typed number literal: conv(value without its `suffix` last characters) if value matches `pattern` (and
    converts), else value itself, as BFCL's converters leave what they cannot read."""
    if not re.match(pattern, value):
        return value
    return _convert(conv, value[:len(value) - suffix], value)


def _untyped(s: str):
    """What BFCL's `parse_java_value` and `parse_js_value` share: true / false, else an int, else a float, else s."""
    if s in ("true", "false"):
        return s == "true"
    for conv in (int, float):  # int fails past the int-conversion limit too; float then reads it (inf at worst)
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def _java_value(s: str):
    """BFCL `parse_java_value`: a Java literal without type information."""
    if s.startswith('"') and s.endswith('"'):
        return s[1:-1]
    for kind in ("long", "float"):  # suffixed literals, read as the typed converter reads them
        if re.match(JAVA_LITERALS[kind][0], s):
            return _literal(s, *JAVA_LITERALS[kind])
    return _untyped(s)


def _java_elements(strings: Iterable[str], nested: str | None) -> list:
    out = []
    for s in strings:
        s = s.strip()
        if nested in ("char", "String"):
            out.append(s[1:-1])  # drop the quotes
        else:
            out.append(java_convert(s, nested) if nested else _java_value(s))
    return out


def java_convert(value: str, java_type: str, nested: str | None = None):
    """BFCL `java_type_converter`: a Java source string -> Python value; unparsable values stay strings."""
    if java_type in JAVA_LITERALS:
        return _literal(value, *JAVA_LITERALS[java_type])
    if java_type == "boolean":
        return value == "true" if value in ("true", "false") else value
    if java_type in ("char", "String", "any"):
        return value
    if java_type == "ArrayList":
        m = re.search(r"new\s+ArrayList<\w*>\(Arrays\.asList\((.+?)\)\)", value)
        if m:
            return _java_elements(m.group(1).split(","), nested)
        # BFCL's pattern, `new\s+ArrayList<\w*>\(\)\s*\{\{\s*(.+?)\s*\}\}` (DOTALL), holds the same add(...) calls
        # as the text from the first non-space after `{{` to the next `}}`; found directly, as its three overlapping
        # quantifiers backtrack in cubic time over a long whitespace run. No `}}`: BFCL's fallback below, [].
        m = re.search(r"new\s+ArrayList<\w*>\(\)\s*\{\{\s*", value)
        if m and (close := value.find("}}", m.end() + 1)) >= 0:
            return _java_elements(re.findall(r"add\((.+?)\)", value[m.end():close]), nested)
        return [] if re.search(r"new\s+ArrayList<\w*>\(\)", value) else value
    if java_type == "Array":
        m = re.search(r"new\s+\w+\[\]\s*\{(.*?)\}", value)
        if not m:
            return value
        parts = [x.strip() for x in m.group(1).split(",") if x.strip()]
        return [java_convert(x, nested) if nested else _java_value(x) for x in parts]
    if java_type == "HashMap":
        # BFCL's pattern, `new\s+HashMap<.*?>\s*\(\)\s*\{\s*\{?\s*(.*?)\s*\}?\s*\}`, ends its lazy group at the
        # first `}`, so this one finds the same put(...) entries, without backtracking through every way of splitting
        # a whitespace run among its five `\s*` (which takes seconds from a few hundred characters on).
        m = re.search(r"new\s+HashMap<.*?>\s*\(\)\s*\{([^}]*)\}", value, re.DOTALL)
        if m:
            return {k: _java_value(v.strip()) for k, v in re.findall(r"put\(\"(.*?)\",\s*(.*?)\)", m.group(1))}
        return {} if re.search(r"new\s+HashMap<.*?>\s*\(\)", value) else value
    raise ValueError(f"{java_type} conversion is not implemented")  # Set, Hashtable, Queue, Stack (unused)


def _js_value(s: str):
    """BFCL `parse_js_value`."""
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return _untyped(s)


def js_convert(value: str, js_type: str, nested: str | None = None):
    """BFCL `js_type_converter`: a JavaScript source string -> Python value; unparsable values stay strings."""
    if js_type == "String":
        quoted = (value.startswith('"') and value.endswith('"')) or (value.startswith("'") and value.endswith("'"))
        return value[1:-1] if quoted else value
    if js_type in JS_LITERALS:
        return _literal(value, *JS_LITERALS[js_type])
    if js_type == "Boolean":
        return value == "true" if value in ("true", "false") else value
    if js_type == "any":
        return value
    if js_type == "array":
        return _js_array(value.strip(), nested)
    if js_type == "dict":
        return _js_dict(value.strip())
    raise ValueError(f"unsupported JavaScript type {js_type!r}")


_NEW_ARRAY_ROWS = re.compile(r"new\s+Array\(\s*\[")


def _rows_end(s: str, start: int, close: str) -> int | None:
    r"""Where `re.match` of `\[.*?\]\s*(,\s*\[.*?\]\s*)*<close>` at `start - 1` (the first row's `[`) ends, or None.

    The same match Python's backtracking `re` returns (its first in search order), found in one right-to-left pass:
    the regex takes time exponential in the number of rows when the rows are never closed (seconds at ~100 chars).
    tail[p]: end of the match of `\s*(,\s*\[.*?\]\s*)*<close>` at p. row[u]: the same for a row's lazy `.*?\]`
    started at u: the tail after the first `]` (on the same line, as `.` stops at newlines) whose tail matches.
    """
    n = len(s)
    skip, tail, row = [n] * (n + 2), [None] * (n + 2), [None] * (n + 2)
    for p in range(n - 1, start - 1, -1):
        skip[p] = skip[p + 1] if s[p].isspace() else p  # `\s` is str.isspace
        q = skip[p]
        if q > p:
            tail[p] = tail[q]
        elif s[p] == close:
            tail[p] = p + 1
        elif s[p] == ",":  # another row is tried before the close, as `*` is greedy
            w = skip[p + 1]
            tail[p] = row[w + 1] if w < n and s[w] == "[" else None
        if s[p] != "\n":
            row[p] = tail[p + 1] if s[p] == "]" and tail[p + 1] is not None else row[p + 1]
    return row[start]


def _js_2d_end(code: str) -> int | None:
    r"""End of BFCL's 2-D array match at the start of `code` (None: no match), computed by `_rows_end`. The pattern:
    `\[\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\]|\bnew\s+Array\(\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\)`."""
    if code.startswith("["):
        first = len(code) - len(code[1:].lstrip())  # the `[` of the first row, after `\[\s*`
        return _rows_end(code, first + 1, "]") if code[first:first + 1] == "[" else None
    m = _NEW_ARRAY_ROWS.match(code)
    return _rows_end(code, m.end(), ")") if m else None


def _js_array(code: str, nested: str | None):
    end = _js_2d_end(code)
    if end is not None:  # 2-D array
        rows = []
        for idx, inner in enumerate(re.findall(r"\[(.*?)\]", code[:end])):
            inner = inner.strip()
            if idx == 0 and inner.startswith("["):
                inner = inner[1:]
            rows.append([_js_value(e.strip()) for e in inner.split(",")])
        return rows
    m = re.match(r"\[(.*?)\]|\bnew\s+Array\((.*?)\)", code)
    if not m:
        return code
    body = (m.group(1) if m.group(1) is not None else m.group(2) or "").strip()
    elements = body.split(",") if body else []
    try:
        if nested:
            return [js_convert(e.strip(), nested, "String") if e.strip()[:1] in ("'", '"')
                    else js_convert(e.strip(), nested) for e in elements]
        return [_js_value(e.strip()) for e in elements]
    except ValueError:
        return code


def _js_dict(code: str):
    if code == "{}":
        return {}
    m = re.match(r"\{(.*?)\}", code)
    if not m:
        return code
    out = {}
    for key, value in re.findall(r"([^:]+):\s*(.*?)(?:,\s*(?=[^,]+:)|$)", m.group(1)):
        key, value = key.strip().strip("'\""), value.strip()
        if value.startswith("[") and value.endswith("]"):
            out[key] = _js_array(value, None)
        elif value.startswith("{") and value.endswith("}"):
            out[key] = _js_dict(value)
        else:
            out[key] = _js_value(value.strip("'\""))
    return out


# ---------------------------------------------------------------------------------------------------- AST checker


def standardize(s: str) -> str:
    """BFCL `standardize_string`: drop spaces and `,./-_*^`, lowercase, `'` -> `"`."""
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _std(v):
    return standardize(v) if type(v) == str else v


def _answer_type(answers: Sequence):
    for a in answers:
        if a != "":
            return type(a)
    return None


def _type_check(param: str, value, answers: Sequence, type_name: str, expected: type, nested: type | None) -> tuple[
        Verdict, bool]:
    """BFCL `type_checker` (one level of item types). Returns (verdict, is_variable)."""
    answer_type = _answer_type(answers)
    is_variable = answer_type is not None and answer_type != expected
    error_type = "type_error:simple"
    if type(value) == expected:
        if nested is None:
            return OK, is_variable
        for item_answers in answers:
            ok = True
            if type(item_answers) == list:
                ok = all(_type_check(param, v, item_answers, nested.__name__, nested, None)[0].valid for v in value)
            if ok:
                return OK, is_variable
        error_type = "type_error:nested"
        message = (f"Nested type checking failed for parameter {param!r}. Expected outer type {type_name} with "
                   f"inner type {nested.__name__}. Parameter value: {value!r}.")
        if answer_type is not None and type(value) == answer_type:
            return Verdict(False, error_type, message), True
    if answer_type is not None and type(value) == answer_type:
        return OK, True
    return Verdict(False, "type_error:simple", f"Incorrect type for parameter {param!r}. Expected type {type_name}, "
                                               f"got {type(value).__name__}. Parameter value: {value!r}."), False


def _string_check(param: str, value: str, answers: Sequence) -> Verdict:
    if standardize(value) not in [standardize(a) for a in answers if type(a) == str]:
        return Verdict(False, "value_error:string",
                       f"Invalid value for parameter {param!r}: {value!r}. Expected one of {answers}. Case insensitive.")
    return OK


def _list_check(param: str, value: list, answers: Sequence) -> Verdict:
    std_value = [_std(v) for v in value]
    std_answers = [[_std(v) for v in a] for a in answers if isinstance(a, (list, str))]
    if std_value not in std_answers:
        return Verdict(False, "value_error:list/tuple",
                       f"Invalid value for parameter {param!r}: {value!r}. Expected one of {answers}.")
    return OK


def _dict_check(param: str, value: dict, answers: Sequence) -> Verdict:
    verdict = Verdict(False, "dict_checker:unclear", f"No acceptable value for dict parameter {param!r}.")
    for answer in answers:
        if answer == "":
            continue
        if not isinstance(answer, dict):
            verdict = Verdict(False, "dict_checker:unclear", f"Acceptable value {answer!r} of {param!r} is no dict.")
            continue
        verdict = OK
        for key, v in value.items():
            if key not in answer:
                verdict = Verdict(False, "value_error:dict_key", f"Unexpected dict key parameter: {key!r}.")
                break
            std_answers = [_std(a) for a in answer[key]]
            if _std(v) not in std_answers:
                verdict = Verdict(False, "value_error:dict_value",
                                  f"Invalid value for parameter {key!r}: {v!r}. Expected one of {std_answers}.")
                break
        if verdict.valid:
            for key, acceptable in answer.items():
                if key not in value and "" not in acceptable:
                    verdict = Verdict(False, "value_error:dict_key", f"Missing dict key parameter: {key!r}.")
                    break
        if verdict.valid:
            return OK
    return verdict


def _list_dict_check(param: str, value: list, answers: Sequence) -> Verdict:
    verdict = Verdict(False, "list_dict_checker:unclear", f"No acceptable value for parameter {param!r}.")
    for answer in answers:
        if len(value) != len(answer):
            verdict = Verdict(False, "value_error:list_dict_count", "Wrong number of dictionaries in the list.")
            continue
        for v, a in zip(value, answer):
            # The type check lets non-dict items through when an acceptable value is "" (a BFCL quirk): they fail
            # here instead of breaking BFCL's dict checker, which reads .items() of every item.
            verdict = _dict_check(param, v, [a]) if isinstance(v, dict) else Verdict(
                False, "type_error:nested", f"Item {v!r} of parameter {param!r} is not a dict.")
            if not verdict.valid:
                break
        else:
            return OK
    return verdict


def check_function(doc: dict, call: dict, answer: dict, language: str = "python",
                   underscore_names: bool = False) -> Verdict:
    """BFCL `simple_function_checker`: one decoded call `{name: args}` against one ground-truth call."""
    answers = next(iter(answer.values()))
    props = doc["parameters"]["properties"]
    name = doc["name"].replace(".", "_") if underscore_names else doc["name"]
    if name not in call:
        return Verdict(False, "simple_function_checker:wrong_func_name",
                       f"Function name {name!r} not found in model output.")
    args = call[name]
    for p in doc["parameters"]["required"]:
        if p not in args:
            return Verdict(False, "simple_function_checker:missing_required", f"Missing required parameter: {p!r}.")
    types = LANGUAGE_TYPES[language]
    for p, value in args.items():
        if p not in props or p not in answers:
            return Verdict(False, "simple_function_checker:unexpected_param", f"Unexpected parameter: {p!r}.")
        type_name = props[p]["type"]
        expected = types[type_name]
        nested_name = props[p]["items"]["type"] if type_name in NESTED_TYPES[language] else None
        nested = types[nested_name] if nested_name else None
        if language != "python":
            if type(value) != str:
                return Verdict(False, f"type_error:{'java' if language == 'java' else 'js'}",
                               f"Incorrect type for parameter {p!r}. Expected type String, got "
                               f"{type(value).__name__}. Parameter value: {value!r}.")
            if len(value) <= MAX_SOURCE_CHARS:  # a longer one stays a string, as values BFCL cannot convert do
                convert = java_convert if language == "java" else js_convert
                value = convert(value, type_name, nested_name)
        if type_name == "tuple" and type(value) == tuple:
            value = list(value)
        if language == "python" and type_name == "float" and type(value) == int:
            value = float(value)  # Python's int -> float promotion
        verdict, is_variable = _type_check(p, value, answers[p], type_name, expected, nested)
        if not verdict.valid:
            return verdict
        if not is_variable:
            if expected == dict:
                check = _dict_check
            elif expected == list and nested == dict:
                check = _list_dict_check
            elif expected == str:
                check = _string_check
            elif expected == list:
                check = _list_check
            else:
                check = None
            if check is not None:
                verdict = check(p, value, answers[p])
                if not verdict.valid:
                    return verdict
                continue
        if value not in answers[p]:
            return Verdict(False, "value_error:others",
                           f"Invalid value for parameter {p!r}: {value!r}. Expected one of {answers[p]}.")
    for p, acceptable in answers.items():
        if p not in args and "" not in acceptable:
            return Verdict(False, "simple_function_checker:missing_optional",
                           f"Optional parameter {p!r} not provided and not marked as optional.")
    return OK


def _find_doc(functions: Sequence[dict], name: str) -> dict:
    return next(fn for fn in functions if fn["name"] == name)


def check_calls(case: Case, calls: list[dict], underscore_names: bool = False) -> Verdict:
    """BFCL `ast_checker`: decoded calls against the case's ground truth, routed by category."""
    gt, lang = case.ground_truth, case.language
    if "parallel" in case.category:
        if len(calls) != len(gt):
            return Verdict(False, "parallel_function_checker_no_order:wrong_count",
                           f"Wrong number of functions: {len(calls)} instead of {len(gt)}.")
        matched: set[int] = set()
        for i, answer in enumerate(gt):  # greedy, in ground-truth order
            doc = _find_doc(case.functions, next(iter(answer)))
            errors = []
            for j, call in enumerate(calls):
                if j in matched:
                    continue
                verdict = check_function(doc, call, answer, lang, underscore_names)
                if verdict.valid:
                    matched.add(j)
                    break
                errors.append(f"call {j}: {verdict.error_type}: {verdict.message}")
            else:
                return Verdict(False, "parallel_function_checker_no_order:cannot_find_match",
                               f"No model call matches ground-truth call {i} ({next(iter(answer))}). "
                               + " | ".join(errors))
        return OK
    if "multiple" in case.category:
        if len(calls) != len(gt):
            return Verdict(False, "multiple_function_checker:wrong_count",
                           f"Wrong number of functions: {len(calls)} instead of {len(gt)}.")
        return check_function(_find_doc(case.functions, next(iter(gt[0]))), calls[0], gt[0], lang, underscore_names)
    if len(calls) != 1:
        return Verdict(False, "simple_function_checker:wrong_count", f"Wrong number of functions: {len(calls)}.")
    return check_function(case.functions[0], calls[0], gt[0], lang, underscore_names)


def check(case: Case, output: str, underscore_names: bool = False) -> Verdict:
    """One protocol output against one case."""
    try:
        calls, error = decode_calls(output), None
    except DecodeError as e:  # upstream counts an undecodable output as "no call"
        calls, error = [], e
    if case.category in IRRELEVANCE:
        if calls:
            return Verdict(False, "irrelevance_error:decoder_success",
                           f"Produced {len(calls)} function call(s) when none should be made.")
        return OK
    if case.category in RELEVANCE:
        if not calls:
            return Verdict(False, "relevance_error:decoder_failed",
                           f"Expected a function call: {error or 'the output holds none'}.")
        return OK
    if error is not None:
        return Verdict(False, error.error_type, str(error))
    return check_calls(case, calls, underscore_names)


# ---------------------------------------------------------------------------------------------------- scoring


def _mean(xs):
    return sum(xs) / len(xs)


def score(outputs: Mapping[str, str], cases: Mapping[str, Sequence[Case]], underscore_names: bool = False
          ) -> tuple[dict[str, float], list[dict]]:
    """Scores protocol outputs (by case id) over `cases` (as `load_cases` returns them).

    Returns (metrics, failures): metrics `<category>/accuracy` for each category given, plus `non_live/overall`
    and `live/overall` when all their parts are present (fractions in [0, 1]); failures one dict per wrong case
    {id, category, error_type, message, output}.
    """
    missing = [c.id for cs in cases.values() for c in cs if c.id not in outputs]
    if missing:
        raise KeyError(f"no output for {len(missing)} BFCL case(s), e.g. {missing[:5]}")
    metrics, failures, counts = {}, [], {}
    for cat, cs in cases.items():
        if not cs:
            raise ValueError(f"BFCL category {cat!r} has no cases")
        correct = 0
        for case in cs:
            verdict = check(case, outputs[case.id], underscore_names)
            correct += verdict.valid
            if not verdict.valid:
                failures.append({"id": case.id, "category": cat, "error_type": verdict.error_type,
                                 "message": verdict.message, "output": outputs[case.id]})
        metrics[f"{cat}/accuracy"] = correct / len(cs)
        counts[cat] = len(cs)
    acc = {c: metrics[f"{c}/accuracy"] for c in counts}
    simple = [acc[c] for c in SIMPLE if c in acc]
    if simple and all(c in acc for c in ("multiple", "parallel", "parallel_multiple")):
        metrics["non_live/overall"] = _mean([_mean(simple), acc["multiple"], acc["parallel"], acc["parallel_multiple"]])
    if all(c in acc for c in LIVE_AST):
        metrics["live/overall"] = sum(acc[c] * counts[c] for c in LIVE_AST) / sum(counts[c] for c in LIVE_AST)
    return metrics, failures


# ---------------------------------------------------------------------------------------------------- ground truth


def _first(acceptable: Sequence):
    """The first acceptable value; "" (leave the parameter out) also when a record lists none at all."""
    return acceptable[0] if acceptable else ""


def _gt_value(spec: dict, value, language: str):
    """The first acceptable value of one parameter, resolved through nested dict answers, in the language's form."""
    t = spec.get("type")
    if isinstance(value, dict):  # dict params: {key: [acceptable]}
        value = {k: _first(v) for k, v in value.items() if _first(v) != ""}
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value) and (
            spec.get("items", {}).get("type") in ("dict", "HashMap")):
        value = [{k: _first(v) for k, v in d.items() if _first(v) != ""} for d in value]
    if language == "java":
        return _java_source(value, t, spec.get("items", {}).get("type"))
    if language == "javascript":
        return _js_source(value, t)
    return value


def _java_literal(v, t: str | None = None) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if t in ("char",) else json.dumps(v)
    if t == "long":
        return f"{v}L"
    if t == "float":
        return f"{float(v)}f"
    return repr(v)


def _java_source(value, t: str, item_type: str | None) -> str:
    if t in ("String", "any", "char") or isinstance(value, str):
        return value if isinstance(value, str) else _java_literal(value)
    if t in ("integer", "byte", "short", "double"):
        return repr(value)
    if t in ("long", "float", "boolean"):
        return _java_literal(value, t)
    if t == "Array":  # BFCL converts String / any elements without unquoting them, so they are written bare
        java_name = {"integer": "int", "any": "Object"}.get(item_type, item_type)
        elements = (v if isinstance(v, str) and item_type in ("String", "any", "char") else _java_literal(v, item_type)
                    for v in value)
        return f"new {java_name}[]{{" + ", ".join(elements) + "}"
    if t == "ArrayList":
        if not value:
            return "new ArrayList<>()"
        return "new ArrayList<>(Arrays.asList(" + ", ".join(_java_literal(v, item_type) for v in value) + "))"
    if t == "HashMap":
        puts = " ".join(f"put({json.dumps(k)}, {_java_literal(v)});" for k, v in value.items())
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    raise ValueError(f"cannot render a Java {t} value")


def _js_source(value, t: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if t == "Bigint":
        return f"{value}n"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_js_source(v, None) if not isinstance(v, str) else json.dumps(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v) if isinstance(v, str) else _js_source(v, None)}"
                               for k, v in value.items()) + "}"
    raise ValueError(f"cannot render a JavaScript {t} value")


def ground_truth_output(case: Case, underscore_names: bool = False) -> str:
    """The ground truth as a policy turn (without the end-of-turn token): the first acceptable value of every
    parameter (parameters whose first acceptable value is "" left out); irrelevance: a plain-text answer;
    relevance: a call to the first offered function with no arguments."""
    rename = (lambda n: n.replace(".", "_")) if underscore_names else (lambda n: n)
    if case.category in IRRELEVANCE:
        return protocol.think("None of the offered functions fits the request.") + (
            "None of the available functions can be used to answer this request.")
    if case.category in RELEVANCE:
        return protocol.think("The request needs a function call.") + protocol.tool_call(
            rename(case.functions[0]["name"]), {})
    calls = []
    for answer in case.ground_truth:
        name, params = next(iter(answer.items()))
        props = _find_doc(case.functions, name)["parameters"]["properties"]
        args = {p: _gt_value(props.get(p, {}), _first(v), case.language)
                for p, v in params.items() if _first(v) != ""}
        calls.append(protocol.tool_call(rename(name), args))
    return protocol.think("Call the matching function(s).") + "".join(calls)


def ground_truth_outputs(cases: Mapping[str, Sequence[Case]], underscore_names: bool = False) -> dict[str, str]:
    """`ground_truth_output` for every case, by id."""
    return {c.id: ground_truth_output(c, underscore_names) for cs in cases.values() for c in cs}


def run(policy_spec: str, args: common.RunArgs) -> tuple[dict, list]:
    """Suite entry: BFCL single-turn AST accuracy. `args.split`: comma-separated categories ("" = all); details =
    failing cases `{id, category, error_type, message, output}`. Scripted behaviours: oracle = the ground-truth
    calls; always_refuse = a refusal; always_execute / always_check are not defined for BFCL."""
    folder = common.resolve_data_dir(args.data_dir, "bfcl")
    categories = [c.strip() for c in args.split.split(",")] if args.split else None
    cases = load_cases(folder, categories)
    if args.limit > 0:
        cases = {cat: cs[:args.limit] for cat, cs in cases.items()}
    truth = ground_truth_outputs(cases)

    def scripted(behaviour: str, query: policies.Query) -> str:
        if behaviour == "oracle":
            return truth[query.id]
        if behaviour == "always_refuse":
            return policies.refusal_turn()
        raise ValueError(f"bfcl: scripted behaviour {behaviour!r} is not defined (use oracle or always_refuse)")

    policies.register_scripted("bfcl", scripted)
    policy = policies.make_policy(policy_spec, "bfcl", args.config, args.lora_scale)
    flat = [c for cs in cases.values() for c in cs]
    outputs = policy([policies.Query(c.id, render_prompt(c), c) for c in flat])
    return score(dict(zip((c.id for c in flat), outputs)), cases)
