#include "vit_kernels.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define VIT_SQRT1_2 0.70710678118654752f

/* y (rows, out) = x (rows, in) W^T (in, out) + b (out). One GEMM over all rows. */
void vit_linear_forward(float *y, const float *x, const float *w, const float *b, int64_t rows,
                        int in, int out)
{
    if (b) {
        for (int64_t r = 0; r < rows; r++) memcpy(y + r * out, b, (size_t)out * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, out, in, 1.0f, x, in, w, in,
                b ? 1.0f : 0.0f, y, out);
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
void vit_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gain,
                           const float *bias, int64_t rows, int d, double eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float sum = 0.0f;
        for (int i = 0; i < d; i++) sum += xr[i];
        float mu = sum / (float)d;
        float var = 0.0f;
        for (int i = 0; i < d; i++) {
            float c = xr[i] - mu;
            var += c * c;
        }
        var /= (float)d;
        float rs = (float)(1.0 / sqrt((double)var + eps));
        for (int i = 0; i < d; i++) yr[i] = (xr[i] - mu) * rs * gain[i] + bias[i];
        mean[r] = mu;
        rstd[r] = rs;
    }
}

/* dy, x, dx (rows, d); gain, dgain, dbias (d); mean, rstd (rows). With xhat the normalized
 * input and g = dy * gain: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). */
void vit_layernorm_backward(float *dx, float *dgain, float *dbias, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *gain, int64_t rows,
                            int d)
{
    memset(dgain, 0, (size_t)d * sizeof(float));
    memset(dbias, 0, (size_t)d * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d, *dyr = dy + r * d;
        float *dxr = dx + r * d;
        float mu = mean[r], rs = rstd[r];
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int i = 0; i < d; i++) {
            float xhat = (xr[i] - mu) * rs;
            float g = dyr[i] * gain[i];
            sum_g += g;
            sum_gx += g * xhat;
            dgain[i] += dyr[i] * xhat;
            dbias[i] += dyr[i];
        }
        float mean_g = sum_g / (float)d, mean_gx = sum_gx / (float)d;
        for (int i = 0; i < d; i++) {
            float xhat = (xr[i] - mu) * rs;
            dxr[i] += rs * (dyr[i] * gain[i] - mean_g - xhat * mean_gx);
        }
    }
}

/* x, y (n). GELU(x) = 0.5 x (1 + erf(x / sqrt(2))), PyTorch's nn.GELU() default. */
void vit_gelu_forward(float *y, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * VIT_SQRT1_2));
}

/* dx, dy, x (n). GELU'(x) = Phi(x) + x phi(x) with phi the standard normal density. */
void vit_gelu_backward(float *dx, const float *dy, const float *x, int64_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
    for (int64_t i = 0; i < n; i++) {
        float cdf = 0.5f * (1.0f + erff(x[i] * VIT_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]);
        dx[i] = dy[i] * (cdf + x[i] * pdf);
    }
}

/* One (batch, head) pair. q, k, v (T, dh) with row stride 3*d; att (T, T); y (T, dh) with row
 * stride d. att = softmax(q k^T / sqrt(dh)) over the last axis, y = att v. */
static void attention_head_forward(float *y, float *att, const float *q, const float *k,
                                   const float *v, int tokens, int dh, int stride_qkv, int stride_y)
{
    float scale = 1.0f / sqrtf((float)dh);
    for (int t = 0; t < tokens; t++) {
        float *row = att + t * tokens;
        const float *qt = q + t * stride_qkv;
        float max = -INFINITY;
        for (int s = 0; s < tokens; s++) {
            const float *ks = k + s * stride_qkv;
            float dot = 0.0f;
            for (int i = 0; i < dh; i++) dot += qt[i] * ks[i];
            row[s] = dot * scale;
            if (row[s] > max) max = row[s];
        }
        float sum = 0.0f;
        for (int s = 0; s < tokens; s++) {
            row[s] = expf(row[s] - max);
            sum += row[s];
        }
        float inv = 1.0f / sum;
        float *yt = y + t * stride_y;
        for (int i = 0; i < dh; i++) yt[i] = 0.0f;
        for (int s = 0; s < tokens; s++) {
            row[s] *= inv;
            const float *vs = v + s * stride_qkv;
            for (int i = 0; i < dh; i++) yt[i] += row[s] * vs[i];
        }
    }
}

/* qkv (B, T, 3*d), att (B, h, T, T), y (B, T, d). */
void vit_attention_forward(float *y, float *att, const float *qkv, int batch, int tokens, int d,
                           int heads)
{
    int dh = d / heads;
    for (int b = 0; b < batch; b++) {
        const float *base = qkv + (int64_t)b * tokens * 3 * d;
        for (int hd = 0; hd < heads; hd++) {
            const float *q = base + hd * dh, *k = base + d + hd * dh, *v = base + 2 * d + hd * dh;
            float *a = att + ((int64_t)b * heads + hd) * tokens * tokens;
            attention_head_forward(y + (int64_t)b * tokens * d + hd * dh, a, q, k, v, tokens, dh,
                                   3 * d, d);
        }
    }
}

/* One (batch, head) pair. dy (T, dh) stride d; att (T, T); q, k, v and dq, dk, dv (T, dh)
 * stride 3*d; work (T, T). With dA = dy v^T and dS = att * (dA - rowsum(att * dA)):
 * dv = att^T dy, dq = dS k / sqrt(dh), dk = dS^T q / sqrt(dh). */
static void attention_head_backward(float *dq, float *dk, float *dv, const float *dy,
                                    const float *att, const float *q, const float *k,
                                    const float *v, int tokens, int dh, int sq, int sy, float *ds)
{
    float scale = 1.0f / sqrtf((float)dh);
    for (int t = 0; t < tokens; t++) {
        const float *dyt = dy + t * sy, *at = att + t * tokens;
        float *dst = ds + t * tokens;
        float dot_sum = 0.0f;
        for (int s = 0; s < tokens; s++) {
            const float *vs = v + s * sq;
            float *dvs = dv + s * sq;
            float da = 0.0f;
            for (int i = 0; i < dh; i++) {
                da += dyt[i] * vs[i];
                dvs[i] += at[s] * dyt[i];
            }
            dst[s] = da;
            dot_sum += at[s] * da;
        }
        for (int s = 0; s < tokens; s++) dst[s] = at[s] * (dst[s] - dot_sum) * scale;
    }
    for (int t = 0; t < tokens; t++) {
        const float *dst = ds + t * tokens, *qt = q + t * sq;
        float *dqt = dq + t * sq;
        for (int s = 0; s < tokens; s++) {
            const float *ks = k + s * sq;
            float *dks = dk + s * sq;
            for (int i = 0; i < dh; i++) {
                dqt[i] += dst[s] * ks[i];
                dks[i] += dst[s] * qt[i];
            }
        }
    }
}

/* dy (B, T, d), att (B, h, T, T), qkv and dqkv (B, T, 3*d), work (T, T). */
void vit_attention_backward(float *dqkv, const float *dy, const float *att, const float *qkv,
                            int batch, int tokens, int d, int heads, float *work)
{
    int dh = d / heads;
    memset(dqkv, 0, (size_t)batch * tokens * 3 * d * sizeof(float));
    for (int b = 0; b < batch; b++) {
        int64_t off = (int64_t)b * tokens * 3 * d;
        for (int hd = 0; hd < heads; hd++) {
            int c = hd * dh;
            const float *a = att + ((int64_t)b * heads + hd) * tokens * tokens;
            attention_head_backward(dqkv + off + c, dqkv + off + d + c, dqkv + off + 2 * d + c,
                                    dy + (int64_t)b * tokens * d + c, a, qkv + off + c,
                                    qkv + off + d + c, qkv + off + 2 * d + c, tokens, dh, 3 * d, d,
                                    work);
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
