/* AdamW optimizer for vit_model and the warmup-plus-cosine learning-rate schedule. */
#include "tfuse/vit.h"

#include <math.h>
#include <stdlib.h>

#define ADAMW_PI 3.14159265358979323846

tf_status vit_adamw_create(const vit_model *model, double beta1, double beta2, double eps,
                           double weight_decay, vit_adamw **out)
{
    *out = NULL;
    if (!(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0))
        return tf_error_set(TF_ERR_ARG,
                            "vit_adamw_create: beta1 = %g and beta2 = %g must lie in [0, 1)", beta1,
                            beta2);
    if (!(eps > 0.0) || !(weight_decay >= 0.0))
        return tf_error_set(TF_ERR_ARG,
                            "vit_adamw_create: eps = %g must be positive and weight_decay = %g "
                            "non-negative",
                            eps, weight_decay);
    vit_adamw *opt = tf_calloc(1, sizeof *opt);
    if (!opt) return TF_ERR_NOMEM;
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    opt->m = tf_calloc((size_t)model->num_params, sizeof(float));
    opt->v = tf_calloc((size_t)model->num_params, sizeof(float));
    if (!opt->m || !opt->v) {
        vit_adamw_free(&opt);
        return TF_ERR_NOMEM;
    }
    *out = opt;
    return TF_OK;
}

void vit_adamw_free(vit_adamw **opt)
{
    if (!opt || !*opt) return;
    free((*opt)->m);
    free((*opt)->v);
    free(*opt);
    *opt = NULL;
}

static int is_decayed(int which)
{
    return which == VIT_PATCH_W || which == VIT_QKV_W || which == VIT_PROJ_W ||
           which == VIT_FC1_W || which == VIT_FC2_W || which == VIT_HEAD_W;
}

/* Moment decay rates and step constants of one AdamW step, in float. The complements
 * 1 - beta are rounded from double, since 1 - (float)0.999 is off by 1e-5 relative. */
typedef struct {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, inv_sqrt_bc2, eps;
} adamw_constants;

/* params, grads, m, v (n). The update follows torch.optim.AdamW: p *= 1 - lr * wd, then
 * p -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps). */
static void adamw_update(float *p, float *m, float *v, const float *g, int64_t n, float keep,
                         const adamw_constants *k)
{
    const float beta1 = k->beta1, beta2 = k->beta2, c1 = k->one_minus_beta1;
    const float c2 = k->one_minus_beta2, step_size = k->step_size;
    const float inv_sqrt_bc2 = k->inv_sqrt_bc2, eps = k->eps;
    for (int64_t i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + c1 * g[i];
        v[i] = beta2 * v[i] + c2 * g[i] * g[i];
        float denom = sqrtf(v[i]) * inv_sqrt_bc2 + eps;
        p[i] = p[i] * keep - step_size * m[i] / denom;
    }
}

void vit_adamw_step(vit_adamw *opt, vit_model *model, const float *grads, double lr)
{
    opt->step++;
    opt->lr = lr;
    double bc1 = 1.0 - pow(opt->beta1, (double)opt->step);
    double bc2 = 1.0 - pow(opt->beta2, (double)opt->step);
    adamw_constants k = {.beta1 = (float)opt->beta1,
                         .beta2 = (float)opt->beta2,
                         .one_minus_beta1 = (float)(1.0 - opt->beta1),
                         .one_minus_beta2 = (float)(1.0 - opt->beta2),
                         .step_size = (float)(lr / bc1),
                         .inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)),
                         .eps = (float)opt->eps};
    for (int t = 0; t < VIT_NUM_PARAMS; t++) {
        int64_t off = model->p[t] - model->params;
        float keep = (float)(1.0 - lr * (is_decayed(t) ? opt->weight_decay : 0.0));
        adamw_update(model->p[t], opt->m + off, opt->v + off, grads + off, model->size[t], keep,
                     &k);
    }
}

double tf_cosine_lr(int64_t step, int64_t warmup_steps, int64_t total_steps, double peak_lr,
                    double min_lr)
{
    if (step < warmup_steps) return peak_lr * (double)(step + 1) / (double)warmup_steps;
    if (step >= total_steps || total_steps <= warmup_steps) return min_lr;
    double progress = (double)(step - warmup_steps) / (double)(total_steps - warmup_steps);
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + cos(ADAMW_PI * progress));
}
