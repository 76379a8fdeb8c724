/* AdamW optimizer over the parameter buffer of a BERT model. */
#include "tfuse/bert.h"

#include <math.h>
#include <stdlib.h>

tf_status bert_adamw_create(const bert_model *model, double beta1, double beta2, double eps,
                            double weight_decay, bert_adamw **out)
{
    *out = NULL;
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(eps > 0) ||
        !(weight_decay >= 0))
        return tf_error_set(TF_ERR_ARG,
                            "bert_adamw_create: invalid hyperparameters beta1 = %g, beta2 = %g, "
                            "eps = %g, weight_decay = %g; need betas in [0, 1), eps > 0, "
                            "weight_decay >= 0",
                            beta1, beta2, eps, weight_decay);
    bert_adamw *opt = tf_calloc(1, sizeof *opt);
    if (!opt) return tf_error_set(TF_ERR_NOMEM, "bert_adamw_create: out of memory");
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    opt->m = tf_calloc((size_t)model->num_params, sizeof(float));
    opt->v = tf_calloc((size_t)model->num_params, sizeof(float));
    if (!opt->m || !opt->v) {
        bert_adamw_free(&opt);
        return tf_error_set(TF_ERR_NOMEM, "bert_adamw_create: no memory for %lld moments",
                            (long long)model->num_params);
    }
    *out = opt;
    return TF_OK;
}

void bert_adamw_free(bert_adamw **opt)
{
    if (!opt || !*opt) return;
    free((*opt)->m);
    free((*opt)->v);
    free(*opt);
    *opt = NULL;
}

void bert_adamw_step(bert_adamw *opt, bert_model *model, const float *grads, double lr)
{
    opt->step++;
    const double c1 = 1.0 - pow(opt->beta1, (double)opt->step);
    const double c2 = 1.0 - pow(opt->beta2, (double)opt->step);
    const float b1 = (float)opt->beta1, b2 = (float)opt->beta2;
    for (int i = 0; i < BERT_NUM_PARAMS; i++) {
        const int64_t off = model->p[i] - model->params;
        const float decay = bert_param_decays(i) ? (float)(lr * opt->weight_decay) : 0.0f;
        float *p = model->p[i], *m = opt->m + off, *v = opt->v + off;
        const float *g = grads + off;
        for (int64_t k = 0; k < model->size[i]; k++) {
            m[k] = b1 * m[k] + (1.0f - b1) * g[k];
            v[k] = b2 * v[k] + (1.0f - b2) * g[k] * g[k];
            double mhat = m[k] / c1, vhat = v[k] / c2;
            p[k] -= (float)(lr * mhat / (sqrt(vhat) + opt->eps)) + decay * p[k];
        }
    }
}
