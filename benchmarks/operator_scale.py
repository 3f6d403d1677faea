"""How fast the operator turns a burst of PEFTJobs into pods, and how much memory it needs doing so.

The KMock emulator (tests/kube.py) runs in this process and timestamps every pod it stores; the operator runs as
it does in a cluster, `python -m peftjob_operator` in a subprocess (kubeconfig login, peering through a
ClusterKopfPeering like the Helm chart's, liveness and metrics ports), so its peak RSS (VmHWM) is its own.
All jobs are submitted back to back; a job's latency is from its create call until the last of its worker pods
exists. Goals: p50 < 1 s, every job's pods within 60 s, operator peak RSS < 300 MB.
Usage: python benchmarks/operator_scale.py [--jobs 200] [--replicas 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import kmock
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # tests.kube, the emulator; appended so that the stdlib `operator` stays first

from tests.kube import Emulator, EmulatorServer, wait_for  # noqa: E402
from peftjob_trainer.local_run import free_port

NS = "bench"
JOBS = f"/apis/peft.dev/v1alpha1/namespaces/{NS}/peftjobs"
GOALS = {"p50": 1.0, "all": 60.0, "rss_mb": 300.0}


@attrs.define(kw_only=True)
class TimedEmulator(Emulator):
    """The test emulator, noting when each pod was stored (monotonic seconds, by job label)."""

    pod_times: dict[str, list[float]] = attrs.field(factory=dict, init=False)
    _times_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    async def _handle_k8s(self, request: kmock.Request) -> Any:
        response = await super()._handle_k8s(request)
        if (request.action == kmock.action.CREATE and request.resource is not None
                and request.resource.plural == "pods" and response.status < 400):
            job = ((request.data.get("metadata") or {}).get("labels") or {}).get("peft.dev/job-name", "")
            with self._times_lock:
                self.pod_times.setdefault(job, []).append(time.monotonic())
        return response


def start_operator(url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`python -m peftjob_operator` logged in through a kubeconfig, as a user would run it outside a cluster."""
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "bench", "user": {"token": "unused"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "emulator", "user": "bench"}}],
    }))
    liveness = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PEFTJOB_METRICS_PORT": str(free_port()),
           "PEFTJOB_LIVENESS_PORT": str(liveness), "PEFTJOB_TRAINER_IMAGE": "trainer:bench"}
    log = workdir / "operator.log"
    process = subprocess.Popen([sys.executable, "-m", "peftjob_operator"], cwd=workdir, env=env,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def alive() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False
    wait_for(alive, timeout=60, interval=0.2, what="the operator's liveness endpoint")
    return process, log


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process' peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc (Linux only)")


def job(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"source": "gpt2"}, "method": {"lora": {"r": 8}},
                 "data": {"train": {"source": "s3://data/train.jsonl"}}, "workers": {"replicas": replicas}},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()

    emulator = TimedEmulator()
    with EmulatorServer(emulator) as api, tempfile.TemporaryDirectory() as workdir:
        api.create("/apis/kopf.dev/v1/clusterkopfpeerings",
                   {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "peftjob-operator"}})
        process, log = start_operator(api.url, Path(workdir))
        try:
            idle_rss = peak_rss_mb(process.pid)
            submitted: dict[str, float] = {}
            started = time.monotonic()
            for index in range(args.jobs):
                name = f"job-{index:04d}"
                submitted[name] = time.monotonic()
                api.create(JOBS, job(name, args.replicas))
            submit_seconds = time.monotonic() - started

            def all_pods() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"the operator died:\n{log.read_text()[-3000:]}")
                return all(len(emulator.pod_times.get(name, ())) >= args.replicas for name in submitted)
            wait_for(all_pods, timeout=GOALS["all"] * 5, interval=0.1, what=f"the pods of all {args.jobs} jobs")
            latencies = [max(emulator.pod_times[name]) - submitted[name] for name in submitted]
            everything = max(max(emulator.pod_times[name]) for name in submitted) - started
            rss = peak_rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(30)

    figures = {"p50": statistics.median(latencies), "all": everything, "rss_mb": rss}
    print(f"operator scale: {args.jobs} PEFTJobs x {args.replicas} workers against the KMock emulator "
          f"(submitted in {submit_seconds:.1f} s)")
    print(f"  time until a job's pods exist: p50 {figures['p50']:.2f} s, p99 {percentile(latencies, 0.99):.2f} s, "
          f"max {max(latencies):.2f} s")
    print(f"  time until every job's pods exist: {everything:.1f} s")
    print(f"  operator peak RSS: {rss:.0f} MB (idle after start: {idle_rss:.0f} MB)")
    failed = [f"{key} {figures[key]:.2f} > {goal}" for key, goal in GOALS.items() if figures[key] > goal]
    print("  goals (p50 < 1 s, all < 60 s, RSS < 300 MB): " + ("met" if not failed else "MISSED: " + ", ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
