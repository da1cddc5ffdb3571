"""Tokenizers: lossless round trips and the byte-table invariant, for the byte, built-in and Qwen tokenizers."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from agent_rl import tokenizer as tok_lib
from sandbox import protocol

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
