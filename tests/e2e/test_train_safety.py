"""The trainer's safety: one-line errors for bad flags and config values (exit 2, no traceback, from any working
directory), the workdir lock, the stop at a non-finite loss (no diverged checkpoint), configuration mismatches
refused (never set aside as corrupt), malformed data positions set aside, SIGINT/SIGTERM leaving a final checkpoint
and no temporary directories, metrics.jsonl without repeated steps and strict JSON, quiet XLA:CPU compiles.

Every trainer run is a subprocess on configs/lm.py:tiny (a 2-layer llama; seconds per run on one CPU).
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from checkpoint_state import saved_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8


def env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "XLA_FLAGS": ""}


def cmd(workdir, *overrides, config="configs/lm.py:tiny"):
    return [sys.executable, "-m", "hyperlora_jax.train", f"--config={config}", f"--workdir={workdir}",
            f"--config.num_train_steps={STEPS}", *overrides]


def train(workdir, *overrides, cwd, config="configs/lm.py:tiny"):
    return subprocess.run(cmd(workdir, *overrides, config=config), env=env(), capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def strict_rows(workdir):
    """metrics.jsonl rows, parsed as strict JSON (a bare NaN / Infinity fails)."""
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def steps_of(workdir):
    return [r["step"] for r in strict_rows(workdir) if "loss" in r]


def checkpoint_steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """8 steps, checkpoints at 4 and 8, run from outside the repository (configs/ resolved from the package)."""
    w = str(tmp_path_factory.mktemp("base") / "w")
    r = train(w, cwd=str(tmp_path_factory.mktemp("elsewhere")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert checkpoint_steps(w) == [4, 8]
    return w


@pytest.mark.parametrize("args, line", [
    (["--config=configs/d2l.py:nosuch"],
     "unknown preset 'nosuch' for configs/d2l.py (toy, gemma2_2b, mistral_7b, qwen3_4b, their *_chunked stage 2, "
     "gemma2_2b_niah, smollm2)"),
    (["--config=configs/lm.py:tiny", "--config.learning_rat=0.1"],
     "--config.learning_rat: no such config key 'learning_rat' (did you mean learning_rate?)"),
    (["--config=configs/lm.py:tiny", "--config.model.hf_config.hiden_size=8"],
     "--config.model.hf_config.hiden_size: no such config key 'hiden_size' (did you mean hidden_size?)"),
    (["--config=configs/nosuch.py"], f"config file 'configs/nosuch.py' not found (nor in {ROOT})"),
    (["--config=configs/lm.py:tiny", "--config.batch_size=0"], "--config.batch_size must be >= 1, got 0"),
    (["--config=configs/lm.py:tiny", "--config.log_every_steps=0"], "--config.log_every_steps must be >= 1, got 0"),
    (["--config=configs/lm.py:tiny", "--config.checkpoint_every_steps=-1"],
     "--config.checkpoint_every_steps must be >= 0, got -1"),
    (["--config=configs/lm.py:tiny", "--config.compute_dtype=float8"],
     "--config.compute_dtype must be one of float32, bfloat16, got 'float8'"),
    (["--config=configs/lm.py:tiny", "--config.remat=some"],
     "--config.remat must be one of none, full, dots, got 'some'"),
    (["--config=configs/lm.py:tiny", "--config.batch_size=6", "--config.grad_accum_steps=4"],
     "--config.batch_size must be a multiple of grad_accum_steps (4), got 6"),
], ids=["preset", "key", "nested_key", "file", "batch", "log_every", "ckpt_every", "dtype", "remat", "accum"])
def test_bad_flags_are_one_line_exit_2(tmp_path, args, line):
    """Run from a directory without configs/: the relative --config still resolves (or is reported missing)."""
    r = subprocess.run([sys.executable, "-m", "hyperlora_jax.train", *args, f"--workdir={tmp_path / 'w'}"],
                       env=env(), capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert (r.returncode, r.stderr) == (2, f"error: {line}\n")
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def _start(workdir, *overrides, cwd):
    return subprocess.Popen(cmd(workdir, "--config.step_delay_s=0.5", *overrides), env=env(), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(p, workdir, step):
    path, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + 500
    while time.time() < deadline:
        if os.path.exists(path) and max(steps_of(workdir), default=0) >= step:
            return
        assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached")


def test_lock_refuses_a_second_trainer_and_sigint_saves(tmp_path):
    """A second trainer on a running workdir: exit 2, naming the holder's pid. SIGINT: the first saves a final
    checkpoint (exit 130) and leaves no orbax temporary directory; a resume then continues without repeating any
    metrics row; the lock file left behind does not block."""
    w = str(tmp_path / "w")
    first = _start(w, "--config.num_train_steps=1000", "--config.checkpoint_every_steps=0", cwd=str(tmp_path))
    _wait_for_step(first, w, 2)
    second = train(w, cwd=str(tmp_path))
    assert first.poll() is None
    assert second.returncode == 2
    assert second.stderr.startswith(f"error: workdir {w!r} is in use by another trainer (pid {first.pid} on ")
    assert second.stderr.endswith("); wait for it to end or choose another --workdir\n")
    assert second.stderr.count("\n") == 1
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 130, err[-3000:]
    assert "SIGINT: stopping after this step with a checkpoint" in err and "Traceback" not in err
    stopped = int([l for l in out.splitlines() if l.startswith("interrupted at step")][0].split()[3].rstrip(";"))
    assert stopped >= 2 and checkpoint_steps(w) == [stopped]
    leftovers = [d for d in os.listdir(os.path.join(w, "checkpoints")) if not d.isdigit()]
    assert leftovers == []
    assert os.path.exists(os.path.join(w, ".lock"))
    r = train(w, f"--config.num_train_steps={stopped + 2}", "--config.checkpoint_every_steps=0", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from step {stopped}" in r.stderr
    assert steps_of(w) == list(range(1, stopped + 3))


def test_nan_loss_stops_without_saving_it(baseline, tmp_path):
    """Resumed at step 8 with learning rate 1e30: step 9 (finite loss) sends the parameters to ~1e30, so step 10's
    loss overflows. Logging only every 4 steps, the stop comes at step 12 and still names step 10 (tracked on the
    device); checkpoints 4 and 8 stay (the old trainer saved NaN checkpoints at 12 and 16 and deleted 4 and 8)."""
    w = str(tmp_path / "w")
    shutil.copytree(baseline, w)
    r = train(w, "--config.num_train_steps=16", "--config.learning_rate=1e30", "--config.schedule=constant",
              "--config.warmup_steps=0", "--config.log_every_steps=4", cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        "error: training diverged: the loss or gradient norm is not finite at step 10; stopped at step 12 without "
        "saving it (newest checkpoint: step 8); try a lower learning_rate or more warmup_steps")
    assert "Traceback" not in r.stderr
    assert checkpoint_steps(w) == [4, 8]
    rows = strict_rows(w)  # the diverged row is there, its NaN/Inf written as null
    assert rows[-1]["step"] == 12 and rows[-1]["loss"] is None
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) + [12]


def test_optimizer_change_is_a_mismatch_not_corruption(baseline, tmp_path):
    """max_grad_norm=0 drops the clipping stage, so the optimizer state's tree differs: refused, nothing renamed
    (the old trainer set both checkpoints aside as corrupt and restarted at step 0)."""
    w = str(tmp_path / "w")
    shutil.copytree(baseline, w)
    r = train(w, "--config.max_grad_norm=0", cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (
        f"error: the workdir {w!r} holds a checkpoint (step 8) whose train state does not fit this run (the "
        "optimizer state differs: was an optimizer option changed, e.g. max_grad_norm switched on or off?): "
        "opt_state/1/0/count, opt_state/1/0/mu/embed_tokens/embedding, opt_state/1/0/mu/layers/input_layernorm/scale "
        "(+23 more) only in the checkpoint; opt_state/0/0/count, opt_state/0/0/mu/embed_tokens/embedding, "
        "opt_state/0/0/mu/layers/input_layernorm/scale (+23 more) only in this run")
    assert checkpoint_steps(w) == [4, 8] and not glob.glob(os.path.join(w, "corrupt-*"))
    r = train(w, "--config.batch_size=16", cwd=ROOT)  # the data position of another batch size: also refused
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == (
        f"error: the workdir {w!r} holds a checkpoint (step 8) of a different data configuration: data state was "
        "saved with global_batch=8, this run has 16")
    assert checkpoint_steps(w) == [4, 8] and not glob.glob(os.path.join(w, "corrupt-*"))


def test_malformed_data_state_is_set_aside(baseline, tmp_path):
    """Step 8's data position edited into nonsense: set aside like a corrupt checkpoint (the old trainer crashed with
    a KeyError on every start); training resumes from step 4 and ends bitwise where the baseline did."""
    w = str(tmp_path / "w")
    shutil.copytree(baseline, w)
    with open(os.path.join(w, "checkpoints", "8", "data", "metadata"), "w") as f:
        json.dump({"nxt": 8}, f)
    r = train(w, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint at step 8 is unreadable (malformed data state (no 'next_batch'))" in r.stderr
    assert "resumed from step 4" in r.stderr
    assert len(glob.glob(os.path.join(w, "corrupt-checkpoint-8-*"))) == 1
    assert steps_of(w) == list(range(1, STEPS + 1))  # steps 5..8 logged once, not twice
    a, b = saved_state(baseline, 8), saved_state(w, 8)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_eta_leaves_out_the_first_interval():
    from hyperlora_jax.train import Eta
    eta = Eta(total_steps=100)
    assert eta.seconds(now=60.0, step=10, interval_step_time=6.0) == 540.0   # first log: only its interval is known
    assert eta.seconds(now=70.0, step=20, interval_step_time=1.0) == 80.0    # 1 s/step since the first log
    assert eta.seconds(now=90.0, step=30, interval_step_time=2.0) == 105.0   # 1.5 s/step average, not the last 2


def test_cpu_step_compiles_quietly_and_logging_comes_back():
    """A step with 21 MB temporaries compiled with the trainer's XLA:CPU options through QuietCompiles: no heap
    warnings; the same program at another size jitted plainly afterwards shows XLA's warnings (the cause, and the
    log threshold restored)."""
    code = ("import sys, jax, jax.numpy as jnp\n"
            "from hyperlora_jax.train import QuietCompiles, step_compiler_options\n"
            "opts = step_compiler_options()\n"
            "assert opts == {'xla_multiheap_size_constraint_per_heap': 16 << 20}, opts\n"
            "fn = lambda state, frozen, b, k: (jnp.tanh(b @ b.T) @ b + jnp.sin(b @ b.T).sum()).sum() + state\n"
            "step = QuietCompiles(jax.jit(fn, compiler_options=opts))\n"
            "print(float(step(1.0, None, jnp.ones((2300, 2300)), 0)), flush=True)\n"
            "print(float(step(1.0, None, jnp.ones((2300, 2300)), 0)), flush=True)\n"
            "print('MARK', file=sys.stderr, flush=True)\n"
            "print(float(jax.jit(fn, compiler_options=opts)(1.0, None, jnp.ones((2400, 2400)), 0)), flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    quiet, loud = r.stderr.split("MARK\n")
    assert "per-heap size limit" not in quiet, quiet[-2000:]
    assert "Alloc buffer size 23040000 larger than the per-heap size limit 16777216" in loud, loud[-2000:]
