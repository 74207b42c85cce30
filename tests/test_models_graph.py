"""Registered-model graphs: capture -> msgspec wire -> daemon-side replay is bit-identical;
bad graphs are refused naming the problem."""
import msgspec
import pytest

torch = pytest.importorskip("torch")

from client_lib.capture import CaptureError, capture  # noqa: E402
from client_lib.tensors import from_frame, to_frame  # noqa: E402
from profilers.zoo_models import build  # noqa: E402
from scheduler_daemon.devices.graph_exec import LoadedGraph  # noqa: E402
from scheduler_daemon.wire.graph import OpNode, V, decode_graph, encode_graph  # noqa: E402


def _models():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    enc = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()
    resnet, inputs = build("resnet18")
    return [("mlp", mlp, [torch.randn(3, 16)]), ("encoder", enc, [torch.randn(2, 5, 32)]),
            ("resnet18", resnet, list(inputs(1)))]


def _through_wire(module, xs):
    g, ws = capture(module, xs)
    # weights cross as raw frames, the graph as msgpack: nothing pickled
    ws = [torch.from_numpy(from_frame(*to_frame(w)).copy()) for w in ws]
    return LoadedGraph(decode_graph(encode_graph(g)), ws)


@pytest.mark.parametrize("case", range(3), ids=["mlp", "encoder", "resnet18"])
def test_replay_is_bit_identical(case):
    name, module, xs = _models()[case]
    with torch.no_grad():
        want = module(*xs)
    loaded = _through_wire(module, xs)
    fresh = [torch.randn_like(x) for x in xs] if name != "resnet18" else xs
    with torch.no_grad():
        want2 = module(*fresh)
    assert torch.equal(loaded.run(xs)[0], want)
    assert torch.equal(loaded.run(fresh)[0], want2)   # a new request, not a cached value


@pytest.mark.parametrize("op,why", [("aten::set_.source_Storage", "another storage"),
                                    ("aten::relu.__setattr__", "no overload '__setattr__'"),
                                    ("aten::no_such_op.default", "no aten operator"),
                                    ("aten::relu.bogus", "no overload 'bogus'"),
                                    ("prims::add.default", "aten operators only")])
def test_refused_op_is_refused_by_name_and_reason(op, why):
    g, ws = capture(torch.nn.Linear(4, 4).eval(), [torch.randn(2, 4)])
    bad = msgspec.structs.replace(g, ops=[OpNode(op=op, args=[V(id=0)])] + g.ops)
    with pytest.raises(ValueError, match=why):
        LoadedGraph(decode_graph(encode_graph(bad)), ws)


def test_forward_reference_is_refused():
    g, ws = capture(torch.nn.Linear(4, 4).eval(), [torch.randn(2, 4)])
    bad = msgspec.structs.replace(g, ops=[OpNode(op="aten::relu.default", args=[V(id=999)])])
    with pytest.raises(ValueError, match="before it exists"):
        decode_graph(encode_graph(bad))


def test_unknown_fields_and_bad_types_are_refused():
    with pytest.raises(msgspec.ValidationError):
        decode_graph(msgspec.msgpack.encode({"n_inputs": 1, "weights": [], "ops": [], "outputs": [0]}))
    with pytest.raises(msgspec.ValidationError):
        decode_graph(msgspec.msgpack.encode({"n_inputs": "x"}))


def test_capture_rejects_non_tensor_inputs():
    with pytest.raises(CaptureError):
        capture(torch.nn.Identity(), ["not a tensor"])


def test_guard_costs_are_kept_per_op_except_downstream_of_data_dependent_shapes():
    """A graph's op costs are computed once (shapes are fixed per graph), except for ops whose
    argument shapes come from data (after ``nonzero``): those are costed per request, so a
    request whose data makes them bigger is still refused before they run."""
    from scheduler_daemon.devices.op_guard import OpGuard, TooLarge

    class M(torch.nn.Module):
        def forward(self, x):
            return torch.nonzero(x).repeat(1, 1000) * 2, x * 3

    x_small = torch.zeros(64)
    x_small[3] = 1.0
    loaded = _through_wire(M().eval(), [x_small])
    guard = OpGuard()

    def run(x, limit):
        env = loaded.start([x])
        with torch.no_grad():
            for i in range(len(loaded.fns)):
                loaded.run_op(i, env, guard, limit)
        return [env[o] for o in loaded.graph.outputs]

    limit = 200_000   # 1 row x 1000 x int64 = 8 kB fits; 64 rows = 512 kB do not
    out = run(x_small, limit)
    assert out[0].shape == (1, 1000) and torch.equal(out[1], x_small * 3)
    cached = [c is not None for c in loaded._costs]
    names = [n.op for n in loaded.graph.ops]
    # the ops fed by nonzero's output are never cached; the independent mul is
    assert not any(c for c, n in zip(cached, names) if "repeat" in n or "nonzero" in n)
    assert any(c for c, n in zip(cached, names) if n == "aten::mul.Tensor")
    with pytest.raises(TooLarge, match="repeat"):
        run(torch.ones(64), limit)


def test_a_shape_written_in_place_from_data_is_costed_per_request():
    """``resize_as_`` to a data-dependent shape changes its argument's shape, not only its
    output's: what reads that argument afterwards is costed per request too."""
    from scheduler_daemon.devices.op_guard import OpGuard, TooLarge

    class M(torch.nn.Module):
        def forward(self, x):
            nz = torch.nonzero(x).float()
            y = x * 2
            y.resize_as_(nz)
            return torch.mm(y, y.t())

    x1 = torch.zeros(4096)
    x1[7] = 1.0
    g, ws = capture(M().eval(), [x1])
    # a hostile client writes its own graph: the ops after the resize read the tensor by the
    # id it had before (capture itself names the resize's output, which the taint covers)
    first, ids = g.n_inputs + len(g.weights), {}
    for n in g.ops:
        ids[n.op] = first
        first += n.n_out
    before, after = ids["aten::mul.Tensor"], ids["aten::resize_as_.default"]

    def swap(a):
        return V(id=before) if isinstance(a, V) and a.id == after else a
    ops = [msgspec.structs.replace(n, args=[swap(a) for a in n.args])
           if n.op != "aten::resize_as_.default" else n for n in g.ops]
    loaded = LoadedGraph(decode_graph(encode_graph(msgspec.structs.replace(g, ops=ops))), ws)
    guard = OpGuard()

    def run(x):
        env = loaded.start([x])
        with torch.no_grad():
            for i in range(len(loaded.fns)):
                loaded.run_op(i, env, guard, 1 << 20)   # 1 MB
        return env[loaded.graph.outputs[0]]

    assert run(x1).shape == (1, 1)
    with pytest.raises(TooLarge, match="mm"):    # 4096 x 4096 floats: 64 MB
        run(torch.ones(4096))


def test_a_graph_without_declared_input_shapes_keeps_no_costs():
    """Input shapes are what make an op's cost the same in every request: a graph that does
    not declare them (check_inputs then counts inputs only) is costed per request."""
    from scheduler_daemon.devices.op_guard import OpGuard, TooMuchWork
    class Square(torch.nn.Module):
        def forward(self, x):
            return x * x
    g, ws = capture(Square(), [torch.randn(4)])
    assert g.inputs and _through_wire(Square(), [torch.randn(4)])._costs is not None
    loaded = LoadedGraph(decode_graph(encode_graph(msgspec.structs.replace(g, inputs=[]))), ws)
    assert loaded._costs is None
    guard = OpGuard(max_work=1000)

    def run(x):
        env = loaded.start([x])
        loaded.run_op(0, env, guard, 1 << 30)
        return env[loaded.graph.outputs[0]]
    assert torch.equal(run(torch.ones(4)), torch.ones(4))
    with pytest.raises(TooMuchWork):
        run(torch.ones(100_000))


def test_outputs_are_sent_zero_copy_except_a_weights_own_memory():
    """An output's frame is the tensor's own memory (no copy); one that lives in a weight's
    storage is copied: another request of the model may be using that weight while the reply
    waits to be sent."""
    from scheduler_daemon.core.gpu_specs import gpu_spec
    from scheduler_daemon.core.jobs import Job, ModelEntry
    from scheduler_daemon.devices.torch_device import TorchDevice
    from scheduler_daemon.wire.kernels import KernelSpec

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.arange(4.0))

        def forward(self, x):
            return x * 2, self.w.view(2, 2)

    x = torch.ones(4)
    loaded = _through_wire(M().eval(), [x])
    dev = TorchDevice(gpu_spec("T4"), "cpu")
    try:
        key = ("t", "m")
        dev._graphs[key] = loaded
        entry = ModelEntry(key, "m", [KernelSpec(name="k", est_us=1)], gpu_spec("T4").capacity)
        job = Job("j", "t", entry, 0.0, 0.0)
        job.payload = env = loaded.start([x])
        with torch.no_grad():
            for i in range(len(loaded.fns)):
                loaded.run_op(i, env)
        (m0, b0), (m1, b1) = dev.outputs(job)
        assert isinstance(b0, memoryview) and bytes(b0) == (x * 2).numpy().tobytes()
        assert isinstance(b1, bytes) and b1 == torch.arange(4.0).numpy().tobytes()
        assert m1.shape == [2, 2]
    finally:
        dev.close()
