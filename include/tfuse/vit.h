/* Vision transformer (pre-LN ViT) classifier: parameters, forward and backward passes.
 *
 * Notation used in every shape comment: B batch, T tokens (patches + 1 class token),
 * d model width, f MLP width, h heads, L layers, C classes, P values per patch
 * (patch * patch * channels), N patches. Parameters are float32 in one contiguous buffer
 * with a table of views; matrices are stored (out, in) row-major as in PyTorch.
 *
 * Token 0 is the class token; tokens 1..N are patches in row-major patch order. */
#ifndef TFUSE_VIT_H
#define TFUSE_VIT_H

#include <stdint.h>
#include "tfuse/common.h"

typedef struct {
    int image_size; /* height = width of the input images, pixels */
    int channels;   /* input channels */
    int patch;      /* patch side, pixels; image_size must be a multiple */
    int d;          /* model width */
    int layers;     /* encoder layers L */
    int heads;      /* attention heads h; d must be a multiple */
    int mlp;        /* MLP width f */
    int classes;    /* output classes C */
    double ln_eps;  /* LayerNorm epsilon */
} vit_config;

/* Parameter tensors, in buffer order. Shapes: */
enum vit_param {
    VIT_PATCH_W, /* (d, P)      patch embedding, a stride-patch convolution as a matrix */
    VIT_PATCH_B, /* (d)                                                                  */
    VIT_CLS,     /* (d)         class token                                              */
    VIT_POS,     /* (T, d)      learned position embeddings, token 0 = class token       */
    VIT_LN1_G,   /* (L, d)      LayerNorm before attention                               */
    VIT_LN1_B,   /* (L, d)                                                               */
    VIT_QKV_W,   /* (L, 3*d, d) rows 0..d-1 Q, d..2d-1 K, 2d..3d-1 V; head k owns rows
                                k*d/h..(k+1)*d/h-1 of each block                         */
    VIT_QKV_B,   /* (L, 3*d)                                                             */
    VIT_PROJ_W,  /* (L, d, d)   attention output projection W_O                          */
    VIT_PROJ_B,  /* (L, d)                                                               */
    VIT_LN2_G,   /* (L, d)      LayerNorm before the MLP                                 */
    VIT_LN2_B,   /* (L, d)                                                               */
    VIT_FC1_W,   /* (L, f, d)                                                            */
    VIT_FC1_B,   /* (L, f)                                                               */
    VIT_FC2_W,   /* (L, d, f)                                                            */
    VIT_FC2_B,   /* (L, d)                                                               */
    VIT_LNF_G,   /* (d)         final LayerNorm                                          */
    VIT_LNF_B,   /* (d)                                                                  */
    VIT_HEAD_W,  /* (C, d)      classifier on the class token                            */
    VIT_HEAD_B,  /* (C)                                                                  */
    VIT_NUM_PARAMS
};

typedef struct {
    vit_config cfg;
    int64_t size[VIT_NUM_PARAMS]; /* element count of each tensor */
    int64_t num_params;           /* total element count */
    float *params;                /* one buffer of num_params floats, owned */
    float *p[VIT_NUM_PARAMS];     /* views into params */
} vit_model;

/* Derived sizes. */
static inline int vit_tokens(const vit_config *c)
{
    return (c->image_size / c->patch) * (c->image_size / c->patch) + 1;
}
static inline int vit_patch_values(const vit_config *c)
{
    return c->patch * c->patch * c->channels;
}

/* Checks a configuration; on failure returns TF_ERR_ARG with a message naming the field. */
tf_status vit_config_validate(const vit_config *cfg);

/* Name of a tensor ("qkv_w") and its shape: fills dims, returns the number of dims. */
const char *vit_param_name(int which);
int vit_param_shape(const vit_config *cfg, int which, int64_t dims[4]);

/* Allocates a model with all parameters zero. Caller frees with vit_model_free. */
tf_status vit_model_create(const vit_config *cfg, vit_model **out);
/* Frees the model and sets *model to NULL; accepts NULL. */
void vit_model_free(vit_model **model);
/* Initializes parameters: weights from N(0, 0.02^2) truncated at 2 sigma, biases 0,
 * LayerNorm gains 1, class token and position embeddings N(0, 0.02^2). Deterministic
 * in `seed`. */
void vit_model_init(vit_model *model, uint64_t seed);
/* Copies all parameters of src into dst; configurations must match. */
void vit_model_copy(vit_model *dst, const vit_model *src);

/* Activations of one forward pass over a batch of at most max_batch images. The forward
 * pass keeps everything the backward pass needs; fusion reads the same buffers as
 * calibration features. Layer l's slice of an (L, B, ...) buffer starts at
 * l * B * ... with B the batch of the last forward call. */
typedef struct {
    int max_batch;
    int batch;        /* B of the last forward call */
    float *patches;   /* (B, N, P) extracted patches */
    float *x0;        /* (B, T, d) embeddings: class token or patch embedding, plus position */
    float *ln1;       /* (L, B, T, d) LayerNorm 1 output */
    float *ln1_mean;  /* (L, B, T) */
    float *ln1_rstd;  /* (L, B, T) */
    float *qkv;       /* (L, B, T, 3*d) Q, K, V before attention */
    float *att;       /* (L, B, h, T, T) attention probabilities after softmax */
    float *atty;      /* (L, B, T, d) attention output before W_O, heads concatenated */
    float *res1;      /* (L, B, T, d) stream after the attention residual join */
    float *ln2;       /* (L, B, T, d) */
    float *ln2_mean;  /* (L, B, T) */
    float *ln2_rstd;  /* (L, B, T) */
    float *fc1;       /* (L, B, T, f) MLP hidden pre-activation (before GELU) */
    float *gelu;      /* (L, B, T, f) MLP hidden after GELU */
    float *res2;      /* (L, B, T, d) stream after the MLP residual join */
    float *lnf;       /* (B, d) final LayerNorm on the class token */
    float *lnf_mean;  /* (B) */
    float *lnf_rstd;  /* (B) */
    float *logits;    /* (B, C) */
    float *probs;     /* (B, C) softmax of logits */
    void *scratch;    /* forward and backward workspace, private */
} vit_acts;

/* Allocates activations for batches up to max_batch. Caller frees with vit_acts_free. */
tf_status vit_acts_create(const vit_config *cfg, int max_batch, vit_acts **out);
void vit_acts_free(vit_acts **acts);

/* Forward pass on B images, (B, channels, image_size, image_size) floats, already
 * normalized. If labels (B) is not NULL, *loss receives the mean cross-entropy; else
 * *loss is left alone (may be NULL). Not collective. */
tf_status vit_forward(const vit_model *model, vit_acts *acts, const float *images,
                      const int *labels, int batch, float *loss);

/* Backward pass of the mean cross-entropy of the last vit_forward call (which must have
 * had labels). Writes (overwrites) the gradient of every parameter into grads, laid out
 * as model->params (num_params floats). Not collective. */
tf_status vit_backward(const vit_model *model, vit_acts *acts, const int *labels, float *grads);

/* Backward pass of the mean cross-entropy against target distributions (B, C), each row
 * summing to 1, e.g. a mix of one-hot labels and a teacher's probabilities for
 * distillation: dLoss/dlogits = (probs - targets) / B. Otherwise as vit_backward. */
tf_status vit_backward_soft(const vit_model *model, vit_acts *acts, const float *targets,
                            float *grads);

/* Number of correct predictions (argmax of logits) of the last forward pass. */
int vit_count_correct(const vit_model *model, const vit_acts *acts, const int *labels);

/* AdamW with decoupled weight decay (Loshchilov and Hutter 2019). Weight decay applies to
 * matrices only (patch_w, qkv_w, proj_w, fc1_w, fc2_w, head_w), not to biases, LayerNorm
 * parameters, the class token or position embeddings. */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step; /* steps taken so far */
    float *m, *v; /* first and second moments, num_params each, owned */
} vit_adamw;

tf_status vit_adamw_create(const vit_model *model, double beta1, double beta2, double eps,
                           double weight_decay, vit_adamw **out);
void vit_adamw_free(vit_adamw **opt);
/* One update with learning rate lr using grads (num_params). */
void vit_adamw_step(vit_adamw *opt, vit_model *model, const float *grads, double lr);

/* Learning rate at `step` (0-based) of a linear warmup over warmup_steps to peak_lr, then a
 * cosine decay to min_lr at total_steps. Warmup step s gets peak_lr * (s + 1) / warmup_steps,
 * so step warmup_steps - 1 and step warmup_steps both get peak_lr; steps from total_steps on
 * get min_lr. */
double tf_cosine_lr(int64_t step, int64_t warmup_steps, int64_t total_steps, double peak_lr,
                    double min_lr);

#endif
