/* Private kernels of the ViT forward and backward passes: LayerNorm, GELU, multi-head
 * attention, softmax cross-entropy and the BLAS wrappers for linear layers. Shapes use the
 * notation of tfuse/vit.h (B batch, T tokens, d width, f MLP width, h heads, C classes);
 * "rows" is the number of independent vectors a kernel processes, usually B*T. */
#ifndef TFUSE_VIT_KERNELS_H
#define TFUSE_VIT_KERNELS_H

#include <stdint.h>

/* y = x W^T + b + residual. x (rows, in), W (out, in), b (out) or NULL, residual (rows, out)
 * or NULL (may equal y), y (rows, out). */
void vit_linear_forward(float *y, const float *x, const float *w, const float *b,
                        const float *residual, int64_t rows, int in, int out);

/* Backward of vit_linear_forward for the upstream gradient dy (rows, out). dw (out, in) and
 * db (out, or NULL) are overwritten. dx (rows, in, or NULL) is overwritten, or accumulated
 * into when accumulate is nonzero. */
void vit_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int64_t rows, int in, int out, int accumulate);

/* LayerNorm over the last axis. x, y (rows, d); gain, bias (d); mean, rstd (rows). */
void vit_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gain,
                           const float *bias, int64_t rows, int d, double eps);

/* Backward of vit_layernorm_forward. dy, x (rows, d); dx (rows, d) is accumulated into
 * (dx += ...); dgain, dbias (d) are overwritten. */
void vit_layernorm_backward(float *dx, float *dgain, float *dbias, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *gain, int64_t rows,
                            int d);

/* GELU in the erf form, y = x * Phi(x) with Phi the standard normal CDF, and its derivative
 * dydx for the backward pass. x, y, dydx (n). */
void vit_gelu_forward(float *y, float *dydx, const float *x, int64_t n);

/* dx = dy * dydx, in place over dy allowed. dx, dy, dydx (n). */
void vit_gelu_backward(float *dx, const float *dy, const float *dydx, int64_t n);

/* Multi-head self-attention core. qkv (B, T, 3*d) holds the Q, K, V blocks of width d, and
 * head k owns columns k*d/h..(k+1)*d/h-1 of each block. att (B, h, T, T) receives the
 * softmax probabilities and y (B, T, d) the heads concatenated. work needs
 * vit_attention_work(T, d, h) floats. */
void vit_attention_forward(float *y, float *att, const float *qkv, int batch, int tokens, int d,
                           int heads, float *work);

/* Backward of vit_attention_forward. dy (B, T, d), att (B, h, T, T), qkv (B, T, 3*d);
 * dqkv (B, T, 3*d) is overwritten. work needs vit_attention_work(T, d, h) floats. */
void vit_attention_backward(float *dqkv, const float *dy, const float *att, const float *qkv,
                            int batch, int tokens, int d, int heads, float *work);

/* Workspace of the attention kernels in floats. */
int64_t vit_attention_work(int tokens, int d, int heads);

/* Row softmax and mean cross-entropy. logits, probs (B, C); labels (B) or NULL. Returns the
 * mean cross-entropy, or 0 when labels is NULL. */
double vit_softmax_xent_forward(float *probs, const float *logits, const int *labels, int batch,
                                int classes);

#endif
