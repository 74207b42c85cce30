"""Raw CUDA without a GPU: NVRTC compiles, instrumentation, model checks, detection.

NVRTC needs no GPU, so everything here runs on any machine with the ``cuda`` extra (which
``make setup`` installs); the tests skip only where cuda-python is not importable at all.
"""
from __future__ import annotations

import re
import sys

import msgspec
import pytest

from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.cuda.checks import kernel_specs, validate_model
from scheduler_daemon.cuda.errors import CudaCompileError, CudaUnavailable
from scheduler_daemon.cuda.instrument import BODY_PREFIX, PROGRESS_PARAM, instrument
from scheduler_daemon.cuda.limits import LaunchLimits, limits_for_spec
from scheduler_daemon.wire.cuda import Buf, CudaBuffer, CudaLaunch, CudaModel, Scalar

pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (pip install "
                    "'gpusched[cuda]'; make setup installs it)")

from scheduler_daemon.cuda import nvrtc
from scheduler_daemon.cuda.build import build_model, compile_model
from scheduler_daemon.cuda.nvrtc import compile_source, load_ptx_text

VEC_ADD = """\
extern "C" __global__ void vec_add(const float* __restrict__ a, const float* b, float* c,
                                   int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;   // early return: the block is still counted
    c[i] = a[i] + b[i];
}
"""

SMEM = """\
extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    __shared__ float tile[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) tile[threadIdx.x] += tile[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = tile[0];
}
extern "C" __global__ void dyn_copy(const float* x, float* y) {
    extern __shared__ float buf[];
    buf[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}
"""

ATOM = re.compile(r"^\s*atom\.global\.add\.u64\s+%rd\d+, \[%rd\d+\], 1;$", re.MULTILINE)


def _ptx(c) -> str:
    return c.ptx.decode()


def _vec_model(**launch) -> CudaModel:
    kw = {"kernel": "vec_add", "grid": [4], "block": [256],
              "args": [Buf(0), Buf(1), Buf(2), Scalar("int32", 1024)]}
    kw.update(launch)
    return CudaModel(source=VEC_ADD, buffers=[
        CudaBuffer("a", "float32", [1024], "input"), CudaBuffer("b", "float32", [1024], "input"),
        CudaBuffer("c", "float32", [1024], "output")], launches=[CudaLaunch(**kw)])


# -- NVRTC --------------------------------------------------------------------------------------
def test_nvrtc_targets_compute_80_without_a_gpu():
    version, archs = nvrtc.nvrtc_info()
    assert version >= (12, 0) and 80 in archs
    assert nvrtc.default_arch() == "compute_80"
    assert nvrtc.arch_for((9, 0)) == "sm_90"      # cubin for a GPU NVRTC knows
    assert nvrtc.arch_for((7, 5)) == "sm_75"


def test_vec_add_compiles_to_ptx_with_its_entry_and_params():
    c = compile_source(VEC_ADD)
    assert c.kernels == ["vec_add"] and c.arch == "compute_80" and c.cubin is None
    ptx = _ptx(c)
    assert ".entry vec_add(" in ptx and ".target sm_80" in ptx
    assert [(p.kind, p.bits) for p in c.params["vec_add"]] == [("u", 64)] * 3 + [("u", 32)]
    assert c.image.endswith(b"\0") and not c.ptx.endswith(b"\0")


def test_shared_memory_kernels_compile():
    c = compile_source(SMEM, name="smem.cu")
    assert sorted(c.kernels) == ["block_sum", "dyn_copy"]
    ptx = _ptx(c)
    assert re.search(r"\.shared \.align 4 \.b8 \S*tile\S*\[1024\]", ptx)
    assert ".extern .shared" in ptx and "bar.sync" in ptx


def test_sm_target_adds_a_cubin():
    c = compile_source(VEC_ADD, arch="sm_90")
    assert c.cubin.startswith(b"\x7fELF") and c.image is c.cubin
    assert ".entry vec_add(" in _ptx(c)


def test_syntax_error_raises_with_the_compiler_log():
    src = 'extern "C" __global__ void k(float* a) {\n  a[0] = 1.0f\n  a[1] = undefined_name;\n}\n'
    with pytest.raises(CudaCompileError) as e:
        compile_source(src, name="bad.cu")
    msg = str(e.value)
    assert "bad.cu did not compile" in msg and "compute_80" in msg
    assert "bad.cu(3): error" in e.value.log          # the line of the error
    assert "bad.cu(3): error" in msg
    assert isinstance(e.value, ValueError)            # a bad model, for the daemon


def test_long_compiler_logs_are_cut_in_the_message():
    body = "\n".join(f"  undefined_identifier_with_a_long_name_{i:03d}_{'x' * 40} = 1;"
                     for i in range(150))
    with pytest.raises(CudaCompileError) as e:
        compile_source(f'extern "C" __global__ void k() {{\n{body}\n}}\n')
    assert len(e.value.log) > 9000
    assert len(str(e.value)) < 8 * 1024 + 300 and "more characters of compiler log cut" in str(e.value)


@pytest.mark.parametrize("src", [
    '#include "/etc/passwd"\n',
    '#include <cuda_fp16.h>\n',
    '  #  include "x.h"\n',
    '#/* sneaky */include "/etc/hostname"\n',
    '%:include "/etc/hostname"\n',
    '#inc\\\nlude "/etc/hostname"\n',
    '#define P "/etc/passwd"\n#include P\n',
    '#include_next <a.h>\n',
    '#if __has_include("/etc/passwd")\n#endif\n',
])
def test_source_that_would_read_files_is_refused(src):
    with pytest.raises(ValueError, match="not allowed"):
        compile_source(src + VEC_ADD)


def test_includes_in_line_comments_and_mid_line_strings_are_fine():
    src = ('// #include "/etc/passwd"\n/* see #include <x> */\n'
           'static const char note[] = "#include";\n' + VEC_ADD)
    assert compile_source(src).kernels == ["vec_add"]


@pytest.mark.parametrize("src", [
    '\f#include "/etc/passwd"\n',                      # issue 14: any whitespace is whitespace
    '\v#include "/etc/passwd"\n',
    '#\finclude "/etc/passwd"\n',
    '#\vinclude "/etc/passwd"\n',
    'int x;\r#include "/etc/passwd"\n',                # a lone CR ends a line
    '#inc\\ \nlude "/etc/passwd"\n',                   # backslash, blank, newline: a splice
    '??=include "/etc/passwd"\n',                     # a trigraph
    '/**/#include "/etc/passwd"\n',
    # the lexer fooled into a raw string (an identifier ending in R), the directive after it
    '#define xR "\nstatic const char* s = xR"(";\n/**/#include "/etc/passwd"\n//)";\n',
    '/*\n#include "/etc/passwd"\n*/\n',              # refused even in a block comment
])
def test_whitespace_and_lexer_tricks_cannot_hide_an_include(src):
    with pytest.raises(ValueError, match="not allowed"):
        compile_source(src + VEC_ADD)


@pytest.mark.parametrize("opt", ["-I/etc", "--include-path=/", "--pre-include=/etc/passwd",
                                 "-include", "--output=x", "-o"])
def test_file_options_are_refused(opt):
    with pytest.raises(ValueError, match="not allowed"):
        compile_source(VEC_ADD, options=[opt])


def test_code_generation_options_and_arch_override():
    c = compile_source(VEC_ADD, options=["-std=c++17", "-DSCALE=2", "--use_fast_math",
                                         "-arch=compute_75", "-lineinfo"])
    assert c.arch == "compute_75" and ".target sm_75" in _ptx(c)


def test_ptx_given_directly():
    ptx = _ptx(compile_source(VEC_ADD))
    c = load_ptx_text(ptx)
    assert c.kernels == ["vec_add"] and c.arch == "compute_80" and len(c.params["vec_add"]) == 4
    for bad, why in [("hello", ".version"), (".version 8.0\n.target sm_80\n", "no kernel"),
                     (".version 8.0\n.entry k()\n{ret;}\n", ".target")]:
        with pytest.raises(ValueError, match=re.escape(why)):
            load_ptx_text(bad)


def test_missing_cuda_python_names_the_extra(monkeypatch):
    for mod in ("cuda", "cuda.bindings", "cuda.bindings.nvrtc", "cuda.nvrtc"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(CudaUnavailable, match=re.escape("pip install 'gpusched[cuda]'")):
        nvrtc._bindings()


# -- instrumentation ----------------------------------------------------------------------------
def test_instrumented_kernel_takes_the_counter_and_bumps_it_atomically():
    plain = compile_source(VEC_ADD)
    inst = compile_source(instrument(VEC_ADD))
    assert inst.kernels == ["vec_add"]
    params = inst.params["vec_add"]
    assert len(params) == 5 and (params[-1].kind, params[-1].bits) == ("u", 64)
    ptx = _ptx(inst)
    assert len(ATOM.findall(ptx)) == 1          # one block-level atomic add ...
    assert "membar.sys;" in ptx                  # ... made visible to the host
    assert "bar.sync" in ptx                     # after the whole block is done
    body = _ptx(plain)
    assert "atom." not in body and "red." not in body and "membar.sys" not in body
    assert len(plain.params["vec_add"]) == 4


def test_early_return_still_counts_the_block():
    """Issue 18, finding 4: the wrapper has no barrier after the body (threads that returned
    early must not wait at a second __syncthreads while the others are at the body's), the
    last thread out of the block counts it, and the fence comes before the atomic."""
    out = instrument(VEC_ADD)
    wrapper = next(ln for ln in out.splitlines() if 'extern "C" __global__ void vec_add(' in ln)
    wrapper = wrapper[wrapper.index('extern "C"'):]
    assert "return" not in wrapper                              # the body's return ends the body
    i_call = wrapper.index(f"{BODY_PREFIX}vec_add(a, b, c, n);")
    prologue, epilogue = wrapper[:i_call], wrapper[i_call:]
    assert prologue.count("__syncthreads();") == 1              # before the body: every thread
    assert "__syncthreads" not in epilogue and "__syncwarp" not in epilogue
    i_fence = epilogue.index("__threadfence_system();")
    i_add = epilogue.index(f"atomicAdd({PROGRESS_PARAM}, 1ULL);")
    assert i_fence < i_add                                      # the fence before the atomic
    last = epilogue.index("if (atomicSub(&__gpusched_left, 1u) == 1u)")
    assert epilogue.index("__threadfence();") < last < i_fence  # the last thread out does it
    assert "blockDim.x * blockDim.y * blockDim.z" in prologue
    body = out[out.index(f"void {BODY_PREFIX}vec_add("):out.index('extern "C" __global__')]
    assert "__device__ __forceinline__" in out and "return;" in body


TAIL = """\
extern "C" __global__ void tail(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __shared__ float s[256];
    s[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = s[threadIdx.x] * 2.0f;
}
"""


def test_instrumented_tail_kernel_has_no_barrier_after_its_body_in_the_ptx():
    """The same in what NVRTC makes of an early-return kernel that uses __syncthreads: one
    barrier more than the kernel's own (the prologue's), the system fence before the counter's
    atomic, and no barrier between the body's last one and the count."""
    plain, inst = _ptx(compile_source(TAIL)), _ptx(compile_source(instrument(TAIL)))
    bars = re.compile(r"^\s*(?:bar|barrier)\.sync", re.MULTILINE)
    assert len(bars.findall(inst)) == len(bars.findall(plain)) + 1
    first_bar = bars.search(inst).start()
    assert inst.index("st.shared.u32", inst.index(".entry")) < first_bar   # the prologue
    add = ATOM.search(inst).start()
    fence = inst.rindex("membar.sys;", 0, add)
    assert bars.search(inst, fence) is None                    # nothing waits after the body
    assert "atom.shared.add.u32" in inst[inst.rindex("bar.sync", 0, fence):fence]


def test_instrumentation_keeps_line_numbers():
    src = VEC_ADD.replace("c[i] = a[i] + b[i];", "c[i] = a[i] + missing;")  # line 5
    with pytest.raises(CudaCompileError) as e:
        compile_source(instrument(src), name="k.cu")
    assert "k.cu(5): error" in e.value.log


def test_instrumentation_handles_real_world_headers():
    src = """\
// __global__ in a comment, and "in a string": "__global__ void nope(int) {}"
template <typename T, int N> struct Vec { T v[N]; };
namespace ops {
extern "C" __global__ void __launch_bounds__(128) axpy(Vec<float, 4> coef, /* a, b */
        const float* __restrict__ x, float* y, unsigned n = 0) {
    const char* tag = "}{)(";
    if (threadIdx.x >= n) return;
    y[threadIdx.x] += coef.v[0] * x[threadIdx.x] + (tag[0] == '}');
}
}
extern "C" {
__global__ void unnamed(float*, unsigned, float out[4]) { out[0] = 1.0f; }
__global__ void none(void) {}
__launch_bounds__(64) __global__ void lb(const __grid_constant__ Vec<int, 2> p, int* o) {
    o[0] = p.v[1];
}
}
"""
    out = instrument(src)
    c = compile_source(out)
    assert sorted(c.kernels) == ["axpy", "lb", "none", "unnamed"]
    sizes = {k: [p.size for p in v] for k, v in c.params.items()}
    assert sizes == {"axpy": [16, 8, 8, 4, 8], "unnamed": [8, 4, 8, 8], "none": [8],
                     "lb": [8, 8, 8]}
    assert len(ATOM.findall(_ptx(c))) == 4
    assert out.count("\n") == src.count("\n")
    assert ".maxntid 128, 1, 1" in _ptx(c) and ".maxntid 64, 1, 1" in _ptx(c)


@pytest.mark.parametrize("src, what", [
    ("__global__ void k(float* a) { a[0] = 1; }", 'kernel k (line 1): not extern "C"'),
    ('extern "C" __global__ void k(int n, ...) { }', "kernel k (line 1), parameter 2: variadic"),
    ('extern "C" __global__ void k(void (*f)(int)) { }', "kernel k (line 1), parameter 1"),
    ('extern "C" __global__ void k(float* a);\nextern "C" __global__ void k(float* a) {}',
     "kernel k (line 1): a declaration without a body"),
    ('#define KERNEL(n) extern "C" __global__ void n(float* a) {}\nKERNEL(k)',
     "line 1: a __global__ inside a preprocessor directive"),
    ("template <int N> __global__ void k(float* a) { }", "kernel k (line 1)"),
    ('extern "C" __global__ void k(float* __gpusched_progress) { }', "reserved prefix"),
    ("int x;", 'no extern "C" __global__ kernel'),
])
def test_instrumentation_refuses_what_it_cannot_handle(src, what):
    with pytest.raises(ValueError, match=re.escape(what)):
        instrument(src)


# -- the model and its checks -------------------------------------------------------------------
def test_model_round_trips_on_the_wire():
    m = _vec_model(smem=128, est_us=25.0)
    raw = msgspec.msgpack.encode(m)
    back = msgspec.msgpack.decode(raw, type=CudaModel)
    assert back == m and isinstance(back.launches[0].args[3], Scalar)
    as_json = msgspec.json.decode(msgspec.json.encode(m))
    assert as_json["launches"][0]["args"][0] == {"type": "buf", "index": 0}
    bad = dict(as_json, surprise=1)
    with pytest.raises(msgspec.ValidationError, match="surprise"):
        msgspec.json.decode(msgspec.json.encode(bad), type=CudaModel)
    neg = dict(as_json, launches=[dict(as_json["launches"][0], grid=[0])])
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(neg), type=CudaModel)


def test_valid_model_builds_kernel_specs():
    model = _vec_model(grid=[4, 2], block=[128, 2], smem=1024, est_us=33.0)
    compiled, specs = build_model(model, limits_for_spec("T4"))
    assert compiled.kernels == ["vec_add"]
    (k,) = specs
    assert (k.name, k.grid, k.block, k.smem, k.est_us) == ("vec_add", 8, 256, 1024, 33.0)
    assert kernel_specs(model, {"vec_add": (40, 512)})[0].smem == 1536


H100 = limits_for_spec(gpu_spec("H100"))


@pytest.mark.parametrize("launch, message", [
    ({"block": [2048]},
     "launch 0 (vec_add): block 2048x1x1 = 2048 threads, the device allows at most 1024 per block"),
    ({"block": [1, 1, 65]}, ("launch 0 (vec_add): block 1x1x65: block z is 65, the device allows "
                             "at most 64")),
    ({"block": [1, 1025]}, "launch 0 (vec_add): block 1x1025x1 = 1025 threads"),
    ({"grid": [1, 70000]}, ("launch 0 (vec_add): grid 1x70000x1: grid y is 70000, the device "
                            "allows at most 65535")),
    ({"grid": [2**31]}, "grid x is 2147483648, the device allows at most 2147483647"),
    ({"smem": 300_000}, ("launch 0 (vec_add): smem 300000 bytes of dynamic shared memory, H100 "
                         "allows at most 232448 bytes per block (49152 without opt-in)")),
    ({"kernel": "vec_mul"}, "launch 0 (vec_add".replace("vec_add", "vec_mul")
     + "): the module has no kernel 'vec_mul' (it has: vec_add"),
    ({"args": [Buf(0), Buf(1), Buf(7), Scalar("int32", 4)]},
     "launch 0 (vec_add): argument 2: buffer index 7 out of range (the model has 3 buffers)"),
    ({"args": [Buf(0), Buf(1), Buf(2)]}, "launch 0 (vec_add): 3 arguments given, the kernel takes 4"),
    ({"args": [Buf(0), Buf(1), Buf(2), Scalar("float32", 1.0)]},
     "argument 3: a float32 is passed, the kernel takes .u32"),
    ({"args": [Buf(0), Buf(1), Buf(2), Scalar("int64", 1)]},
     "argument 3: a int64 is passed, the kernel takes .u32"),
    ({"args": [Buf(0), Buf(1), Buf(2), Scalar("int32", 2**31)]},
     "argument 3: 2147483648 is out of range for int32"),
    ({"args": [Buf(0), Buf(1), Scalar("float64", 5.0), Scalar("int32", 1)]},
     "argument 2: a float64 is passed, the kernel takes .u64"),
    ({"args": [Buf(0), Buf(1), Buf(2), Buf(0)]},
     "argument 3: a buffer (pointer) is passed, the kernel takes .u32"),
])
def test_impossible_launches_are_refused_with_launch_and_limit(launch, message):
    model = _vec_model(**launch)
    with pytest.raises(ValueError) as e:
        validate_model(model, compile_source(VEC_ADD), H100)
    assert message in str(e.value)


def test_smem_limit_is_the_gpus():
    compiled = compile_source(VEC_ADD)
    validate_model(_vec_model(smem=200 * 1024), compiled, H100)
    with pytest.raises(ValueError, match="T4 allows at most 65536 bytes per block"):
        validate_model(_vec_model(smem=100 * 1024), compiled, limits_for_spec("T4"))
    with pytest.raises(ValueError, match="at most 49152 bytes"):
        validate_model(_vec_model(smem=49153), compiled, LaunchLimits())


def test_model_level_refusals():
    compiled = compile_source(VEC_ADD)
    base = _vec_model()
    both = msgspec.structs.replace(base, ptx=compiled.ptx.decode())
    with pytest.raises(ValueError, match="exactly one of source"):
        validate_model(both, compiled)
    with pytest.raises(ValueError, match="exactly one of source"):
        compile_model(msgspec.structs.replace(base, source=""))
    ptx_inst = msgspec.structs.replace(base, source="", ptx=compiled.ptx.decode(), instrument=True)
    with pytest.raises(ValueError, match="PTX given directly cannot be instrumented"):
        compile_model(ptx_inst)
    dup = msgspec.structs.replace(base, buffers=base.buffers + [base.buffers[0]])
    with pytest.raises(ValueError, match="buffer names must be unique: a"):
        validate_model(dup, compiled)
    huge = msgspec.structs.replace(base, buffers=[CudaBuffer("a", "float32", [2**40], "input")]
                                   + base.buffers[1:])
    with pytest.raises(ValueError, match="bytes per job|allows .* per job"):
        validate_model(huge, compiled)


def test_instrumented_model_validates_without_the_counter_argument():
    model = msgspec.structs.replace(_vec_model(), instrument=True)
    compiled, specs = build_model(model, H100)
    assert compiled.instrumented and len(compiled.params["vec_add"]) == 5
    assert len(specs) == 1
    with pytest.raises(ValueError, match="compiled without it"):
        validate_model(model, compile_source(VEC_ADD), H100)


def test_limits_of_the_presets():
    assert limits_for_spec("H100").smem_optin == 227 * 1024
    assert limits_for_spec("A100").smem_optin == 163 * 1024
    assert limits_for_spec("T4").smem_optin == 64 * 1024
    assert limits_for_spec("unknown").smem_optin == 48 * 1024


# -- detection and the backend ------------------------------------------------------------------
def _cuda_gpu_here() -> bool:
    from scheduler_daemon.cuda.detect import cuda_gpus
    return bool(cuda_gpus()[0])


def test_detection_without_a_gpu_says_why():
    if _cuda_gpu_here():
        pytest.skip("this machine has a CUDA GPU")
    from scheduler_daemon.cuda.detect import detect
    det = detect()
    assert det.cuda == [] and det.reason and det.driver_version is None
    assert det.summary().startswith("no CUDA GPU (")


def test_cuda_backend_without_a_gpu_is_a_clear_error():
    if _cuda_gpu_here():
        pytest.skip("this machine has a CUDA GPU")
    from scheduler_daemon.devices.factory import BACKENDS, make_device
    assert "cuda" in BACKENDS
    with pytest.raises(ValueError, match=r"no CUDA GPU visible \(.*\).*use --backend sim or torch"):
        make_device("cuda")


def test_presets_for_detected_gpus():
    from scheduler_daemon.devices.factory import preset_for
    assert preset_for("NVIDIA H200") == "H100"
    assert preset_for("NVIDIA H100 80GB HBM3") == "H100"
    assert preset_for("Tesla T4") == "T4"
    assert preset_for("NVIDIA L4", (8, 9)) == "A100"
    assert preset_for("Some GPU", (7, 5)) == "T4"
    assert preset_for("Some GPU") == "A100"


def test_auto_on_a_gpu_node_with_a_cpu_torch_runs_torch_on_the_cpu(monkeypatch, caplog):
    """A GPU NVML sees is only used through torch when this torch build has CUDA; otherwise the
    daemon says so and runs torch on the CPU instead of failing on its first kernel."""
    import scheduler_daemon.devices.factory as devices
    monkeypatch.setattr(devices, "visible_gpus", lambda: ["NVIDIA H200"])
    monkeypatch.setattr(devices, "_torch_has_cuda", lambda: False)
    with caplog.at_level("WARNING", logger="gpusched.device"):
        dev = devices.make_device("auto")
    try:
        assert dev.name == "torch" and str(dev.device) == "cpu"
        assert "no CUDA" in caplog.text and "--backend cuda" in caplog.text
    finally:
        dev.close()
