"""Metrics JSONL content, TensorBoard events, resume truncation and the progress bar."""
import io
import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from agent_rl import metrics_log


def _tb_events(workdir):
    """Every event in the run's event files, read from the TFRecord framing."""
    events = []
    for path in sorted((workdir / metrics_log.TENSORBOARD_DIR).glob("events.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def _tb_scalars(workdir):
    """(tag, step, value) of every scalar in the run's event files."""
    return [(v.tag, e.step, v.simple_value) for e in _tb_events(workdir) for v in e.summary.value]


def test_jsonl_and_tensorboard_content(tmp_path):
    with metrics_log.MetricsLogger(tmp_path) as log:
        record = log.log(1, {"loss": jnp.float32(0.5), "eval/benign_success": np.array([0.75]),
                               "tokens": jnp.int32(12)})
        log.log(2, {"loss": 0.25})
    assert record == {"step": 1, "loss": 0.5, "eval/benign_success": 0.75, "tokens": 12}
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l) for l in lines] == [
        {"step": 1, "loss": 0.5, "eval/benign_success": 0.75, "tokens": 12},
        {"step": 2, "loss": 0.25},
    ]
    assert isinstance(json.loads(lines[0])["tokens"], int)
    assert sorted(_tb_scalars(tmp_path)) == [("eval/benign_success", 1, 0.75), ("loss", 1, 0.5),
                                             ("loss", 2, 0.25), ("tokens", 1, 12.0)]


def test_resume_truncates_later_steps(tmp_path):
    with metrics_log.MetricsLogger(tmp_path) as log:
        for step in range(1, 6):
            log.log(step, {"loss": float(step)})
    # the run is restored from the checkpoint at step 3: steps 4 and 5 are redone
    with metrics_log.MetricsLogger(tmp_path) as log:
        log.resume(3)
        with pytest.raises(ValueError, match="step 3 is not after the last logged step 3"):
            log.log(3, {"loss": 0.0})
        log.log(4, {"loss": 40.0})
    records = metrics_log.read_jsonl(tmp_path / "metrics.jsonl")
    assert records == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0},
                       {"step": 4, "loss": 40.0}]
    # TensorBoard is told to discard the old run's events from step 4 on
    starts = [e.step for e in _tb_events(tmp_path) if e.session_log.status == event_pb2.SessionLog.START]
    assert starts == [4]


def test_resume_drops_torn_last_line_and_rejects_bad_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    with metrics_log.MetricsLogger(tmp_path, resume_step=10) as log:
        log.log(2, {"loss": 2.0})
    assert metrics_log.read_jsonl(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        metrics_log.MetricsLogger(tmp_path, resume_step=1)


def test_new_run_refuses_existing_metrics(tmp_path):
    with metrics_log.MetricsLogger(tmp_path) as log:
        log.log(0, {"loss": 1.0})
    log = metrics_log.MetricsLogger(tmp_path)
    with pytest.raises(FileExistsError, match="resume"):
        log.log(0, {"loss": 2.0})
    log.resume(0)                         # resuming from step 0 keeps step 0 and continues
    log.log(1, {"loss": 2.0})
    log.close()
    log = metrics_log.MetricsLogger(tmp_path, resume_step=1)
    log.log(2, {"loss": 3.0})
    with pytest.raises(RuntimeError, match="before the first log"):
        log.resume(1)
    log.close()
    assert [r["step"] for r in metrics_log.read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]


def test_bad_metrics(tmp_path):
    with metrics_log.MetricsLogger(tmp_path) as log:
        with pytest.raises(ValueError, match="'loss' at step 1 is not a scalar"):
            log.log(1, {"loss": jnp.zeros(3)})
        with pytest.raises(ValueError, match="reserved"):
            log.log(1, {"step": 1})
        with pytest.raises(ValueError, match="non-numeric"):
            log.log(1, {"name": "x"})
    assert not (tmp_path / "metrics.jsonl").exists()   # nothing written by the failed calls


def test_progress_bar_shows_keys():
    bar = metrics_log.progress(total=10, initial=4)
    bar.fp = io.StringIO()
    metrics_log.advance(bar, {"loss": jnp.float32(0.123456), "reward/mean": 0.5, "other": 1.0},
                        keys=("loss", "reward/mean", "missing"))
    assert bar.n == 5
    assert bar.postfix == "loss=0.1235, mean=0.5"
    bar.close()
