"""Host costs in the simulated experiments: what each system pays on the CPU side, per kernel or
per request, besides the GPU's own time. Each default names where it comes from; all of them
can be set per run (``HostCosts``), and docs/simulator.md shows what they change.

- ``launch_us``: from a kernel launch until the kernel is in its hardware queue, every system
  (the simulated GPU's rule R7). Default: calibration.md's launch floor of this GPU preset
  (``GpuSpec.launch_floor_us``, 4.5 us: the smallest forward kernels measured take that long).
- ``notice_us``: the software dispatcher's round trip per kernel: a kernel's start or completion
  is noticed, the core decides, the next kernel is launched; one dispatcher thread, one notice
  at a time. Applies to the software-dispatch policies (ours and Paella's policy run by our
  daemon). Default: this daemon's own measured cost per kernel, ``kernel_overhead_us`` of
  ``gpusched bench overhead --json`` (a long zero-duration model through the live daemon).
- ``rpc_us``: a request's round trip between a client process and a serving process (submit
  and answer), for the systems that have one: ours over ZeroMQ, and Triton's gRPC frontend.
  Default: ``client_rtt_us`` of ``gpusched bench overhead --json`` (our client library's round
  trip of a zero-duration job); for Triton this is a lower bound (gRPC and its frontend do more
  than one ZeroMQ message each way).
- ``poll_us``: the CUDA stream baselines learn that a job finished by polling
  ``cudaStreamQuery`` (Paella's artifact does): a finished job is noticed at the poller's next
  sweep, a grid of ``poll_us``. Default 20 us: one pass over Paella's 141 streams at roughly
  0.15 us per query of a non-blocking driver call; no published figure (``--poll-us`` sets
  it; docs/simulator.md says what the baselines' lead makes of it).
- ``quantum_us``: not a cost but what the dispatcher does about ``notice_us``: one dispatch may
  be a run of a job's kernels whose estimates sum to at most the quantum, launched back to back
  on the job's stream and noticed once (the core's quantum, core/scheduler.py; the launches
  after a run's first keep the dispatcher thread busy ``launch_us`` each). Default: ten times
  ``notice_us``, the rule ``Device.default_quantum_s`` states (the live daemon's default on the
  simulated GPU); 0 is kernel by kernel, Paella's rule as its artifact runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

# measured here with `gpusched bench overhead --json` (docs/simulator.md has the run)
MEASURED_KERNEL_OVERHEAD_US = 12.0
MEASURED_CLIENT_RTT_US = 175.0
POLL_US = 20.0
QUANTUM_US = 10 * MEASURED_KERNEL_OVERHEAD_US


@dataclass(frozen=True)
class HostCosts:
    launch_us: float = 4.5
    notice_us: float = MEASURED_KERNEL_OVERHEAD_US
    rpc_us: float = MEASURED_CLIENT_RTT_US
    poll_us: float = POLL_US
    quantum_us: float = QUANTUM_US

    def for_policy(self, policy: str) -> "HostCosts":
        """The costs one system pays: each family (the policy class's ``host``, so a
        variant registered under a new name pays its parent's) has only its own."""
        from scheduler_daemon.core.policies import ALL_POLICIES
        host = ALL_POLICIES[policy].host
        return replace(self,
                       notice_us=self.notice_us if host == "dispatcher" else 0.0,
                       quantum_us=self.quantum_us if host == "dispatcher" else 0.0,
                       rpc_us=self.rpc_us if host in ("dispatcher", "rpc") else 0.0,
                       poll_us=self.poll_us if host == "polling" else 0.0)


FREE = HostCosts(0.0, 0.0, 0.0, 0.0, 0.0)


def default_costs(spec) -> HostCosts:
    """The defaults on GPU preset ``spec`` (only the launch floor differs by preset)."""
    return HostCosts(launch_us=spec.launch_floor_us)
