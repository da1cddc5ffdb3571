"""What the `launch/` entry points share: the project's own errors as one line on stderr and exit status 2.

    from agent_rl import cli
    if __name__ == "__main__":
        cli.run(main)          # instead of absl's app.run(main)

A config key that does not exist (`--config.grpo.stepz=3`), a flag value that does not parse, or any of the
project's error types (`ERRORS`) print `error: <what, naming the key, file, record or step>` and exit 2. Set
AGENT_RL_VERBOSE=1 (or pass --verbose) for the full traceback.
"""
from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Callable, Sequence

from absl import app, flags

EXIT_ERROR = 2


def _errors() -> tuple[type[BaseException], ...]:
    """The project's error types: each message already names the key, file, record or step at fault."""
    from agent_rl import checkpoint, distributed, gguf_import, run_config, steps
    from agent_rl.evals import common, compare, policies

    return (run_config.ConfigError, checkpoint.CheckpointError, steps.NonFiniteLoss, gguf_import.GGUFImportError,
            common.DataError, compare.ResultsError, policies.PolicyError, distributed.DistributedError)


def verbose(argv: Sequence[str] = ()) -> bool:
    return os.environ.get("AGENT_RL_VERBOSE", "") not in ("", "0") or "--verbose" in argv


def fail(message: str) -> None:
    """Print each line of `message` as `error: ...` on stderr and exit 2."""
    for line in str(message).strip().splitlines() or ["(no message)"]:
        print(f"error: {line}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


def _unknown_key(e: Exception, argv: Sequence[str]) -> str:
    """One line for ml_collections' AttributeError on `--config.a.b=...` with a key that does not exist."""
    text = str(e).strip("'\"").replace("\\n", "\n").replace("\\'", "'")
    key = text.splitlines()[0].strip("'\"") if text else "?"
    hint = re.search(r'Did you mean "([^"]+)"', text)
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.") and
                 a.split("=")[0].rsplit(".", 1)[-1] == key), f"--config...{key}")
    return f"{flag}: no config key {key!r}" + (f' (did you mean "{hint.group(1)}"?)' if hint else "")


def define_config_file(name: str, default: str | None, help_string: str):
    """config_flags.DEFINE_config_file, whose default config is loaded (and --config.* overrides applied) at once,
    at import: an override naming a key the default config lacks is then one line too."""
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file(name, default, help_string)
    except AttributeError as e:
        if verbose(sys.argv):
            raise
        fail(_unknown_key(e, sys.argv[1:]))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with its errors (and ml_collections' unknown-key errors) as one line."""
    argv = [a for a in argv if a != "--verbose"]
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        if verbose(sys.argv):
            raise
        text = str(e)
        if "Traceback (most recent call last)" in text:  # a config file that raised: its own message is the last line
            flag, last = text.split(": Error whilst parsing", 1)[0], text.strip().splitlines()[-1]
            fail(f"flags: {flag}: {last}")
        fail(f"flags: {e}")
    except AttributeError as e:  # config_flags: an override names a key the config does not have
        if verbose(sys.argv):
            raise
        fail(_unknown_key(e, argv))


def run(main: Callable[[list[str]], None]) -> None:
    """absl's app.run(main), with the project's errors turned into one line and exit status 2."""
    def guarded(argv):
        try:
            main(argv)
        except _errors() as e:
            if verbose(sys.argv):
                raise
            fail(str(e))

    app.run(guarded, flags_parser=parse_flags)


def unwritable(path: str | None) -> str | None:
    """Why `path` cannot be written as an output file (None if it can, or if no path is given): checked before the
    work that produces it, so a long run does not end on a bad path."""
    if not path:
        return None
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        return "is a directory; expected a file path"
    parent = p.parent if str(p.parent) else pathlib.Path(".")
    if not parent.is_dir():
        return f"its directory {parent} does not exist"
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return "is not writable"
    return None
