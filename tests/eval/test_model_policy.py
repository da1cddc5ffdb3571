"""checkpoint:PATH loads a run's params read-only: the newest step that reads, or the step asked for."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agent_rl import checkpoint as ckpt
from agent_rl import lora
from agent_rl import setup as setup_lib
from agent_rl.evals import model_policy, policies
from configs import tiny


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_load_checkpoint_skips_an_unreadable_newer_step_and_writes_nothing(tmp_path, capsys):
    """Steps 1 and 2 hold params plus optimizer state (only params are read); step 2 is corrupt: the newest load
    warns in one line and returns step 1's params, @2 is one error, and the run directory is left as it was."""
    c = tiny.get_config()
    c.workdir = str(tmp_path / "run")
    c.tokenizer.kind = "byte"  # no tokenizer to train
    c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
    tok = setup_lib.build_tokenizer(c)
    model_cfg = setup_lib.build_model_config(c, tok.vocab_size)
    _, params, _ = lora.split(setup_lib.build_model(c, model_cfg))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(c.to_json())
    manager = ckpt.make_manager(run / "checkpoints", keep=3, every=1, async_save=False)
    for step in (1, 2):
        scaled = jax.tree.map(lambda p: p * step, params)
        ckpt.save(manager, step, {"params": scaled, "opt": {"mu": jnp.zeros(3 + step)}}, {"step": step})
    ckpt.wait(manager)
    manager.close()
    (run / "checkpoints" / "2" / "state" / "_METADATA").write_text("garbage")
    before = _files(run)

    loaded = model_policy.load_checkpoint(str(run))
    err = capsys.readouterr().err
    assert err.startswith(f"warning: checkpoint {run / 'checkpoints'} step 2 is unreadable (")
    assert err.rstrip().endswith("; trying the previous step") and len(err.strip().splitlines()) == 1
    for got, want in zip(jax.tree.leaves(nnx.state(nnx.merge(loaded.graphdef, loaded.params), nnx.Param)),
                         jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert loaded.run_config.model.d_model == 32

    assert model_policy.load_checkpoint(f"{run}@1").params is not None
    with pytest.raises(policies.PolicyError, match=r"step 2: cannot restore params for the model its config"):
        model_policy.load_checkpoint(f"{run}@2")
    with pytest.raises(policies.PolicyError, match=r"no step 3 in .* \(have \[1, 2\]\)"):
        model_policy.load_checkpoint(f"{run}@3")
    assert "warning" not in capsys.readouterr().err  # a requested step is tried alone
    assert _files(run) == before  # read-only: nothing moved, written or pruned
