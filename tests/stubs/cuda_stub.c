/* A strict stand-in for the CUDA driver (libcuda.so.1), for CI machines without a GPU.
 *
 * Built by `make stub-cuda` into build/stubs/libcuda.so.1 and loaded only by the tests that ask
 * for it (a subprocess started with LD_LIBRARY_PATH=build/stubs), so cuda-python's real
 * `cuda.bindings.driver` (which finds the driver with dlopen("libcuda.so.1") and resolves every
 * entry point through cuGetProcAddress_v2) runs the daemon's driver backend against it.
 *
 * It is a driver that punishes what a real one punishes, and a few things a real one lets pass
 * silently. Misuse returns the CUDA error a driver would and is also recorded as a VIOLATION
 * (printed to stderr at once, listed by gpuschedStubReport(); GPUSCHED_STUB_ABORT=1 aborts):
 *  - cuInit first, flags 0; devices as configured (GPUSCHED_STUB_DEVICES), reordered by
 *    CUDA_DEVICE_ORDER=PCI_BUS_ID, filtered and renumbered by CUDA_VISIBLE_DEVICES (indices or
 *    GPU-UUID prefixes, cut at the first invalid entry, as the driver does);
 *  - a current context per thread (cuCtxSetCurrent is thread-local); every context-bound call
 *    without one is CUDA_ERROR_INVALID_CONTEXT;
 *  - handles are checked (never dereferenced): a destroyed or foreign stream, event, module or
 *    function is CUDA_ERROR_INVALID_HANDLE; flags of streams, events, host allocations, waits;
 *  - streams run their work in order on their own worker thread: kernels take time (and finish
 *    asynchronously), events complete when the stream reaches them, cuStreamWaitEvent waits for
 *    the record it saw; cuEventElapsedTime needs both events complete and timed;
 *  - a race detector: an operation that touches memory that another stream's operation, queued
 *    earlier or running now and not ordered by an event, also touches (one of them writing) is a
 *    violation; so is freeing memory (cuMemFree, cuMemFreeAsync when it runs, cuMemFreeHost) or
 *    unloading a module while work that uses it is in flight, and releasing the primary context
 *    with work in flight;
 *  - modules: a cubin (ELF) loads only on its architecture's major with a minor <= the device's
 *    (else CUDA_ERROR_NO_BINARY_FOR_GPU); PTX must be NUL-ended text with .version (<= what
 *    this driver supports) and .target (<= the device); kernels and their parameters (offsets
 *    and sizes) are read from the image: the PTX `.entry name(.param .u64 a, ...)` text or the
 *    cubin's .nv.info KPARAM_INFO records, with registers, static shared memory and launch
 *    bounds;
 *  - launches: grid and block limits, launch bounds, dynamic shared memory against the
 *    function's attribute, registers; arguments are read through kernelParams with the sizes
 *    the module declares. Kernels the stub knows by name (vec_add, scale, spin, fault) run:
 *    every pointer they use must lie inside a live allocation (else the context is broken with
 *    CUDA_ERROR_ILLEGAL_ADDRESS, sticky, like a real fault); an instrumented kernel (one extra
 *    trailing pointer) gets its host-mapped progress counter bumped wave by wave while it runs;
 *  - device memory is not zeroed (0xA5 bytes) and has a capacity; host-visible pointers and
 *    device pointers are different address ranges;
 *  - leaks: what is alive when the primary context's last reference goes is counted.
 * The legacy default stream (NULL) and the `extra` launch argument are not modelled: they fail
 * with CUDA_ERROR_NOT_SUPPORTED and say so.
 *
 * Test hooks (not CUDA): gpuschedStubReport() returns a JSON report; gpuschedStubClear() clears
 * the violation list and the counters.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long cuuint64_t;
typedef void *CUcontext;
typedef void *CUstream;
typedef void *CUevent;
typedef void *CUmodule;
typedef void *CUfunction;
typedef void *CUmemoryPool;
typedef struct { char bytes[16]; } CUuuid;

enum {
    OK = 0, E_INVALID_VALUE = 1, E_OUT_OF_MEMORY = 2, E_NOT_INITIALIZED = 3, E_NO_DEVICE = 100,
    E_INVALID_DEVICE = 101, E_INVALID_IMAGE = 200, E_INVALID_CONTEXT = 201, E_NO_BINARY = 209,
    E_INVALID_PTX = 218, E_UNSUPPORTED_PTX = 222, E_INVALID_HANDLE = 400, E_NOT_FOUND = 500,
    E_NOT_READY = 600, E_ILLEGAL_ADDRESS = 700, E_OUT_OF_RESOURCES = 701,
    E_CONTEXT_IS_DESTROYED = 709, E_NOT_SUPPORTED = 801, E_UNKNOWN = 999
};

static const struct { int code; const char *name; } ERRS[] = {
    {0, "CUDA_SUCCESS"}, {1, "CUDA_ERROR_INVALID_VALUE"}, {2, "CUDA_ERROR_OUT_OF_MEMORY"},
    {3, "CUDA_ERROR_NOT_INITIALIZED"}, {100, "CUDA_ERROR_NO_DEVICE"},
    {101, "CUDA_ERROR_INVALID_DEVICE"}, {200, "CUDA_ERROR_INVALID_IMAGE"},
    {201, "CUDA_ERROR_INVALID_CONTEXT"}, {209, "CUDA_ERROR_NO_BINARY_FOR_GPU"},
    {218, "CUDA_ERROR_INVALID_PTX"}, {222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"},
    {400, "CUDA_ERROR_INVALID_HANDLE"}, {500, "CUDA_ERROR_NOT_FOUND"},
    {600, "CUDA_ERROR_NOT_READY"}, {700, "CUDA_ERROR_ILLEGAL_ADDRESS"},
    {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"}, {709, "CUDA_ERROR_CONTEXT_IS_DESTROYED"},
    {801, "CUDA_ERROR_NOT_SUPPORTED"}, {999, "CUDA_ERROR_UNKNOWN"},
};

/* flags */
#define EV_BLOCKING_SYNC 1u
#define EV_DISABLE_TIMING 2u
#define EV_INTERPROCESS 4u
#define HOST_PORTABLE 1u
#define HOST_DEVICEMAP 2u
#define HOST_WRITECOMBINED 4u
#define CTX_SCHED_BLOCKING_SYNC 4u

/* ---------------------------------------------------------------------------------------- */
/* configuration                                                                              */
/* ---------------------------------------------------------------------------------------- */
typedef struct {
    char name[96];
    int major, minor, sms;
    unsigned long long mem;
    char bus[32];
    char uuid[64];
    unsigned char ub[16];
} DevCfg;

static const char *DEFAULT_DEVICES =
    "NVIDIA A100-SXM4-80GB|8.0|108|81920|0000:81:00.0|GPU-a1000000-0000-4000-8000-000000000081;"
    "NVIDIA H100 80GB HBM3|9.0|132|81920|0000:41:00.0|GPU-91000000-0000-4000-8000-000000000041";

static DevCfg g_all[16];
static int g_nall;
static DevCfg *g_dev[16]; /* visible ordinal -> device */
static int g_ndev;
static int g_driver_version = 12090;
static int g_ptx_max = 88; /* PTX ISA 8.8 (CUDA 12.9) */
static double g_kernel_us = 100.0, g_copy_us = 50.0, g_clock_khz = 2000000.0;

static void parse_uuid(DevCfg *d) {
    const char *p = d->uuid;
    if (!strncmp(p, "GPU-", 4)) p += 4;
    int n = 0;
    for (; *p && n < 32; p++) {
        if (*p == '-') continue;
        int v = isdigit((unsigned char)*p) ? *p - '0' : (tolower((unsigned char)*p) - 'a' + 10);
        if (n % 2 == 0) d->ub[n / 2] = (unsigned char)(v << 4); else d->ub[n / 2] |= (unsigned char)v;
        n++;
    }
}

static int cmp_bus(const void *a, const void *b) {
    return strcmp(((const DevCfg *)a)->bus, ((const DevCfg *)b)->bus);
}

static void configure(void) {
    const char *spec = getenv("GPUSCHED_STUB_DEVICES");
    char *copy = strdup(spec && *spec ? spec : DEFAULT_DEVICES), *save = NULL;
    g_nall = 0;
    for (char *tok = strtok_r(copy, ";", &save); tok && g_nall < 16; tok = strtok_r(NULL, ";", &save)) {
        DevCfg *d = &g_all[g_nall];
        memset(d, 0, sizeof *d);
        char *f[6] = {0}, *s2 = NULL;
        int nf = 0;
        for (char *t = strtok_r(tok, "|", &s2); t && nf < 6; t = strtok_r(NULL, "|", &s2)) f[nf++] = t;
        if (nf < 6) continue;
        snprintf(d->name, sizeof d->name, "%s", f[0]);
        sscanf(f[1], "%d.%d", &d->major, &d->minor);
        d->sms = atoi(f[2]);
        d->mem = strtoull(f[3], NULL, 10) << 20;
        snprintf(d->bus, sizeof d->bus, "%s", f[4]);
        snprintf(d->uuid, sizeof d->uuid, "%s", f[5]);
        parse_uuid(d);
        g_nall++;
    }
    free(copy);
    const char *order = getenv("CUDA_DEVICE_ORDER");
    if (order && !strcmp(order, "PCI_BUS_ID")) qsort(g_all, g_nall, sizeof g_all[0], cmp_bus);
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    g_ndev = 0;
    if (!vis) {
        for (int i = 0; i < g_nall; i++) g_dev[g_ndev++] = &g_all[i];
    } else {
        char *c2 = strdup(vis), *s3 = NULL;
        for (char *t = strtok_r(c2, ",", &s3); t; t = strtok_r(NULL, ",", &s3)) {
            while (*t == ' ') t++;
            DevCfg *hit = NULL;
            if (!strncasecmp(t, "GPU-", 4)) {
                int matches = 0;
                for (int i = 0; i < g_nall; i++)
                    if (!strncasecmp(g_all[i].uuid, t, strlen(t))) { hit = &g_all[i]; matches++; }
                if (matches != 1) hit = NULL;
            } else if (*t && strspn(t, "0123456789") == strlen(t)) {
                int i = atoi(t);
                if (i < g_nall) hit = &g_all[i];
            }
            if (!hit) break; /* the driver stops at the first invalid entry */
            int dup = 0;
            for (int k = 0; k < g_ndev; k++) dup |= g_dev[k] == hit;
            if (dup) break;
            g_dev[g_ndev++] = hit;
        }
        free(c2);
    }
    const char *v;
    if ((v = getenv("GPUSCHED_STUB_DRIVER_VERSION"))) g_driver_version = atoi(v);
    if ((v = getenv("GPUSCHED_STUB_PTX_MAX"))) g_ptx_max = atoi(v);
    if ((v = getenv("GPUSCHED_STUB_KERNEL_US"))) g_kernel_us = atof(v);
    if ((v = getenv("GPUSCHED_STUB_COPY_US"))) g_copy_us = atof(v);
    if ((v = getenv("GPUSCHED_STUB_CLOCK_KHZ"))) g_clock_khz = atof(v);
}

/* ---------------------------------------------------------------------------------------- */
/* state                                                                                      */
/* ---------------------------------------------------------------------------------------- */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int g_init;

enum { K_CTX, K_STREAM, K_EVENT, K_MODULE, K_FUNC, K_POOL, K_N };
static const char *KIND_NAME[K_N] = {"context", "stream", "event", "module", "function", "pool"};
typedef struct { int id, alive; } Hdr;
static void **g_obj[K_N];
static int g_nobj[K_N], g_capobj[K_N];

typedef struct Ctx { int id, alive; int dev; int refs; int sticky; unsigned flags; } Ctx;
typedef struct Op Op;
typedef struct Stream {
    int id, alive;
    Ctx *ctx;
    unsigned flags;
    Op *head, *tail;
    int quit;
} Stream;
typedef struct Event {
    int id, alive;
    Ctx *ctx;
    unsigned flags;
    uint64_t issued, done;
    double t;
} Event;
enum { A_DEVICE, A_POOL, A_HOST };
typedef struct Alloc {
    int id, alive;
    Ctx *ctx;
    int kind;
    CUdeviceptr d;   /* device address (host allocations: their mapped device address) */
    size_t n;
    char *h;         /* backing (host allocations: the host pointer given out) */
    int free_queued; /* cuMemFreeAsync called: no new work may use it */
    unsigned hflags;
} Alloc;
typedef struct Param { int off, size; } Param;
struct Module;
typedef struct Func {
    int id, alive;
    struct Module *m;
    char name[128];
    int np;
    Param p[128];
    int regs, static_smem, max_threads, dyn_max;
} Func;
typedef struct Module {
    int id, alive;
    Ctx *ctx;
    int nf;
    Func *f[256];
    int from_ptx;
    int arch;
} Module;
typedef struct Pool { int id, alive; int dev; unsigned long long threshold; } Pool;

enum { OP_KERNEL, OP_HTOD, OP_DTOH, OP_SET8, OP_SET32, OP_RECORD, OP_WAIT, OP_FREE };
static const char *OP_NAME[] = {"kernel", "cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync",
                                "cuMemsetD8Async", "cuMemsetD32Async", "cuEventRecord",
                                "cuStreamWaitEvent", "cuMemFreeAsync"};
typedef struct Use { Alloc *a; CUdeviceptr lo, hi; int write; } Use;
struct Op {
    int kind;
    uint64_t seq;
    Stream *s;
    Op *next, *inext, *iprev;
    int started, done;
    Func *f;
    unsigned g[3], b[3], smem;
    unsigned char *args;
    CUdeviceptr d;
    const char *hsrc;
    char *snap;
    char *hdst;
    size_t n;
    unsigned val;
    Event *ev;
    uint64_t gen;
    Alloc *fa;
    int nuse;
    Use use[16];
};

static Op *g_inc; /* operations enqueued and not complete */
static uint64_t g_seq;
static Alloc **g_live;
static int g_nlive, g_caplive;
static CUdeviceptr g_next_dev = 0x7e0000000000ULL, g_next_map = 0x7d0000000000ULL;
static unsigned long long g_used[16], g_pool_used[16], g_pool_high[16];
static Ctx *g_primary[16];
static Pool *g_pool[16];
static __thread Ctx *t_cur;

/* report counters */
static char *g_viol[512];
static int g_nviol;
static long g_spin_waits, g_spin_syncs, g_event_syncs, g_launches, g_unknown_kernels, g_faults, g_loads;
static long g_leaks[6]; /* allocs, pool allocs, host allocs, modules, streams, events */
static long g_ctx_released;
static char g_loadlog[4096];
static char g_launchlog[16384];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_us(double us) {
    if (us <= 0) return;
    struct timespec ts = {(time_t)(us / 1e6), (long)((us - (double)(time_t)(us / 1e6) * 1e6) * 1e3)};
    nanosleep(&ts, NULL);
}

static void appendf(char *buf, size_t cap, const char *fmt, ...) {
    size_t len = strlen(buf);
    if (len + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

static void violation(const char *fmt, ...) {
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "gpusched stub libcuda: VIOLATION: %s\n", buf);
    if (g_nviol < 512) g_viol[g_nviol] = strdup(buf);
    g_nviol++;
    if (getenv("GPUSCHED_STUB_ABORT")) abort();
}

static void unsupported(const char *what) {
    fprintf(stderr, "gpusched stub libcuda: not modelled by the stub: %s\n", what);
}

static void *new_obj(int kind, size_t size) {
    Hdr *h = calloc(1, size);
    if (g_nobj[kind] == g_capobj[kind]) {
        g_capobj[kind] = g_capobj[kind] ? 2 * g_capobj[kind] : 64;
        g_obj[kind] = realloc(g_obj[kind], sizeof(void *) * g_capobj[kind]);
    }
    h->id = g_nobj[kind];
    h->alive = 1;
    g_obj[kind][g_nobj[kind]++] = h;
    return h;
}

static uintptr_t kind_base(int kind) { return 0x510000000000ULL + ((uintptr_t)kind << 36); }
static void *handle(int kind, void *o) { return (void *)(kind_base(kind) + ((uintptr_t)(((Hdr *)o)->id + 1) << 4)); }

/* the object a handle names, alive or not; NULL for what was never a handle of that kind */
static void *lookup_any(int kind, const void *h) {
    uintptr_t v = (uintptr_t)h, base = kind_base(kind);
    if (v < base + 16 || ((v - base) & 0xf)) return NULL;
    uintptr_t id = ((v - base) >> 4) - 1;
    if (id >= (uintptr_t)g_nobj[kind]) return NULL;
    return g_obj[kind][id];
}

/* ---------------------------------------------------------------------------------------- */
/* checks shared by the entry points (mu held)                                                */
/* ---------------------------------------------------------------------------------------- */
#define LOCK() pthread_mutex_lock(&mu)
#define RET(x) do { CUresult r__ = (x); pthread_mutex_unlock(&mu); return r__; } while (0)

static CUresult need_ctx(const char *call) {
    if (!g_init) return E_NOT_INITIALIZED;
    if (!t_cur) {
        violation("%s without a current context on this thread (cuCtxSetCurrent is per thread)", call);
        return E_INVALID_CONTEXT;
    }
    if (!t_cur->alive) {
        violation("%s: this thread's current context was destroyed", call);
        return E_CONTEXT_IS_DESTROYED;
    }
    if (t_cur->sticky) return t_cur->sticky;
    return OK;
}

static void *get(int kind, const void *h, const char *call, CUresult *err) {
    Hdr *o = lookup_any(kind, h);
    if (!o) {
        violation("%s: %p is not a %s handle", call, h, KIND_NAME[kind]);
        *err = E_INVALID_HANDLE;
        return NULL;
    }
    if (!o->alive) {
        violation("%s: %s %p was destroyed", call, KIND_NAME[kind], h);
        *err = E_INVALID_HANDLE;
        return NULL;
    }
    if (kind != K_CTX && kind != K_POOL && kind != K_FUNC) {
        Ctx *c = kind == K_STREAM ? ((Stream *)o)->ctx : kind == K_EVENT ? ((Event *)o)->ctx
                                                                          : ((Module *)o)->ctx;
        if (c != t_cur) {
            violation("%s: %s %p belongs to another context than this thread's current one", call,
                      KIND_NAME[kind], h);
            *err = E_INVALID_HANDLE;
            return NULL;
        }
    }
    *err = OK;
    return o;
}

static Stream *get_stream(CUstream h, const char *call, CUresult *err) {
    if ((uintptr_t)h <= 2) {
        unsupported("the legacy/per-thread default stream (the daemon uses its own streams)");
        *err = E_NOT_SUPPORTED;
        return NULL;
    }
    return get(K_STREAM, h, call, err);
}

static Alloc *find_range(CUdeviceptr lo, size_t n) {
    for (int i = 0; i < g_nlive; i++) {
        Alloc *a = g_live[i];
        if (a->kind == A_HOST && !(a->hflags & HOST_DEVICEMAP)) continue;
        if (lo >= a->d && lo + n <= a->d + a->n && lo + n >= lo) return a;
    }
    return NULL;
}

static Alloc *find_host(const void *p, size_t n) {
    uintptr_t lo = (uintptr_t)p;
    for (int i = 0; i < g_nlive; i++) {
        Alloc *a = g_live[i];
        if (a->kind == A_HOST && lo >= (uintptr_t)a->h && lo + n <= (uintptr_t)a->h + a->n) return a;
    }
    return NULL;
}

static char *host_of(CUdeviceptr d, size_t n) {
    Alloc *a = find_range(d, n);
    return a ? a->h + (d - a->d) : NULL;
}

static void live_add(Alloc *a) {
    if (g_nlive == g_caplive) {
        g_caplive = g_caplive ? 2 * g_caplive : 256;
        g_live = realloc(g_live, sizeof(Alloc *) * g_caplive);
    }
    g_live[g_nlive++] = a;
}

static void live_remove(Alloc *a) {
    for (int i = 0; i < g_nlive; i++)
        if (g_live[i] == a) { g_live[i] = g_live[--g_nlive]; return; }
}

static int uses_alloc(Op *o, Alloc *a) {
    for (int i = 0; i < o->nuse; i++)
        if (o->use[i].a == a) return 1;
    return 0;
}

static int pending_work(Ctx *c) {
    for (Op *o = g_inc; o; o = o->inext)
        if (o->s->ctx == c) return 1;
    return 0;
}

static void describe_op(Op *o, char *buf, size_t n) {
    if (o->kind == OP_KERNEL)
        snprintf(buf, n, "kernel %s (#%llu on stream %d)", o->f->name, (unsigned long long)o->seq, o->s->id);
    else
        snprintf(buf, n, "%s (#%llu on stream %d)", OP_NAME[o->kind], (unsigned long long)o->seq, o->s->id);
}

/* ---------------------------------------------------------------------------------------- */
/* kernels the stub can run                                                                   */
/* ---------------------------------------------------------------------------------------- */
static uint64_t arg_u(Op *o, int i) {
    uint64_t v = 0;
    memcpy(&v, o->args + o->f->p[i].off, o->f->p[i].size > 8 ? 8 : (size_t)o->f->p[i].size);
    return v;
}
static int32_t arg_i32(Op *o, int i) { return (int32_t)(uint32_t)arg_u(o, i); }
static float arg_f32(Op *o, int i) {
    float f;
    uint32_t v = (uint32_t)arg_u(o, i);
    memcpy(&f, &v, 4);
    return f;
}

static unsigned long long blocks_of(Op *o) { return (unsigned long long)o->g[0] * o->g[1] * o->g[2]; }

static void add_use(Op *o, CUdeviceptr lo, size_t n, int write) {
    if (o->nuse >= 16 || n == 0) return;
    Use *u = &o->use[o->nuse++];
    u->a = find_range(lo, n);
    u->lo = lo;
    u->hi = lo + n;
    u->write = write;
}

typedef struct {
    const char *name;
    int np;
    int sizes[8];
    void (*uses)(Op *);
    CUresult (*run)(Op *);
    double (*wave_us)(Op *);
} Known;

static void u_vec_add(Op *o) {
    size_t n = (size_t)(arg_i32(o, 3) > 0 ? arg_i32(o, 3) : 0) * 4;
    add_use(o, arg_u(o, 0), n, 0);
    add_use(o, arg_u(o, 1), n, 0);
    add_use(o, arg_u(o, 2), n, 1);
}
static CUresult r_vec_add(Op *o) {
    int n = arg_i32(o, 3);
    if (n <= 0) return OK;
    float *a = (float *)host_of(arg_u(o, 0), 4 * (size_t)n), *b = (float *)host_of(arg_u(o, 1), 4 * (size_t)n),
          *c = (float *)host_of(arg_u(o, 2), 4 * (size_t)n);
    if (!a || !b || !c) return E_ILLEGAL_ADDRESS;
    for (int i = 0; i < n; i++) c[i] = a[i] + b[i];
    return OK;
}
static void u_scale(Op *o) { add_use(o, arg_u(o, 0), (size_t)(arg_i32(o, 2) > 0 ? arg_i32(o, 2) : 0) * 4, 1); }
static CUresult r_scale(Op *o) {
    int n = arg_i32(o, 2);
    if (n <= 0) return OK;
    float *x = (float *)host_of(arg_u(o, 0), 4 * (size_t)n), alpha = arg_f32(o, 1);
    if (!x) return E_ILLEGAL_ADDRESS;
    for (int i = 0; i < n; i++) x[i] *= alpha;
    return OK;
}
static void u_spin(Op *o) { add_use(o, arg_u(o, 0), 4 * blocks_of(o), 1); }
static CUresult r_spin(Op *o) {
    unsigned long long nb = blocks_of(o);
    float *out = (float *)host_of(arg_u(o, 0), 4 * nb);
    if (!out) return E_ILLEGAL_ADDRESS;
    for (unsigned long long i = 0; i < nb; i++) out[i] = 1.0f;
    return OK;
}
static double w_spin(Op *o) { return (double)(int64_t)arg_u(o, 1) / g_clock_khz * 1e3; }
static void u_tail(Op *o) {
    size_t n = (size_t)(arg_i32(o, 2) > 0 ? arg_i32(o, 2) : 0) * 4;
    add_use(o, arg_u(o, 0), n, 0);
    add_use(o, arg_u(o, 1), n, 1);
}
static CUresult r_tail(Op *o) { /* y[i] = 2 x[i] for i < n (the rest return early) */
    int n = arg_i32(o, 2);
    if (n <= 0) return OK;
    float *x = (float *)host_of(arg_u(o, 0), 4 * (size_t)n), *y = (float *)host_of(arg_u(o, 1), 4 * (size_t)n);
    if (!x || !y) return E_ILLEGAL_ADDRESS;
    for (int i = 0; i < n; i++) y[i] = x[i] * 2.0f;
    return OK;
}
static void u_fault(Op *o) { (void)o; }
static CUresult r_fault(Op *o) { (void)o; return E_ILLEGAL_ADDRESS; }

static const Known KNOWN[] = {
    {"vec_add", 4, {8, 8, 8, 4}, u_vec_add, r_vec_add, NULL},
    {"scale", 3, {8, 4, 4}, u_scale, r_scale, NULL},
    {"spin", 2, {8, 8}, u_spin, r_spin, w_spin},
    {"tail", 3, {8, 8, 4}, u_tail, r_tail, NULL},
    {"fault", 1, {8}, u_fault, r_fault, NULL},
};

static const Known *known_of(Func *f, int *instrumented) {
    for (size_t k = 0; k < sizeof KNOWN / sizeof KNOWN[0]; k++) {
        const Known *kn = &KNOWN[k];
        if (strcmp(kn->name, f->name)) continue;
        *instrumented = f->np == kn->np + 1 && f->p[kn->np].size == 8;
        if (f->np != kn->np && !*instrumented) return NULL;
        for (int i = 0; i < kn->np; i++)
            if (f->p[i].size != kn->sizes[i]) return NULL;
        return kn;
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* streams                                                                                    */
/* ---------------------------------------------------------------------------------------- */
static void race_check(Op *op) {
    char a[160], b[160];
    for (Op *o = g_inc; o; o = o->inext) {
        if (o == op || o->s == op->s) continue;
        if (!(o->started || o->seq < op->seq)) continue; /* queued later: may be ordered after */
        if (op->kind == OP_FREE) {
            if (uses_alloc(o, op->fa)) {
                describe_op(o, a, sizeof a);
                violation("cuMemFreeAsync of %#llx on stream %d ran while %s, which uses that "
                          "memory, had not finished (no event orders them)",
                          op->fa->d, op->s->id, a);
            }
            continue;
        }
        for (int i = 0; i < op->nuse; i++)
            for (int j = 0; j < o->nuse; j++) {
                Use *u = &op->use[i], *v = &o->use[j];
                if (!u->a || u->a != v->a || !(u->lo < v->hi && v->lo < u->hi)) continue;
                if (!(u->write || v->write)) continue;
                describe_op(op, a, sizeof a);
                describe_op(o, b, sizeof b);
                violation("race: %s %s [%#llx, %#llx) while %s, not ordered before it by an "
                          "event, %s it", a, u->write ? "writes" : "reads", u->lo, u->hi, b,
                          v->write ? "writes" : "reads");
                return;
            }
    }
}

static void free_alloc(Alloc *a) {
    live_remove(a);
    a->alive = 0;
    Ctx *c = a->ctx;
    if (a->kind == A_DEVICE) g_used[c->dev] -= a->n;
    if (a->kind == A_POOL) { g_used[c->dev] -= a->n; g_pool_used[c->dev] -= a->n; }
    free(a->h);
    a->h = NULL;
}

static void run_kernel(Op *op) {
    Ctx *c = op->s->ctx;
    int inst = 0;
    const Known *kn = known_of(op->f, &inst);
    DevCfg *dev = g_dev[c->dev];
    unsigned long long blocks = blocks_of(op), threads = (unsigned long long)op->b[0] * op->b[1] * op->b[2];
    unsigned long long resident = 2048 / (threads ? threads : 1);
    if (resident > 32) resident = 32;
    if (resident < 1) resident = 1;
    unsigned long long per_wave = resident * (unsigned long long)dev->sms;
    unsigned long long waves = (blocks + per_wave - 1) / per_wave;
    double wave_us = kn && kn->wave_us ? kn->wave_us(op) : g_kernel_us / (double)(waves ? waves : 1);
    if (!kn) g_unknown_kernels++;
    uint64_t *progress = NULL;
    if (inst) {
        CUdeviceptr p = arg_u(op, op->f->np - 1);
        progress = (uint64_t *)host_of(p, 8);
        if (!progress) {
            c->sticky = E_ILLEGAL_ADDRESS;
            g_faults++;
            return;
        }
    }
    for (int i = 0; i < op->nuse; i++)
        if (!find_range(op->use[i].lo, op->use[i].hi - op->use[i].lo)) {
            char a[160];
            describe_op(op, a, sizeof a);
            fprintf(stderr, "gpusched stub libcuda: %s faults: [%#llx, %#llx) is not inside a live "
                            "allocation\n", a, op->use[i].lo, op->use[i].hi);
            c->sticky = E_ILLEGAL_ADDRESS;
            g_faults++;
            return;
        }
    for (unsigned long long w = 0; w < waves; w++) {
        pthread_mutex_unlock(&mu);
        sleep_us(wave_us);
        pthread_mutex_lock(&mu);
        if (!c->alive || c->sticky) return;
        if (progress) {
            unsigned long long n = w + 1 < waves ? per_wave : blocks - w * per_wave;
            __atomic_add_fetch(progress, (uint64_t)n, __ATOMIC_SEQ_CST);
        }
    }
    if (kn) {
        CUresult r = kn->run(op);
        if (r) {
            c->sticky = r;
            g_faults++;
        }
    }
}

static void run_op(Op *op) {
    Ctx *c = op->s->ctx;
    if (c->sticky && op->kind != OP_RECORD && op->kind != OP_FREE) return;
    switch (op->kind) {
    case OP_KERNEL: run_kernel(op); break;
    case OP_HTOD: case OP_DTOH: case OP_SET8: case OP_SET32: {
        pthread_mutex_unlock(&mu);
        sleep_us(g_copy_us);
        pthread_mutex_lock(&mu);
        if (!c->alive) return;
        size_t n = op->kind == OP_SET32 ? op->n * 4 : op->n;
        char *dev = host_of(op->d, n);
        if (!dev) {
            violation("%s: [%#llx, +%zu) is no longer allocated when the copy runs", OP_NAME[op->kind], op->d, n);
            return;
        }
        if (op->kind == OP_HTOD) memcpy(dev, op->snap ? op->snap : op->hsrc, n);
        else if (op->kind == OP_DTOH) memcpy(op->hdst, dev, n);
        else if (op->kind == OP_SET8) memset(dev, (int)(op->val & 0xff), n);
        else for (size_t i = 0; i < op->n; i++) memcpy(dev + 4 * i, &op->val, 4);
        break;
    }
    case OP_RECORD:
        if (op->gen > op->ev->done) op->ev->done = op->gen;
        op->ev->t = now_s();
        break;
    case OP_FREE:
        if (op->fa->alive) free_alloc(op->fa);
        break;
    default: break;
    }
}

static void *stream_main(void *arg) {
    Stream *s = arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!s->head && !s->quit) pthread_cond_wait(&cv, &mu);
        if (!s->head) break;
        Op *op = s->head;
        if (op->kind == OP_WAIT)
            while (op->ev->done < op->gen && s->ctx->alive && !s->ctx->sticky) pthread_cond_wait(&cv, &mu);
        op->started = 1;
        if (s->ctx->alive) {
            race_check(op);
            run_op(op);
        }
        op->done = 1;
        s->head = op->next;
        if (!s->head) s->tail = NULL;
        if (op->iprev) op->iprev->inext = op->inext; else g_inc = op->inext;
        if (op->inext) op->inext->iprev = op->iprev;
        free(op->args);
        free(op->snap);
        free(op);
        pthread_cond_broadcast(&cv);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static Op *new_op(int kind) {
    Op *o = calloc(1, sizeof *o);
    o->kind = kind;
    return o;
}

static void enqueue(Stream *s, Op *o) {
    o->seq = ++g_seq;
    o->s = s;
    if (s->tail) s->tail->next = o; else s->head = o;
    s->tail = o;
    o->inext = g_inc;
    if (g_inc) g_inc->iprev = o;
    g_inc = o;
    pthread_cond_broadcast(&cv);
}

/* ---------------------------------------------------------------------------------------- */
/* module images                                                                              */
/* ---------------------------------------------------------------------------------------- */
static Func *new_func(Module *m, const char *name, int len) {
    if (m->nf >= 256) return NULL;
    Func *f = new_obj(K_FUNC, sizeof(Func));
    f->m = m;
    snprintf(f->name, sizeof f->name, "%.*s", len, name);
    f->regs = 32;
    f->max_threads = 1024;
    f->dyn_max = 48 * 1024;
    m->f[m->nf++] = f;
    return f;
}

static char *strip_comments(const char *src) {
    size_t n = strlen(src);
    char *out = malloc(n + 1), *w = out;
    for (size_t i = 0; i < n;) {
        if (src[i] == '/' && src[i + 1] == '/') { while (i < n && src[i] != '\n') i++; }
        else if (src[i] == '/' && src[i + 1] == '*') {
            i += 2;
            while (i + 1 < n && !(src[i] == '*' && src[i + 1] == '/')) i++;
            i += 2;
            *w++ = ' ';
        } else *w++ = src[i++];
    }
    *w = 0;
    return out;
}

static const char *skip_ws(const char *p) { while (*p && isspace((unsigned char)*p)) p++; return p; }

static int type_bits(const char *t, int len) {
    /* .u64 .b32 .f16 .s8 .pred ... */
    if (len >= 2 && strchr("busf", t[1]) && isdigit((unsigned char)t[2])) return atoi(t + 2);
    return 0;
}

/* one ".param ..." declaration -> size and alignment; 0 when it cannot be read */
static int param_decl(const char *d, int len, int *size, int *align) {
    char buf[256];
    snprintf(buf, sizeof buf, "%.*s", len, d);
    int bits = 0, count = 1, al = 0, after_ptr = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, " \t\r\n", &save); t; t = strtok_r(NULL, " \t\r\n", &save)) {
        if (!strcmp(t, ".param")) continue;
        if (!strncmp(t, ".ptr", 4)) { after_ptr = 1; continue; }
        if (!strcmp(t, ".align")) {
            char *v = strtok_r(NULL, " \t\r\n", &save);
            if (v && !after_ptr && !bits) al = atoi(v);
            continue;
        }
        if (t[0] == '.' && !bits && type_bits(t, (int)strlen(t))) { bits = type_bits(t, (int)strlen(t)); continue; }
        if (t[0] == '.') continue; /* .global and the like, after .ptr */
        char *br = strchr(t, '[');
        if (br) count = atoi(br + 1);
    }
    if (!bits || count <= 0) return 0;
    *size = bits / 8 * count;
    *align = al ? al : bits / 8;
    return 1;
}

static CUresult load_ptx(Module *m, const char *text, DevCfg *dev) {
    char *src = strip_comments(text);
    CUresult err = OK;
    const char *v = strstr(src, ".version"), *t = strstr(src, ".target");
    if (!v || !t) { err = E_INVALID_PTX; goto out; }
    int vmaj = 0, vmin = 0;
    if (sscanf(v + 8, " %d.%d", &vmaj, &vmin) != 2) { err = E_INVALID_PTX; goto out; }
    if (vmaj * 10 + vmin > g_ptx_max) {
        fprintf(stderr, "gpusched stub libcuda: PTX ISA %d.%d is newer than this driver's %d.%d\n",
                vmaj, vmin, g_ptx_max / 10, g_ptx_max % 10);
        err = E_UNSUPPORTED_PTX;
        goto out;
    }
    int sm = 0;
    char suffix = 0;
    if (sscanf(skip_ws(t + 7), "sm_%d%c", &sm, &suffix) < 1) { err = E_INVALID_PTX; goto out; }
    int want = dev->major * 10 + dev->minor;
    if (sm > want || ((suffix == 'a' || suffix == 'f') && sm != want)) {
        fprintf(stderr, "gpusched stub libcuda: PTX for sm_%d cannot be JIT-compiled for sm_%d\n", sm, want);
        err = E_INVALID_PTX;
        goto out;
    }
    m->arch = sm;
    m->from_ptx = 1;
    for (const char *p = strstr(src, ".entry"); p; p = strstr(p + 6, ".entry")) {
        const char *q = skip_ws(p + 6), *name = q;
        while (*q && (isalnum((unsigned char)*q) || *q == '_' || *q == '$')) q++;
        Func *f = new_func(m, name, (int)(q - name));
        if (!f) { err = E_INVALID_PTX; goto out; }
        q = skip_ws(q);
        int off = 0;
        if (*q == '(') {
            const char *end = strchr(q, ')');
            if (!end) { err = E_INVALID_PTX; goto out; }
            const char *d = q + 1;
            while (d < end) {
                const char *c = memchr(d, ',', (size_t)(end - d));
                const char *e = c ? c : end;
                const char *dd = skip_ws(d);
                if (dd < e) {
                    int size, align;
                    if (!param_decl(dd, (int)(e - dd), &size, &align) || f->np >= 128) { err = E_INVALID_PTX; goto out; }
                    off = (off + align - 1) / align * align;
                    f->p[f->np].off = off;
                    f->p[f->np].size = size;
                    f->np++;
                    off += size;
                }
                d = e + 1;
            }
            q = end + 1;
        }
        const char *body = strchr(q, '{');
        if (!body) { err = E_INVALID_PTX; goto out; }
        const char *mx = strstr(q, ".maxntid");
        if (!mx || mx > body) mx = strstr(q, ".reqntid");
        if (mx && mx < body) {
            int x = 1, y = 1, z = 1;
            sscanf(mx + 8, " %d , %d , %d", &x, &y, &z);
            f->max_threads = x * y * z;
        }
        int depth = 0;
        const char *b = body;
        for (; *b; b++) {
            if (*b == '{') depth++;
            else if (*b == '}' && --depth == 0) break;
        }
        for (const char *s = strstr(body, ".shared"); s && s < b; s = strstr(s + 7, ".shared")) {
            const char *semi = strchr(s, ';');
            if (!semi || semi > b) break;
            if (!memchr(s, '[', (size_t)(semi - s)) || strstr(s, ".extern") == s) continue;
            int size, align;
            if (param_decl(s + 7, (int)(semi - s - 7), &size, &align)) f->static_smem += size;
        }
        f->dyn_max = 48 * 1024 - f->static_smem;
    }
    if (!m->nf) err = E_INVALID_PTX;
out:
    free(src);
    return err;
}

static CUresult load_cubin(Module *m, const unsigned char *img, DevCfg *dev) {
    if (img[4] != 2 || img[5] != 1) return E_INVALID_IMAGE; /* ELF64, little endian */
    uint16_t machine;
    uint32_t flags;
    uint64_t shoff;
    uint16_t shentsize, shnum, shstrndx;
    memcpy(&machine, img + 18, 2);
    memcpy(&flags, img + 48, 4);
    memcpy(&shoff, img + 0x28, 8);
    memcpy(&shentsize, img + 0x3a, 2);
    memcpy(&shnum, img + 0x3c, 2);
    memcpy(&shstrndx, img + 0x3e, 2);
    if (machine != 190 || shentsize != 64 || shstrndx >= shnum) return E_INVALID_IMAGE;
    int arch = (int)(flags & 0xff);
    m->arch = arch;
    if (arch / 10 != dev->major || arch % 10 > dev->minor) {
        fprintf(stderr, "gpusched stub libcuda: a cubin for sm_%d does not run on sm_%d%d\n", arch,
                dev->major, dev->minor);
        return E_NO_BINARY;
    }
    typedef struct { uint32_t name, type; uint64_t flags, addr, off, size; uint32_t link, info; uint64_t align, entsize; } Sh;
    Sh *sh = (Sh *)(img + shoff);
    const char *shstr = (const char *)img + sh[shstrndx].off;
    int symtab = -1, reserved = 0;
    for (int i = 0; i < shnum; i++) {
        if (sh[i].type == 2) symtab = i;
        if (!strcmp(shstr + sh[i].name, ".nv.shared.reserved.0")) reserved = 1;
    }
    if (symtab < 0) return E_INVALID_IMAGE;
    const char *strtab = (const char *)img + sh[sh[symtab].link].off;
    typedef struct { uint32_t name; unsigned char info, other; uint16_t shndx; uint64_t value, size; } Sym;
    int nsym = (int)(sh[symtab].size / sizeof(Sym));
    Sym *syms = (Sym *)(img + sh[symtab].off);
    /* registers per function symbol, from .nv.info EIATTR_REGCOUNT */
    int regs_of_sym[4096] = {0};
    for (int i = 0; i < shnum; i++) {
        if (strcmp(shstr + sh[i].name, ".nv.info")) continue;
        const unsigned char *p = img + sh[i].off, *end = p + sh[i].size;
        while (p + 4 <= end) {
            int fmt = p[0], attr = p[1];
            if (fmt == 4) {
                uint16_t sz;
                memcpy(&sz, p + 2, 2);
                if (attr == 0x2f && sz == 8) {
                    uint32_t sym, val;
                    memcpy(&sym, p + 4, 4);
                    memcpy(&val, p + 8, 4);
                    if (sym < 4096) regs_of_sym[sym] = (int)val;
                }
                p += 4 + sz;
            } else p += 4;
        }
    }
    for (int s = 0; s < nsym; s++) {
        Sym *y = &syms[s];
        if ((y->info & 0xf) != 2 || !(y->other & 0x10)) continue; /* FUNC with STO_CUDA_ENTRY */
        const char *name = strtab + y->name;
        Func *f = new_func(m, name, (int)strlen(name));
        if (!f) return E_INVALID_IMAGE;
        if (s < 4096 && regs_of_sym[s]) f->regs = regs_of_sym[s];
        if (y->shndx < shnum && (sh[y->shndx].info >> 24)) f->regs = (int)(sh[y->shndx].info >> 24);
        char want[300];
        for (int i = 0; i < shnum; i++) {
            const char *sn = shstr + sh[i].name;
            snprintf(want, sizeof want, ".nv.shared.%s", name);
            if (!strcmp(sn, want)) {
                f->static_smem = (int)sh[i].size;
                if (reserved && f->static_smem >= 1024) f->static_smem -= 1024;
            }
            snprintf(want, sizeof want, ".nv.info.%s", name);
            if (strcmp(sn, want)) continue;
            const unsigned char *p = img + sh[i].off, *end = p + sh[i].size;
            while (p + 4 <= end) {
                int fmt = p[0], attr = p[1];
                if (fmt != 4) { p += 4; continue; }
                uint16_t sz;
                memcpy(&sz, p + 2, 2);
                if (attr == 0x17 && sz == 12) { /* EIATTR_KPARAM_INFO */
                    uint16_t ordinal, off;
                    uint32_t tmp;
                    memcpy(&ordinal, p + 8, 2);
                    memcpy(&off, p + 10, 2);
                    memcpy(&tmp, p + 12, 4);
                    if (ordinal < 128) {
                        f->p[ordinal].off = off;
                        f->p[ordinal].size = (int)((tmp >> 18) & 0x3fff);
                        if (ordinal + 1 > f->np) f->np = ordinal + 1;
                    }
                } else if (attr == 0x05 && sz == 12) { /* EIATTR_MAX_THREADS */
                    uint32_t x, yy, z;
                    memcpy(&x, p + 4, 4);
                    memcpy(&yy, p + 8, 4);
                    memcpy(&z, p + 12, 4);
                    f->max_threads = (int)(x * yy * z);
                }
                p += 4 + sz;
            }
        }
        int by_regs = 65536 / (f->regs ? f->regs : 1) / 32 * 32;
        if (by_regs < f->max_threads) f->max_threads = by_regs;
        f->dyn_max = 48 * 1024 - f->static_smem;
    }
    return m->nf ? OK : E_INVALID_IMAGE;
}

/* ---------------------------------------------------------------------------------------- */
/* the driver API                                                                             */
/* ---------------------------------------------------------------------------------------- */
EXPORT CUresult cuGetErrorName(CUresult e, const char **s) {
    for (size_t i = 0; i < sizeof ERRS / sizeof ERRS[0]; i++)
        if (ERRS[i].code == e) { *s = ERRS[i].name; return OK; }
    *s = NULL;
    return E_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorString(CUresult e, const char **s) { return cuGetErrorName(e, s); }

EXPORT CUresult cuInit(unsigned flags) {
    LOCK();
    if (flags) { violation("cuInit(%u): flags must be 0", flags); RET(E_INVALID_VALUE); }
    if (!g_init) {
        configure();
        g_init = 1;
    }
    RET(g_ndev ? OK : E_NO_DEVICE);
}

EXPORT CUresult cuDriverGetVersion(int *v) { if (!v) return E_INVALID_VALUE; *v = g_driver_version; return OK; }

EXPORT CUresult cuDeviceGetCount(int *n) {
    LOCK();
    if (!g_init) RET(E_NOT_INITIALIZED);
    *n = g_ndev;
    RET(OK);
}

#define DEV_CHECK(dev) do { if (!g_init) RET(E_NOT_INITIALIZED); if ((dev) < 0 || (dev) >= g_ndev) RET(E_INVALID_DEVICE); } while (0)

EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    LOCK();
    DEV_CHECK(ordinal);
    *d = ordinal;
    RET(OK);
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    LOCK();
    DEV_CHECK(dev);
    if (!name || len <= 0) RET(E_INVALID_VALUE);
    snprintf(name, (size_t)len, "%s", g_dev[dev]->name);
    RET(OK);
}

EXPORT CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice dev) {
    LOCK();
    DEV_CHECK(dev);
    if (!bus || len <= 0) RET(E_INVALID_VALUE);
    snprintf(bus, (size_t)len, "%s", g_dev[dev]->bus);
    RET(OK);
}

EXPORT CUresult cuDeviceGetUuid(CUuuid *u, CUdevice dev) {
    LOCK();
    DEV_CHECK(dev);
    memcpy(u->bytes, g_dev[dev]->ub, 16);
    RET(OK);
}

EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice dev) { return cuDeviceGetUuid(u, dev); }

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    LOCK();
    DEV_CHECK(dev);
    *bytes = g_dev[dev]->mem;
    RET(OK);
}

EXPORT CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice dev) {
    LOCK();
    DEV_CHECK(dev);
    DevCfg *d = g_dev[dev];
    int optin = d->major >= 9 ? 227 * 1024 : d->major == 8 && d->minor == 0 ? 163 * 1024 : 99 * 1024;
    int val;
    switch (attr) {
    case 1: val = 1024; break;                  /* MAX_THREADS_PER_BLOCK */
    case 2: case 3: val = 1024; break;          /* MAX_BLOCK_DIM_X/Y */
    case 4: val = 64; break;
    case 5: val = 2147483647; break;            /* MAX_GRID_DIM_X */
    case 6: case 7: val = 65535; break;
    case 8: val = 48 * 1024; break;             /* MAX_SHARED_MEMORY_PER_BLOCK */
    case 10: val = 32; break;                   /* WARP_SIZE */
    case 12: val = 65536; break;                /* MAX_REGISTERS_PER_BLOCK */
    case 13: val = (int)g_clock_khz; break;     /* CLOCK_RATE (kHz): what spin's cycles run at */
    case 16: val = d->sms; break;               /* MULTIPROCESSOR_COUNT */
    case 19: val = 1; break;                    /* CAN_MAP_HOST_MEMORY */
    case 31: val = 1; break;                    /* CONCURRENT_KERNELS */
    case 33: { unsigned dom, bus; sscanf(d->bus, "%x:%x", &dom, &bus); val = (int)bus; break; }
    case 39: val = 2048; break;                 /* MAX_THREADS_PER_MULTIPROCESSOR */
    case 41: val = 1; break;                    /* UNIFIED_ADDRESSING */
    case 75: val = d->major; break;
    case 76: val = d->minor; break;
    case 81: val = optin + 1024; break;         /* MAX_SHARED_MEMORY_PER_MULTIPROCESSOR */
    case 82: val = 65536; break;                /* MAX_REGISTERS_PER_MULTIPROCESSOR */
    case 97: val = optin; break;                /* MAX_SHARED_MEMORY_PER_BLOCK_OPTIN */
    case 106: val = 32; break;                  /* MAX_BLOCKS_PER_MULTIPROCESSOR */
    case 115: val = 1; break;                   /* MEMORY_POOLS_SUPPORTED */
    default:
        if (attr <= 0 || attr > 160) RET(E_INVALID_VALUE);
        val = 0;
    }
    *v = val;
    RET(OK);
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    LOCK();
    DEV_CHECK(dev);
    Ctx *c = g_primary[dev];
    if (!c || !c->alive) {
        c = new_obj(K_CTX, sizeof(Ctx));
        c->dev = dev;
        g_primary[dev] = c;
    }
    c->refs++;
    *pctx = handle(K_CTX, c);
    RET(OK);
}

static void count_leaks(Ctx *c) {
    for (int i = 0; i < g_nlive; i++) {
        Alloc *a = g_live[i];
        if (a->ctx != c) continue;
        g_leaks[a->kind == A_DEVICE ? 0 : a->kind == A_POOL ? 1 : 2]++;
    }
    for (int k = K_STREAM; k <= K_MODULE; k++)
        for (int i = 0; i < g_nobj[k]; i++) {
            Hdr *h = g_obj[k][i];
            Ctx *oc = k == K_STREAM ? ((Stream *)h)->ctx : k == K_EVENT ? ((Event *)h)->ctx : ((Module *)h)->ctx;
            if (h->alive && oc == c) g_leaks[k == K_MODULE ? 3 : k == K_STREAM ? 4 : 5]++;
        }
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    LOCK();
    DEV_CHECK(dev);
    Ctx *c = g_primary[dev];
    if (!c || !c->alive || c->refs <= 0) {
        violation("cuDevicePrimaryCtxRelease: the primary context of device %d is not retained", dev);
        RET(E_INVALID_CONTEXT);
    }
    if (--c->refs == 0) {
        if (pending_work(c) && !c->sticky)
            violation("the primary context of device %d was released with work in flight (no "
                      "cuCtxSynchronize before tearing down)", dev);
        if (!c->sticky) count_leaks(c);
        g_ctx_released++;
        c->alive = 0;
        for (int i = 0; i < g_nlive;) {
            Alloc *a = g_live[i];
            if (a->ctx == c) free_alloc(a); else i++;
        }
        for (int i = 0; i < g_nobj[K_STREAM]; i++) {
            Stream *s = g_obj[K_STREAM][i];
            if (s->ctx == c) { s->alive = 0; s->quit = 1; }
        }
        for (int k = K_EVENT; k <= K_MODULE; k++)
            for (int i = 0; i < g_nobj[k]; i++) {
                Hdr *h = g_obj[k][i];
                Ctx *oc = k == K_EVENT ? ((Event *)h)->ctx : ((Module *)h)->ctx;
                if (oc == c) h->alive = 0;
            }
        pthread_cond_broadcast(&cv);
    }
    RET(OK);
}

EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned flags) {
    LOCK();
    DEV_CHECK(dev);
    if (flags & ~0xffu) RET(E_INVALID_VALUE);
    if (!g_primary[dev] || !g_primary[dev]->alive) {
        g_primary[dev] = new_obj(K_CTX, sizeof(Ctx));
        g_primary[dev]->dev = dev;
        g_primary[dev]->alive = 1;
    }
    g_primary[dev]->flags = flags;
    RET(OK);
}

EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned *flags, int *active) {
    LOCK();
    DEV_CHECK(dev);
    Ctx *c = g_primary[dev];
    *flags = c ? c->flags : 0;
    *active = c && c->alive && c->refs > 0;
    RET(OK);
}

EXPORT CUresult cuCtxSetCurrent(CUcontext h) {
    LOCK();
    if (!g_init) RET(E_NOT_INITIALIZED);
    if (!h) { t_cur = NULL; RET(OK); }
    Ctx *c = lookup_any(K_CTX, h);
    if (!c || !c->alive || c->refs <= 0) {
        violation("cuCtxSetCurrent(%p): not a live context", h);
        RET(E_INVALID_CONTEXT);
    }
    t_cur = c;
    RET(OK);
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *h) {
    LOCK();
    if (!g_init) RET(E_NOT_INITIALIZED);
    *h = t_cur && t_cur->alive ? handle(K_CTX, t_cur) : NULL;
    RET(OK);
}

EXPORT CUresult cuCtxGetDevice(CUdevice *d) {
    LOCK();
    CUresult e = need_ctx("cuCtxGetDevice");
    if (e) RET(e);
    *d = t_cur->dev;
    RET(OK);
}

EXPORT CUresult cuCtxSynchronize(void) {
    LOCK();
    CUresult e = need_ctx("cuCtxSynchronize");
    if (e) RET(e);
    Ctx *c = t_cur;
    while (pending_work(c) && c->alive && !c->sticky) pthread_cond_wait(&cv, &mu);
    RET(c->sticky ? c->sticky : OK);
}

/* -- streams and events ----------------------------------------------------------------- */
EXPORT CUresult cuStreamCreate(CUstream *ps, unsigned flags) {
    LOCK();
    CUresult e = need_ctx("cuStreamCreate");
    if (e) RET(e);
    if (flags & ~1u) { violation("cuStreamCreate: flags %#x (only CU_STREAM_NON_BLOCKING)", flags); RET(E_INVALID_VALUE); }
    Stream *s = new_obj(K_STREAM, sizeof(Stream));
    s->ctx = t_cur;
    s->flags = flags;
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_create(&th, &at, stream_main, s);
    pthread_attr_destroy(&at);
    *ps = handle(K_STREAM, s);
    RET(OK);
}

EXPORT CUresult cuStreamDestroy_v2(CUstream h) {
    LOCK();
    CUresult e = need_ctx("cuStreamDestroy");
    if (e) RET(e);
    Stream *s = get_stream(h, "cuStreamDestroy", &e);
    if (!s) RET(e);
    s->alive = 0;
    s->quit = 1; /* its queued work still runs, then the thread ends */
    pthread_cond_broadcast(&cv);
    RET(OK);
}

static int stream_busy(Stream *s) { return s->head != NULL; }

EXPORT CUresult cuStreamSynchronize(CUstream h) {
    LOCK();
    CUresult e = need_ctx("cuStreamSynchronize");
    if (e) RET(e);
    Stream *s = get_stream(h, "cuStreamSynchronize", &e);
    if (!s) RET(e);
    while (stream_busy(s) && s->ctx->alive && !s->ctx->sticky) pthread_cond_wait(&cv, &mu);
    RET(s->ctx->sticky ? s->ctx->sticky : OK);
}

EXPORT CUresult cuStreamQuery(CUstream h) {
    LOCK();
    CUresult e = need_ctx("cuStreamQuery");
    if (e) RET(e);
    Stream *s = get_stream(h, "cuStreamQuery", &e);
    if (!s) RET(e);
    RET(stream_busy(s) ? E_NOT_READY : OK);
}

EXPORT CUresult cuEventCreate(CUevent *pe, unsigned flags) {
    LOCK();
    CUresult e = need_ctx("cuEventCreate");
    if (e) RET(e);
    if (flags & ~7u || ((flags & EV_INTERPROCESS) && !(flags & EV_DISABLE_TIMING))) {
        violation("cuEventCreate: flags %#x are invalid", flags);
        RET(E_INVALID_VALUE);
    }
    Event *ev = new_obj(K_EVENT, sizeof(Event));
    ev->ctx = t_cur;
    ev->flags = flags;
    *pe = handle(K_EVENT, ev);
    RET(OK);
}

EXPORT CUresult cuEventDestroy_v2(CUevent h) {
    LOCK();
    CUresult e = need_ctx("cuEventDestroy");
    if (e) RET(e);
    Event *ev = get(K_EVENT, h, "cuEventDestroy", &e);
    if (!ev) RET(e);
    ev->alive = 0; /* an enqueued record or wait still completes */
    RET(OK);
}

EXPORT CUresult cuEventRecord(CUevent h, CUstream sh) {
    LOCK();
    CUresult e = need_ctx("cuEventRecord");
    if (e) RET(e);
    Event *ev = get(K_EVENT, h, "cuEventRecord", &e);
    if (!ev) RET(e);
    Stream *s = get_stream(sh, "cuEventRecord", &e);
    if (!s) RET(e);
    Op *o = new_op(OP_RECORD);
    o->ev = ev;
    o->gen = ++ev->issued;
    enqueue(s, o);
    RET(OK);
}

EXPORT CUresult cuStreamWaitEvent(CUstream sh, CUevent h, unsigned flags) {
    LOCK();
    CUresult e = need_ctx("cuStreamWaitEvent");
    if (e) RET(e);
    if (flags) { violation("cuStreamWaitEvent: flags %#x (must be 0)", flags); RET(E_INVALID_VALUE); }
    Stream *s = get_stream(sh, "cuStreamWaitEvent", &e);
    if (!s) RET(e);
    Event *ev = get(K_EVENT, h, "cuStreamWaitEvent", &e);
    if (!ev) RET(e);
    if (ev->issued) { /* waits for the record it sees now; an unrecorded event is no wait */
        Op *o = new_op(OP_WAIT);
        o->ev = ev;
        o->gen = ev->issued;
        enqueue(s, o);
    }
    RET(OK);
}

EXPORT CUresult cuEventQuery(CUevent h) {
    LOCK();
    CUresult e = need_ctx("cuEventQuery");
    if (e) RET(e);
    Event *ev = get(K_EVENT, h, "cuEventQuery", &e);
    if (!ev) RET(e);
    RET(ev->done >= ev->issued ? OK : E_NOT_READY);
}

EXPORT CUresult cuEventSynchronize(CUevent h) {
    LOCK();
    CUresult e = need_ctx("cuEventSynchronize");
    if (e) RET(e);
    Event *ev = get(K_EVENT, h, "cuEventSynchronize", &e);
    if (!ev) RET(e);
    Ctx *c = ev->ctx;
    uint64_t target = ev->issued;
    g_event_syncs++;
    if (!(ev->flags & EV_BLOCKING_SYNC) && !(c->flags & CTX_SCHED_BLOCKING_SYNC)) {
        g_spin_syncs++;                       /* a real driver spins a core while it waits */
        if (ev->done < target) g_spin_waits++; /* ... and here it did wait */
    }
    while (ev->done < target && c->alive && !c->sticky) pthread_cond_wait(&cv, &mu);
    if (!c->alive) RET(E_CONTEXT_IS_DESTROYED);
    RET(c->sticky ? c->sticky : OK);
}

static CUresult elapsed(float *ms, CUevent a, CUevent b) {
    LOCK();
    CUresult e = need_ctx("cuEventElapsedTime");
    if (e) RET(e);
    Event *s = get(K_EVENT, a, "cuEventElapsedTime", &e);
    if (!s) RET(e);
    Event *t = get(K_EVENT, b, "cuEventElapsedTime", &e);
    if (!t) RET(e);
    if ((s->flags | t->flags) & EV_DISABLE_TIMING) {
        violation("cuEventElapsedTime on an event created with CU_EVENT_DISABLE_TIMING");
        RET(E_INVALID_HANDLE);
    }
    if (!s->issued || !t->issued) {
        violation("cuEventElapsedTime on an event that was never recorded");
        RET(E_INVALID_HANDLE);
    }
    if (s->done < s->issued || t->done < t->issued) RET(E_NOT_READY);
    *ms = (float)((t->t - s->t) * 1e3);
    RET(OK);
}

EXPORT CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b) { return elapsed(ms, a, b); }
EXPORT CUresult cuEventElapsedTime_v2(float *ms, CUevent a, CUevent b) { return elapsed(ms, a, b); }

/* -- memory ------------------------------------------------------------------------------ */
static CUresult alloc_dev(CUdeviceptr *dp, size_t n, int kind, const char *call) {
    CUresult e = need_ctx(call);
    if (e) return e;
    if (!dp || n == 0) { violation("%s: size 0", call); return E_INVALID_VALUE; }
    int dev = t_cur->dev;
    if (g_used[dev] + n > g_dev[dev]->mem) return E_OUT_OF_MEMORY;
    Alloc *a = calloc(1, sizeof *a);
    a->alive = 1;
    a->ctx = t_cur;
    a->kind = kind;
    a->n = n;
    a->h = malloc(n);
    if (!a->h) { free(a); return E_OUT_OF_MEMORY; }
    memset(a->h, 0xA5, n); /* device memory is not zeroed */
    a->d = g_next_dev;
    g_next_dev += (n + 511) / 256 * 256; /* a gap after each allocation catches overruns */
    g_used[dev] += n;
    if (kind == A_POOL) {
        g_pool_used[dev] += n;
        if (g_pool_used[dev] > g_pool_high[dev]) g_pool_high[dev] = g_pool_used[dev];
    }
    live_add(a);
    *dp = a->d;
    return OK;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dp, size_t n) {
    LOCK();
    RET(alloc_dev(dp, n, A_DEVICE, "cuMemAlloc"));
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dp, size_t n, CUstream sh) {
    LOCK();
    CUresult e = need_ctx("cuMemAllocAsync");
    if (e) RET(e);
    if (!get_stream(sh, "cuMemAllocAsync", &e)) RET(e);
    RET(alloc_dev(dp, n, A_POOL, "cuMemAllocAsync"));
}

static Alloc *base_alloc(CUdeviceptr d, const char *call, int kind) {
    for (int i = 0; i < g_nlive; i++) {
        Alloc *a = g_live[i];
        if (a->kind != A_HOST && a->d == d) {
            if (kind == A_DEVICE && a->free_queued) break;
            return a;
        }
    }
    violation("%s(%#llx): not the start of a live device allocation (freed twice, or never "
              "allocated)", call, d);
    return NULL;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr d) {
    LOCK();
    CUresult e = need_ctx("cuMemFree");
    if (e) RET(e);
    Alloc *a = base_alloc(d, "cuMemFree", A_DEVICE);
    if (!a || a->free_queued) RET(E_INVALID_VALUE);
    for (Op *o = g_inc; o; o = o->inext)
        if (uses_alloc(o, a)) {
            char b[160];
            describe_op(o, b, sizeof b);
            violation("cuMemFree(%#llx) while %s, which uses it, has not finished", d, b);
            break;
        }
    free_alloc(a);
    RET(OK);
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr d, CUstream sh) {
    LOCK();
    CUresult e = need_ctx("cuMemFreeAsync");
    if (e) RET(e);
    Stream *s = get_stream(sh, "cuMemFreeAsync", &e);
    if (!s) RET(e);
    Alloc *a = base_alloc(d, "cuMemFreeAsync", A_POOL);
    if (!a) RET(E_INVALID_VALUE);
    if (a->free_queued) {
        violation("cuMemFreeAsync(%#llx): already freed", d);
        RET(E_INVALID_VALUE);
    }
    a->free_queued = 1;
    Op *o = new_op(OP_FREE);
    o->fa = a;
    enqueue(s, o);
    RET(OK);
}

EXPORT CUresult cuMemGetInfo_v2(size_t *freeb, size_t *total) {
    LOCK();
    CUresult e = need_ctx("cuMemGetInfo");
    if (e) RET(e);
    *total = g_dev[t_cur->dev]->mem;
    *freeb = *total - g_used[t_cur->dev];
    RET(OK);
}

static CUresult check_dev_range(CUdeviceptr d, size_t n, const char *call) {
    Alloc *a = find_range(d, n);
    if (!a) {
        violation("%s: [%#llx, +%zu) is not inside a live device allocation", call, d, n);
        return E_INVALID_VALUE;
    }
    if (a->free_queued) {
        violation("%s: [%#llx, +%zu) is in memory already given to cuMemFreeAsync", call, d, n);
        return E_INVALID_VALUE;
    }
    return OK;
}

static CUresult copy_op(int kind, CUdeviceptr d, void *host, size_t n, unsigned val, CUstream sh,
                        const char *call) {
    LOCK();
    CUresult e = need_ctx(call);
    if (e) RET(e);
    Stream *s = get_stream(sh, call, &e);
    if (!s) RET(e);
    size_t bytes = kind == OP_SET32 ? n * 4 : n;
    if (kind == OP_SET32 && (d & 3)) { violation("%s: %#llx is not 4-byte aligned", call, d); RET(E_INVALID_VALUE); }
    if (bytes == 0) RET(OK);
    if ((e = check_dev_range(d, bytes, call))) RET(e);
    Op *o = new_op(kind);
    o->d = d;
    o->n = n;
    o->val = val;
    add_use(o, d, bytes, kind != OP_DTOH);
    int pinned = host && find_host(host, n) != NULL;
    if (kind == OP_HTOD) {
        if (pinned) o->hsrc = host; /* read when the copy runs: keep the buffer alive */
        else { o->snap = malloc(n); memcpy(o->snap, host, n); } /* pageable: staged now */
    }
    if (kind == OP_DTOH) o->hdst = host;
    enqueue(s, o);
    if (kind == OP_DTOH && !pinned) {
        /* into pageable memory the call returns once the copy is done */
        uint64_t seq = o->seq;
        for (;;) {
            int found = 0;
            for (Op *x = g_inc; x; x = x->inext) found |= x->seq == seq;
            if (!found || !s->ctx->alive || s->ctx->sticky) break;
            pthread_cond_wait(&cv, &mu);
        }
        if (s->ctx->sticky) RET(s->ctx->sticky);
    }
    RET(OK);
}

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *src, size_t n, CUstream s) {
    return copy_op(OP_HTOD, d, (void *)src, n, 0, s, "cuMemcpyHtoDAsync");
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_op(OP_DTOH, src, dst, n, 0, s, "cuMemcpyDtoHAsync");
}
EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
    return copy_op(OP_SET8, d, NULL, n, v, s, "cuMemsetD8Async");
}
EXPORT CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, CUstream s) {
    return copy_op(OP_SET32, d, NULL, n, v, s, "cuMemsetD32Async");
}

EXPORT CUresult cuMemHostAlloc(void **pp, size_t n, unsigned flags) {
    LOCK();
    CUresult e = need_ctx("cuMemHostAlloc");
    if (e) RET(e);
    if (!pp || n == 0 || (flags & ~7u)) { violation("cuMemHostAlloc(%zu, %#x): invalid", n, flags); RET(E_INVALID_VALUE); }
    Alloc *a = calloc(1, sizeof *a);
    a->alive = 1;
    a->ctx = t_cur;
    a->kind = A_HOST;
    a->n = n;
    a->hflags = flags;
    if (posix_memalign((void **)&a->h, 4096, n)) { free(a); RET(E_OUT_OF_MEMORY); }
    memset(a->h, 0x5A, n);
    if (flags & HOST_DEVICEMAP) { a->d = g_next_map; g_next_map += (n + 4095) / 4096 * 4096 + 4096; }
    live_add(a);
    *pp = a->h;
    RET(OK);
}

EXPORT CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *dp, void *p, unsigned flags) {
    LOCK();
    CUresult e = need_ctx("cuMemHostGetDevicePointer");
    if (e) RET(e);
    if (flags) { violation("cuMemHostGetDevicePointer: flags must be 0"); RET(E_INVALID_VALUE); }
    Alloc *a = find_host(p, 1);
    if (!a || !(a->hflags & HOST_DEVICEMAP)) {
        violation("cuMemHostGetDevicePointer(%p): not in a cuMemHostAlloc(DEVICEMAP) allocation", p);
        RET(E_INVALID_VALUE);
    }
    *dp = a->d + ((uintptr_t)p - (uintptr_t)a->h);
    RET(OK);
}

EXPORT CUresult cuMemFreeHost(void *p) {
    LOCK();
    CUresult e = need_ctx("cuMemFreeHost");
    if (e) RET(e);
    Alloc *a = find_host(p, 1);
    if (!a || a->h != p) { violation("cuMemFreeHost(%p): not a live host allocation", p); RET(E_INVALID_VALUE); }
    for (Op *o = g_inc; o; o = o->inext)
        if (uses_alloc(o, a)) {
            char b[160];
            describe_op(o, b, sizeof b);
            violation("cuMemFreeHost(%p) while %s, which uses it, has not finished", p, b);
            break;
        }
    live_remove(a);
    a->alive = 0;
    free(a->h);
    RET(OK);
}

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev) {
    LOCK();
    DEV_CHECK(dev);
    if (!g_pool[dev]) { g_pool[dev] = new_obj(K_POOL, sizeof(Pool)); g_pool[dev]->dev = dev; }
    *pool = handle(K_POOL, g_pool[dev]);
    RET(OK);
}

EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool h, int attr, void *value) {
    LOCK();
    CUresult e;
    Pool *p = get(K_POOL, h, "cuMemPoolSetAttribute", &e);
    if (!p) RET(e);
    if (attr == 4) { p->threshold = *(unsigned long long *)value; RET(OK); }
    if (attr >= 1 && attr <= 3) RET(OK);
    if (attr == 6 || attr == 8) { if (*(unsigned long long *)value) RET(E_INVALID_VALUE); RET(OK); }
    RET(E_INVALID_VALUE);
}

EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool h, int attr, void *value) {
    LOCK();
    CUresult e;
    Pool *p = get(K_POOL, h, "cuMemPoolGetAttribute", &e);
    if (!p) RET(e);
    unsigned long long *v = value;
    switch (attr) {
    case 4: *v = p->threshold; break;
    case 5: case 7: *v = g_pool_used[p->dev]; break;
    case 6: case 8: *v = g_pool_high[p->dev]; break;
    case 1: case 2: case 3: *(int *)value = 1; break;
    default: RET(E_INVALID_VALUE);
    }
    RET(OK);
}

/* -- modules ------------------------------------------------------------------------------ */
EXPORT CUresult cuModuleLoadData(CUmodule *pm, const void *image) {
    LOCK();
    CUresult e = need_ctx("cuModuleLoadData");
    if (e) RET(e);
    if (!image) RET(E_INVALID_VALUE);
    const unsigned char *img = image;
    Module *m = new_obj(K_MODULE, sizeof(Module));
    m->ctx = t_cur;
    DevCfg *dev = g_dev[t_cur->dev];
    const char *kind;
    if (!memcmp(img, "\x7f" "ELF", 4)) { kind = "cubin"; e = load_cubin(m, img, dev); }
    else if (img[0] == 0x50 && img[1] == 0xed && img[2] == 0x55 && img[3] == 0xba) {
        kind = "fatbin";
        unsupported("fat binaries");
        e = E_NOT_SUPPORTED;
    } else {
        kind = "ptx";
        size_t len = strnlen((const char *)img, 64u << 20);
        int text = len > 0 && len < (64u << 20);
        for (size_t i = 0; text && i < len; i++) text = isprint(img[i]) || isspace(img[i]);
        e = text ? load_ptx(m, (const char *)img, dev) : E_INVALID_IMAGE;
    }
    g_loads++;
    appendf(g_loadlog, sizeof g_loadlog, "%s{\"kind\": \"%s\", \"arch\": %d, \"result\": %d}",
            g_loads > 1 ? ", " : "", kind, m->arch, e);
    if (e) {
        m->alive = 0;
        for (int i = 0; i < m->nf; i++) m->f[i]->alive = 0;
        RET(e);
    }
    *pm = handle(K_MODULE, m);
    RET(OK);
}

EXPORT CUresult cuModuleUnload(CUmodule h) {
    LOCK();
    CUresult e = need_ctx("cuModuleUnload");
    if (e) RET(e);
    Module *m = get(K_MODULE, h, "cuModuleUnload", &e);
    if (!m) RET(e);
    for (Op *o = g_inc; o; o = o->inext)
        if (o->kind == OP_KERNEL && o->f->m == m) {
            char b[160];
            describe_op(o, b, sizeof b);
            violation("cuModuleUnload while %s of that module has not finished", b);
            break;
        }
    m->alive = 0;
    for (int i = 0; i < m->nf; i++) m->f[i]->alive = 0;
    RET(OK);
}

EXPORT CUresult cuModuleGetFunction(CUfunction *pf, CUmodule h, const char *name) {
    LOCK();
    CUresult e = need_ctx("cuModuleGetFunction");
    if (e) RET(e);
    Module *m = get(K_MODULE, h, "cuModuleGetFunction", &e);
    if (!m) RET(e);
    for (int i = 0; i < m->nf; i++)
        if (!strcmp(m->f[i]->name, name)) { *pf = handle(K_FUNC, m->f[i]); RET(OK); }
    RET(E_NOT_FOUND);
}

static Func *get_func(CUfunction h, const char *call, CUresult *e) {
    Func *f = get(K_FUNC, h, call, e);
    if (!f) return NULL;
    if (!f->m->alive) { violation("%s: the function's module was unloaded", call); *e = E_INVALID_HANDLE; return NULL; }
    if (f->m->ctx != t_cur) { violation("%s: the function belongs to another context", call); *e = E_INVALID_HANDLE; return NULL; }
    return f;
}

EXPORT CUresult cuFuncGetAttribute(int *v, int attr, CUfunction h) {
    LOCK();
    CUresult e = need_ctx("cuFuncGetAttribute");
    if (e) RET(e);
    Func *f = get_func(h, "cuFuncGetAttribute", &e);
    if (!f) RET(e);
    switch (attr) {
    case 0: *v = f->max_threads; break;
    case 1: *v = f->static_smem; break;
    case 2: case 3: *v = 0; break;
    case 4: *v = f->regs; break;
    case 5: *v = f->m->from_ptx ? 88 : 0; break;
    case 6: *v = f->m->arch; break;
    case 8: *v = f->dyn_max; break;
    case 9: *v = -1; break;
    default: RET(E_INVALID_VALUE);
    }
    RET(OK);
}

EXPORT CUresult cuFuncSetAttribute(CUfunction h, int attr, int value) {
    LOCK();
    CUresult e = need_ctx("cuFuncSetAttribute");
    if (e) RET(e);
    Func *f = get_func(h, "cuFuncSetAttribute", &e);
    if (!f) RET(e);
    DevCfg *d = g_dev[t_cur->dev];
    int optin = d->major >= 9 ? 227 * 1024 : d->major == 8 && d->minor == 0 ? 163 * 1024 : 99 * 1024;
    if (attr == 8) {
        if (value < 0 || value + f->static_smem > optin) RET(E_INVALID_VALUE);
        f->dyn_max = value;
        RET(OK);
    }
    if (attr == 9) RET(OK);
    RET(E_INVALID_VALUE);
}

EXPORT CUresult cuLaunchKernel(CUfunction h, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                               unsigned by, unsigned bz, unsigned smem, CUstream sh, void **params,
                               void **extra) {
    LOCK();
    CUresult e = need_ctx("cuLaunchKernel");
    if (e) RET(e);
    Func *f = get_func(h, "cuLaunchKernel", &e);
    if (!f) RET(e);
    Stream *s = get_stream(sh, "cuLaunchKernel", &e);
    if (!s) RET(e);
    if (extra) { unsupported("cuLaunchKernel's extra argument"); RET(E_NOT_SUPPORTED); }
    unsigned long long threads = (unsigned long long)bx * by * bz;
    if (!gx || !gy || !gz || !bx || !by || !bz || bx > 1024 || by > 1024 || bz > 64 ||
        gy > 65535 || gz > 65535 || gx > 2147483647u || threads > 1024) {
        violation("cuLaunchKernel %s: grid %ux%ux%u block %ux%ux%u is outside the device's limits",
                  f->name, gx, gy, gz, bx, by, bz);
        RET(E_INVALID_VALUE);
    }
    if (threads > (unsigned long long)f->max_threads) RET(E_INVALID_VALUE);
    if ((unsigned long long)f->regs * threads > 65536) RET(E_OUT_OF_RESOURCES);
    if ((int)smem > f->dyn_max) RET(E_INVALID_VALUE);
    if (f->np && !params) {
        violation("cuLaunchKernel %s: the kernel takes %d parameters and kernelParams is NULL", f->name, f->np);
        RET(E_INVALID_VALUE);
    }
    Op *o = new_op(OP_KERNEL);
    o->f = f;
    o->g[0] = gx; o->g[1] = gy; o->g[2] = gz;
    o->b[0] = bx; o->b[1] = by; o->b[2] = bz;
    o->smem = smem;
    int size = 0;
    for (int i = 0; i < f->np; i++)
        if (f->p[i].off + f->p[i].size > size) size = f->p[i].off + f->p[i].size;
    o->args = calloc(1, (size_t)size + 8);
    for (int i = 0; i < f->np; i++) {
        if (!params[i]) {
            violation("cuLaunchKernel %s: kernelParams[%d] is NULL", f->name, i);
            free(o->args);
            free(o);
            RET(E_INVALID_VALUE);
        }
        memcpy(o->args + f->p[i].off, params[i], (size_t)f->p[i].size);
    }
    int inst = 0;
    const Known *kn = known_of(f, &inst);
    if (kn) kn->uses(o);
    if (inst) add_use(o, arg_u(o, f->np - 1), 8, 1);
    g_launches++;
    if (strlen(g_launchlog) < sizeof g_launchlog - 400) {
        appendf(g_launchlog, sizeof g_launchlog, "%s{\"kernel\": \"%s\", \"grid\": [%u, %u, %u], "
                "\"block\": [%u, %u, %u], \"smem\": %u, \"stream\": %d, \"args\": [",
                g_launches > 1 ? ", " : "", f->name, gx, gy, gz, bx, by, bz, smem, s->id);
        for (int i = 0; i < f->np && i < 16; i++)
            appendf(g_launchlog, sizeof g_launchlog, "%s%llu", i ? ", " : "", (unsigned long long)arg_u(o, i));
        appendf(g_launchlog, sizeof g_launchlog, "]}");
    }
    enqueue(s, o);
    RET(OK);
}

/* NVRTC dlopens libcuda.so.1 too and asks for the driver's private export tables: there are
 * none here, so it carries on without them (as on a machine without a driver). */
EXPORT CUresult cuGetExportTable(const void **table, const CUuuid *id) {
    (void)id;
    if (table) *table = NULL;
    return E_NOT_SUPPORTED;
}

/* -- cuGetProcAddress: how cuda-python finds every entry point ---------------------------- */
typedef struct { const char *name; void *fn; } Entry;
static const Entry ENTRIES[] = {
    {"cuGetErrorName", (void *)cuGetErrorName}, {"cuGetErrorString", (void *)cuGetErrorString},
    {"cuInit", (void *)cuInit}, {"cuDriverGetVersion", (void *)cuDriverGetVersion},
    {"cuDeviceGetCount", (void *)cuDeviceGetCount}, {"cuDeviceGet", (void *)cuDeviceGet},
    {"cuDeviceGetName", (void *)cuDeviceGetName}, {"cuDeviceGetPCIBusId", (void *)cuDeviceGetPCIBusId},
    {"cuDeviceGetUuid", (void *)cuDeviceGetUuid_v2}, {"cuDeviceTotalMem", (void *)cuDeviceTotalMem_v2},
    {"cuDeviceGetAttribute", (void *)cuDeviceGetAttribute},
    {"cuDevicePrimaryCtxRetain", (void *)cuDevicePrimaryCtxRetain},
    {"cuDevicePrimaryCtxRelease", (void *)cuDevicePrimaryCtxRelease_v2},
    {"cuDevicePrimaryCtxSetFlags", (void *)cuDevicePrimaryCtxSetFlags_v2},
    {"cuDevicePrimaryCtxGetState", (void *)cuDevicePrimaryCtxGetState},
    {"cuCtxSetCurrent", (void *)cuCtxSetCurrent}, {"cuCtxGetCurrent", (void *)cuCtxGetCurrent},
    {"cuCtxGetDevice", (void *)cuCtxGetDevice}, {"cuCtxSynchronize", (void *)cuCtxSynchronize},
    {"cuStreamCreate", (void *)cuStreamCreate}, {"cuStreamDestroy", (void *)cuStreamDestroy_v2},
    {"cuStreamSynchronize", (void *)cuStreamSynchronize}, {"cuStreamQuery", (void *)cuStreamQuery},
    {"cuStreamWaitEvent", (void *)cuStreamWaitEvent}, {"cuEventCreate", (void *)cuEventCreate},
    {"cuEventDestroy", (void *)cuEventDestroy_v2}, {"cuEventRecord", (void *)cuEventRecord},
    {"cuEventQuery", (void *)cuEventQuery}, {"cuEventSynchronize", (void *)cuEventSynchronize},
    {"cuEventElapsedTime", (void *)cuEventElapsedTime},
    {"cuMemAlloc", (void *)cuMemAlloc_v2}, {"cuMemAllocAsync", (void *)cuMemAllocAsync},
    {"cuMemFree", (void *)cuMemFree_v2}, {"cuMemFreeAsync", (void *)cuMemFreeAsync},
    {"cuMemGetInfo", (void *)cuMemGetInfo_v2}, {"cuMemcpyHtoDAsync", (void *)cuMemcpyHtoDAsync_v2},
    {"cuMemcpyDtoHAsync", (void *)cuMemcpyDtoHAsync_v2}, {"cuMemsetD8Async", (void *)cuMemsetD8Async},
    {"cuMemsetD32Async", (void *)cuMemsetD32Async}, {"cuMemHostAlloc", (void *)cuMemHostAlloc},
    {"cuMemHostGetDevicePointer", (void *)cuMemHostGetDevicePointer_v2},
    {"cuMemFreeHost", (void *)cuMemFreeHost},
    {"cuDeviceGetDefaultMemPool", (void *)cuDeviceGetDefaultMemPool},
    {"cuMemPoolSetAttribute", (void *)cuMemPoolSetAttribute},
    {"cuMemPoolGetAttribute", (void *)cuMemPoolGetAttribute},
    {"cuModuleLoadData", (void *)cuModuleLoadData}, {"cuModuleUnload", (void *)cuModuleUnload},
    {"cuModuleGetFunction", (void *)cuModuleGetFunction},
    {"cuFuncGetAttribute", (void *)cuFuncGetAttribute}, {"cuFuncSetAttribute", (void *)cuFuncSetAttribute},
    {"cuLaunchKernel", (void *)cuLaunchKernel},
};

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    int *status) {
    (void)version;
    (void)flags;
    if (!symbol || !pfn) return E_INVALID_VALUE;
    for (size_t i = 0; i < sizeof ENTRIES / sizeof ENTRIES[0]; i++)
        if (!strcmp(ENTRIES[i].name, symbol)) {
            *pfn = ENTRIES[i].fn;
            if (status) *status = 0;
            return OK;
        }
    *pfn = NULL;
    if (getenv("GPUSCHED_STUB_TRACE")) fprintf(stderr, "gpusched stub libcuda: no %s\n", symbol);
    if (status) *status = 1; /* CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND */
    return E_NOT_FOUND;
}

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
    return cuGetProcAddress_v2(symbol, pfn, version, flags, NULL);
}

/* -- test hooks ----------------------------------------------------------------------------- */
static char g_report[1 << 16];

static void json_str(char *buf, size_t cap, const char *s) {
    appendf(buf, cap, "\"");
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') appendf(buf, cap, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) appendf(buf, cap, " ");
        else appendf(buf, cap, "%c", *s);
    }
    appendf(buf, cap, "\"");
}

EXPORT const char *gpuschedStubReport(void) {
    LOCK();
    char *r = g_report;
    size_t cap = sizeof g_report;
    r[0] = 0;
    appendf(r, cap, "{\"violations\": [");
    for (int i = 0; i < g_nviol && i < 512; i++) {
        if (i) appendf(r, cap, ", ");
        json_str(r, cap, g_viol[i]);
    }
    long live[6] = {0};
    unsigned long long bytes = 0;
    for (int i = 0; i < g_nlive; i++) {
        live[g_live[i]->kind == A_DEVICE ? 0 : g_live[i]->kind == A_POOL ? 1 : 2]++;
        if (g_live[i]->kind != A_HOST) bytes += g_live[i]->n;
    }
    for (int k = K_STREAM; k <= K_MODULE; k++)
        for (int i = 0; i < g_nobj[k]; i++)
            if (((Hdr *)g_obj[k][i])->alive) live[k == K_MODULE ? 3 : k == K_STREAM ? 4 : 5]++;
    int ctxs = 0, sticky = 0, pending = 0;
    for (int i = 0; i < g_nobj[K_CTX]; i++) {
        Ctx *c = g_obj[K_CTX][i];
        if (c->alive && c->refs > 0) ctxs++;
        if (c->sticky) sticky = c->sticky;
    }
    for (Op *o = g_inc; o; o = o->inext) pending++;
    unsigned long long pool = 0;
    for (int i = 0; i < 16; i++) pool += g_pool_used[i];
    appendf(r, cap, "], \"violation_count\": %d, \"live\": {\"allocs\": %ld, \"pool_allocs\": %ld, "
            "\"host_allocs\": %ld, \"modules\": %ld, \"streams\": %ld, \"events\": %ld, "
            "\"device_bytes\": %llu, \"pool_bytes\": %llu, \"contexts\": %d}, ",
            g_nviol, live[0], live[1], live[2], live[3], live[4], live[5], bytes, pool, ctxs);
    appendf(r, cap, "\"leaks_at_release\": {\"allocs\": %ld, \"pool_allocs\": %ld, \"host_allocs\": "
            "%ld, \"modules\": %ld, \"streams\": %ld, \"events\": %ld}, \"contexts_released\": %ld, ",
            g_leaks[0], g_leaks[1], g_leaks[2], g_leaks[3], g_leaks[4], g_leaks[5], g_ctx_released);
    appendf(r, cap, "\"spin_syncs\": %ld, \"spin_waits\": %ld, \"event_syncs\": %ld, \"launches\": %ld, "
            "\"unknown_kernels\": %ld, \"faults\": %ld, \"sticky\": %d, \"pending_ops\": %d, "
            "\"devices\": [", g_spin_syncs, g_spin_waits, g_event_syncs, g_launches, g_unknown_kernels, g_faults,
            sticky, pending);
    for (int i = 0; i < g_ndev; i++) {
        appendf(r, cap, "%s{\"name\": ", i ? ", " : "");
        json_str(r, cap, g_dev[i]->name);
        appendf(r, cap, ", \"bus\": \"%s\", \"uuid\": \"%s\"}", g_dev[i]->bus, g_dev[i]->uuid);
    }
    appendf(r, cap, "], \"loads\": [%s], \"recent_launches\": [%s]}", g_loadlog, g_launchlog);
    pthread_mutex_unlock(&mu);
    return r;
}

EXPORT void gpuschedStubClear(void) {
    LOCK();
    for (int i = 0; i < g_nviol && i < 512; i++) free(g_viol[i]);
    g_nviol = 0;
    g_spin_waits = g_spin_syncs = g_event_syncs = g_launches = g_unknown_kernels = g_faults = g_loads = 0;
    memset(g_leaks, 0, sizeof g_leaks);
    g_ctx_released = 0;
    g_loadlog[0] = g_launchlog[0] = 0;
    pthread_mutex_unlock(&mu);
}

__attribute__((destructor)) static void at_exit_report(void) {
    if (g_nviol)
        fprintf(stderr, "gpusched stub libcuda: %d violation(s) of the driver's rules in this "
                        "process (see above)\n", g_nviol);
}
