/* Native kernels for p2pinfer.zk.field: arithmetic in the BLS12-381 scalar field.
 *
 * Field elements are 4 x 64-bit little-endian limbs. Values are kept in plain (canonical) form;
 * multiplication is Montgomery's (CIOS, Koc, Acar and Kaliski, "Analyzing and comparing
 * Montgomery multiplication algorithms", 1996), and every product is taken against one operand
 * already in Montgomery form, or corrected by a power of R at the end, so plain values never
 * need converting. Results are canonical and equal, bit for bit, to the pure-Python reference
 * in field.py (which stays the specification).
 *
 * Python ints come in through the C API (any int: negative or large ones are reduced mod P by
 * Python itself) and go out as canonical ints. The arithmetic between runs without the GIL and,
 * above a size threshold, on `workers` threads over fixed contiguous chunks; sums mod P are
 * exact, so the result does not depend on the number of workers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef struct { uint64_t v[4]; } fe;

static const uint64_t PL[4] = {0xffffffff00000001ULL, 0x53bda402fffe5bfeULL,
                               0x3339d80809a1d805ULL, 0x73eda753299d7d48ULL};
static uint64_t PINV;          /* -P^-1 mod 2^64 */
static fe R1, R2;              /* R mod P and R^2 mod P, R = 2^256 */
static fe RPOW[9];             /* RPOW[k] = R^(k+1) mod P: mont_mul(x, RPOW[k]) = x R^k */
static PyObject *P_OBJ;        /* the modulus as a Python int */
static int WORKERS = 1;
#define MAX_WORKERS 16
#define PAR_MIN 4096           /* fewer items than this run on the calling thread alone */

/* ---- field arithmetic --------------------------------------------------------------------- */

static inline int geq_p(const uint64_t *a) {
    for (int i = 3; i >= 0; i--) {
        if (a[i] > PL[i]) return 1;
        if (a[i] < PL[i]) return 0;
    }
    return 1;
}

static inline void sub_p(uint64_t *a) {
    u128 borrow = 0;
    for (int i = 0; i < 4; i++) {
        u128 d = (u128)a[i] - PL[i] - borrow;
        a[i] = (uint64_t)d;
        borrow = (d >> 64) & 1;
    }
}

static inline void fe_add(fe *r, const fe *a, const fe *b) {
    /* a, b < P < 2^255: the sum fits in 256 bits */
    u128 c = 0;
    for (int i = 0; i < 4; i++) {
        c += (u128)a->v[i] + b->v[i];
        r->v[i] = (uint64_t)c;
        c >>= 64;
    }
    if (geq_p(r->v)) sub_p(r->v);
}

static inline void fe_sub(fe *r, const fe *a, const fe *b) {
    u128 borrow = 0;
    uint64_t t[4];
    for (int i = 0; i < 4; i++) {
        u128 d = (u128)a->v[i] - b->v[i] - borrow;
        t[i] = (uint64_t)d;
        borrow = (d >> 64) & 1;
    }
    if (borrow) {
        u128 c = 0;
        for (int i = 0; i < 4; i++) {
            c += (u128)t[i] + PL[i];
            t[i] = (uint64_t)c;
            c >>= 64;
        }
    }
    memcpy(r->v, t, sizeof t);
}

/* r = a b / R mod P (CIOS without the extra carry words: P's top limb is below 2^62) */
static inline void fe_mul(fe *r, const fe *a, const fe *b) {
    uint64_t t[4] = {0, 0, 0, 0};
    for (int i = 0; i < 4; i++) {
        u128 A = (u128)a->v[0] * b->v[i] + t[0];
        t[0] = (uint64_t)A;
        uint64_t m = t[0] * PINV;
        u128 C = (u128)m * PL[0] + t[0];
        for (int j = 1; j < 4; j++) {
            A = (u128)a->v[j] * b->v[i] + t[j] + (uint64_t)(A >> 64);
            t[j] = (uint64_t)A;
            C = (u128)m * PL[j] + t[j] + (uint64_t)(C >> 64);
            t[j - 1] = (uint64_t)C;
        }
        t[3] = (uint64_t)(C >> 64) + (uint64_t)(A >> 64);
    }
    if (geq_p(t)) sub_p(t);
    memcpy(r->v, t, sizeof t);
}

static inline void fe_zero(fe *r) { memset(r->v, 0, sizeof r->v); }

/* plain -> Montgomery form */
static inline void to_mont(fe *r, const fe *a) { fe_mul(r, a, &R2); }

static void init_constants(void) {
    uint64_t inv = 1;
    for (int i = 0; i < 7; i++) inv *= 2 - PL[0] * inv;  /* Newton: inv = P^-1 mod 2^64 */
    PINV = (uint64_t)0 - inv;
    fe x = {{1, 0, 0, 0}};
    for (int i = 0; i < 512; i++) {  /* 2^i mod P up to 2^512 */
        fe_add(&x, &x, &x);
        if (i == 255) R1 = x;
    }
    R2 = x;
    RPOW[0] = R1;
    for (int k = 1; k < 9; k++) fe_mul(&RPOW[k], &RPOW[k - 1], &R2);
}

/* ---- Python conversions ------------------------------------------------------------------- */

static int limbs_from_bytes(fe *out, const unsigned char *b) {
    for (int i = 0; i < 4; i++) {
        uint64_t w = 0;
        for (int k = 7; k >= 0; k--) w = (w << 8) | b[8 * i + k];
        out->v[i] = w;
    }
    while (geq_p(out->v)) sub_p(out->v);
    return 0;
}

static int as_bytes32(PyObject *o, unsigned char *buf) {
#if PY_VERSION_HEX >= 0x030D0000
    return _PyLong_AsByteArray((PyLongObject *)o, buf, 32, 1, 0, 1);
#else
    return _PyLong_AsByteArray((PyLongObject *)o, buf, 32, 1, 0);
#endif
}

#if PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
#define FAST_LONGS 1  /* 3.11's int layout: a signed digit count and 30-bit digits */
#else
#define FAST_LONGS 0
#endif

/* Any Python integer (int or an object with __index__) -> canonical field element. */
static int to_fe(PyObject *o, fe *out) {
    unsigned char buf[32];
    PyObject *num = NULL;
#if FAST_LONGS
    if (PyLong_CheckExact(o)) {
        Py_ssize_t size = Py_SIZE(o);
        if (size >= 0 && size <= 9) {  /* non-negative, below 2^270 */
            const digit *d = ((PyLongObject *)o)->ob_digit;
            uint64_t v[5] = {0, 0, 0, 0, 0};
            for (Py_ssize_t i = 0; i < size; i++) {
                int pos = 30 * (int)i, limb = pos / 64, off = pos % 64;
                v[limb] |= (uint64_t)d[i] << off;
                if (off > 34) v[limb + 1] |= (uint64_t)d[i] >> (64 - off);
            }
            if (v[4] == 0) {
                memcpy(out->v, v, sizeof out->v);
                while (geq_p(out->v)) sub_p(out->v);
                return 0;
            }
        }
    }
#endif
    if (!PyLong_Check(o)) {
        num = PyNumber_Index(o);
        if (num == NULL) {
            PyErr_SetString(PyExc_TypeError, "a field element must be an integer");
            return -1;
        }
        o = num;
    }
    if (_PyLong_Sign(o) >= 0 && _PyLong_NumBits(o) <= 256) {
        int rc = as_bytes32(o, buf);
        Py_XDECREF(num);
        if (rc < 0) return -1;
        return limbs_from_bytes(out, buf);
    }
    PyObject *red = PyNumber_Remainder(o, P_OBJ);
    Py_XDECREF(num);
    if (red == NULL) return -1;
    int rc = as_bytes32(red, buf);
    Py_DECREF(red);
    if (rc < 0) return -1;
    return limbs_from_bytes(out, buf);
}

static PyObject *from_fe(const fe *a) {
#if FAST_LONGS
    digit d[9];
    int n = 0;
    for (int i = 0; i < 9; i++) {
        int pos = 30 * i, limb = pos / 64, off = pos % 64;
        uint64_t w = a->v[limb] >> off;
        if (off > 34 && limb < 3) w |= a->v[limb + 1] << (64 - off);
        d[i] = (digit)(w & PyLong_MASK);
        if (d[i]) n = i + 1;
    }
    if (n <= 1) return PyLong_FromLong((long)d[0]);
    PyLongObject *r = _PyLong_New(n);
    if (r == NULL) return NULL;
    memcpy(r->ob_digit, d, n * sizeof(digit));
    return (PyObject *)r;
#else
    unsigned char buf[32];
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 8; k++) buf[8 * i + k] = (unsigned char)(a->v[i] >> (8 * k));
    return _PyLong_FromByteArray(buf, 32, 1, 0);
#endif
}

/* A sequence of integers, or a packed vector (bytes from pack or an as_bytes result: 32 bytes
 * per element, little-endian limbs) -> newly allocated array (caller frees with PyMem_Free). */
static fe *vec_in(PyObject *seq, Py_ssize_t *n_out) {
    if (PyBytes_Check(seq)) {
        Py_ssize_t len = PyBytes_GET_SIZE(seq);
        if (len % (Py_ssize_t)sizeof(fe) != 0) {
            PyErr_SetString(PyExc_ValueError, "a packed field vector is 32 bytes per element");
            return NULL;
        }
        Py_ssize_t n = len / (Py_ssize_t)sizeof(fe);
        fe *out = PyMem_Malloc((n ? n : 1) * sizeof(fe));
        if (out == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(seq);
        for (Py_ssize_t i = 0; i < n; i++) limbs_from_bytes(&out[i], b + 32 * i);
        *n_out = n;
        return out;
    }
    PyObject *fast = PySequence_Fast(seq, "a field vector must be a sequence of integers");
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    fe *out = PyMem_Malloc((n ? n : 1) * sizeof(fe));
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (to_fe(items[i], &out[i]) < 0) {
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    *n_out = n;
    return out;
}

/* packed form: 32 little-endian bytes per element */
static PyObject *vec_bytes(const fe *a, Py_ssize_t n) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 32);
    if (out == NULL) return NULL;
    unsigned char *b = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++)
            for (int j = 0; j < 8; j++) b[32 * i + 8 * k + j] = (unsigned char)(a[i].v[k] >> (8 * j));
    return out;
}

static PyObject *vec_out(const fe *a, Py_ssize_t n) {
    PyObject *list = PyList_New(n);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = from_fe(&a[i]);
        if (v == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* ---- parallel for ------------------------------------------------------------------------- */

typedef void (*chunk_fn)(void *ctx, Py_ssize_t lo, Py_ssize_t hi, int chunk);

typedef struct {
    chunk_fn fn;
    void *ctx;
    Py_ssize_t lo, hi;
    int chunk;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    j->fn(j->ctx, j->lo, j->hi, j->chunk);
    return NULL;
}

/* Number of chunks a call over n items uses (results are combined over chunks in order). */
static int chunks_for(Py_ssize_t n) {
    if (n < PAR_MIN || WORKERS <= 1) return 1;
    return WORKERS;
}

/* Runs fn over [0, n) in `chunks` contiguous pieces, one thread each; called without the GIL. */
static void parallel_for(chunk_fn fn, void *ctx, Py_ssize_t n, int chunks) {
    if (chunks <= 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    job jobs[MAX_WORKERS];
    pthread_t threads[MAX_WORKERS];
    int started[MAX_WORKERS];
    for (int c = 0; c < chunks; c++) {
        jobs[c].fn = fn;
        jobs[c].ctx = ctx;
        jobs[c].lo = n * c / chunks;
        jobs[c].hi = n * (c + 1) / chunks;
        jobs[c].chunk = c;
        started[c] = 0;
    }
    for (int c = 1; c < chunks; c++)
        started[c] = pthread_create(&threads[c], NULL, run_job, &jobs[c]) == 0;
    run_job(&jobs[0]);
    for (int c = 1; c < chunks; c++) {
        if (started[c]) pthread_join(threads[c], NULL);
        else run_job(&jobs[c]);  /* no thread to be had: do it here */
    }
}

/* ---- kernels ------------------------------------------------------------------------------ */

typedef struct {
    const fe *src;
    fe *dst;
    fe pm;  /* the point coordinate in Montgomery form */
} eq_ctx;

static void eq_chunk(void *vctx, Py_ssize_t lo, Py_ssize_t hi, int chunk) {
    (void)chunk;
    eq_ctx *c = vctx;
    for (Py_ssize_t i = lo; i < hi; i++) {
        fe high;
        fe_mul(&high, &c->src[i], &c->pm);
        fe_sub(&c->dst[2 * i], &c->src[i], &high);
        c->dst[2 * i + 1] = high;
    }
}

/* eq table of `point` (m coordinates) into a fresh array of 2^m elements */
static fe *eq_build(const fe *point, Py_ssize_t m) {
    Py_ssize_t size = (Py_ssize_t)1 << m;
    fe *a = PyMem_RawMalloc(size * sizeof(fe));
    fe *b = PyMem_RawMalloc(size * sizeof(fe));
    if (a == NULL || b == NULL) {
        PyMem_RawFree(a);
        PyMem_RawFree(b);
        return NULL;
    }
    fe_zero(&a[0]);
    a[0].v[0] = 1;
    Py_ssize_t len = 1;
    for (Py_ssize_t k = 0; k < m; k++) {
        eq_ctx c = {a, b, {{0}}};
        to_mont(&c.pm, &point[k]);
        parallel_for(eq_chunk, &c, len, chunks_for(len));
        fe *t = a;
        a = b;
        b = t;
        len *= 2;
    }
    PyMem_RawFree(b);
    return a;
}

static PyObject *py_eq_table(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *arg;
    int as_bytes = 0;
    if (!PyArg_ParseTuple(args, "O|p", &arg, &as_bytes)) return NULL;
    Py_ssize_t m;
    fe *point = vec_in(arg, &m);
    if (point == NULL) return NULL;
    if (m > 40) {
        PyMem_Free(point);
        PyErr_SetString(PyExc_ValueError, "an eq table of more than 2**40 entries");
        return NULL;
    }
    fe *table;
    Py_BEGIN_ALLOW_THREADS
    table = eq_build(point, m);
    Py_END_ALLOW_THREADS
    PyMem_Free(point);
    if (table == NULL) return PyErr_NoMemory();
    PyObject *out = as_bytes ? vec_bytes(table, (Py_ssize_t)1 << m)
                             : vec_out(table, (Py_ssize_t)1 << m);
    PyMem_RawFree(table);
    return out;
}

/* -- bind_first: out[i] = a[i] + r (a[h + i] - a[i]) */
typedef struct {
    const fe *a;
    fe *out;
    Py_ssize_t h;
    fe rm;
} bind_ctx;

static void bind_chunk(void *vctx, Py_ssize_t lo, Py_ssize_t hi, int chunk) {
    (void)chunk;
    bind_ctx *c = vctx;
    for (Py_ssize_t i = lo; i < hi; i++) {
        fe d;
        fe_sub(&d, &c->a[c->h + i], &c->a[i]);
        fe_mul(&d, &d, &c->rm);
        fe_add(&c->out[i], &c->a[i], &d);
    }
}

static PyObject *py_bind_first(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *seq, *rob;
    int as_bytes = 0;
    if (!PyArg_ParseTuple(args, "OO|p", &seq, &rob, &as_bytes)) return NULL;
    fe r;
    if (to_fe(rob, &r) < 0) return NULL;
    Py_ssize_t n;
    fe *a = vec_in(seq, &n);
    if (a == NULL) return NULL;
    Py_ssize_t h = n / 2;
    bind_ctx c = {a, a, h, {{0}}};
    to_mont(&c.rm, &r);
    /* out[i] depends on a[i] and a[h + i] only, and i < h: in place is safe */
    Py_BEGIN_ALLOW_THREADS
    parallel_for(bind_chunk, &c, h, chunks_for(h));
    Py_END_ALLOW_THREADS
    PyObject *out = as_bytes ? vec_bytes(a, h) : vec_out(a, h);
    PyMem_Free(a);
    return out;
}

/* -- half_sum: out[i] = a[i] + a[h + i] */
static PyObject *py_half_sum(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *arg;
    int as_bytes = 0;
    if (!PyArg_ParseTuple(args, "O|p", &arg, &as_bytes)) return NULL;
    Py_ssize_t n;
    fe *a = vec_in(arg, &n);
    if (a == NULL) return NULL;
    Py_ssize_t h = n / 2;
    for (Py_ssize_t i = 0; i < h; i++) fe_add(&a[i], &a[i], &a[h + i]);
    PyObject *out = as_bytes ? vec_bytes(a, h) : vec_out(a, h);
    PyMem_Free(a);
    return out;
}

/* -- dot products: sum_i a_i b_i. Products a b / R are summed, then corrected by R. */
typedef struct {
    const fe *a, *b;
    fe part[MAX_WORKERS];
} dot_ctx;

static void dot_chunk(void *vctx, Py_ssize_t lo, Py_ssize_t hi, int chunk) {
    dot_ctx *c = vctx;
    fe acc, t;
    fe_zero(&acc);
    for (Py_ssize_t i = lo; i < hi; i++) {
        fe_mul(&t, &c->a[i], &c->b[i]);
        fe_add(&acc, &acc, &t);
    }
    c->part[chunk] = acc;
}

static void dot_run(const fe *a, const fe *b, Py_ssize_t n, fe *out) {
    dot_ctx c;
    c.a = a;
    c.b = b;
    int chunks = chunks_for(n);
    parallel_for(dot_chunk, &c, n, chunks);
    fe acc;
    fe_zero(&acc);
    for (int k = 0; k < chunks; k++) fe_add(&acc, &acc, &c.part[k]);
    fe_mul(out, &acc, &RPOW[1]);  /* acc R^-1 R^2 R^-1 ... = sum a b */
}

static PyObject *py_dot(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *sa, *sb;
    if (!PyArg_ParseTuple(args, "OO", &sa, &sb)) return NULL;
    Py_ssize_t na, nb;
    fe *a = vec_in(sa, &na);
    if (a == NULL) return NULL;
    fe *b = vec_in(sb, &nb);
    if (b == NULL) {
        PyMem_Free(a);
        return NULL;
    }
    if (na != nb) {
        PyMem_Free(a);
        PyMem_Free(b);
        PyErr_SetString(PyExc_ValueError, "dot of vectors of different lengths");
        return NULL;
    }
    fe r;
    Py_BEGIN_ALLOW_THREADS
    dot_run(a, b, na, &r);
    Py_END_ALLOW_THREADS
    PyMem_Free(a);
    PyMem_Free(b);
    return from_fe(&r);
}

/* -- mle_eval: dot(eq_table(point), table) without leaving native memory */
static PyObject *py_mle_eval(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *st, *sp;
    if (!PyArg_ParseTuple(args, "OO", &st, &sp)) return NULL;
    Py_ssize_t n, m;
    fe *point = vec_in(sp, &m);
    if (point == NULL) return NULL;
    if (m > 40) {
        PyMem_Free(point);
        PyErr_SetString(PyExc_ValueError, "table size does not match the point");
        return NULL;
    }
    fe *t = vec_in(st, &n);
    if (t == NULL) {
        PyMem_Free(point);
        return NULL;
    }
    if (n != ((Py_ssize_t)1 << m)) {
        PyMem_Free(point);
        PyMem_Free(t);
        PyErr_SetString(PyExc_ValueError, "dot of vectors of different lengths");
        return NULL;
    }
    fe r;
    fe *eq;
    Py_BEGIN_ALLOW_THREADS
    eq = eq_build(point, m);
    if (eq != NULL) dot_run(eq, t, n, &r);
    Py_END_ALLOW_THREADS
    PyMem_Free(point);
    PyMem_Free(t);
    if (eq == NULL) return PyErr_NoMemory();
    PyMem_RawFree(eq);
    return from_fe(&r);
}

/* -- booleanity round: q0 = sum_i w_i h(b0_i), q2 = sum_i w_i h(2 b1_i - b0_i), h(b) = b(1-b) */
typedef struct {
    const fe *w, *b;
    Py_ssize_t h;
    fe q0[MAX_WORKERS], q2[MAX_WORKERS];
} bool_ctx;

static void bool_chunk(void *vctx, Py_ssize_t lo, Py_ssize_t hi, int chunk) {
    bool_ctx *c = vctx;
    fe a0, a2, one = {{1, 0, 0, 0}};
    fe_zero(&a0);
    fe_zero(&a2);
    for (Py_ssize_t i = lo; i < hi; i++) {
        const fe *b0 = &c->b[i], *b1 = &c->b[c->h + i];
        fe b2, u, hv, t;
        fe_add(&b2, b1, b1);
        fe_sub(&b2, &b2, b0);
        /* w h(b0) / R^2 */
        fe_sub(&u, &one, b0);
        fe_mul(&hv, b0, &u);
        fe_mul(&t, &hv, &c->w[i]);
        fe_add(&a0, &a0, &t);
        fe_sub(&u, &one, &b2);
        fe_mul(&hv, &b2, &u);
        fe_mul(&t, &hv, &c->w[i]);
        fe_add(&a2, &a2, &t);
    }
    c->q0[chunk] = a0;
    c->q2[chunk] = a2;
}

static PyObject *py_bool_round(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *sb, *sw;
    if (!PyArg_ParseTuple(args, "OO", &sb, &sw)) return NULL;
    Py_ssize_t nb, nw;
    fe *b = vec_in(sb, &nb);
    if (b == NULL) return NULL;
    fe *w = vec_in(sw, &nw);
    if (w == NULL) {
        PyMem_Free(b);
        return NULL;
    }
    bool_ctx c;
    c.w = w;
    c.b = b;
    c.h = nb / 2;
    Py_ssize_t count = c.h < nw ? c.h : nw;
    int chunks = chunks_for(count);
    fe q0, q2;
    Py_BEGIN_ALLOW_THREADS
    parallel_for(bool_chunk, &c, count, chunks);
    fe_zero(&q0);
    fe_zero(&q2);
    for (int k = 0; k < chunks; k++) {
        fe_add(&q0, &q0, &c.q0[k]);
        fe_add(&q2, &q2, &c.q2[k]);
    }
    fe_mul(&q0, &q0, &RPOW[2]);
    fe_mul(&q2, &q2, &RPOW[2]);
    Py_END_ALLOW_THREADS
    PyMem_Free(b);
    PyMem_Free(w);
    return Py_BuildValue("(NN)", from_fe(&q0), from_fe(&q2));
}



/* -- axpy: y + a x entrywise (over the shorter length) */
static PyObject *py_axpy(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *sy, *sa, *sx;
    if (!PyArg_ParseTuple(args, "OOO", &sy, &sa, &sx)) return NULL;
    fe a, am;
    if (to_fe(sa, &a) < 0) return NULL;
    to_mont(&am, &a);
    Py_ssize_t ny, nx;
    fe *y = vec_in(sy, &ny);
    if (y == NULL) return NULL;
    fe *x = vec_in(sx, &nx);
    if (x == NULL) {
        PyMem_Free(y);
        return NULL;
    }
    Py_ssize_t n = ny < nx ? ny : nx;
    for (Py_ssize_t i = 0; i < n; i++) {
        fe t;
        fe_mul(&t, &x[i], &am);
        fe_add(&y[i], &y[i], &t);
    }
    PyObject *out = vec_out(y, n);
    PyMem_Free(y);
    PyMem_Free(x);
    return out;
}

/* a^(P-2) in Montgomery form (0 for 0, as pow(0, P - 2, P)) */
static void fe_inv_mont(fe *r, const fe *a) {
    uint64_t e[4];
    memcpy(e, PL, sizeof e);
    e[0] -= 2;
    fe acc = R1;
    for (int i = 3; i >= 0; i--) {
        for (int b = 63; b >= 0; b--) {
            fe_mul(&acc, &acc, &acc);
            if ((e[i] >> b) & 1) fe_mul(&acc, &acc, a);
        }
    }
    *r = acc;
}

/* -- batch_inv: inverses by Montgomery's trick, the reference's algorithm step for step (a zero
 * makes every output zero there too) */
static PyObject *py_batch_inv(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t n;
    fe *v = vec_in(arg, &n);
    if (v == NULL) return NULL;
    fe *prefix = PyMem_Malloc((n ? n : 1) * sizeof(fe));
    if (prefix == NULL) {
        PyMem_Free(v);
        return PyErr_NoMemory();
    }
    fe acc = R1, one = {{1, 0, 0, 0}};
    for (Py_ssize_t k = 0; k < n; k++) {
        to_mont(&v[k], &v[k]);
        prefix[k] = acc;
        fe_mul(&acc, &acc, &v[k]);
    }
    fe inv;
    fe_inv_mont(&inv, &acc);
    for (Py_ssize_t k = n - 1; k >= 0; k--) {
        fe t;
        fe_mul(&t, &inv, &prefix[k]);
        fe_mul(&inv, &inv, &v[k]);
        fe_mul(&prefix[k], &t, &one);  /* out of Montgomery form */
    }
    PyObject *out = vec_out(prefix, n);
    PyMem_Free(v);
    PyMem_Free(prefix);
    return out;
}

/* -- booleanity pattern rounds: W(c) = sum_{i, j} eq_i[i] eq_j[j] [codes[i, j] == c] */
typedef struct {
    const fe *eq_i;
    const unsigned char *codes;
    Py_ssize_t width;
    fe *acc;  /* per chunk: 256 x width sums of eq_i */
} pat_ctx;

static void pat_chunk(void *vctx, Py_ssize_t lo, Py_ssize_t hi, int chunk) {
    pat_ctx *c = vctx;
    fe *acc = c->acc + (Py_ssize_t)chunk * 256 * c->width;
    for (Py_ssize_t i = lo; i < hi; i++) {
        const unsigned char *row = c->codes + i * c->width;
        for (Py_ssize_t j = 0; j < c->width; j++) {
            fe *slot = &acc[row[j] * c->width + j];
            fe_add(slot, slot, &c->eq_i[i]);
        }
    }
}

/* pattern_weights(eq_i, codes, eq_j, ncodes): codes holds len(eq_i) rows of len(eq_j) bytes;
 * returns W(c) for c < ncodes (<= 256) */
static PyObject *py_pattern_weights(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *si, *sj;
    Py_buffer codes;
    int ncodes = 256;
    if (!PyArg_ParseTuple(args, "Oy*O|i", &si, &codes, &sj, &ncodes)) return NULL;
    PyObject *result = NULL;
    fe *eq_i = NULL, *eq_j = NULL, *acc = NULL;
    Py_ssize_t ni, nj;
    eq_i = vec_in(si, &ni);
    if (eq_i == NULL) goto done;
    eq_j = vec_in(sj, &nj);
    if (eq_j == NULL) goto done;
    if (nj < 1 || codes.len != ni * nj || ncodes < 1 || ncodes > 256) {
        PyErr_SetString(PyExc_ValueError, "the codes do not match the eq tables");
        goto done;
    }
    int chunks = chunks_for(ni * nj);
    acc = PyMem_RawCalloc((size_t)chunks * 256 * nj, sizeof(fe));
    if (acc == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    pat_ctx c = {eq_i, (const unsigned char *)codes.buf, nj, acc};
    fe w[256];
    Py_BEGIN_ALLOW_THREADS
    parallel_for(pat_chunk, &c, ni, chunks);
    for (int code = 0; code < ncodes; code++) {
        fe total, t;
        fe_zero(&total);
        for (Py_ssize_t j = 0; j < nj; j++) {
            fe s;
            fe_zero(&s);
            for (int ch = 0; ch < chunks; ch++)
                fe_add(&s, &s, &acc[((Py_ssize_t)ch * 256 + code) * nj + j]);
            fe_mul(&t, &s, &eq_j[j]);
            fe_add(&total, &total, &t);
        }
        fe_mul(&w[code], &total, &RPOW[1]);
    }
    Py_END_ALLOW_THREADS
    result = vec_out(w, ncodes);
done:
    PyMem_Free(eq_i);
    PyMem_Free(eq_j);
    PyMem_RawFree(acc);
    PyBuffer_Release(&codes);
    return result;
}

/* -- round messages of sum_x sum_k c_k prod_{m in term k} T_m(x), at x = 0, 2, 3, ..., degree
 * of the first variable: for each table, lo + x (hi - lo) over the half-tables. */
#define MAX_TABLES 32
#define MAX_TERMS 32
#define MAX_DEGREE 8
#define MAX_FACTORS 9

typedef struct {
    const fe *tabs[MAX_TABLES];
    int ntabs, nterms, degree;
    int term_len[MAX_TERMS];
    int term_idx[MAX_TERMS][MAX_FACTORS];
    Py_ssize_t h;
    /* acc[chunk][slot][term] */
    fe acc[MAX_WORKERS][MAX_DEGREE][MAX_TERMS];
} psum_ctx;

static void psum_chunk(void *vctx, Py_ssize_t lo, Py_ssize_t hi, int chunk) {
    psum_ctx *c = vctx;
    int slots = c->degree;  /* x = 0, 2, ..., degree */
    fe (*acc)[MAX_TERMS] = c->acc[chunk];
    for (int s = 0; s < slots; s++)
        for (int k = 0; k < c->nterms; k++) fe_zero(&acc[s][k]);
    fe at[MAX_TABLES][MAX_DEGREE];
    for (Py_ssize_t i = lo; i < hi; i++) {
        for (int t = 0; t < c->ntabs; t++) {
            const fe *a0 = &c->tabs[t][i], *a1 = &c->tabs[t][c->h + i];
            fe d, x;
            at[t][0] = *a0;
            if (slots > 1) {
                fe_sub(&d, a1, a0);
                fe_add(&x, a1, &d);
                at[t][1] = x;
                for (int s = 2; s < slots; s++) {
                    fe_add(&x, &x, &d);
                    at[t][s] = x;
                }
            }
        }
        for (int s = 0; s < slots; s++) {
            for (int k = 0; k < c->nterms; k++) {
                fe p = at[c->term_idx[k][0]][s];
                for (int f = 1; f < c->term_len[k]; f++)
                    fe_mul(&p, &p, &at[c->term_idx[k][f]][s]);
                fe_add(&acc[s][k], &acc[s][k], &p);
            }
        }
    }
}

/* product_sum(tables, terms, degree) with terms a list of (coef, [table index, ...]):
 * returns [s(0), s(2), s(3), ..., s(degree)] */
static PyObject *py_product_sum(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *stabs, *sterms;
    int degree;
    if (!PyArg_ParseTuple(args, "OOi", &stabs, &sterms, &degree)) return NULL;
    if (degree < 1 || degree > MAX_DEGREE) {
        PyErr_SetString(PyExc_ValueError, "unsupported sum-check degree");
        return NULL;
    }
    psum_ctx *c = PyMem_Calloc(1, sizeof(psum_ctx));
    if (c == NULL) return PyErr_NoMemory();
    fe coefs[MAX_TERMS];
    fe *owned[MAX_TABLES] = {0};
    PyObject *result = NULL;
    PyObject *ftabs = PySequence_Fast(stabs, "tables must be a sequence");
    PyObject *fterms = NULL;
    if (ftabs == NULL) goto done;
    c->ntabs = (int)PySequence_Fast_GET_SIZE(ftabs);
    if (c->ntabs < 1 || c->ntabs > MAX_TABLES) {
        PyErr_SetString(PyExc_ValueError, "unsupported number of tables");
        goto done;
    }
    Py_ssize_t n = -1;
    for (int t = 0; t < c->ntabs; t++) {
        Py_ssize_t nt;
        owned[t] = vec_in(PySequence_Fast_GET_ITEM(ftabs, t), &nt);
        if (owned[t] == NULL) goto done;
        if (n >= 0 && nt != n) {
            PyErr_SetString(PyExc_ValueError, "tables of different lengths");
            goto done;
        }
        n = nt;
        c->tabs[t] = owned[t];
    }
    c->h = n / 2;
    fterms = PySequence_Fast(sterms, "terms must be a sequence");
    if (fterms == NULL) goto done;
    c->nterms = (int)PySequence_Fast_GET_SIZE(fterms);
    if (c->nterms < 1 || c->nterms > MAX_TERMS) {
        PyErr_SetString(PyExc_ValueError, "unsupported number of terms");
        goto done;
    }
    c->degree = degree;
    for (int k = 0; k < c->nterms; k++) {
        PyObject *term = PySequence_Fast_GET_ITEM(fterms, k), *coef, *names;
        if (!PyArg_ParseTuple(term, "OO", &coef, &names)) goto done;
        if (to_fe(coef, &coefs[k]) < 0) goto done;
        PyObject *fn = PySequence_Fast(names, "a term lists table indices");
        if (fn == NULL) goto done;
        Py_ssize_t len = PySequence_Fast_GET_SIZE(fn);
        if (len < 1 || len > MAX_FACTORS || len > degree) {
            Py_DECREF(fn);
            PyErr_SetString(PyExc_ValueError, "a product is longer than the sum-check's degree");
            goto done;
        }
        c->term_len[k] = (int)len;
        for (Py_ssize_t f = 0; f < len; f++) {
            long idx = PyLong_AsLong(PySequence_Fast_GET_ITEM(fn, f));
            if (idx < 0 || idx >= c->ntabs) {
                Py_DECREF(fn);
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "a term names an unknown table");
                goto done;
            }
            c->term_idx[k][f] = (int)idx;
        }
        Py_DECREF(fn);
    }
    fe sums[MAX_DEGREE];
    int chunks = chunks_for(c->h);
    Py_BEGIN_ALLOW_THREADS
    parallel_for(psum_chunk, c, c->h, chunks);
    for (int s = 0; s < degree; s++) {
        fe total;
        fe_zero(&total);
        for (int k = 0; k < c->nterms; k++) {
            fe acc, t;
            fe_zero(&acc);
            for (int ch = 0; ch < chunks; ch++) fe_add(&acc, &acc, &c->acc[ch][s][k]);
            /* a product of L plain values came out divided by R^(L-1) */
            fe_mul(&acc, &acc, &RPOW[c->term_len[k] - 1]);
            fe cm;
            to_mont(&cm, &coefs[k]);
            fe_mul(&t, &acc, &cm);
            fe_add(&total, &total, &t);
        }
        sums[s] = total;
    }
    Py_END_ALLOW_THREADS
    result = vec_out(sums, degree);
done:
    for (int t = 0; t < MAX_TABLES; t++) PyMem_Free(owned[t]);
    Py_XDECREF(ftabs);
    Py_XDECREF(fterms);
    PyMem_Free(c);
    return result;
}


/* ---- G1 of BLS12-381: sums of table points (row commitments of bit matrices) -------------
 *
 * Base field elements are 6 x 64-bit limbs in Montgomery form. Points are Jacobian (X, Y, Z)
 * on y^2 = x^3 + 4; the formulas are the explicit-formulas database's madd-2007-bl (mixed
 * addition) and dbl-2009-l (doubling) for a = 0. Points come in and go out as arkworks'
 * affine encoding: x and y, 48 bytes each, little-endian, (0, 0) for the identity. */

typedef struct { uint64_t v[6]; } fq;
typedef struct { fq x, y; uint64_t inf; } g1_aff;
typedef struct { fq x, y, z; } g1_jac;  /* z == 0: the identity */

static const uint64_t QL[6] = {0xb9feffffffffaaabULL, 0x1eabfffeb153ffffULL,
                               0x6730d2a0f6b0f624ULL, 0x64774b84f38512bfULL,
                               0x4b1ba7b6434bacd7ULL, 0x1a0111ea397fe69aULL};
static uint64_t QINV;
static fq QR2;     /* R^2 mod q, R = 2^384 */
static fq QONE;    /* R mod q: one in Montgomery form */

static inline int fq_geq(const uint64_t *a) {
    for (int i = 5; i >= 0; i--) {
        if (a[i] > QL[i]) return 1;
        if (a[i] < QL[i]) return 0;
    }
    return 1;
}

static inline void fq_subq(uint64_t *a) {
    u128 borrow = 0;
    for (int i = 0; i < 6; i++) {
        u128 d = (u128)a[i] - QL[i] - borrow;
        a[i] = (uint64_t)d;
        borrow = (d >> 64) & 1;
    }
}

static inline void fq_add(fq *r, const fq *a, const fq *b) {
    u128 c = 0;
    for (int i = 0; i < 6; i++) {
        c += (u128)a->v[i] + b->v[i];
        r->v[i] = (uint64_t)c;
        c >>= 64;
    }
    if (fq_geq(r->v)) fq_subq(r->v);
}

static inline void fq_sub(fq *r, const fq *a, const fq *b) {
    u128 borrow = 0;
    uint64_t t[6];
    for (int i = 0; i < 6; i++) {
        u128 d = (u128)a->v[i] - b->v[i] - borrow;
        t[i] = (uint64_t)d;
        borrow = (d >> 64) & 1;
    }
    if (borrow) {
        u128 c = 0;
        for (int i = 0; i < 6; i++) {
            c += (u128)t[i] + QL[i];
            t[i] = (uint64_t)c;
            c >>= 64;
        }
    }
    memcpy(r->v, t, sizeof t);
}

static inline void fq_mul(fq *r, const fq *a, const fq *b) {
    /* CIOS without the extra carry words (Gueron and others): q's top limb is below 2^62 */
    uint64_t t[6] = {0, 0, 0, 0, 0, 0};
    for (int i = 0; i < 6; i++) {
        u128 A = (u128)a->v[0] * b->v[i] + t[0];
        t[0] = (uint64_t)A;
        uint64_t m = t[0] * QINV;
        u128 C = (u128)m * QL[0] + t[0];
        for (int j = 1; j < 6; j++) {
            A = (u128)a->v[j] * b->v[i] + t[j] + (uint64_t)(A >> 64);
            t[j] = (uint64_t)A;
            C = (u128)m * QL[j] + t[j] + (uint64_t)(C >> 64);
            t[j - 1] = (uint64_t)C;
        }
        t[5] = (uint64_t)(C >> 64) + (uint64_t)(A >> 64);
    }
    if (fq_geq(t)) fq_subq(t);
    memcpy(r->v, t, 6 * sizeof(uint64_t));
}

static inline int fq_is_zero(const fq *a) {
    return (a->v[0] | a->v[1] | a->v[2] | a->v[3] | a->v[4] | a->v[5]) == 0;
}

static inline int fq_eq(const fq *a, const fq *b) { return memcmp(a, b, sizeof(fq)) == 0; }

/* a^(q-2): the inverse of a nonzero a (Montgomery form in and out) */
static void fq_inv(fq *r, const fq *a) {
    uint64_t e[6];
    memcpy(e, QL, sizeof e);
    e[0] -= 2;  /* q is odd and its low limb exceeds 2: no borrow */
    fq acc = QONE;
    for (int i = 5; i >= 0; i--) {
        for (int b = 63; b >= 0; b--) {
            fq_mul(&acc, &acc, &acc);
            if ((e[i] >> b) & 1) fq_mul(&acc, &acc, a);
        }
    }
    *r = acc;
}

static void init_g1(void) {
    uint64_t inv = 1;
    for (int i = 0; i < 7; i++) inv *= 2 - QL[0] * inv;
    QINV = (uint64_t)0 - inv;
    fq x = {{1, 0, 0, 0, 0, 0}};
    for (int i = 0; i < 768; i++) {
        fq_add(&x, &x, &x);
        if (i == 383) QONE = x;
    }
    QR2 = x;
}

static void fq_from_le(fq *r, const unsigned char *b) {
    for (int i = 0; i < 6; i++) {
        uint64_t w = 0;
        for (int k = 7; k >= 0; k--) w = (w << 8) | b[8 * i + k];
        r->v[i] = w;
    }
    fq_mul(r, r, &QR2);
}

static void fq_to_le(unsigned char *b, const fq *a) {
    fq one = {{1, 0, 0, 0, 0, 0}}, t;
    fq_mul(&t, a, &one);  /* out of Montgomery form */
    for (int i = 0; i < 6; i++)
        for (int k = 0; k < 8; k++) b[8 * i + k] = (unsigned char)(t.v[i] >> (8 * k));
}

static void g1_double(g1_jac *r, const g1_jac *p) {
    if (fq_is_zero(&p->z)) {
        *r = *p;
        return;
    }
    fq a, b, c, d, e, f, t;
    fq_mul(&a, &p->x, &p->x);
    fq_mul(&b, &p->y, &p->y);
    fq_mul(&c, &b, &b);
    fq_add(&t, &p->x, &b);
    fq_mul(&t, &t, &t);
    fq_sub(&t, &t, &a);
    fq_sub(&t, &t, &c);
    fq_add(&d, &t, &t);
    fq_add(&e, &a, &a);
    fq_add(&e, &e, &a);
    fq_mul(&f, &e, &e);
    g1_jac out;
    fq_sub(&out.x, &f, &d);
    fq_sub(&out.x, &out.x, &d);
    fq_sub(&t, &d, &out.x);
    fq_mul(&out.y, &e, &t);
    fq_add(&c, &c, &c);
    fq_add(&c, &c, &c);
    fq_add(&c, &c, &c);
    fq_sub(&out.y, &out.y, &c);
    fq_mul(&out.z, &p->y, &p->z);
    fq_add(&out.z, &out.z, &out.z);
    *r = out;
}

/* r = p + q with q affine */
static void g1_add_aff(g1_jac *r, const g1_jac *p, const g1_aff *q) {
    if (q->inf) {
        *r = *p;
        return;
    }
    if (fq_is_zero(&p->z)) {
        r->x = q->x;
        r->y = q->y;
        r->z = QONE;
        return;
    }
    fq z1z1, u2, s2, h, hh, i, j, rr, v, t;
    fq_mul(&z1z1, &p->z, &p->z);
    fq_mul(&u2, &q->x, &z1z1);
    fq_mul(&s2, &q->y, &p->z);
    fq_mul(&s2, &s2, &z1z1);
    fq_sub(&h, &u2, &p->x);
    fq_sub(&rr, &s2, &p->y);
    if (fq_is_zero(&h)) {
        if (fq_is_zero(&rr)) {
            g1_double(r, p);
        } else {
            memset(r, 0, sizeof *r);
        }
        return;
    }
    fq_add(&rr, &rr, &rr);
    fq_mul(&hh, &h, &h);
    fq_add(&i, &hh, &hh);
    fq_add(&i, &i, &i);
    fq_mul(&j, &h, &i);
    fq_mul(&v, &p->x, &i);
    g1_jac out;
    fq_mul(&out.x, &rr, &rr);
    fq_sub(&out.x, &out.x, &j);
    fq_sub(&out.x, &out.x, &v);
    fq_sub(&out.x, &out.x, &v);
    fq_sub(&t, &v, &out.x);
    fq_mul(&out.y, &rr, &t);
    fq_mul(&t, &p->y, &j);
    fq_add(&t, &t, &t);
    fq_sub(&out.y, &out.y, &t);
    fq_add(&t, &p->z, &h);
    fq_mul(&t, &t, &t);
    fq_sub(&t, &t, &z1z1);
    fq_sub(&out.z, &t, &hh);
    *r = out;
}

/* g1_prepare(encodings): affine encodings (96 bytes each) -> an opaque table (bytes) */
static PyObject *py_g1_prepare(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *fast = PySequence_Fast(arg, "points must be a sequence of 96-byte encodings");
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(g1_aff));
    if (out == NULL) {
        Py_DECREF(fast);
        return NULL;
    }
    g1_aff *tab = (g1_aff *)PyBytes_AS_STRING(out);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, k);
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) != 96) {
            Py_DECREF(fast);
            Py_DECREF(out);
            PyErr_SetString(PyExc_ValueError, "a point encoding is not 96 bytes");
            return NULL;
        }
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(item);
        int zero = 1;
        for (int i = 0; i < 96; i++) zero &= b[i] == 0;
        memset(&tab[k], 0, sizeof(g1_aff));
        tab[k].inf = zero;
        if (!zero) {
            fq_from_le(&tab[k].x, b);
            fq_from_le(&tab[k].y, b + 48);
        }
    }
    Py_DECREF(fast);
    return out;
}

/* Jacobian points -> affine table entries, one inversion for all (Montgomery's trick) */
static int g1_normalize(g1_aff *out, const g1_jac *in, Py_ssize_t n) {
    fq *pre = PyMem_RawMalloc((n + 1) * sizeof(fq));
    if (pre == NULL) return -1;
    pre[0] = QONE;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (fq_is_zero(&in[k].z)) pre[k + 1] = pre[k];
        else fq_mul(&pre[k + 1], &pre[k], &in[k].z);
    }
    fq inv;
    fq_inv(&inv, &pre[n]);
    for (Py_ssize_t k = n - 1; k >= 0; k--) {
        memset(&out[k], 0, sizeof(g1_aff));
        if (fq_is_zero(&in[k].z)) {
            out[k].inf = 1;
            continue;
        }
        fq zi, zi2;
        fq_mul(&zi, &inv, &pre[k]);
        fq_mul(&inv, &inv, &in[k].z);
        fq_mul(&zi2, &zi, &zi);
        fq_mul(&out[k].x, &in[k].x, &zi2);
        fq_mul(&out[k].y, &in[k].y, &zi2);
        fq_mul(&out[k].y, &out[k].y, &zi);
    }
    PyMem_RawFree(pre);
    return 0;
}

/* g1_byte_tables(generators): for each group of 8 generators (96-byte affine encodings), the
 * sums of all 256 subsets by bit mask (bit b: generator b of the group), as a native table */
static PyObject *py_g1_byte_tables(PyObject *self, PyObject *arg) {
    PyObject *gens = py_g1_prepare(self, arg);
    if (gens == NULL) return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(gens) / (Py_ssize_t)sizeof(g1_aff);
    if (n % 8 != 0) {
        Py_DECREF(gens);
        PyErr_SetString(PyExc_ValueError, "generators come in groups of 8");
        return NULL;
    }
    Py_ssize_t groups = n / 8;
    const g1_aff *g = (const g1_aff *)PyBytes_AS_STRING(gens);
    PyObject *out = PyBytes_FromStringAndSize(NULL, groups * 256 * (Py_ssize_t)sizeof(g1_aff));
    g1_jac *jac = PyMem_RawMalloc((groups ? groups : 1) * 256 * sizeof(g1_jac));
    if (out == NULL || jac == NULL) {
        Py_DECREF(gens);
        Py_XDECREF(out);
        PyMem_RawFree(jac);
        return out == NULL ? NULL : PyErr_NoMemory();
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < groups; k++) {
        g1_jac *t = jac + 256 * k;
        memset(&t[0], 0, sizeof(g1_jac));
        for (int mask = 1; mask < 256; mask++) {
            int low = __builtin_ctz(mask);
            g1_add_aff(&t[mask], &t[mask & (mask - 1)], &g[8 * k + low]);
        }
    }
    rc = g1_normalize((g1_aff *)PyBytes_AS_STRING(out), jac, groups * 256);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(jac);
    Py_DECREF(gens);
    if (rc < 0) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return out;
}

typedef struct {
    const g1_aff *tab;
    const unsigned char *bytes;
    Py_ssize_t groups;
    g1_jac *acc;
} rows_ctx;

static void rows_chunk(void *vctx, Py_ssize_t lo, Py_ssize_t hi, int chunk) {
    (void)chunk;
    rows_ctx *c = vctx;
    for (Py_ssize_t r = lo; r < hi; r++) {
        g1_jac acc;
        memset(&acc, 0, sizeof acc);
        const unsigned char *row = c->bytes + r * c->groups;
        for (Py_ssize_t g = 0; g < c->groups; g++)
            g1_add_aff(&acc, &acc, &c->tab[256 * g + row[g]]);
        c->acc[r] = acc;
    }
}

/* g1_sum_rows(table, packed, groups) -> ([96-byte encoding per row], additions): row r is the
 * sum over groups g of table[256 g + packed[r groups + g]], one addition per byte, zero
 * bytes (the identity) included. */
static PyObject *py_g1_sum_rows(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer tab, bytes;
    Py_ssize_t groups;
    if (!PyArg_ParseTuple(args, "y*y*n", &tab, &bytes, &groups)) return NULL;
    PyObject *result = NULL;
    g1_jac *acc = NULL;
    if (groups < 1 || tab.len != groups * 256 * (Py_ssize_t)sizeof(g1_aff)
            || bytes.len % groups != 0) {
        PyErr_SetString(PyExc_ValueError, "the table and the packed rows do not match");
        goto done;
    }
    Py_ssize_t rows = bytes.len / groups;
    acc = PyMem_RawMalloc((rows ? rows : 1) * sizeof(g1_jac));
    if (acc == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    rows_ctx c = {(const g1_aff *)tab.buf, (const unsigned char *)bytes.buf, groups, acc};
    unsigned char *enc = PyMem_RawMalloc((rows ? rows : 1) * 96);
    if (enc == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    int chunks = rows * groups < 64 ? 1 : (WORKERS < rows ? WORKERS : (int)(rows ? rows : 1));
    parallel_for(rows_chunk, &c, rows, chunks);
    /* affine: one inversion for all rows (Montgomery's trick) */
    fq *pre = PyMem_RawMalloc((rows + 1) * sizeof(fq));
    if (pre == NULL) {
        ok = 0;
    } else {
        pre[0] = QONE;
        for (Py_ssize_t r = 0; r < rows; r++) {
            if (fq_is_zero(&acc[r].z)) pre[r + 1] = pre[r];
            else fq_mul(&pre[r + 1], &pre[r], &acc[r].z);
        }
        fq inv;
        fq_inv(&inv, &pre[rows]);
        for (Py_ssize_t r = rows - 1; r >= 0; r--) {
            unsigned char *e = enc + 96 * r;
            if (fq_is_zero(&acc[r].z)) {
                memset(e, 0, 96);
                continue;
            }
            fq zi, zi2, t;
            fq_mul(&zi, &inv, &pre[r]);
            fq_mul(&inv, &inv, &acc[r].z);
            fq_mul(&zi2, &zi, &zi);
            fq_mul(&t, &acc[r].x, &zi2);
            fq_to_le(e, &t);
            fq_mul(&t, &acc[r].y, &zi2);
            fq_mul(&t, &t, &zi);
            fq_to_le(e + 48, &t);
        }
        PyMem_RawFree(pre);
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_NoMemory();
    } else {
        PyObject *list = PyList_New(rows);
        if (list != NULL) {
            for (Py_ssize_t r = 0; r < rows; r++) {
                PyObject *b = PyBytes_FromStringAndSize((const char *)enc + 96 * r, 96);
                if (b == NULL) {
                    Py_CLEAR(list);
                    break;
                }
                PyList_SET_ITEM(list, r, b);
            }
        }
        if (list != NULL) result = Py_BuildValue("(Nn)", list, rows * groups);
    }
    PyMem_RawFree(enc);
done:
    PyMem_RawFree(acc);
    PyBuffer_Release(&tab);
    PyBuffer_Release(&bytes);
    return result;
}

static PyObject *py_pack(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t n;
    fe *a = vec_in(arg, &n);
    if (a == NULL) return NULL;
    PyObject *out = vec_bytes(a, n);
    PyMem_Free(a);
    return out;
}

static PyObject *py_unpack(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t n;
    fe *a = vec_in(arg, &n);
    if (a == NULL) return NULL;
    PyObject *out = vec_out(a, n);
    PyMem_Free(a);
    return out;
}

static PyObject *py_set_workers(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > MAX_WORKERS) {
        PyErr_Format(PyExc_ValueError, "workers must be between 1 and %d", MAX_WORKERS);
        return NULL;
    }
    int old = WORKERS;
    WORKERS = (int)n;
    return PyLong_FromLong(old);
}

static PyObject *py_get_workers(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromLong(WORKERS);
}

static PyMethodDef methods[] = {
    {"eq_table", py_eq_table, METH_VARARGS, "eq(point, x) for all boolean x, MSB first"},
    {"bind_first", py_bind_first, METH_VARARGS, "fix the first variable of a table to r"},
    {"half_sum", py_half_sum, METH_VARARGS, "t[:h] + t[h:] entrywise"},
    {"pack", py_pack, METH_O, "a field vector in packed form (bytes)"},
    {"unpack", py_unpack, METH_O, "a packed field vector as a list of ints"},
    {"dot", py_dot, METH_VARARGS, "sum of products mod P"},
    {"mle_eval", py_mle_eval, METH_VARARGS, "multilinear extension of a table at a point"},
    {"bool_round", py_bool_round, METH_VARARGS, "booleanity round sums (q0, q2)"},
    {"axpy", py_axpy, METH_VARARGS, "y + a x entrywise"},
    {"batch_inv", py_batch_inv, METH_O, "inverses of many elements with one exponentiation"},
    {"pattern_weights", py_pattern_weights, METH_VARARGS, "booleanity pattern weights"},
    {"product_sum", py_product_sum, METH_VARARGS, "sum-check round sums of a product sum"},
    {"g1_prepare", py_g1_prepare, METH_O, "affine G1 encodings -> a native point table"},
    {"g1_byte_tables", py_g1_byte_tables, METH_O, "subset sums of groups of 8 generators"},
    {"g1_sum_rows", py_g1_sum_rows, METH_VARARGS, "sums of table points by packed byte rows"},
    {"set_workers", py_set_workers, METH_O, "threads per large kernel; returns the old value"},
    {"get_workers", py_get_workers, METH_NOARGS, "threads per large kernel"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "Native BLS12-381 scalar-field kernels.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    init_constants();
    init_g1();
    P_OBJ = PyLong_FromString("73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001",
                              NULL, 16);
    if (P_OBJ == NULL) return NULL;
    return PyModule_Create(&module);
}
