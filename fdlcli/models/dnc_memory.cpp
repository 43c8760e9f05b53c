// One DNC memory step (fdlcli/models/dnc.py's memory_step, with the interface's squashing of
// split_interface) forward and backward, in plain loops over one story of the batch at a time; and the
// LSTM cell's elementwise part with the controller's clip, forward and backward.
//
// Why by hand: at the dnc-babi size (N 64 slots, W 32, R 4 heads, batch 32) a memory step is a few
// hundred thousand flops on tensors of a few kilobytes per story; as tensor operations it is dozens of
// library calls per time step whose dispatch, allocation and passes over memory cost several times the
// arithmetic (benchmarks/dnc_step.py). Here a story's whole step stays in the L1/L2 cache.
//
// Called from Python through ctypes with raw pointers (fdlcli/models/dnc_native.py): every tensor
// float32, contiguous, batch first. Built there with the system's C++ compiler on first use.
//
// Shapes per story: face [I] raw interface vector (I = R*W + 3W + 5R + 3, split_interface's order),
// memory [N,W], usage [N], link [N,N], precedence [N], read weights [R,N], write weights [N],
// read vectors [R,W]. The forward writes the step's small intermediates (struct Saved) for the
// backward, which also reads the step's inputs and its new memory, links and weightings.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

constexpr float kEps = 1e-6f;  // dnc.py's EPS

// exp as Cephes' expf (range reduction by ln 2, a degree-5 polynomial, 2^n by its bits): within 2 ulp
// of libm's, and, written in plain float arithmetic, vectorized by the compiler in loops, where a libm
// call is one scalar call per element (the LSTM's sigmoids and tanhs were 18% of a training step so).
// Inputs clamped to [-87.3, 88.3]: exp(-87.3) ~ 1e-38 stands in for anything smaller, which only ever
// meets a sum of at least 1 or a 1 + here.
inline float exp_(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);  // (std::min/max by reference stop vectorizing)
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.f;
  return e * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
}
inline float sigmoid(float x) { return 1.f / (1.f + exp_(-x)); }
inline float tanh_(float x) { return 2.f / (1.f + exp_(-2.f * x)) - 1.f; }
// torch.nn.functional.softplus (beta 1, threshold 20)
inline float softplus(float x) { return x > 20.f ? x : std::log1p(exp_(x)); }
inline float softplus_grad(float x) { return x > 20.f ? 1.f : sigmoid(x); }

// The memory's sizes: N slots, W word size, R read heads, and I the interface vector's. dnc_native.py
// builds the library for one (N, W, R) at a time, given as DNC_N, DNC_W and DNC_R: every loop bound is
// then a constant, and the compiler unrolls the short loops (32 or 64 floats) and keeps their sums in
// registers (2.33 -> 2.20 ms per time step at the dnc-babi size). The calls' sizes are the built ones.
#if !defined(DNC_N) || !defined(DNC_W) || !defined(DNC_R)
#error "build with -DDNC_N=... -DDNC_W=... -DDNC_R=... (dnc_native.library does)"
#endif
struct Dims {
  static constexpr int64_t n = DNC_N, w = DNC_W, r = DNC_R, iface = r * w + 3 * w + 5 * r + 3;
  Dims(int64_t, int64_t, int64_t) {}
};

// Offsets of split_interface's parts in the interface vector.
struct Layout {
  int64_t read_keys, read_strengths, write_key, write_strength, erase, write_vector, free_gates,
      alloc_gate, write_gate, modes;
  explicit Layout(const Dims& d) {
    read_keys = 0;
    read_strengths = read_keys + d.r * d.w;
    write_key = read_strengths + d.r;
    write_strength = write_key + d.w;
    erase = write_strength + 1;
    write_vector = erase + d.w;
    free_gates = write_vector + d.w;
    alloc_gate = free_gates + d.r;
    write_gate = alloc_gate + 1;
    modes = write_gate + 1;
  }
};

// The squashed interface: keys and write vector as they are, strengths 1 + softplus, erase and gates
// sigmoid, read modes a softmax over (backward, content, forward) per head.
void squash(const Dims& d, const Layout& at, const float* raw, float* out) {
  std::memcpy(out, raw, sizeof(float) * d.iface);
  for (int64_t h = 0; h < d.r; ++h) out[at.read_strengths + h] = 1.f + softplus(raw[at.read_strengths + h]);
  out[at.write_strength] = 1.f + softplus(raw[at.write_strength]);
  for (int64_t k = 0; k < d.w; ++k) out[at.erase + k] = sigmoid(raw[at.erase + k]);
  for (int64_t h = 0; h < d.r; ++h) out[at.free_gates + h] = sigmoid(raw[at.free_gates + h]);
  out[at.alloc_gate] = sigmoid(raw[at.alloc_gate]);
  out[at.write_gate] = sigmoid(raw[at.write_gate]);
  for (int64_t h = 0; h < d.r; ++h) {
    const float* m = raw + at.modes + 3 * h;
    float top = std::max(m[0], std::max(m[1], m[2]));
    float e0 = exp_(m[0] - top), e1 = exp_(m[1] - top), e2 = exp_(m[2] - top);
    float s = e0 + e1 + e2;
    out[at.modes + 3 * h] = e0 / s;
    out[at.modes + 3 * h + 1] = e1 / s;
    out[at.modes + 3 * h + 2] = e2 / s;
  }
}

__attribute__((always_inline)) inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

// The two shapes all the memory's small products take, four rows at a time. A lone dot of 32 or 64
// floats is one chain of dependent vector FMAs (its latency, not the arithmetic, sets its time) and a
// lone axpy loads and stores y once per row; four rows per pass run four chains side by side and touch
// y a quarter as often (measured: the memory step's forward and backward took 1.6x as long without).

#if defined(__AVX2__) && defined(__FMA__)
// lane k of the result: the sum of a[k]'s eight lanes (three rounds of pairwise sums for eight vectors,
// where eight separate horizontal sums take a dependent chain each)
inline __m256 lane_sums(const __m256* a) {
  const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}
#endif

// out[t] = dot(x + t * stride, v) (or +=, with accumulate) for t < count; with v null, the squared norm
// of each row (dot(x_t, x_t)). Eight rows at a time with AVX2 (the sizes multiples of 8), else four.
template <bool accumulate>
__attribute__((always_inline)) inline void dot_rows(float* out, const float* x, int64_t stride, const float* v,
                                                    int64_t len, int64_t count) {
  int64_t t = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if (len % 8 == 0) {
    for (; t + 8 <= count; t += 8) {
      __m256 acc[8];
      for (int k = 0; k < 8; ++k) acc[k] = _mm256_setzero_ps();
      for (int64_t j = 0; j < len; j += 8) {
        const __m256 vj = v ? _mm256_loadu_ps(v + j) : _mm256_setzero_ps();
        for (int k = 0; k < 8; ++k) {
          const __m256 xk = _mm256_loadu_ps(x + (t + k) * stride + j);
          acc[k] = _mm256_fmadd_ps(xk, v ? vj : xk, acc[k]);
        }
      }
      __m256 sums = lane_sums(acc);
      if (accumulate) sums = _mm256_add_ps(sums, _mm256_loadu_ps(out + t));
      _mm256_storeu_ps(out + t, sums);
    }
  }
#endif
  for (; t + 4 <= count; t += 4) {
    const float *x0 = x + t * stride, *x1 = x0 + stride, *x2 = x1 + stride, *x3 = x2 + stride;
    const float *v0 = v ? v : x0, *v1 = v ? v : x1, *v2 = v ? v : x2, *v3 = v ? v : x3;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t k = 0; k < len; ++k) {
      a0 += x0[k] * v0[k];
      a1 += x1[k] * v1[k];
      a2 += x2[k] * v2[k];
      a3 += x3[k] * v3[k];
    }
    out[t] = (accumulate ? out[t] : 0.f) + a0;
    out[t + 1] = (accumulate ? out[t + 1] : 0.f) + a1;
    out[t + 2] = (accumulate ? out[t + 2] : 0.f) + a2;
    out[t + 3] = (accumulate ? out[t + 3] : 0.f) + a3;
  }
  for (; t < count; ++t) {
    const float* xt = x + t * stride;
    const float a = dot(xt, v ? v : xt, len);
    out[t] = accumulate ? out[t] + a : a;
  }
}

// y += sum_t c[t * c_stride] * (x + t * stride) for t < count
__attribute__((always_inline)) inline void axpy_rows(float* y, int64_t len, const float* c, int64_t c_stride, const float* x, int64_t stride,
                      int64_t count) {
  int64_t t = 0;
  for (; t + 4 <= count; t += 4) {
    const float *x0 = x + t * stride, *x1 = x0 + stride, *x2 = x1 + stride, *x3 = x2 + stride;
    const float c0 = c[t * c_stride], c1 = c[(t + 1) * c_stride], c2 = c[(t + 2) * c_stride],
                c3 = c[(t + 3) * c_stride];
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) y[k] += c0 * x0[k] + c1 * x1[k] + c2 * x2[k] + c3 * x3[k];
  }
  for (; t < count; ++t) {
    const float c0 = c[t * c_stride];
    const float* x0 = x + t * stride;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) y[k] += c0 * x0[k];
  }
}

// content_weighting's results and what its backward needs, for H keys against N rows of memory: views
// into a story's saved intermediates.
struct Content {
  float *key_norm, *row_norm, *dots, *weights;  // [H], [N], [H,N], [H,N]
};

// softmax over rows of strength * cos(key, row), cos = key.row / (|key| |row| + EPS)
void content_forward(const Dims& d, int64_t heads, const float* memory, const float* keys,
                     const float* strengths, const Content& c) {
  dot_rows<false>(c.row_norm, memory, d.w, nullptr, d.w, d.n);
  for (int64_t i = 0; i < d.n; ++i) c.row_norm[i] = std::sqrt(c.row_norm[i]);
  for (int64_t h = 0; h < heads; ++h) {
    const float* key = keys + h * d.w;
    c.key_norm[h] = std::sqrt(dot(key, key, d.w));
    float* dots = c.dots + h * d.n;
    float* wt = c.weights + h * d.n;
    dot_rows<false>(dots, memory, d.w, key, d.w, d.n);
    float top = -std::numeric_limits<float>::max();
    for (int64_t i = 0; i < d.n; ++i) {
      wt[i] = strengths[h] * dots[i] / (c.key_norm[h] * c.row_norm[i] + kEps);
      top = wt[i] > top ? wt[i] : top;
    }
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < d.n; ++i) {
      wt[i] = exp_(wt[i] - top);
      total += wt[i];
    }
    const float scale = 1.f / total;
    for (int64_t i = 0; i < d.n; ++i) wt[i] *= scale;
  }
}

// grad [H,N] of the weights -> adds into grad_memory [N,W], writes grad_keys [H,W], grad_strengths [H].
// scratch: at least N + H*N floats.
void content_backward(const Dims& d, int64_t heads, const float* memory, const float* keys,
                      const float* strengths, const Content& c, const float* grad, float* grad_memory,
                      float* grad_keys, float* grad_strengths, float* scratch) {
  float* grad_row_norm = scratch;  // [N]
  float* grad_dots = scratch + d.n;  // [H,N]
  std::fill(grad_row_norm, grad_row_norm + d.n, 0.f);
  for (int64_t h = 0; h < heads; ++h) {
    const float* wt = c.weights + h * d.n;
    const float* g = grad + h * d.n;
    const float* dots = c.dots + h * d.n;
    const float inner = dot(wt, g, d.n), kn = c.key_norm[h], beta = strengths[h];
    float grad_strength = 0.f, grad_key_norm = 0.f;
    for (int64_t i = 0; i < d.n; ++i) {
      const float grad_logit = wt[i] * (g[i] - inner);
      const float inv = 1.f / (kn * c.row_norm[i] + kEps);
      grad_strength += grad_logit * dots[i] * inv;
      grad_dots[h * d.n + i] = grad_logit * beta * inv;
      const float grad_denom = -grad_logit * beta * dots[i] * inv * inv;
      grad_key_norm += grad_denom * c.row_norm[i];
      grad_row_norm[i] += grad_denom * kn;
    }
    grad_strengths[h] = grad_strength;
    float* gk = grad_keys + h * d.w;
    const float* key = keys + h * d.w;
    const float scale = kn > 0.f ? grad_key_norm / kn : 0.f;  // the norm's gradient, 0 at 0 as torch's
    for (int64_t k = 0; k < d.w; ++k) gk[k] = scale * key[k];
    axpy_rows(gk, d.w, grad_dots + h * d.n, 1, memory, d.w, d.n);
  }
  for (int64_t i = 0; i < d.n; ++i) {
    float* gm = grad_memory + i * d.w;
    const float* row = memory + i * d.w;
    const float scale = c.row_norm[i] > 0.f ? grad_row_norm[i] / c.row_norm[i] : 0.f;
#pragma omp simd
    for (int64_t k = 0; k < d.w; ++k) gm[k] += scale * row[k];
    axpy_rows(gm, d.w, grad_dots + i, d.n, keys, d.w, heads);
  }
}

// A story's intermediates, kept from the forward for the backward: views into one float buffer.
struct Saved {
  float *face, *psi, *clamped, *alloc, *order, *back, *fwd;  // squashed interface [I]; [N] x 4; [R,N] x 2
  Content write, read;

  static int64_t size(const Dims& d) { return d.iface + 4 * d.n + 2 * d.r * d.n + (1 + 3 * d.n) + (d.r + d.n + 2 * d.r * d.n); }

  Saved(const Dims& d, float* p) {
    auto take = [&p](int64_t count) { float* view = p; p += count; return view; };
    face = take(d.iface);
    psi = take(d.n);
    clamped = take(d.n);
    alloc = take(d.n);
    order = take(d.n);  // slot indices (exact in a float)
    back = take(d.r * d.n);
    fwd = take(d.r * d.n);
    write = {take(1), take(d.n), take(d.n), take(d.n)};
    read = {take(d.r), take(d.n), take(d.r * d.n), take(d.r * d.n)};
  }
};

// One story's forward: the new state into the *_out pointers, the intermediates into s.
void step_forward(const Dims& d, const Layout& at, const float* raw, const float* memory, const float* usage,
                  const float* link, const float* precedence, const float* reads, const float* writes,
                  float* memory_out, float* usage_out, float* link_out, float* precedence_out,
                  float* reads_out, float* writes_out, float* read_vectors, const Saved& s,
                  int64_t* order) {
  const int64_t n = d.n, w = d.w, r = d.r;
  squash(d, at, raw, s.face);
  const float* f = s.face;
  // retention and usage
  std::fill(s.psi, s.psi + n, 1.f);
  for (int64_t h = 0; h < r; ++h) {
    const float fh = f[at.free_gates + h];
    for (int64_t i = 0; i < n; ++i) s.psi[i] *= 1.f - fh * reads[h * n + i];
  }
  for (int64_t i = 0; i < n; ++i) {
    usage_out[i] = (usage[i] + writes[i] - usage[i] * writes[i]) * s.psi[i];
    s.clamped[i] = kEps + (1.f - kEps) * usage_out[i];
  }
  // allocation: the least used slots first (a stable sort: ties by slot index, as dnc.py's)
  // std::sort with the slot index breaking ties is the stable order; std::stable_sort allocated a buffer
  // at every call
  std::iota(order, order + n, 0);
  std::sort(order, order + n, [&](int64_t a, int64_t b) {
    return s.clamped[a] < s.clamped[b] || (s.clamped[a] == s.clamped[b] && a < b);
  });
  float before = 1.f;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t slot = order[j];
    s.order[j] = static_cast<float>(slot);
    s.alloc[slot] = (1.f - s.clamped[slot]) * before;
    before *= s.clamped[slot];
  }
  // write weighting
  content_forward(d, 1, memory, f + at.write_key, f + at.write_strength, s.write);
  const float ga = f[at.alloc_gate], gw = f[at.write_gate];
  float* ww = writes_out;
  float total = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    ww[i] = gw * (ga * s.alloc[i] + (1.f - ga) * s.write.weights[i]);
    total += ww[i];
  }
  // erase and add; precedence
  const float* erase = f + at.erase;
  const float* values = f + at.write_vector;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = memory + i * w;
    float* out = memory_out + i * w;
    const float wi = ww[i];
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) out[k] = row[k] * (1.f - wi * erase[k]) + wi * values[k];
  }
  for (int64_t i = 0; i < n; ++i) precedence_out[i] = (1.f - total) * precedence[i] + ww[i];
  // links, and the directional weightings on the new ones, a row at a time:
  // back[h,j] = sum_i w[h,i] L[i,j], fwd[h,i] = sum_j L[i,j] w[h,j]
  for (int64_t i = 0; i < n; ++i) {
    const float* row = link + i * n;
    float* out = link_out + i * n;
    const float wi = ww[i];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = row[j] - (wi + ww[j]) * row[j] + wi * precedence[j];
    out[i] = 0.f;
  }
  std::fill(s.back, s.back + r * n, 0.f);
  for (int64_t h = 0; h < r; ++h) {
    axpy_rows(s.back + h * n, n, reads + h * n, 1, link_out, n, n);
    dot_rows<false>(s.fwd + h * n, link_out, n, reads + h * n, n, n);
  }
  // read weightings, read vectors
  content_forward(d, r, memory_out, f + at.read_keys, f + at.read_strengths, s.read);
  for (int64_t h = 0; h < r; ++h) {
    const float* pi = f + at.modes + 3 * h;
    float* rw = reads_out + h * n;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t k = h * n + i;
      rw[i] = pi[0] * s.back[k] + pi[1] * s.read.weights[k] + pi[2] * s.fwd[k];
    }
    float* rv = read_vectors + h * w;
    std::fill(rv, rv + w, 0.f);
    axpy_rows(rv, w, rw, 1, memory_out, w, n);
  }
}

inline const float* at_or_null(const float* p, int64_t offset) { return p ? p + offset : nullptr; }

inline void copy_or_zero(float* dst, const float* src, int64_t count) {
  if (src) std::memcpy(dst, src, sizeof(float) * count);
  else std::fill(dst, dst + count, 0.f);
}

}  // namespace

extern "C" {

int64_t dnc_memory_saved_size(int64_t n, int64_t w, int64_t r) {
  return Saved::size(Dims(n, w, r));
}

// Forward for the batch: new memory, usage, link, precedence, read weights, write weights, read vectors,
// and the intermediates the backward needs (saved: batch x dnc_memory_saved_size floats).
void dnc_memory_forward(int64_t batch, int64_t n, int64_t w, int64_t r, const float* face, const float* memory,
                        const float* usage, const float* link, const float* precedence, const float* reads,
                        const float* writes, float* memory_out, float* usage_out, float* link_out,
                        float* precedence_out, float* reads_out, float* writes_out, float* read_vectors,
                        float* saved) {
  const Dims d(n, w, r);
  const Layout at(d);
  const int64_t per_story = Saved::size(d);
  std::vector<int64_t> order(n);
  for (int64_t b = 0; b < batch; ++b) {
    step_forward(d, at, face + b * d.iface, memory + b * n * w, usage + b * n, link + b * n * n,
                 precedence + b * n, reads + b * r * n, writes + b * n, memory_out + b * n * w,
                 usage_out + b * n, link_out + b * n * n, precedence_out + b * n, reads_out + b * r * n,
                 writes_out + b * n, read_vectors + b * r * w, Saved(d, saved + b * per_story), order.data());
  }
}

// Backward for the batch. Inputs: the forward's inputs, its new memory, links, read weights and write
// weights, its saved intermediates, and the gradients of its seven outputs (null pointer: zero).
// Outputs: the gradients of the raw interface and of the six state inputs (each written whole).
void dnc_memory_backward(int64_t batch, int64_t n, int64_t w, int64_t r, const float* face,
                         const float* memory, const float* usage, const float* link, const float* precedence,
                         const float* reads, const float* writes, const float* memory_new,
                         const float* link_new, const float* reads_new, const float* writes_new,
                         const float* saved, const float* g_memory_new, const float* g_usage_new,
                         const float* g_link_new, const float* g_precedence_new, const float* g_reads_new,
                         const float* g_writes_new, const float* g_read_vectors, float* g_face,
                         float* g_memory, float* g_usage, float* g_link, float* g_precedence, float* g_reads,
                         float* g_writes) {
  const Dims d(n, w, r);
  const Layout at(d);
  const int64_t per_story = Saved::size(d);
  std::vector<float> gm_new(n * w), gwr(r * n), gback(r * n), gfwd(r * n), gcontent(r * n), gww(n),
      galloc(n), gwc(n), gusage(n), gpsi(n), scratch(n + r * n), gl(n * n);
  for (int64_t b = 0; b < batch; ++b) {
    const float* raw = face + b * d.iface;
    const float* M = memory + b * n * w;
    const float* L = link + b * n * n;
    const float* p = precedence + b * n;
    const float* wr_prev = reads + b * r * n;
    const float* ww_prev = writes + b * n;
    const float* u = usage + b * n;
    const float* Mn = memory_new + b * n * w;
    const float* Ln = link_new + b * n * n;
    const float* wr = reads_new + b * r * n;
    const float* ww = writes_new + b * n;
    const Saved s(d, const_cast<float*>(saved) + b * per_story);
    float* gf = g_face + b * d.iface;
    float* gM = g_memory + b * n * w;
    float* gL = g_link + b * n * n;
    float* gp = g_precedence + b * n;
    float* gwr_prev = g_reads + b * r * n;
    float* gww_prev = g_writes + b * n;
    float* gu = g_usage + b * n;
    const float* f = s.face;
    std::memset(gf, 0, sizeof(float) * d.iface);  // gradients of the squashed interface first
    copy_or_zero(gm_new.data(), at_or_null(g_memory_new, b * n * w), n * w);
    copy_or_zero(gwr.data(), at_or_null(g_reads_new, b * r * n), r * n);
    // read vectors rv = wr Mn
    if (g_read_vectors) {
      const float* grv = g_read_vectors + b * r * w;
      for (int64_t h = 0; h < r; ++h) dot_rows<true>(gwr.data() + h * n, Mn, w, grv + h * w, w, n);
      for (int64_t i = 0; i < n; ++i) axpy_rows(gm_new.data() + i * w, w, wr + i, n, grv, w, r);
    }
    // read weighting: modes mix backward, content and forward
    for (int64_t h = 0; h < r; ++h) {
      const float* pi = f + at.modes + 3 * h;
      float* gpi = gf + at.modes + 3 * h;
      const float* g = gwr.data() + h * n;
      gpi[0] = dot(g, s.back + h * n, n);
      gpi[1] = dot(g, s.read.weights + h * n, n);
      gpi[2] = dot(g, s.fwd + h * n, n);
      for (int64_t i = 0; i < n; ++i) {
        gback[h * n + i] = pi[0] * g[i];
        gcontent[h * n + i] = pi[1] * g[i];
        gfwd[h * n + i] = pi[2] * g[i];
      }
    }
    content_backward(d, r, Mn, f + at.read_keys, f + at.read_strengths, s.read, gcontent.data(),
                     gm_new.data(), gf + at.read_keys, gf + at.read_strengths, scratch.data());
    // directional weightings: gradient of the new links, and of the previous read weights
    copy_or_zero(gl.data(), at_or_null(g_link_new, b * n * n), n * n);
    std::fill(gwr_prev, gwr_prev + r * n, 0.f);
    for (int64_t i = 0; i < n; ++i) {
      float* grow = gl.data() + i * n;
      axpy_rows(grow, n, wr_prev + i, n, gback.data(), n, r);  // sum_h w[h,i] g_back[h,:]
      axpy_rows(grow, n, gfwd.data() + i, n, wr_prev, n, r);  // sum_h g_fwd[h,i] w[h,:]
      grow[i] = 0.f;  // the new links' diagonal is a constant 0
    }
    for (int64_t h = 0; h < r; ++h) {
      axpy_rows(gwr_prev + h * n, n, gfwd.data() + h * n, 1, Ln, n, n);
      dot_rows<true>(gwr_prev + h * n, Ln, n, gback.data() + h * n, n, n);
    }
    // precedence p' = (1 - sum ww) p + ww
    float total = 0.f, gp_dot_p = 0.f;
    for (int64_t i = 0; i < n; ++i) total += ww[i];
    copy_or_zero(gww.data(), at_or_null(g_writes_new, b * n), n);
    if (g_precedence_new) {
      const float* gpn = g_precedence_new + b * n;
      for (int64_t i = 0; i < n; ++i) {
        gp[i] = (1.f - total) * gpn[i];
        gp_dot_p += gpn[i] * p[i];
        gww[i] += gpn[i];
      }
    } else {
      std::fill(gp, gp + n, 0.f);
    }
    // links L'[i,j] = (1 - ww_i - ww_j) L[i,j] + ww_i p_j off the diagonal; G[i,j] L[i,j] summed over j
    // goes to ww_i, over i to ww_j
    for (int64_t i = 0; i < n; ++i) {
      const float* grow = gl.data() + i * n;
      const float* row = L + i * n;
      float* out = gL + i * n;
      const float wi = ww[i];
      float acc_i = 0.f;
#pragma omp simd reduction(+ : acc_i)
      for (int64_t j = 0; j < n; ++j) {
        const float gx = grow[j] * row[j];
        out[j] = grow[j] * (1.f - wi - ww[j]);
        acc_i += grow[j] * p[j] - gx;
        gp[j] += grow[j] * wi;
        gwc[j] = (i == 0 ? 0.f : gwc[j]) - gx;  // column sums, in gwc until the write weighting
      }
      gww[i] += acc_i - gp_dot_p;
    }
    for (int64_t i = 0; i < n; ++i) gww[i] += gwc[i];
    // erase and add: M' = M (1 - ww e) + ww v
    {
      const float* erase = f + at.erase;
      const float* values = f + at.write_vector;
      float* ge = gf + at.erase;
      float* gv = gf + at.write_vector;
      for (int64_t i = 0; i < n; ++i) {
        const float* g = gm_new.data() + i * w;
        const float* row = M + i * w;
        float* gm = gM + i * w;
        const float wi = ww[i];
        float acc = 0.f;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < w; ++k) {
          gm[k] = g[k] * (1.f - wi * erase[k]);
          acc += g[k] * (values[k] - row[k] * erase[k]);
          ge[k] -= g[k] * row[k] * wi;
          gv[k] += g[k] * wi;
        }
        gww[i] += acc;
      }
    }
    // write weighting ww = gw (ga a + (1 - ga) c)
    const float ga = f[at.alloc_gate], gw = f[at.write_gate];
    const float* cw = s.write.weights;
    float g_gw = 0.f, g_ga = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      g_gw += gww[i] * (ga * s.alloc[i] + (1.f - ga) * cw[i]);
      g_ga += gww[i] * gw * (s.alloc[i] - cw[i]);
      galloc[i] = gww[i] * gw * ga;
      gwc[i] = gww[i] * gw * (1.f - ga);
    }
    gf[at.write_gate] = g_gw;
    gf[at.alloc_gate] = g_ga;
    content_backward(d, 1, M, f + at.write_key, f + at.write_strength, s.write, gwc.data(), gM,
                     gf + at.write_key, gf + at.write_strength, scratch.data());
    // allocation: d a[i] / d u[j] = a[i] / u[j] for j before i, -prod(before i) for j = i
    copy_or_zero(gusage.data(), at_or_null(g_usage_new, b * n), n);
    {
      float* before = scratch.data();  // the product of the usages before each slot, in sorted order
      float product = 1.f, later = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        before[j] = product;
        product *= s.clamped[static_cast<int64_t>(s.order[j])];
      }
      for (int64_t j = n - 1; j >= 0; --j) {
        const int64_t slot = static_cast<int64_t>(s.order[j]);
        gusage[slot] += (1.f - kEps) * (later / s.clamped[slot] - galloc[slot] * before[j]);
        later += galloc[slot] * s.alloc[slot];
      }
    }
    // usage u' = (u + ww_prev - u ww_prev) psi
    for (int64_t i = 0; i < n; ++i) {
      gu[i] = gusage[i] * s.psi[i] * (1.f - ww_prev[i]);
      gww_prev[i] = gusage[i] * s.psi[i] * (1.f - u[i]);
      gpsi[i] = gusage[i] * (u[i] + ww_prev[i] - u[i] * ww_prev[i]);
    }
    // retention psi = prod_h (1 - f_h wr_prev[h]); the other heads' product without a division (a factor
    // can be 0)
    for (int64_t h = 0; h < r; ++h) {
      const float fh = f[at.free_gates + h];
      float acc = 0.f;
      for (int64_t i = 0; i < n; ++i) {
        float others = 1.f;
        for (int64_t k = 0; k < r; ++k)
          if (k != h) others *= 1.f - f[at.free_gates + k] * wr_prev[k * n + i];
        const float g = gpsi[i] * others;  // gradient of this head's factor
        acc -= g * wr_prev[h * n + i];
        gwr_prev[h * n + i] -= g * fh;
      }
      gf[at.free_gates + h] = acc;
    }
    // the squashing's backward, in place: raw gradients from the squashed ones
    for (int64_t h = 0; h < r; ++h) gf[at.read_strengths + h] *= softplus_grad(raw[at.read_strengths + h]);
    gf[at.write_strength] *= softplus_grad(raw[at.write_strength]);
    for (int64_t k = 0; k < w; ++k) gf[at.erase + k] *= f[at.erase + k] * (1.f - f[at.erase + k]);
    for (int64_t h = 0; h < r; ++h) gf[at.free_gates + h] *= f[at.free_gates + h] * (1.f - f[at.free_gates + h]);
    gf[at.alloc_gate] *= ga * (1.f - ga);
    gf[at.write_gate] *= gw * (1.f - gw);
    for (int64_t h = 0; h < r; ++h) {
      const float* pi = f + at.modes + 3 * h;
      float* g = gf + at.modes + 3 * h;
      const float inner = pi[0] * g[0] + pi[1] * g[1] + pi[2] * g[2];
      for (int k = 0; k < 3; ++k) g[k] = pi[k] * (g[k] - inner);
    }
  }
}

// The LSTM cell's elementwise part (gates i, f, g, o as nn.LSTMCell), then the clip of the output:
// gates [B,4H] (input and recurrent products and biases summed), c [B,H] -> h, c_out, clipped h.
void dnc_lstm_forward(int64_t batch, int64_t hidden, float clip, const float* gates, const float* c,
                      float* h_out, float* c_out, float* clipped) {
  const float bound = clip > 0.f ? clip : std::numeric_limits<float>::max();
  for (int64_t b = 0; b < batch; ++b) {
    const float* g = gates + b * 4 * hidden;
    const float* cb = c + b * hidden;
    float *hb = h_out + b * hidden, *cn = c_out + b * hidden, *clb = clipped + b * hidden;
#pragma omp simd
    for (int64_t k = 0; k < hidden; ++k) {
      const float cell = sigmoid(g[hidden + k]) * cb[k] + sigmoid(g[k]) * tanh_(g[2 * hidden + k]);
      const float h = sigmoid(g[3 * hidden + k]) * tanh_(cell);
      cn[k] = cell;
      hb[k] = h;
      clb[k] = h < -bound ? -bound : (h > bound ? bound : h);
    }
  }
}

// Its backward: gradients of h (the recurrent one), of the new cell and of the clipped h -> gradients of
// the gates and of the previous cell.
void dnc_lstm_backward(int64_t batch, int64_t hidden, float clip, const float* gates, const float* c,
                       const float* c_new, const float* h_new, const float* g_h, const float* g_c_new,
                       const float* g_clipped, float* g_gates, float* g_c) {
  const float bound = clip > 0.f ? clip : std::numeric_limits<float>::max();
  for (int64_t b = 0; b < batch; ++b) {
    const float* g = gates + b * 4 * hidden;
    float* gg = g_gates + b * 4 * hidden;
    const int64_t o = b * hidden;
#pragma omp simd
    for (int64_t k = 0; k < hidden; ++k) {
      const int64_t x = o + k;
      const float h = h_new[x];
      // the clamp passes the gradient where -clip <= h <= clip (torch's clamp backward)
      const float grad_h = g_h[x] + (h >= -bound && h <= bound ? g_clipped[x] : 0.f);
      const float i = sigmoid(g[k]), f = sigmoid(g[hidden + k]), gt = tanh_(g[2 * hidden + k]);
      const float og = sigmoid(g[3 * hidden + k]), tc = tanh_(c_new[x]);
      const float grad_c = g_c_new[x] + grad_h * og * (1.f - tc * tc);
      gg[k] = grad_c * gt * i * (1.f - i);
      gg[hidden + k] = grad_c * c[x] * f * (1.f - f);
      gg[2 * hidden + k] = grad_c * i * (1.f - gt * gt);
      gg[3 * hidden + k] = grad_h * tc * og * (1.f - og);
      g_c[x] = grad_c * f;
    }
  }
}

}  // extern "C"
