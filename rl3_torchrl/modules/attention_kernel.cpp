// Causal self-attention on CPU computing only the keys at or before each query (rl3_torchrl.modules.attention_kernel).
//
// torch's CPU flash kernel splits the keys into blocks of 512 and masks inside a block, so at the window lengths of
// this package (H + 1 <= 2049) a causal call costs as much as a full one. Here query i reads keys 0..i only.
// Layout: q, k, v are [B, H, L, D] with any strides but a unit last stride; the output is written as
// [B, L, H, D] (so that merging the heads afterwards is a view) and the log-sum-exp of each row as [B, H, L].
// Each head is cut into tiles of 16 queries; a tile's scores, probabilities and their gradients are held as one
// 16-float vector per key (a lane per query), so the row maxima and sums need no horizontal reduction. Arithmetic is
// float32 throughout, in a fixed order: the same inputs give the same bits.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace {

// 16 floats (one AVX-512 register; the compiler splits it where the CPU has narrower ones). The aligned(4)
// variant reads rows at any float offset.
typedef float vec __attribute__((vector_size(64)));
typedef float vec_u __attribute__((vector_size(64), aligned(4)));
typedef int32_t ivec __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline vec load(const float* p) { return *reinterpret_cast<const vec_u*>(p); }
inline void store(float* p, vec x) { *reinterpret_cast<vec_u*>(p) = x; }
inline vec splat(float x) { return vec{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline vec vmax(vec a, vec b) { return a > b ? a : b; }

// exp(x) for x <= 0 (scores minus their row maximum or log-sum-exp): 2^n * poly(r) with n = round(x / ln 2). The
// degree-7 Taylor polynomial on |r| <= ln(2)/2 has a relative error below 1e-8, under float32's rounding; below
// -87 the result is clamped to exp(-87) ~ 1.6e-38; NaN gives NaN.
inline vec exp_nonpositive(vec x) {
  x = x < -87.0f ? splat(-87.0f) : x;  // written so that NaN stays NaN (the caller's finite check sees it)
  const vec magic = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const vec n = (x * 1.44269504088896341f + magic) - magic;
  const vec r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  vec p = splat(1.0f / 5040.0f) + r * (1.0f / 40320.0f);
  p = 1.0f / 720.0f + r * p;
  p = 1.0f / 120.0f + r * p;
  p = 1.0f / 24.0f + r * p;
  p = 1.0f / 6.0f + r * p;
  p = 0.5f + r * p;
  p = 1.0f + r * p;
  p = 1.0f + r * p;
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  return p * (vec)bits;  // a vector cast reinterprets the bits
}

// Keeps the compiler from hoisting loop-invariant broadcasts out of a loop (they would not fit in the registers).
template <typename T>
inline void opaque(T*& p) {
  asm volatile("" : "+r"(p));
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu(), "causal_attention: tensors must be on the CPU, got ", t->device());
    TORCH_CHECK(t->scalar_type() == at::kFloat, "causal_attention: tensors must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 4, "causal_attention: tensors must be [B, H, L, D], got ", t->sizes());
    TORCH_CHECK(t->stride(3) == 1, "causal_attention: the last dim must be contiguous");
    TORCH_CHECK(t->sizes() == q.sizes(), "causal_attention: q, k, v must have one shape, got ", q.sizes(), " and ",
                t->sizes());
  }
}

// One head of a [B, H, L, D] tensor: a pointer to its first row and the stride between rows.
struct Head {
  const float* data;
  int64_t stride;
  const float* row(int64_t i) const { return data + i * stride; }
};

Head head_of(const at::Tensor& t, int64_t b, int64_t h) {
  return {t.const_data_ptr<float>() + b * t.stride(0) + h * t.stride(1), t.stride(2)};
}

// The rows of one head times `scale`, in a contiguous [ld, D] buffer and (if `cols`) transposed in a [D, ld] one;
// both are zero past `length`, and ld is a multiple of kLanes.
template <int D>
void pack_head(Head m, int64_t length, int64_t ld, float scale, float* rows, float* cols) {
  std::fill(rows, rows + D * ld, 0.0f);
  if (cols) std::fill(cols, cols + D * ld, 0.0f);
  for (int64_t j = 0; j < length; ++j)
    for (int d = 0; d < D; ++d) {
      rows[j * D + d] = m.row(j)[d] * scale;
      if (cols) cols[d * ld + j] = rows[j * D + d];
    }
}

// A tile is 16 queries i0 + r; each vector below holds one value per query (lane r). The tile's keys are
// 0 <= j < i0 + 16, in blocks of 16; in the last block (j0 = i0), key i0 + l is in the future of queries r < l.
inline vec causal_select(vec x, int64_t j, int64_t i0, vec masked) {
  if (j < i0) return x;
  const ivec lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return lane >= static_cast<int32_t>(j - i0) ? x : masked;
}

// out[j] = (m[j] . xt[:, i0 + r])_r for every key j of `blocks` blocks: m is a [ld, D] row buffer, xt a [D, ld]
// transposed one, out a [ld, 16] buffer (one vector per key).
template <int D>
inline void tile_products(const float* m, const float* xt, int64_t ld, int64_t i0, int64_t blocks, float* out) {
  for (int64_t j0 = 0; j0 < blocks * kLanes; j0 += kLanes) {
    const float* x = xt + i0;
    opaque(x);  // the 16 columns are reloaded per block, leaving the registers to the 16 accumulators
    vec acc[kLanes] = {};
    for (int d = 0; d < D; ++d) {
      const vec col = load(x + d * ld);
      for (int l = 0; l < kLanes; ++l) acc[l] += splat(m[(j0 + l) * D + d]) * col;
    }
    for (int l = 0; l < kLanes; ++l) store(out + (j0 + l) * kLanes, acc[l]);
  }
}

// acc[d] = (sum_j w[j]_r * m[j, c + d])_r over the keys of `blocks` blocks, for the 16 columns c <= d < c + 16.
inline void tile_mix(const float* w, int64_t blocks, const float* m, int stride, int c, vec (&acc)[kLanes]) {
  for (int d = 0; d < kLanes; ++d) acc[d] = vec{};
  for (int64_t j = 0; j < blocks * kLanes; ++j) {
    const vec wj = load(w + j * kLanes);
    for (int d = 0; d < kLanes; ++d) acc[d] += splat(m[j * stride + c + d]) * wj;
  }
}

// rows[r * stride + c + d] = acc[d]_r * scale, for the rows r < count.
inline void store_transposed(const vec (&acc)[kLanes], int64_t count, float scale, float* rows, int64_t stride, int c) {
  for (int64_t r = 0; r < count; ++r)
    for (int d = 0; d < kLanes; ++d) rows[r * stride + c + d] = acc[d][r] * scale;
}

// m[j, :] += sum_r w[j]_r * x[r, :] for the keys of `blocks` blocks: x is the tile's [16, D] rows.
template <int D>
inline void tile_scatter(const float* w, int64_t blocks, const float* x, float* m) {
  for (int c = 0; c < D; c += kLanes) {
    vec xr[kLanes];
    for (int r = 0; r < kLanes; ++r) xr[r] = load(x + r * D + c);
    for (int64_t j = 0; j < blocks * kLanes; ++j) {
      vec acc = load(m + j * D + c);
      for (int r = 0; r < kLanes; ++r) acc += splat(w[j * kLanes + r]) * xr[r];
      store(m + j * D + c, acc);
    }
  }
}

// Per-thread buffers for one head (those of the gradients only for the backward).
template <int D>
struct Workspace {
  int64_t ld;
  std::vector<float> q, qt, k, v, p, g, gt, ds, dk, dv;
  Workspace(int64_t length, bool backward)
      : ld((length + kLanes - 1) / kLanes * kLanes),
        q(D * ld), qt(D * ld), k(D * ld), v(D * ld), p(kLanes * ld),
        g(backward ? D * ld : 0), gt(backward ? D * ld : 0), ds(backward ? kLanes * ld : 0),
        dk(backward ? D * ld : 0), dv(backward ? D * ld : 0) {}
};

// Forward of one head: its output rows (`out`, rows `out_stride` apart) and the log-sum-exp of each row.
template <int D>
void forward_head(Workspace<D>& w, Head q, Head k, Head v, int64_t length, float scale, float* out, int64_t out_stride,
                  float* lse) {
  const int64_t ld = w.ld;
  pack_head<D>(q, length, ld, scale, w.q.data(), w.qt.data());
  pack_head<D>(k, length, ld, 1.0f, w.k.data(), nullptr);
  pack_head<D>(v, length, ld, 1.0f, w.v.data(), nullptr);
  const vec minus_inf = splat(-std::numeric_limits<float>::infinity());
  for (int64_t i0 = 0; i0 < length; i0 += kLanes) {
    const int64_t blocks = i0 / kLanes + 1, keys = i0 + kLanes, count = std::min<int64_t>(kLanes, length - i0);
    tile_products<D>(w.k.data(), w.qt.data(), ld, i0, blocks, w.p.data());
    // four partial maxima and sums (keys is a multiple of 16): one dependency chain would wait on each add
    vec mp[4] = {minus_inf, minus_inf, minus_inf, minus_inf};
    for (int64_t j = 0; j < keys; ++j)
      mp[j % 4] = vmax(mp[j % 4], causal_select(load(w.p.data() + j * kLanes), j, i0, minus_inf));
    const vec m = vmax(vmax(mp[0], mp[1]), vmax(mp[2], mp[3]));
    vec zp[4] = {};
    for (int64_t j = 0; j < keys; ++j) {
      const vec e = causal_select(exp_nonpositive(load(w.p.data() + j * kLanes) - m), j, i0, vec{});
      store(w.p.data() + j * kLanes, e);
      zp[j % 4] += e;
    }
    const vec z = (zp[0] + zp[1]) + (zp[2] + zp[3]);
    for (int c = 0; c < D; c += kLanes) {
      vec acc[kLanes];
      tile_mix(w.p.data(), blocks, w.v.data(), D, c, acc);
      for (int d = 0; d < kLanes; ++d) acc[d] /= z;
      store_transposed(acc, count, 1.0f, out + i0 * out_stride, out_stride, c);
    }
    for (int64_t r = 0; r < count; ++r) lse[i0 + r] = m[r] + std::log(z[r]);
  }
}

// Backward of one head: the gradients of q, k and v, given the output's gradient g, the output o and the lse.
template <int D>
void backward_head(Workspace<D>& w, Head q, Head k, Head v, Head g, Head o, const float* lse, int64_t length,
                   float scale, float* dq, float* dk, float* dv) {
  const int64_t ld = w.ld;
  pack_head<D>(q, length, ld, scale, w.q.data(), w.qt.data());
  pack_head<D>(k, length, ld, 1.0f, w.k.data(), nullptr);
  pack_head<D>(v, length, ld, 1.0f, w.v.data(), nullptr);
  pack_head<D>(g, length, ld, 1.0f, w.g.data(), w.gt.data());
  std::fill(w.dk.begin(), w.dk.end(), 0.0f);
  std::fill(w.dv.begin(), w.dv.end(), 0.0f);
  const ivec lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for (int64_t i0 = 0; i0 < length; i0 += kLanes) {
    const int64_t blocks = i0 / kLanes + 1, keys = i0 + kLanes, count = std::min<int64_t>(kLanes, length - i0);
    vec row_lse = {}, delta = {};
    for (int64_t r = 0; r < count; ++r) {
      row_lse[r] = lse[i0 + r];
      for (int d = 0; d < D; ++d) delta[r] += w.g[(i0 + r) * D + d] * o.row(i0 + r)[d];
    }
    const ivec live = lane < static_cast<int32_t>(count);  // the padding rows of the last tile get p = 0
    tile_products<D>(w.k.data(), w.qt.data(), ld, i0, blocks, w.p.data());
    tile_products<D>(w.v.data(), w.gt.data(), ld, i0, blocks, w.ds.data());
    for (int64_t j = 0; j < keys; ++j) {
      vec pj = exp_nonpositive(load(w.p.data() + j * kLanes) - row_lse);
      pj = live ? causal_select(pj, j, i0, vec{}) : vec{};
      store(w.p.data() + j * kLanes, pj);
      store(w.ds.data() + j * kLanes, pj * (load(w.ds.data() + j * kLanes) - delta));
    }
    for (int c = 0; c < D; c += kLanes) {
      vec acc[kLanes];
      tile_mix(w.ds.data(), blocks, w.k.data(), D, c, acc);
      store_transposed(acc, count, scale, dq + i0 * D, D, c);
    }
    tile_scatter<D>(w.ds.data(), blocks, w.q.data() + i0 * D, w.dk.data());
    tile_scatter<D>(w.p.data(), blocks, w.g.data() + i0 * D, w.dv.data());
  }
  std::copy(w.dk.begin(), w.dk.begin() + length * D, dk);
  std::copy(w.dv.begin(), w.dv.begin() + length * D, dv);
}

template <int D>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                double scale) {
  const int64_t batch = q.size(0), heads = q.size(1), length = q.size(2);
  at::Tensor out = at::empty({batch, length, heads, D}, q.options());
  at::Tensor lse = at::empty({batch, heads, length}, q.options());
  float *op = out.mutable_data_ptr<float>(), *lp = lse.mutable_data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    Workspace<D> w(length, /*backward=*/false);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      forward_head<D>(w, head_of(q, b, h), head_of(k, b, h), head_of(v, b, h), length, static_cast<float>(scale),
                      op + (b * length * heads + h) * D, heads * D, lp + bh * length);
    }
  });
  return {out, lse};
}

template <int D>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             double scale) {
  const int64_t batch = q.size(0), heads = q.size(1), length = q.size(2);
  at::Tensor dq = at::empty({batch, heads, length, D}, q.options());
  at::Tensor dk = at::empty({batch, heads, length, D}, q.options());
  at::Tensor dv = at::empty({batch, heads, length, D}, q.options());
  const float* lp = lse.const_data_ptr<float>();
  float *dqp = dq.mutable_data_ptr<float>(), *dkp = dk.mutable_data_ptr<float>(), *dvp = dv.mutable_data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    Workspace<D> w(length, /*backward=*/true);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads, offset = bh * length * D;
      backward_head<D>(w, head_of(q, b, h), head_of(k, b, h), head_of(v, b, h), head_of(grad, b, h),
                       head_of(out, b, h), lp + bh * length, length, static_cast<float>(scale), dqp + offset,
                       dkp + offset, dvp + offset);
    }
  });
  return {dq, dk, dv};
}

std::tuple<at::Tensor, at::Tensor> causal_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  double scale) {
  check_inputs(q, k, v);
  switch (q.size(3)) {
    case 16: return forward_impl<16>(q, k, v, scale);
    case 32: return forward_impl<32>(q, k, v, scale);
    case 64: return forward_impl<64>(q, k, v, scale);
    default: TORCH_CHECK(false, "causal_attention: head_dim must be 16, 32 or 64, got ", q.size(3));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_backward(const at::Tensor& grad, const at::Tensor& q,
                                                               const at::Tensor& k, const at::Tensor& v,
                                                               const at::Tensor& out, const at::Tensor& lse,
                                                               double scale) {
  check_inputs(q, k, v);
  TORCH_CHECK(grad.sizes() == q.sizes() && grad.stride(3) == 1, "causal_attention: bad gradient layout");
  TORCH_CHECK(out.sizes() == q.sizes() && out.stride(3) == 1, "causal_attention: bad output layout");
  const at::Tensor lse_c = lse.contiguous();
  switch (q.size(3)) {
    case 16: return backward_impl<16>(grad, q, k, v, out, lse_c, scale);
    case 32: return backward_impl<32>(grad, q, k, v, out, lse_c, scale);
    case 64: return backward_impl<64>(grad, q, k, v, out, lse_c, scale);
    default: TORCH_CHECK(false, "causal_attention: head_dim must be 16, 32 or 64, got ", q.size(3));
  }
}

}  // namespace

TORCH_LIBRARY(rl3_torchrl, m) {
  m.def("causal_attention_forward(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)");
  m.def(
      "causal_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, float scale) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rl3_torchrl, CPU, m) {
  m.impl("causal_attention_forward", causal_forward);
  m.impl("causal_attention_backward", causal_backward);
}
