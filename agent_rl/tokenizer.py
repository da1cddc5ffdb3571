"""Tokenizers: one small interface, three implementations.

Everything downstream (the sandbox compiler, the jitted rollout, the benchmark harnesses) sees a `Tokenizer`:

    encode(text) -> list[int]          decode(ids) -> str
    eos_id  (`<|im_end|>`, the end of a turn)   pad_id   vocab_size
    symbol_ids  {protocol tag -> its token ids}
    byte_table() -> (table uint8[vocab, max_token_bytes], lengths int32[vocab])

`byte_table` gives the exact bytes each id contributes to the text, so the jitted sandbox can match protocol tags
and parse tool calls on bytes without ever calling back into Python: the bytes of `ids` are
`concat(table[i, :lengths[i]] for i in ids)`, and they equal `decode(ids).encode()` whenever they are valid UTF-8.
Protocol symbols spell their literal text; byte pieces their one byte; pad and unused ids nothing (except where a
tokenizer's own pad is a text token: Qwen's pad is `<|endoftext|>`, whose row holds that text).

- `ByteTokenizer`: ids 0..255 are bytes, then the protocol symbols, then pad. For tests and tiny models.
- `builtin_tokenizer`: a SentencePiece model (byte fallback, lossless) trained on the sandbox's scenario corpus,
  cached on disk by a hash of its settings and corpus.
- `hf_tokenizer`: a Hugging Face tokenizer directory (e.g. Qwen2.5's), byte-level BPE.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
from typing import Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from sandbox import protocol

SYMBOLS = protocol.SPECIAL_SYMBOLS  # the tags every tokenizer must render exactly; <|im_start|>, <|im_end|> first


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int  # rows of the embedding / logits; ids in [0, vocab_size)
    eos_id: int  # `<|im_end|>`: ends a policy turn
    pad_id: int  # fills unused positions; masked out wherever it appears
    symbol_ids: Mapping[str, tuple[int, ...]]  # each of SYMBOLS -> its encoding

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def byte_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(table uint8[vocab_size, max_token_bytes], lengths int32[vocab_size]), read-only; row i holds id i's
        bytes."""
        ...


def make_byte_table(pieces: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Pack per-id byte strings into a zero-padded table.

    pieces: [vocab] bytes per id. Returns (table uint8[vocab, max(1, max len)], lengths int32[vocab]).
    """
    lengths = np.fromiter(map(len, pieces), np.int32, count=len(pieces))
    flat = np.frombuffer(b"".join(pieces), np.uint8)
    table = np.zeros((len(pieces), max(1, int(lengths.max(initial=0)))), np.uint8)
    starts = np.cumsum(lengths) - lengths
    table[np.repeat(np.arange(len(pieces)), lengths), np.arange(flat.size) - np.repeat(starts, lengths)] = flat
    table.flags.writeable = lengths.flags.writeable = False  # shared by every byte_table() call
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
        return self._table, self._lengths


# --- built-in SentencePiece model ---------------------------------------------------------------------------------

_SPACE = "\u2581"  # sentencepiece's whitespace symbol; a literal one in the text is encoded as its three bytes

def sentencepiece_settings(vocab_size: int, model_type: str = "bpe", max_sentence_length: int = 1 << 16) -> dict:
    """Trainer settings of the built-in model: byte fallback, no normalization, protocol symbols as single pieces.

    No dummy prefix, no whitespace folding and the identity normalizer make encoding exact: the bytes of
    `encode(text)` are the bytes of `text`. One thread, no shuffling and no sampling make training deterministic.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"sentencepiece model_type must be 'bpe' or 'unigram', got {model_type!r}")
    return dict(
        vocab_size=vocab_size, model_type=model_type, byte_fallback=True,
        user_defined_symbols=list(SYMBOLS), normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=True,
        # Keep snake_case tool names and argument keys whole: '_' must not split pieces, and names run long.
        split_by_unicode_script=False, max_sentencepiece_length=24,
        character_coverage=0.9999, max_sentence_length=max_sentence_length,
        unk_id=0, pad_id=1, bos_id=-1, eos_id=-1, unk_surface="",
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
    )


class SentencePieceTokenizer:
    """A SentencePiece model trained with `sentencepiece_settings` (byte fallback, no dummy prefix).

    model_proto: the serialized model (`.model` file bytes); keep it beside checkpoints to reload the tokenizer.
    """

    def __init__(self, model_proto: bytes, name: str = "<bytes>"):
        self.model_proto = model_proto
        self.sp = sp = spm.SentencePieceProcessor(model_proto=model_proto)
        spec = _model_spec(model_proto)
        problems = []
        if not spec.trainer_spec.byte_fallback:
            problems.append("byte_fallback is off (encoding would be lossy)")
        if spec.normalizer_spec.add_dummy_prefix or spec.normalizer_spec.remove_extra_whitespaces:
            problems.append("add_dummy_prefix/remove_extra_whitespaces is on (spaces would not round-trip)")
        if sp.pad_id() < 0:
            problems.append("it has no pad piece")
        user_defined = {p.piece for p in spec.pieces if p.type == p.USER_DEFINED}
        missing = [s for s in SYMBOLS if s not in user_defined]
        if missing:
            problems.append(f"protocol symbols {missing} are not user-defined pieces")
        if spec.trainer_spec.pretokenization_delimiter:
            problems.append("it was trained on a delimited corpus (pretokenization_delimiter): encode would not "
                            "split text as its training did")
        if problems:
            raise ValueError(f"SentencePiece model {name}: " + "; ".join(problems))
        self.vocab_size = sp.get_piece_size()
        self.pad_id = sp.pad_id()
        self.symbol_ids = {s: (sp.piece_to_id(s),) for s in SYMBOLS}
        self.eos_id = self.symbol_ids[protocol.IM_END][0]
        self._space_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE.encode()]
        pieces = []
        for i in range(self.vocab_size):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                pieces.append(bytes([int(piece[3:5], 16)]))  # "<0xE2>"
            elif sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                pieces.append(b"")  # pad; unk (unk_surface is empty, and byte fallback never emits it)
            else:
                pieces.append(piece.replace(_SPACE, " ").encode())
        self._table, self._lengths = make_byte_table(pieces)

    @classmethod
    def from_file(cls, path) -> "SentencePieceTokenizer":
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        return cls(path.read_bytes(), name=str(path))

    def encode(self, text: str) -> list[int]:
        # sentencepiece reads a literal U+2581 as a space; spell it with its byte pieces instead.
        ids = []
        for k, part in enumerate(text.split(_SPACE)):
            if k:
                ids.extend(self._space_ids)
            if part:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(_check_ids(ids, self.vocab_size, "SentencePieceTokenizer"))

    def byte_table(self) -> tuple[np.ndarray, np.ndarray]:
        return self._table, self._lengths


def _model_spec(model_proto: bytes):
    spec = sentencepiece_model_pb2.ModelProto()
    spec.ParseFromString(model_proto)
    return spec


def default_cache_dir():
    """$AGENT_RL_CACHE, else ~/.cache/agent_rl."""
    return pathlib.Path(os.environ.get("AGENT_RL_CACHE", pathlib.Path.home() / ".cache" / "agent_rl"))


def train_sentencepiece(texts: Iterable[str], cache_dir, vocab_size: int = 4096, model_type: str = "bpe",
                        seed: int = 0) -> SentencePieceTokenizer:
    """Train (or load from cache) a SentencePiece model on `texts`.

    The model is cached as `cache_dir/sentencepiece-<sha256 of settings and corpus>.model`; the same settings and
    corpus give byte-identical model files.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("train_sentencepiece: empty corpus")
    settings = sentencepiece_settings(vocab_size, model_type, max(len(t.encode()) for t in texts) + 1)
    key = {**settings, "seed": seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    for t in texts:
        digest.update(t.encode())
        digest.update(b"\0")
    path = pathlib.Path(cache_dir) / f"sentencepiece-{digest.hexdigest()[:20]}.model"
    if path.is_file():
        return SentencePieceTokenizer.from_file(path)

    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, **settings)
    except RuntimeError as e:
        raise ValueError(f"training SentencePiece (vocab_size={vocab_size}, {len(texts)} texts) failed: {e}") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # atomic: concurrent trainers write identical bytes
    return SentencePieceTokenizer(buf.getvalue(), name=str(path))


def builtin_tokenizer(cache_dir=None, vocab_size: int = 4096, seed: int = 0, num_scenarios: int = 20_000,
                      model_type: str = "bpe") -> SentencePieceTokenizer:
    """The built-in tokenizer: SentencePiece trained on `sandbox.generate.corpus(seed, num_scenarios)` (train split
    only), cached under `cache_dir` (default `default_cache_dir()`). Trains in seconds.

    Pieces may span punctuation: `{"name":` or ` "nursery` is one piece, so a value can be spelled differently in a
    prompt and in a call (docs/experiments.md has the tried alternative of pieces kept inside words)."""
    from sandbox import generate

    return train_sentencepiece(generate.corpus(seed, num_scenarios), cache_dir or default_cache_dir(), vocab_size,
                               model_type, seed)


# --- Hugging Face tokenizers (byte-level BPE) ---------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character map that byte-level BPE vocabularies are written in: printable Latin-1 bytes stand
    for themselves, the other 68 map to chr(256), chr(257), ... in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)}
    out, n = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


class HFTokenizer:
    """A byte-level BPE tokenizer from a local Hugging Face directory (Qwen2.5, Llama 3, GPT-2 style).

    vocab_size may exceed the tokenizer's own size (Qwen2.5 checkpoints pad the embedding to 151936 rows): ids
    past it are unused, contribute no bytes and are dropped by `decode`. Encoding is as the tokenizer defines it;
    Qwen's normalizes to NFC, so `decode(encode(text)) == text` holds for NFC text.
    """

    def __init__(self, hf, name: str, vocab_size: int | None = None):
        self.hf = hf
        self.num_tokens = n = len(hf)
        self.vocab_size = vocab_size or n
        if self.vocab_size < n:
            raise ValueError(f"tokenizer {name}: vocab_size={vocab_size} is smaller than its {n} tokens")
        eos = hf.convert_tokens_to_ids(protocol.IM_END)
        if not isinstance(eos, int) or eos < 0 or hf.convert_ids_to_tokens(eos) != protocol.IM_END:
            raise ValueError(f"tokenizer {name}: {protocol.IM_END!r} is not a single token (not a ChatML tokenizer)")
        if hf.pad_token_id is None:
            raise ValueError(f"tokenizer {name}: no pad_token in its tokenizer_config.json")
        self.eos_id, self.pad_id = eos, hf.pad_token_id
        self.symbol_ids = {s: tuple(self.encode(s)) for s in SYMBOLS}

        added = {i: t.content for i, t in hf.added_tokens_decoder.items()}
        tokens = hf.convert_ids_to_tokens(list(range(n)))
        plain = [t for i, t in enumerate(tokens) if i not in added]
        if None in plain:
            raise ValueError(f"tokenizer {name}: ids {[i for i, t in enumerate(tokens) if t is None][:5]} have no token")
        byte_of = {ord(c): chr(b) for b, c in bytes_to_unicode().items()}
        stray = set("".join(plain)) - {chr(c) for c in byte_of}
        if stray:
            raise ValueError(f"tokenizer {name}: vocabulary is not byte-level BPE (characters {sorted(stray)[:5]} "
                             f"are outside the GPT-2 byte alphabet); cannot build its byte table")
        pieces = [added[i].encode() if i in added else t.translate(byte_of).encode("latin-1")
                  for i, t in enumerate(tokens)]
        self._table, self._lengths = make_byte_table(pieces + [b""] * (self.vocab_size - n))
        if self._lengths[self.pad_id] and self.pad_id not in added:
            raise ValueError(f"tokenizer {name}: pad token {self.pad_id} is an ordinary text token")

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [i for i in _check_ids(ids, self.vocab_size, "HFTokenizer") if i < self.num_tokens]
        return self.hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def byte_table(self) -> tuple[np.ndarray, np.ndarray]:
        return self._table, self._lengths


def hf_tokenizer(local_dir, vocab_size: int | None = None) -> HFTokenizer:
    """Load a tokenizer directory (tokenizer.json, tokenizer_config.json) from disk; never touches the network."""
    local_dir = pathlib.Path(local_dir)
    if not (local_dir / "tokenizer.json").is_file() and not (local_dir / "vocab.json").is_file():
        raise FileNotFoundError(f"no tokenizer in {local_dir} (expected tokenizer.json; "
                                f"`python launch/make_qwen_tokenizer.py --out {local_dir}` writes Qwen2.5's)")
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(str(local_dir), local_files_only=True), str(local_dir),
                       vocab_size)
