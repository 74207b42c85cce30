"""The torch backend: each kernel is a torch callable run by a worker.

On a CUDA device every worker owns a CUDA stream and times kernels with CUDA events; on the CPU
the workers are a thread pool (torch releases the GIL inside its operators). Completions are
posted by the workers to a ``Mailbox`` whose socket the daemon polls.

On CUDA the device (``cuda:N``) is made current on the thread that builds the backend (the
daemon's) and on every worker, so nothing touches another GPU (an unset thread would open a
context on GPU 0). A worker waits for its kernel on a blocking-sync event: it sleeps in the
driver instead of spinning a CPU core for the kernel's whole duration, at the cost of a
thread wake-up (tens of microseconds) per kernel. Inputs are copied straight from the received
bytes (pageable): pinning them first cost a second host copy and bought nothing, since the
copy is synchronous anyway (the worker's stream must see the data).
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from scheduler_daemon.core.gpu_specs import GpuSpec
from scheduler_daemon.core.jobs import Job
from scheduler_daemon.core.ledger import storage_key
from scheduler_daemon.devices import torch_ops
from scheduler_daemon.devices.base import Capabilities, Device
from scheduler_daemon.devices.mailbox import Mailbox
from scheduler_daemon.wire.tensors import DTYPES, TensorMeta

log = logging.getLogger("gpusched.device.torch")


class TorchDevice(Device):
    name = "torch"
    # one job's ops share its tensors: they must run one after the other
    caps = Capabilities(graphs=True, eager=True, concurrent_kernels=False, runs=True)

    def __init__(self, spec: GpuSpec, device: str = "cpu", workers: int | None = None,
                 torch_module=None):
        if torch_module is None:
            import torch as torch_module
        torch = self.torch = torch_module   # a stand-in in tests of the CUDA paths
        self.spec = spec
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        # ~10x one dispatch's cost here: a worker hand-off and a loop pass, ~70 us on this
        # project's 2-core CPU (docs/models.md); a CUDA launch plus an event wake-up, ~20 us
        self.default_quantum_s = 250e-6 if self.cuda else 1e-3
        # CPU ops run one at a time on the worker, so a run ends between two when asked; on
        # CUDA the worker queues a run's ops on the stream within microseconds, so a stop is
        # seen only before they are all queued (the quantum bounds those runs instead)
        self.stops_runs = not self.cuda
        if self.cuda:
            torch.cuda.set_device(self.device)   # the daemon's thread: prepare, outputs
        # CPU: one worker. torch already spreads an op over the cores, and ops alternating
        # between two worker threads keep two OpenMP teams spinning against each other (it
        # doubled compute-bound ops in `gpusched bench models`). CUDA: a worker per stream.
        workers = workers or (4 if self.cuda else 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpusched-torch",
                                        initializer=self._worker_init)
        self._mailbox = Mailbox()
        self._local = threading.local()
        self._busy = 0
        self._graphs: dict = {}  # model key -> LoadedGraph (registered torch models)
        from scheduler_daemon.devices.op_guard import OpGuard
        self.guard = OpGuard()
        self.guard.warm()
        self.alloc_limit = 1 << 62  # per op's outputs; the daemon sets its tenant quota

    def _worker_init(self) -> None:
        if self.cuda:
            self.torch.cuda.set_device(self.device)

    def describe(self) -> str:
        return f"torch on {self.device} ({self.spec.name})"

    def validate(self, kernels: list) -> None:
        for i, k in enumerate(kernels):
            try:
                torch_ops.resolve(k.op)
            except ValueError as e:
                raise ValueError(f"kernel {i} ({k.name}): {e}") from None

    def load_graph(self, key, graph_bytes, weights: list, quota=None, shared=None) -> list:
        """A captured model (graph_spec bytes, [(meta, buffer)] weights) -> one KernelSpec per op.
        Weights are copied once out of the received frames into device tensors; with
        ``shared`` (base key, reuse indices) the weights it names are the base graph's own
        tensors (one copy in memory for every shape a model was captured at)."""
        from scheduler_daemon.devices.graph_exec import LoadedGraph
        from scheduler_daemon.wire.graph import decode_graph
        from scheduler_daemon.wire.kernels import KernelSpec
        graph = decode_graph(graph_bytes)
        reuse = list(shared[1]) if shared is not None else [-1] * len(graph.weights)
        base = self._graphs.get(shared[0]) if shared is not None else None
        if shared is not None and base is None:
            raise ValueError(f"model {shared[0][1]!r}, whose weights this graph shares, is not "
                             "registered: register it first")
        if len(reuse) != len(graph.weights):
            raise ValueError(f"graph declares {len(graph.weights)} weights, {len(reuse)} "
                             "reuse entries")
        sent = iter(weights)
        ws = []
        for spec, r in zip(graph.weights, reuse):
            if r >= 0:
                if base is None or r >= len(base.weights):
                    raise ValueError(f"weight {spec.name}: the base model has no weight {r}")
                w = base.weights[r]
                got = (str(w.dtype).removeprefix("torch."), list(w.shape))
            else:
                meta, buf = next(sent, (None, None))
                if meta is None:
                    raise ValueError(f"weight {spec.name}: no frame was sent for it")
                got = (meta.dtype, list(meta.shape))
                w = (meta, buf)
            if got != (spec.dtype, list(spec.shape)):
                raise ValueError(f"weight {spec.name}: it is {got[0]}{got[1]}, graph says "
                                 f"{spec.dtype}{spec.shape}")
            ws.append(w)
        if next(sent, None) is not None:
            raise ValueError("more weight frames were sent than the graph declares")
        ws = [w if r >= 0 else self._tensor(*w) for w, r in zip(ws, reuse)]
        self._graphs[key] = LoadedGraph(graph, ws, self.device, quota, 
                                      name=str(key[-1] if isinstance(key, tuple) else key))
        # a first estimate per op; measured durations replace it (DurationEstimates)
        return [KernelSpec(name=n.op[:256], est_us=20.0) for n in graph.ops]

    def forget(self, key) -> None:
        self._graphs.pop(key, None)

    def set_alloc_limit(self, nbytes: int) -> None:
        self.alloc_limit = nbytes

    def set_work_limit(self, work: float) -> None:
        self.guard.max_work = work

    def finish(self, job: Job) -> None:
        graph = self._graphs.get(job.model.key)
        if graph is not None:
            graph.finish(job.payload)

    def _tensor(self, meta, buf):
        t = self.torch.frombuffer(bytearray(buf), dtype=getattr(self.torch, meta.dtype)) \
            if len(buf) else self.torch.empty(0, dtype=getattr(self.torch, meta.dtype))
        return self._to_device(t.reshape(meta.shape))

    def _to_device(self, t):
        """CPU tensor -> the device. On CUDA a synchronous copy from the pageable tensor: it is
        complete on return, so a worker's stream may use it at once (no pinning: a pinned
        staging copy would be a second host copy, and ``pin_memory()`` on a thread whose
        current device is not ours opens a context on GPU 0)."""
        if not self.cuda:
            return t
        return t.to(self.device, non_blocking=False)

    def tensor_from(self, layout, buf):
        """An intercepted tensor's storage bytes viewed with the client's shape and strides."""
        torch = self.torch
        dt = getattr(torch, layout.dtype)
        flat = torch.frombuffer(bytearray(buf), dtype=dt) if len(buf) else torch.empty(0, dtype=dt)
        return self._to_device(flat).as_strided(layout.shape, layout.stride, layout.offset)

    def prepare(self, job: Job) -> None:
        graph = self._graphs.get(job.model.key)
        if graph is not None:
            job.payload = graph.start([self._tensor(m, b) for m, b in job.payload or []])
            return
        job.payload = [self._tensor(m, b) for m, b in job.payload or []]

    def _stream(self):
        s = getattr(self._local, "stream", None)
        if s is None:
            s = self._local.stream = self.torch.cuda.Stream(device=self.device)
        return s

    def _run(self, job: Job, ops: list) -> None:
        """Run ``ops`` (one kernel, or a run of a job's consecutive kernels) one after the
        other and post the job with each op's duration, or with the error and how many ops
        ran before it (so the failure names the op that failed). Before each op after the
        first, ``job.stop`` (set by the core) ends the run there."""
        ran = 0
        payload = job.payload   # (the server may clear job.payload when the job ends)
        try:
            if self.cuda:
                torch = self.torch
                # a timing event between ops; the worker waits on one more, blocking: it
                # sleeps until the kernels are done instead of spinning
                evs = [torch.cuda.Event(enable_timing=True)]
                done = torch.cuda.Event(blocking=True)
                with torch.cuda.stream(self._stream()):
                    evs[0].record()
                    for op in ops:
                        if ran and job.stop:
                            break
                        payload = op(payload)
                        ran += 1
                        evs.append(torch.cuda.Event(enable_timing=True))
                        evs[-1].record()
                    done.record()
                done.synchronize()
                durs = [evs[i].elapsed_time(evs[i + 1]) / 1000.0 for i in range(ran)]
            else:
                durs = []
                t0 = time.perf_counter()
                for op in ops:
                    if ran and job.stop:
                        break
                    payload = op(payload)
                    ran += 1
                    t1 = time.perf_counter()
                    durs.append(t1 - t0)
                    t0 = t1
            job.payload = payload
            self._mailbox.post((job, durs, None))
        except Exception as e:  # a failing kernel fails its job only
            self._mailbox.post((job, ran, f"{type(e).__name__}: {e}"))

    def launch(self, job: Job) -> None:
        kernel = getattr(job.payload, "kernel", None)  # an intercepted op batch (EagerWork)
        graph = self._graphs.get(job.model.key) if kernel is None else None
        run = range(job.cur, job.cur + job.run_len)
        if kernel is not None:
            ops = [kernel(i) for i in run]
        elif graph is not None:
            ops = [_graph_op(graph, i, self.guard, self.alloc_limit) for i in run]
        else:
            ops = [torch_ops.resolve(job.model.kernels[i].op) for i in run]
        self._busy += 1
        self._pool.submit(self._run, job, ops)

    def wake_fd(self) -> int:
        return self._mailbox.fileno()

    def collect(self) -> None:
        now = self.env.now
        for job, res, err in self._mailbox.drain():
            self._busy -= 1
            try:
                if err is not None:
                    self.on_fail(job, now, err, res)   # res: the ops run before the error
                elif job.run_len == 1:
                    self.on_complete(job, now, res[0])
                else:
                    self.on_complete(job, now, sum(res), res)
            except Exception as e:   # refused (checked before it changes anything): that
                # job fails, not the loop
                log.exception("torch: completion of job=%s could not be taken", job.id)
                self.on_fail(job, now, f"internal error: {type(e).__name__}: {e}")

    def outputs(self, job: Job) -> list:
        res = []
        graph = self._graphs.get(job.model.key)
        payload = job.payload or []
        shared = getattr(payload, "paid", frozenset())   # a graph's weights, its inputs
        if graph is not None:
            payload = [payload[o] for o in graph.graph.outputs]
        for t in payload:
            t = t.detach().contiguous().cpu()
            name = str(t.dtype).removeprefix("torch.")
            if name not in DTYPES:
                raise ValueError(f"output dtype {name} cannot be sent")
            # the tensor's own bytes, not a copy: the reply frame holds it until it is sent;
            # but a copy of a weight's (another request of the model may be using it then)
            buf = memoryview(t.reshape(-1).numpy()).cast("B")
            if shared and storage_key(t)[0] in shared:
                buf = bytes(buf)
            res.append((TensorMeta(dtype=name, shape=list(t.shape)), buf))
        return res

    def utilisation(self) -> float:
        return min(1.0, self._busy / max(1, self._pool._max_workers))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._mailbox.close()


def _graph_op(graph, i: int, guard=None, limit: int = 0):
    """Op ``i`` of a registered graph as a kernel: appends its outputs to the job's values."""
    def run(env):
        import torch
        if env is None:
            raise ValueError(f"the model takes {graph.graph.n_inputs} inputs; none were sent")
        with torch.no_grad():
            graph.run_op(i, env, guard, limit)
        return env
    return run
