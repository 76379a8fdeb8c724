/* ViT kernels. The loops are written so that GCC vectorizes them at -O3 (see the compile
 * options of this file in CMakeLists.txt): inner loops run over a contiguous axis without
 * reductions, and sums over the model width use LANES independent partial sums added in
 * a fixed order, so results stay bitwise reproducible. */
#include "vit_kernels.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define VIT_SQRT1_2 0.70710678118654752f
#define VIT_INV_SQRT_2PI 0.39894228040143268f
#define LANES 16

/* y (n) += x (n). */
static void add_row(float *restrict y, const float *restrict x, int n)
{
    for (int i = 0; i < n; i++) y[i] += x[i];
}

/* Sum of LANES partial sums, added in index order. */
static float sum_lanes(const float *acc)
{
    float total = 0.0f;
    for (int j = 0; j < LANES; j++) total += acc[j];
    return total;
}

/* y (n) += a x (n). */
static inline void axpy(float *restrict y, float a, const float *restrict x, int n)
{
    for (int i = 0; i < n; i++) y[i] += a * x[i];
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
    scale.bits = ((int32_t)n + 127) << 23; /* 2^n, with n in [-126, 127] after the clamp */
    return p * scale.value;
}

/* y (rows, out) = x (rows, in) W^T (in, out) + b (out) + residual (rows, out). One GEMM over
 * all rows, accumulating onto the bias and residual copied into y. */
void vit_linear_forward(float *y, const float *x, const float *w, const float *b,
                        const float *residual, int64_t rows, int in, int out)
{
    if (residual && residual != y) memcpy(y, residual, (size_t)rows * out * sizeof(float));
    if (b && residual) {
        for (int64_t r = 0; r < rows; r++) add_row(y + r * out, b, out);
    } else if (b) {
        for (int64_t r = 0; r < rows; r++) memcpy(y + r * out, b, (size_t)out * sizeof(float));
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

/* row (n) <- softmax(row). */
static void softmax_row(float *restrict row, int n)
{
    float max = row[0];
    for (int s = 1; s < n; s++) max = row[s] > max ? row[s] : max;
    for (int s = 0; s < n; s++) row[s] = vit_expf(row[s] - max);
    float sum = 0.0f;
    for (int s = 0; s < n; s++) sum += row[s];
    float inv = 1.0f / sum;
    for (int s = 0; s < n; s++) row[s] *= inv;
}

/* One (batch, head) pair. q, k, v (T, dh) with row stride sq = 3*d; att (T, T); y (T, dh)
 * with row stride sy = d; kt (dh, T) workspace. att = softmax(q k^T / sqrt(dh)) over the
 * last axis, y = att v. K is transposed and scaled first so that the inner loops run over
 * contiguous tokens or channels. */
static void attention_head_forward(float *restrict y, float *restrict att, const float *restrict q,
                                   const float *restrict k, const float *restrict v, int tokens,
                                   int dh, int sq, int sy, float *restrict kt)
{
    float scale = 1.0f / sqrtf((float)dh);
    for (int s = 0; s < tokens; s++)
        for (int i = 0; i < dh; i++) kt[i * tokens + s] = k[s * sq + i] * scale;
    for (int t = 0; t < tokens; t++) {
        float *row = att + t * tokens;
        const float *qt = q + t * sq;
        for (int s = 0; s < tokens; s++) row[s] = 0.0f;
        for (int i = 0; i < dh; i++) axpy(row, qt[i], kt + i * tokens, tokens);
        softmax_row(row, tokens);
        float *yt = y + t * sy;
        for (int i = 0; i < dh; i++) yt[i] = 0.0f;
        for (int s = 0; s < tokens; s++) axpy(yt, row[s], v + s * sq, dh);
    }
}

/* qkv (B, T, 3*d), att (B, h, T, T), y (B, T, d), work (d/h, T). */
void vit_attention_forward(float *y, float *att, const float *qkv, int batch, int tokens, int d,
                           int heads, float *work)
{
    int dh = d / heads;
    for (int b = 0; b < batch; b++) {
        const float *base = qkv + (int64_t)b * tokens * 3 * d;
        for (int hd = 0; hd < heads; hd++) {
            const float *q = base + hd * dh, *k = base + d + hd * dh, *v = base + 2 * d + hd * dh;
            float *a = att + ((int64_t)b * heads + hd) * tokens * tokens;
            attention_head_forward(y + (int64_t)b * tokens * d + hd * dh, a, q, k, v, tokens, dh,
                                   3 * d, d, work);
        }
    }
}

/* Pointers of one (batch, head) pair for the attention backward. */
typedef struct {
    float *dq, *dk, *dv;    /* (T, dh), row stride sq, accumulated into */
    const float *q, *k, *v; /* (T, dh), row stride sq */
    const float *dy;        /* (T, dh), row stride sy */
    const float *att;       /* (T, T) */
    int tokens, dh, sq, sy;
} attention_head;

/* With dA = dy v^T and dS = att * (dA - rowsum(att * dA)) / sqrt(dh): dv = att^T dy,
 * dq = dS k, dk = dS^T q. work (T + dh*T): one row of dS, then v transposed. */
static void attention_head_backward(const attention_head *h, float *restrict work)
{
    int T = h->tokens, dh = h->dh, sq = h->sq, sy = h->sy;
    float *restrict ds = work, *restrict vt = work + T;
    float *restrict dq = h->dq, *restrict dk = h->dk, *restrict dv = h->dv;
    const float *restrict q = h->q, *restrict k = h->k, *restrict dy = h->dy;
    float scale = 1.0f / sqrtf((float)dh);
    for (int s = 0; s < T; s++)
        for (int i = 0; i < dh; i++) vt[i * T + s] = h->v[s * sq + i];
    for (int t = 0; t < T; t++) {
        const float *at = h->att + t * T, *dyt = dy + t * sy;
        for (int s = 0; s < T; s++) ds[s] = 0.0f;
        for (int i = 0; i < dh; i++) axpy(ds, dyt[i], vt + i * T, T);
        float dot = 0.0f;
        for (int s = 0; s < T; s++) dot += at[s] * ds[s];
        for (int s = 0; s < T; s++) ds[s] = at[s] * (ds[s] - dot) * scale;
        for (int s = 0; s < T; s++) {
            axpy(dv + s * sq, at[s], dyt, dh);
            axpy(dq + t * sq, ds[s], k + s * sq, dh);
            axpy(dk + s * sq, ds[s], q + t * sq, dh);
        }
    }
}

/* dy (B, T, d), att (B, h, T, T), qkv and dqkv (B, T, 3*d), work (T + d/h*T). */
void vit_attention_backward(float *dqkv, const float *dy, const float *att, const float *qkv,
                            int batch, int tokens, int d, int heads, float *work)
{
    int dh = d / heads;
    memset(dqkv, 0, (size_t)batch * tokens * 3 * d * sizeof(float));
    for (int b = 0; b < batch; b++) {
        int64_t off = (int64_t)b * tokens * 3 * d;
        for (int hd = 0; hd < heads; hd++) {
            int c = hd * dh;
            attention_head h = {.dq = dqkv + off + c,
                                .dk = dqkv + off + d + c,
                                .dv = dqkv + off + 2 * d + c,
                                .q = qkv + off + c,
                                .k = qkv + off + d + c,
                                .v = qkv + off + 2 * d + c,
                                .dy = dy + (int64_t)b * tokens * d + c,
                                .att = att + ((int64_t)b * heads + hd) * tokens * tokens,
                                .tokens = tokens,
                                .dh = dh,
                                .sq = 3 * d,
                                .sy = d};
            attention_head_backward(&h, work);
        }
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
