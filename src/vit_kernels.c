/* ViT kernels, written so that GCC vectorizes them at -O3 (see the options of this file in
 * CMakeLists.txt). Inner loops run over a contiguous axis without reductions. Sums over the
 * model width use LANES partial sums added in a fixed order, so results stay bitwise
 * reproducible. */
#include "vit_kernels.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define VIT_SQRT1_2 0.70710678118654752f
#define VIT_INV_SQRT_2PI 0.39894228040143268f
#define LANES 16

/* Sum of LANES partial sums, added in index order. */
static float sum_lanes(const float *acc)
{
    float total = 0.0f;
    for (int j = 0; j < LANES; j++) total += acc[j];
    return total;
}

/* exp(x) for x in [-87, 88] (clamped outside) with a relative error near float rounding:
 * x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-7 Taylor polynomial (truncation
 * error below 1e-8), and 2^n built in the exponent bits. Branch-free and without library
 * calls, so that loops calling it vectorize, unlike loops calling libm's expf. */
static inline float vit_expf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* Adding and subtracting 1.5 * 2^23 rounds to the nearest integer. */
    const float round_shift = 12582912.0f;
    float n = (x * 1.44269504088896341f + round_shift) - round_shift;
    /* ln2 = 0.693359375 - 2.12194440e-4; the first part times n is exact in float. */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t bits;
        float value;
    } scale;
    /* 2^n, with n in [-126, 127] after the clamp. A NaN x leaves n NaN, whose conversion to
     * int is undefined, so it converts 0 instead; p is NaN and so is the result. */
    float n_finite = n == n ? n : 0.0f;
    scale.bits = ((int32_t)n_finite + 127) << 23;
    return p * scale.value;
}

/* y (rows, out) = x (rows, in) W^T (in, out) + b (out) + residual (rows, out). One pass
 * writes bias plus residual into y, then one GEMM over all rows accumulates onto it. */
void vit_linear_forward(float *y, const float *x, const float *w, const float *b,
                        const float *residual, int64_t rows, int in, int out)
{
    for (int64_t r = 0; r < rows && (b || residual); r++) {
        float *restrict yr = y + r * out;
        const float *res = residual ? residual + r * out : NULL;
        if (res && b)
            for (int j = 0; j < out; j++) yr[j] = res[j] + b[j];
        else if (res && res != yr)
            for (int j = 0; j < out; j++) yr[j] = res[j];
        else if (b)
            for (int j = 0; j < out; j++) yr[j] = b[j];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, out, in, 1.0f, x, in, w, in,
                b || residual ? 1.0f : 0.0f, y, out);
}

/* dy (rows, out), x (rows, in), W (out, in): dW (out, in) = dy^T x, db (out) = column sums of
 * dy, dx (rows, in) = dy W (or += when accumulate). */
void vit_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int64_t rows, int in, int out, int accumulate)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, (int)rows, 1.0f, dy, out, x, in,
                0.0f, dw, in);
    if (db) {
        memset(db, 0, (size_t)out * sizeof(float));
        for (int64_t r = 0; r < rows; r++) {
            const float *row = dy + r * out;
            for (int j = 0; j < out; j++) db[j] += row[j];
        }
    }
    if (dx) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, in, out, 1.0f, dy, out, w,
                    in, accumulate ? 1.0f : 0.0f, dx, in);
    }
}

/* x, y (rows, d); gain, bias (d); mean, rstd (rows). Two-pass mean and variance (biased, as
 * PyTorch's LayerNorm). */
void vit_layernorm_forward(float *restrict y, float *restrict mean, float *restrict rstd,
                           const float *restrict x, const float *restrict gain,
                           const float *restrict bias, int64_t rows, int d, double eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float acc[LANES] = {0}, acc2[LANES] = {0};
        int i = 0;
        for (; i + LANES <= d; i += LANES)
            for (int j = 0; j < LANES; j++) acc[j] += xr[i + j];
        for (; i < d; i++) acc[0] += xr[i];
        float mu = sum_lanes(acc) / (float)d;
        for (i = 0; i + LANES <= d; i += LANES) {
            for (int j = 0; j < LANES; j++) {
                float c = xr[i + j] - mu;
                acc2[j] += c * c;
            }
        }
        for (; i < d; i++) acc2[0] += (xr[i] - mu) * (xr[i] - mu);
        float rs = (float)(1.0 / sqrt((double)(sum_lanes(acc2) / (float)d) + eps));
        for (i = 0; i < d; i++) yr[i] = (xr[i] - mu) * rs * gain[i] + bias[i];
        mean[r] = mu;
        rstd[r] = rs;
    }
}

/* One row of the LayerNorm backward. With xhat the normalized input and g = dy * gain:
 * dx += rstd * (g - mean(g) - xhat * mean(g * xhat)); dgain += dy * xhat; dbias += dy. */
static void layernorm_row_backward(float *restrict dx, float *restrict dgain, float *restrict dbias,
                                   const float *restrict dy, const float *restrict x, float mu,
                                   float rs, const float *restrict gain, int d)
{
    float acc_g[LANES] = {0}, acc_gx[LANES] = {0};
    int i = 0;
    for (; i + LANES <= d; i += LANES) {
        for (int j = 0; j < LANES; j++) {
            float xhat = (x[i + j] - mu) * rs, g = dy[i + j] * gain[i + j];
            acc_g[j] += g;
            acc_gx[j] += g * xhat;
            dgain[i + j] += dy[i + j] * xhat;
            dbias[i + j] += dy[i + j];
        }
    }
    for (; i < d; i++) {
        float xhat = (x[i] - mu) * rs, g = dy[i] * gain[i];
        acc_g[0] += g;
        acc_gx[0] += g * xhat;
        dgain[i] += dy[i] * xhat;
        dbias[i] += dy[i];
    }
    float mean_g = sum_lanes(acc_g) / (float)d, mean_gx = sum_lanes(acc_gx) / (float)d;
    for (i = 0; i < d; i++) {
        float xhat = (x[i] - mu) * rs;
        dx[i] += rs * (dy[i] * gain[i] - mean_g - xhat * mean_gx);
    }
}

/* dy, x, dx (rows, d); gain, dgain, dbias (d); mean, rstd (rows). */
void vit_layernorm_backward(float *dx, float *dgain, float *dbias, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *gain, int64_t rows,
                            int d)
{
    memset(dgain, 0, (size_t)d * sizeof(float));
    memset(dbias, 0, (size_t)d * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        layernorm_row_backward(dx + r * d, dgain, dbias, dy + r * d, x + r * d, mean[r], rstd[r],
                               gain, d);
}

/* x, y, dydx (n). GELU(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt(2))), PyTorch's nn.GELU()
 * default, and its derivative Phi(x) + x phi(x). erf(z) for z >= 0 is the rational
 * approximation 1 - t (a1 + t (a2 + ... + t a5)) exp(-z^2), t = 1 / (1 + p z), of
 * Abramowitz and Stegun, Handbook of Mathematical Functions, formula 7.1.26 (absolute error
 * at most 1.5e-7; test_vit_grad checks it). exp(-z^2) = exp(-x^2 / 2) is shared with phi. */
void vit_gelu_forward(float *restrict y, float *restrict dydx, const float *restrict x, int64_t n)
{
    const float p = 0.3275911f, a1 = 0.254829592f, a2 = -0.284496736f, a3 = 1.421413741f;
    const float a4 = -1.453152027f, a5 = 1.061405429f;
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i], z = fabsf(xi) * VIT_SQRT1_2;
        float t = 1.0f / (1.0f + p * z);
        float e = vit_expf(-z * z);
        float poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t;
        float cdf = 0.5f * (1.0f + copysignf(1.0f - poly * e, xi));
        y[i] = xi * cdf;
        dydx[i] = cdf + xi * e * VIT_INV_SQRT_2PI;
    }
}

/* dx, dy, dydx (n): dx = dy * dydx, in place over dy allowed. */
void vit_gelu_backward(float *dx, const float *dy, const float *dydx, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * dydx[i];
}

/* Attention runs on groups of LANES (batch, head) pairs at once. Each group is copied into
 * lane-minor arrays, (T, dh, LANES) for Q, K, V and (T, T, LANES) for the probabilities. Every
 * inner loop then runs over the LANES pairs, with no remainder and no reduction whatever T and
 * d/h are. Pair p is image p / h, head p % h, and lanes past the last pair hold zeros. */

/* dst (T, dh, LANES) <- columns col + hd*dh .. + dh - 1 of src (B, T, stride), for pairs
 * p0 .. p0 + LANES - 1 of npairs. */
static void pack_lanes(float *restrict dst, const float *restrict src, int p0, int npairs,
                       int heads, int tokens, int dh, int stride, int col)
{
    for (int l = 0; l < LANES; l++) {
        int p = p0 + l;
        if (p >= npairs) {
            for (int e = 0; e < tokens * dh; e++) dst[e * LANES + l] = 0.0f;
            continue;
        }
        const float *s = src + (int64_t)(p / heads) * tokens * stride + col + (p % heads) * dh;
        for (int t = 0; t < tokens; t++)
            for (int i = 0; i < dh; i++) dst[(t * dh + i) * LANES + l] = s[t * stride + i];
    }
}

/* Inverse of pack_lanes for the pairs that exist: dst (B, T, stride) <- src (T, dh, LANES). */
static void unpack_lanes(float *restrict dst, const float *restrict src, int p0, int npairs,
                         int heads, int tokens, int dh, int stride, int col)
{
    for (int l = 0; l < LANES && p0 + l < npairs; l++) {
        int p = p0 + l;
        float *d = dst + (int64_t)(p / heads) * tokens * stride + col + (p % heads) * dh;
        for (int t = 0; t < tokens; t++)
            for (int i = 0; i < dh; i++) d[t * stride + i] = src[(t * dh + i) * LANES + l];
    }
}

/* lanes (T, T, LANES) <- att (pairs, T, T) for pairs p0 .. p0 + LANES - 1 of npairs. */
static void pack_att(float *restrict lanes, const float *restrict att, int p0, int npairs,
                     int tokens)
{
    int64_t tt = (int64_t)tokens * tokens;
    for (int l = 0; l < LANES; l++) {
        const float *a = att + (p0 + l) * tt;
        for (int64_t e = 0; e < tt; e++) lanes[e * LANES + l] = p0 + l < npairs ? a[e] : 0.0f;
    }
}

/* Inverse of pack_att for the pairs that exist. */
static void unpack_att(float *restrict att, const float *restrict lanes, int p0, int npairs,
                       int tokens)
{
    int64_t tt = (int64_t)tokens * tokens;
    for (int l = 0; l < LANES && p0 + l < npairs; l++) {
        float *a = att + (p0 + l) * tt;
        for (int64_t e = 0; e < tt; e++) a[e] = lanes[e * LANES + l];
    }
}

/* row (T, LANES) <- softmax over T of each lane. */
static void softmax_lanes(float *restrict row, int tokens)
{
    float max[LANES], sum[LANES] = {0};
    for (int l = 0; l < LANES; l++) max[l] = row[l];
    for (int s = 1; s < tokens; s++)
        for (int l = 0; l < LANES; l++)
            max[l] = row[s * LANES + l] > max[l] ? row[s * LANES + l] : max[l];
    for (int s = 0; s < tokens; s++) {
        for (int l = 0; l < LANES; l++) {
            float e = vit_expf(row[s * LANES + l] - max[l]);
            row[s * LANES + l] = e;
            sum[l] += e;
        }
    }
    for (int l = 0; l < LANES; l++) sum[l] = 1.0f / sum[l];
    for (int s = 0; s < tokens; s++)
        for (int l = 0; l < LANES; l++) row[s * LANES + l] *= sum[l];
}

/* One group: q, k, v, y (T, dh, LANES); prob (T, T, LANES).
 * prob = softmax(q k^T * scale) over the last token axis, y = prob v. */
static void group_forward(float *restrict y, float *restrict prob, const float *restrict q,
                          const float *restrict k, const float *restrict v, int tokens, int dh,
                          float scale)
{
    for (int t = 0; t < tokens; t++) {
        float *row = prob + (int64_t)t * tokens * LANES;
        for (int s = 0; s < tokens; s++) {
            float acc[LANES] = {0};
            for (int i = 0; i < dh; i++) {
                const float *qi = q + (t * dh + i) * LANES, *ki = k + (s * dh + i) * LANES;
                for (int l = 0; l < LANES; l++) acc[l] += qi[l] * ki[l];
            }
            for (int l = 0; l < LANES; l++) row[s * LANES + l] = acc[l] * scale;
        }
        softmax_lanes(row, tokens);
        for (int i = 0; i < dh; i++) {
            float acc[LANES] = {0};
            for (int s = 0; s < tokens; s++) {
                const float *vi = v + (s * dh + i) * LANES;
                for (int l = 0; l < LANES; l++) acc[l] += row[s * LANES + l] * vi[l];
            }
            for (int l = 0; l < LANES; l++) y[(t * dh + i) * LANES + l] = acc[l];
        }
    }
}

int64_t vit_attention_work(int tokens, int d, int heads)
{
    int64_t dh = d / heads, T = tokens;
    return LANES * (7 * T * dh + 2 * T * T);
}

/* qkv (B, T, 3*d), att (B, h, T, T), y (B, T, d), work vit_attention_work(T, d, h). */
void vit_attention_forward(float *y, float *att, const float *qkv, int batch, int tokens, int d,
                           int heads, float *work)
{
    int dh = d / heads, npairs = batch * heads;
    int64_t block = (int64_t)tokens * dh * LANES;
    float *q = work, *k = q + block, *v = k + block, *out = v + block, *prob = out + block;
    float scale = 1.0f / sqrtf((float)dh);
    for (int p0 = 0; p0 < npairs; p0 += LANES) {
        pack_lanes(q, qkv, p0, npairs, heads, tokens, dh, 3 * d, 0);
        pack_lanes(k, qkv, p0, npairs, heads, tokens, dh, 3 * d, d);
        pack_lanes(v, qkv, p0, npairs, heads, tokens, dh, 3 * d, 2 * d);
        group_forward(out, prob, q, k, v, tokens, dh, scale);
        unpack_lanes(y, out, p0, npairs, heads, tokens, dh, d, 0);
        unpack_att(att, prob, p0, npairs, tokens);
    }
}

/* Lane-minor arrays of one group for the attention backward: (T, dh, LANES) except prob
 * and ds (T, T, LANES). */
typedef struct {
    float *q, *k, *v, *dy, *dq, *dk, *dv, *prob, *ds;
} attention_group;

/* out[r, i] = sum over m of w[m, r] x[m, i] (transpose_w) or w[r, m] x[m, i], per lane;
 * out, x (n, dh, LANES), w (n, n, LANES). Accumulating in registers over m keeps the inner
 * loop free of stores. */
static void lanes_matmul(float *restrict out, const float *restrict w, const float *restrict x,
                         int n, int dh, int transpose_w)
{
    for (int r = 0; r < n; r++) {
        for (int i = 0; i < dh; i++) {
            float acc[LANES] = {0};
            for (int m = 0; m < n; m++) {
                const float *wm = w + (int64_t)(transpose_w ? m * n + r : r * n + m) * LANES;
                const float *xm = x + (int64_t)(m * dh + i) * LANES;
                for (int l = 0; l < LANES; l++) acc[l] += wm[l] * xm[l];
            }
            for (int l = 0; l < LANES; l++) out[(int64_t)(r * dh + i) * LANES + l] = acc[l];
        }
    }
}

/* ds (T, T, LANES) <- prob * (dA - rowsum(prob * dA)) * scale with dA = dy v^T. */
static void softmax_backward_lanes(float *restrict ds, const float *restrict prob,
                                   const float *restrict dy, const float *restrict v, int tokens,
                                   int dh, float scale)
{
    for (int t = 0; t < tokens; t++) {
        const float *pt = prob + (int64_t)t * tokens * LANES, *dyt = dy + t * dh * LANES;
        float *dst = ds + (int64_t)t * tokens * LANES, dot[LANES] = {0};
        for (int s = 0; s < tokens; s++) {
            float acc[LANES] = {0};
            for (int i = 0; i < dh; i++) {
                const float *dyi = dyt + i * LANES, *vi = v + (s * dh + i) * LANES;
                for (int l = 0; l < LANES; l++) acc[l] += dyi[l] * vi[l];
            }
            for (int l = 0; l < LANES; l++) {
                dst[s * LANES + l] = acc[l];
                dot[l] += pt[s * LANES + l] * acc[l];
            }
        }
        for (int s = 0; s < tokens; s++)
            for (int l = 0; l < LANES; l++)
                dst[s * LANES + l] = pt[s * LANES + l] * (dst[s * LANES + l] - dot[l]) * scale;
    }
}

/* Backward of group_forward: dv = prob^T dy, dq = dS k, dk = dS^T q, overwritten. */
static void group_backward(const attention_group *g, int tokens, int dh, float scale)
{
    softmax_backward_lanes(g->ds, g->prob, g->dy, g->v, tokens, dh, scale);
    lanes_matmul(g->dv, g->prob, g->dy, tokens, dh, 1);
    lanes_matmul(g->dq, g->ds, g->k, tokens, dh, 0);
    lanes_matmul(g->dk, g->ds, g->q, tokens, dh, 1);
}

/* dy (B, T, d), att (B, h, T, T), qkv and dqkv (B, T, 3*d), work vit_attention_work(T, d, h). */
void vit_attention_backward(float *dqkv, const float *dy, const float *att, const float *qkv,
                            int batch, int tokens, int d, int heads, float *work)
{
    int dh = d / heads, npairs = batch * heads;
    int64_t block = (int64_t)tokens * dh * LANES;
    attention_group g = {.q = work};
    g.k = g.q + block, g.v = g.k + block, g.dy = g.v + block, g.dq = g.dy + block;
    g.dk = g.dq + block, g.dv = g.dk + block, g.prob = g.dv + block;
    g.ds = g.prob + (int64_t)tokens * tokens * LANES;
    float scale = 1.0f / sqrtf((float)dh);
    for (int p0 = 0; p0 < npairs; p0 += LANES) {
        pack_lanes(g.q, qkv, p0, npairs, heads, tokens, dh, 3 * d, 0);
        pack_lanes(g.k, qkv, p0, npairs, heads, tokens, dh, 3 * d, d);
        pack_lanes(g.v, qkv, p0, npairs, heads, tokens, dh, 3 * d, 2 * d);
        pack_lanes(g.dy, dy, p0, npairs, heads, tokens, dh, d, 0);
        pack_att(g.prob, att, p0, npairs, tokens);
        group_backward(&g, tokens, dh, scale);
        unpack_lanes(dqkv, g.dq, p0, npairs, heads, tokens, dh, 3 * d, 0);
        unpack_lanes(dqkv, g.dk, p0, npairs, heads, tokens, dh, 3 * d, d);
        unpack_lanes(dqkv, g.dv, p0, npairs, heads, tokens, dh, 3 * d, 2 * d);
    }
}

/* logits, probs (B, C); labels (B) or NULL. The loss of row b is logsumexp(logits_b) -
 * logits_b[label], summed in double. */
double vit_softmax_xent_forward(float *probs, const float *logits, const int *labels, int batch,
                                int classes)
{
    double total = 0.0;
    for (int b = 0; b < batch; b++) {
        const float *z = logits + (int64_t)b * classes;
        float *p = probs + (int64_t)b * classes;
        float max = z[0];
        for (int c = 1; c < classes; c++)
            if (z[c] > max) max = z[c];
        double sum = 0.0;
        for (int c = 0; c < classes; c++) sum += exp((double)(z[c] - max));
        for (int c = 0; c < classes; c++) p[c] = (float)(exp((double)(z[c] - max)) / sum);
        if (labels) total += log(sum) - (double)(z[labels[b]] - max);
    }
    return labels ? total / batch : 0.0;
}
