"""Tokenizers: one small interface, three implementations.

Everything downstream (the sandbox compiler, the jitted rollout, the benchmark harnesses) sees a `Tokenizer`:

    encode(text) -> list[int]          decode(ids) -> str
    eos_id  (`<|im_end|>`, the end of a turn)   pad_id   vocab_size
    symbol_ids  {protocol tag -> its token ids}
    byte_table() -> (table uint8[vocab, max_token_bytes], lengths int32[vocab])

`byte_table` gives the exact bytes each id contributes to the text, so the jitted sandbox can match protocol tags
and parse tool calls on bytes without ever calling back into Python: the bytes of `ids` are
`concat(table[i, :lengths[i]] for i in ids)`, and they equal `decode(ids).encode()` whenever they are valid UTF-8.

- `ByteTokenizer`: ids 0..255 are bytes, then the protocol symbols, then pad. For tests and tiny models.
- `builtin_tokenizer`: a SentencePiece model (byte fallback, lossless) trained on the sandbox's scenario corpus,
  cached on disk by a hash of its settings and corpus.
- `hf_tokenizer`: a Hugging Face tokenizer directory (e.g. Qwen2.5's), byte-level BPE.
"""
from __future__ import annotations

import re
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from sandbox import protocol

SYMBOLS = protocol.SPECIAL_SYMBOLS  # the tags every tokenizer must render exactly; <|im_start|>, <|im_end|> first


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int  # rows of the embedding / logits; ids in [0, vocab_size)
    eos_id: int  # `<|im_end|>`: ends a policy turn
    pad_id: int  # fills unused positions; contributes no bytes
    symbol_ids: Mapping[str, tuple[int, ...]]  # each of SYMBOLS -> its encoding

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def byte_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(table uint8[vocab_size, max_token_bytes], lengths int32[vocab_size]); row i holds id i's bytes."""
        ...


def make_byte_table(pieces: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Pack per-id byte strings into a zero-padded table.

    pieces: [vocab] bytes per id. Returns (table uint8[vocab, max(1, max len)], lengths int32[vocab]).
    """
    lengths = np.array([len(p) for p in pieces], np.int32)
    table = np.zeros((len(pieces), max(1, int(lengths.max(initial=0)))), np.uint8)
    for i, p in enumerate(pieces):
        table[i, : len(p)] = np.frombuffer(p, np.uint8)
    return table, lengths


def ids_to_bytes(table: np.ndarray, lengths: np.ndarray, ids: Sequence[int]) -> bytes:
    """Host-side reference for what the sandbox does on device: the bytes `ids` spell under a byte table."""
    return b"".join(table[i, : lengths[i]].tobytes() for i in ids)


def _check_ids(ids: Sequence[int], vocab_size: int, who: str) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"{who}.decode: ids {bad[:5]} outside [0, {vocab_size})")
    return ids


_SYMBOL_RE = re.compile("|".join(re.escape(s) for s in sorted(SYMBOLS, key=len, reverse=True)))


class ByteTokenizer:
    """ids 0..255 are the UTF-8 bytes; then one id per protocol symbol (in SYMBOLS order); then pad.

    Symbols in the text are matched longest first, so `<tool_check_result>` is one id, not `<tool_check>` + bytes.
    """

    def __init__(self):
        self.symbol_base = 256
        self.pad_id = self.symbol_base + len(SYMBOLS)
        self.vocab_size = self.pad_id + 1
        self._symbol_id = {s: self.symbol_base + k for k, s in enumerate(SYMBOLS)}
        self.symbol_ids = {s: (i,) for s, i in self._symbol_id.items()}
        self.eos_id = self._symbol_id[protocol.IM_END]
        pieces = [bytes([b]) for b in range(256)] + [s.encode() for s in SYMBOLS] + [b""]
        self._table, self._lengths = make_byte_table(pieces)

    def encode(self, text: str) -> list[int]:
        ids, pos = [], 0
        for m in _SYMBOL_RE.finditer(text):
            ids.extend(text[pos : m.start()].encode())
            ids.append(self._symbol_id[m.group()])
            pos = m.end()
        ids.extend(text[pos:].encode())
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = _check_ids(ids, self.vocab_size, "ByteTokenizer")
        return ids_to_bytes(self._table, self._lengths, ids).decode("utf-8", errors="replace")

    def byte_table(self) -> tuple[np.ndarray, np.ndarray]:
        return self._table.copy(), self._lengths.copy()
