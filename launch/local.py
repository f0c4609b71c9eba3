"""Local multi-process launcher: N processes on this machine, each with D (emulated CPU) devices.

  python launch/local.py --num-processes 2 --devices-per-process 2 -- python -m hyperlora_jax.train \
      --config=configs/lm.py:tiny --workdir=/tmp/run

Each process gets HYPERLORA_JAX_COORDINATOR=127.0.0.1:PORT, HYPERLORA_JAX_NUM_PROCESSES and
HYPERLORA_JAX_PROCESS_ID (read by hyperlora_jax.train), and XLA_FLAGS for D host devices. Exits with the first
non-zero exit status, after stopping the others. Used by the multi-process tests; on real clusters use
launch/tpu_pod.sh or launch/slurm_gpu.sbatch.
"""
import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given")
    port = free_port()
    procs = []
    for i in range(args.num_processes):
        env = {**os.environ, "HYPERLORA_JAX_COORDINATOR": f"127.0.0.1:{port}",
               "HYPERLORA_JAX_NUM_PROCESSES": str(args.num_processes), "HYPERLORA_JAX_PROCESS_ID": str(i),
               "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices_per_process}"}
        procs.append(subprocess.Popen(cmd, env=env))
    deadline, status = time.time() + args.timeout, 0
    while procs:
        for pr in list(procs):
            rc = pr.poll()
            if rc is None:
                continue
            procs.remove(pr)
            if rc != 0 and status == 0:
                status = rc
                for other in procs:
                    other.terminate()
        if time.time() > deadline:
            for pr in procs:
                pr.kill()
            return 124
        time.sleep(0.2)
    return status


if __name__ == "__main__":
    sys.exit(main())
