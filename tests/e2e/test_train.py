"""The trainer on CPU: same losses on 1 device, 8 emulated devices (data×fsdp, data×tensor) and 2 processes × 2
devices; exact resume after kill -9; SIGTERM saves and exits 0; bad input is refused clearly.

Every run is a subprocess (the device count is fixed when JAX starts). Loss tolerance across meshes: 1e-5.
"""
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
CONFIG = os.path.join(ROOT, "configs", "lm.py") + ":tiny"
STEPS = 8


def train_cmd(workdir, *overrides):
    return [sys.executable, "-m", "hyperlora_jax.train", f"--config={CONFIG}", f"--workdir={workdir}",
            f"--config.num_train_steps={STEPS}", *overrides]


def env_for(devices=1):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_train(workdir, *overrides, devices=1, check=True):
    r = subprocess.run(train_cmd(workdir, *overrides), env=env_for(devices), capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


def losses(workdir):
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def final_state(workdir, step=STEPS):
    return saved_state(workdir, step)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    w = str(tmp_path_factory.mktemp("base") / "w")
    run_train(w)
    return w


def test_baseline_learns_and_writes_everything(baseline):
    ls = losses(baseline)
    assert sorted(ls) == list(range(1, STEPS + 1)) and ls[STEPS] < ls[1]
    assert sorted(os.listdir(os.path.join(baseline, "checkpoints"))) == ["4", "8"]
    from hyperlora_jax.io.tb_events import read_records
    events = os.listdir(os.path.join(baseline, "tensorboard"))
    recs = list(read_records(os.path.join(baseline, "tensorboard", events[0])))
    assert len(recs) == STEPS + 1 and b"train/loss" in recs[1]


@pytest.mark.parametrize("mesh", [("2", "4", "1"), ("2", "1", "4")], ids=["data_x_fsdp", "data_x_tensor"])
def test_same_losses_on_8_devices(baseline, tmp_path, mesh):
    w = str(tmp_path / "w")
    run_train(w, f"--config.mesh.data={mesh[0]}", f"--config.mesh.fsdp={mesh[1]}", f"--config.mesh.tensor={mesh[2]}",
              devices=8)
    a, b = losses(baseline), losses(w)
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) <= 1e-5


def test_same_losses_on_2_processes_x_2_devices(baseline, tmp_path):
    w = str(tmp_path / "w")
    cmd = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num-processes", "2",
           "--devices-per-process", "2", "--timeout", "500", "--", *train_cmd(w, "--config.mesh.data=2",
                                                                              "--config.mesh.fsdp=2")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = losses(baseline), losses(w)
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) <= 1e-5


def _start_and_signal(workdir, sig, after_step, *overrides):
    p = subprocess.Popen(train_cmd(workdir, "--config.step_delay_s=0.5", *overrides), env=env_for(1), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 500
    while time.time() < deadline:
        if os.path.exists(path) and max(losses(workdir), default=0) >= after_step:
            break
        assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.1)
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def test_kill_9_then_resume_is_bitwise_equal(baseline, tmp_path):
    w = str(tmp_path / "w")
    rc, _, _ = _start_and_signal(w, signal.SIGKILL, 5)
    assert rc == -signal.SIGKILL
    assert STEPS not in [int(s) for s in os.listdir(os.path.join(w, "checkpoints")) if s.isdigit()]
    assert os.path.exists(os.path.join(w, ".lock"))  # the killed run's lock file: its flock died with it
    r = run_train(w)
    assert "resumed from step 4" in r.stderr + r.stdout or "resumed" in r.stderr + r.stdout
    a, b = final_state(baseline), final_state(w)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    la, lb = losses(baseline), losses(w)
    assert all(la[s] == lb[s] for s in range(5, STEPS + 1))  # the resumed steps repeat bit for bit


def test_sigterm_saves_and_exits_0(tmp_path):
    w = str(tmp_path / "w")
    rc, out, err = _start_and_signal(w, signal.SIGTERM, 2)
    assert rc == 0, err[-3000:]
    line = [l for l in out.splitlines() if l.startswith("preempted at step")][0]
    step = int(line.split()[3].rstrip(";"))
    assert 2 <= step < STEPS
    assert str(step) in os.listdir(os.path.join(w, "checkpoints"))
    assert all(d.isdigit() for d in os.listdir(os.path.join(w, "checkpoints")))  # no orbax temporary directory


def test_unknown_config_key(tmp_path):
    r = run_train(str(tmp_path / "w"), "--config.learning_rat=1e-3", check=False)
    assert (r.returncode, r.stderr) == (2, "error: --config.learning_rat: no such config key 'learning_rat' (did you "
                                           "mean learning_rate?)\n")


def test_mesh_that_does_not_divide(tmp_path):
    r = run_train(str(tmp_path / "w"), "--config.mesh.data=3", "--config.mesh.fsdp=-1", devices=8, check=False)
    assert r.returncode == 2 and "does not divide the 8 devices" in r.stderr
    r = run_train(str(tmp_path / "w"), "--config.mesh.data=3", devices=8, check=False)
    assert r.returncode == 2 and "needs 3 devices, but 8 are available" in r.stderr


def test_workdir_of_another_model_is_refused(baseline, tmp_path):
    w = str(tmp_path / "w")
    shutil.copytree(baseline, w)
    r = run_train(w, "--config.model.hf_config.hidden_size=64", "--config.model.hf_config.head_dim=16",
                  check=False)
    assert r.returncode == 2 and "different run" in r.stderr and "hidden_size: checkpoint has 32, this run has 64" \
        in r.stderr


def test_init_from_another_run(baseline, tmp_path):
    """init_from: the other run's newest trainable parameters, fresh optimizer and step 0 (learning rate 0 here,
    so the parameters must come out as they went in); an own checkpoint wins over init_from on resume."""
    w = str(tmp_path / "w")
    r = run_train(w, f"--config.init_from={baseline}", "--config.learning_rate=0.0")
    assert "trainable parameters from" in r.stderr and "its step 8" in r.stderr
    a, b = final_state(baseline), final_state(w)
    params = [k for k in a if k.startswith("['params']")]
    assert params
    for k in params:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sorted(losses(w)) == list(range(1, STEPS + 1))       # trained from step 0
    r = run_train(w, f"--config.init_from={baseline}", "--config.learning_rate=0.0")
    assert "trainable parameters from" not in r.stderr           # its own checkpoint (step 8): nothing to do


def test_init_from_refuses_other_models_and_empty_dirs(baseline, tmp_path):
    r = run_train(str(tmp_path / "a"), f"--config.init_from={baseline}", "--config.model.hf_config.hidden_size=64",
                  "--config.model.hf_config.head_dim=16", check=False)
    assert r.returncode == 2 and "different model configuration" in r.stderr and "hidden_size" in r.stderr
    os.makedirs(tmp_path / "empty")
    r = run_train(str(tmp_path / "b"), f"--config.init_from={tmp_path / 'empty'}", check=False)
    assert r.returncode == 2 and "init_from: " in r.stderr and "holds no checkpoint" in r.stderr


def test_corrupt_latest_checkpoint_falls_back(baseline, tmp_path):
    w = str(tmp_path / "w")
    shutil.copytree(baseline, w)
    state_dir = os.path.join(w, "checkpoints", str(STEPS), "state")
    for dirpath, _, files in os.walk(state_dir):  # damage every data file of the newest checkpoint
        for f in files:
            if "manifest" in f or f.endswith(".ocdbt") or "d" == os.path.basename(dirpath):
                with open(os.path.join(dirpath, f), "wb") as fh:
                    fh.write(b"garbage")
    r = run_train(w)
    assert "unreadable" in r.stderr and "falling back" in r.stderr
    assert any(d.startswith("corrupt-checkpoint-8") for d in os.listdir(w))  # set aside, not deleted
    a, b = final_state(baseline), final_state(w)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
