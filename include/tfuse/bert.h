/* BERT-style masked-language model: parameters, forward and backward passes, AdamW.
 *
 * Notation used in every shape comment: B batch, T tokens per sequence, d model width,
 * f MLP width, h heads, L layers, V vocabulary size, n predicted (masked) positions.
 * Parameters are float32 in one contiguous buffer with a table of views; matrices are stored
 * (out, in) row-major as in PyTorch.
 *
 * Architecture (Devlin et al. 2019, "BERT", without token types and without the next-sentence
 * head): x = LN_emb(E[id] + P[t]); per layer, post-LN,
 *   x = LN1(x + Attn(x)),  x = LN2(x + W2 GELU(W1 x + b1) + b2);
 * MLM head: z = LN_head(GELU(W_h x + b_h)), logits = z E^T + decoder bias, with the decoder tied
 * to the token embeddings E. GELU is the exact erf form. Attention ignores keys at positions
 * t >= length of the sequence (padding). The loss is the mean cross-entropy over positions whose
 * label is not -1.
 *
 * Default model for training jobs (bert_config_default): V 4096, T 64, d 128, L 4, h 4, f 512,
 * 1 346 688 parameters of which 524 288 are the tied embedding. */
#ifndef TFUSE_BERT_H
#define TFUSE_BERT_H

#include <stdint.h>
#include "tfuse/common.h"
#include "tfuse/h5file.h"
#include "tfuse/text.h"

/* Label value of a position that does not enter the loss. */
#define BERT_IGNORE (-1)

typedef struct {
    int vocab;     /* vocabulary size V, special tokens included */
    int seq_len;   /* tokens per sequence T, also the number of position embeddings */
    int d;         /* model width */
    int layers;    /* encoder layers L */
    int heads;     /* attention heads h; d must be a multiple */
    int mlp;       /* MLP width f */
    double ln_eps; /* LayerNorm epsilon */
} bert_config;

/* Parameter tensors, in buffer order. Shapes: */
enum bert_param {
    BERT_TOK_EMB,   /* (V, d)      token embeddings E, also the MLM decoder weight      */
    BERT_POS_EMB,   /* (T, d)      learned position embeddings                          */
    BERT_EMB_LN_G,  /* (d)         LayerNorm on the embedding sum                       */
    BERT_EMB_LN_B,  /* (d)                                                              */
    BERT_QKV_W,     /* (L, 3*d, d) rows 0..d-1 Q, d..2d-1 K, 2d..3d-1 V; head k owns rows
                                   k*d/h..(k+1)*d/h-1 of each block                     */
    BERT_QKV_B,     /* (L, 3*d)                                                         */
    BERT_PROJ_W,    /* (L, d, d)   attention output projection W_O                      */
    BERT_PROJ_B,    /* (L, d)                                                           */
    BERT_LN1_G,     /* (L, d)      LayerNorm after the attention residual join          */
    BERT_LN1_B,     /* (L, d)                                                           */
    BERT_FC1_W,     /* (L, f, d)                                                        */
    BERT_FC1_B,     /* (L, f)                                                           */
    BERT_FC2_W,     /* (L, d, f)                                                        */
    BERT_FC2_B,     /* (L, d)                                                           */
    BERT_LN2_G,     /* (L, d)      LayerNorm after the MLP residual join                */
    BERT_LN2_B,     /* (L, d)                                                           */
    BERT_HEAD_W,    /* (d, d)      MLM head dense layer W_h                             */
    BERT_HEAD_B,    /* (d)                                                              */
    BERT_HEAD_LN_G, /* (d)         MLM head LayerNorm                                   */
    BERT_HEAD_LN_B, /* (d)                                                              */
    BERT_DECODER_B, /* (V)         decoder bias; the decoder weight is BERT_TOK_EMB      */
    BERT_NUM_PARAMS
};

typedef struct {
    bert_config cfg;
    int64_t size[BERT_NUM_PARAMS]; /* element count of each tensor */
    int64_t num_params;            /* total element count */
    float *params;                 /* one buffer of num_params floats, owned */
    float *p[BERT_NUM_PARAMS];     /* views into params */
} bert_model;

/* Fills cfg with the default model for training jobs (see the file comment). */
void bert_config_default(bert_config *cfg);

/* Checks a configuration; on failure returns TF_ERR_ARG with a message naming the field. */
tf_status bert_config_validate(const bert_config *cfg);

/* Name of a tensor ("qkv_w") and its shape: fills dims, returns the number of dims. */
const char *bert_param_name(int which);
int bert_param_shape(const bert_config *cfg, int which, int64_t dims[4]);
/* 1 if AdamW applies weight decay to the tensor: the matrices qkv_w, proj_w, fc1_w, fc2_w,
 * head_w and the token embeddings; 0 for biases, LayerNorm parameters and positions. */
int bert_param_decays(int which);

/* Allocates a model with all parameters zero. Caller frees with bert_model_free. */
tf_status bert_model_create(const bert_config *cfg, bert_model **out);
/* Frees the model and sets *model to NULL; accepts NULL. */
void bert_model_free(bert_model **model);
/* Standard deviation of the initial weights. BERT uses 0.02 at width 768. NOTE: with
 * bert_config_default, batch 32 and peak learning rate 3e-3 on the Bible corpus, a 0.02 start
 * stayed at the unigram held-out loss for 360 steps, while 0.06 was clearly below it by step
 * 180. These are single runs, so the value is a measured choice, not a tuned optimum. */
#define BERT_INIT_STD 0.06

/* Initializes parameters: matrices, token and position embeddings from N(0, BERT_INIT_STD^2)
 * truncated at 2 sigma, biases 0, LayerNorm gains 1. Deterministic in `seed`. */
void bert_model_init(bert_model *model, uint64_t seed);
/* Copies all parameters of src into dst; configurations must match. */
void bert_model_copy(bert_model *dst, const bert_model *src);

/* Activations of one forward pass over a batch of at most max_batch sequences of T tokens.
 * The forward pass keeps everything the backward pass needs; fusion reads the same buffers
 * as calibration features. Layer l's slice of an (L, B, ...) buffer starts at l * B * ...
 * with B the batch of the last forward call. Rows of padding positions (t >= length) are
 * computed like the others but never influence real positions. */
typedef struct {
    int max_batch;
    int batch;         /* B of the last forward call */
    int *ids;          /* (B, T) input token ids of the last call */
    int *lengths;      /* (B) real tokens per sequence; positions beyond are padding */
    int *labels;       /* (B, T) labels of the last call, BERT_IGNORE where unused */
    float *emb;        /* (B, T, d) embedding sum E[id] + P[t] */
    float *emb_ln;     /* (B, T, d) embedding LayerNorm output, input of layer 0 */
    float *emb_mean;   /* (B, T) */
    float *emb_rstd;   /* (B, T) */
    float *qkv;        /* (L, B, T, 3*d) Q, K, V before attention */
    float *att;        /* (L, B, h, T, T) attention probabilities after softmax */
    float *atty;       /* (L, B, T, d) attention output before W_O, heads concatenated */
    float *attn_out;   /* (L, B, T, d) attention branch output W_O atty + b_O */
    float *res1;       /* (L, B, T, d) stream + attention branch, input of LN1 */
    float *ln1;        /* (L, B, T, d) LN1 output: the stream after join 1 */
    float *ln1_mean;   /* (L, B, T) */
    float *ln1_rstd;   /* (L, B, T) */
    float *fc1;        /* (L, B, T, f) MLP hidden pre-activation (before GELU) */
    float *gelu;       /* (L, B, T, f) MLP hidden after GELU */
    float *res2;       /* (L, B, T, d) LN1 output + MLP branch, input of LN2 */
    float *ln2;        /* (L, B, T, d) LN2 output: the stream after join 2, layer output */
    float *ln2_mean;   /* (L, B, T) */
    float *ln2_rstd;   /* (L, B, T) */
    float *head_pre;   /* (B, T, d) MLM head dense output before GELU */
    float *head_gelu;  /* (B, T, d) */
    float *head_ln;    /* (B, T, d) MLM head LayerNorm output */
    float *head_mean;  /* (B, T) */
    float *head_rstd;  /* (B, T) */
    int num_pred;      /* n: predicted positions of the last call */
    int *pred_pos;     /* (n) flat positions b * T + t of the predicted rows */
    int pred_capacity; /* rows allocated in logits and probs, grown by bert_forward */
    float *logits;     /* (n, V) */
    float *probs;      /* (n, V) softmax of logits */
    void *scratch;     /* backward-pass workspace, private */
} bert_acts;

/* Allocates activations for batches up to max_batch. Caller frees with bert_acts_free. */
tf_status bert_acts_create(const bert_config *cfg, int max_batch, bert_acts **out);
/* Frees the activations and sets *acts to NULL; accepts NULL. */
void bert_acts_free(bert_acts **acts);

/* Forward pass on B sequences of T token ids, ids (B, T) in [0, V). lengths (B) gives the
 * real tokens of each sequence, 1..T; NULL means all T. If labels (B, T) is not NULL, logits
 * are computed only at positions with label != BERT_IGNORE and *loss receives their mean
 * cross-entropy (0 if there is none); labels must be BERT_IGNORE or in [0, V). If labels is
 * NULL, logits are computed at all B*T positions, pred_pos lists them in order, and *loss is
 * left alone (may be NULL). Labels that are all BERT_IGNORE skip the decoder, which suits
 * forward passes that only collect activations. Returns TF_ERR_ARG on an out-of-range id,
 * length or label and TF_ERR_NOMEM if the logits cannot grow. Not collective. */
tf_status bert_forward(const bert_model *model, bert_acts *acts, const int *ids, const int *lengths,
                       const int *labels, int batch, float *loss);

/* Backward pass of the mean masked cross-entropy of the last bert_forward call, which must
 * have had labels. Writes (overwrites) the gradient of every parameter into grads, laid out
 * as model->params (num_params floats); the tied embedding receives both the input lookup
 * and the decoder contributions. Not collective. */
tf_status bert_backward(const bert_model *model, bert_acts *acts, float *grads);

/* Backward pass of the mean cross-entropy against target distributions (n, V), one row per
 * predicted position of the last bert_forward call in the order of acts->pred_pos, each row
 * summing to 1: e.g. a mix of one-hot labels and a teacher's probabilities for
 * distillation, dLoss/dlogits = (probs - targets) / n. The forward pass may have been
 * without labels (then n = B*T). Otherwise as bert_backward. */
tf_status bert_backward_soft(const bert_model *model, bert_acts *acts, const float *targets,
                             float *grads);

/* Number of predicted positions of the last forward pass whose argmax of the logits equals
 * the label. Needs a forward call with labels. */
int bert_count_correct(const bert_model *model, const bert_acts *acts);

/* AdamW with decoupled weight decay (Loshchilov and Hutter 2019) on a BERT parameter buffer;
 * weight decay applies to the tensors for which bert_param_decays returns 1. */
typedef struct {
    double beta1, beta2, eps, weight_decay;
    int64_t step; /* steps taken so far */
    float *m, *v; /* first and second moments, num_params each, owned */
} bert_adamw;

/* Allocates the optimizer state (moments zero). Caller frees with bert_adamw_free. */
tf_status bert_adamw_create(const bert_model *model, double beta1, double beta2, double eps,
                            double weight_decay, bert_adamw **out);
/* Frees the optimizer and sets *opt to NULL; accepts NULL. */
void bert_adamw_free(bert_adamw **opt);
/* One update with learning rate lr using grads (num_params). */
void bert_adamw_step(bert_adamw *opt, bert_model *model, const float *grads, double lr);

/* ---------------------------------------------------------------------------------------
 * Masked-language-model batches and evaluation (src/bert_mlm.c) */

/* Masks count token ids for MLM training as in BERT: each token that is not special
 * (id >= TOK_NUM_SPECIAL) is selected with probability select_prob (0.15 in BERT); a selected
 * token becomes [MASK] with probability 0.8, a uniform random non-special token with 0.1, and
 * stays unchanged with 0.1. Writes masked_ids (count) and labels (count): the original id at
 * selected positions, BERT_IGNORE elsewhere. Special tokens are never selected and draw no
 * random numbers. If selected is not NULL it receives the number of selected tokens.
 * Returns TF_ERR_ARG for select_prob outside [0, 1] or vocab <= TOK_NUM_SPECIAL. */
tf_status bert_mlm_mask(const int *ids, int64_t count, int vocab, double select_prob, tf_rng *rng,
                        int *masked_ids, int *labels, int64_t *selected);

/* Fills one training batch from B sequences of seqs, seqs row order[first + b] for b < B
 * (order NULL means rows first..first+B-1): masked ids (B, T), lengths (B) and labels (B, T)
 * as bert_mlm_mask writes them. */
tf_status bert_mlm_batch(const text_seqs *seqs, const int64_t *order, int64_t first, int B,
                         int vocab, double select_prob, tf_rng *rng, int *ids, int *lengths,
                         int *labels);

/* Masked-token metrics over a set of sequences. */
typedef struct {
    double loss;       /* mean cross-entropy over masked tokens, nats */
    double perplexity; /* exp(loss) */
    double accuracy;   /* fraction of masked tokens whose argmax prediction is the label */
    int64_t tokens;    /* masked tokens evaluated */
} bert_eval_result;

/* Evaluates the model on all sequences of seqs in batches of acts->max_batch, masking them
 * with bert_mlm_mask and a generator seeded with seed, so equal seeds give equal masks for
 * every model and batch size. Not collective. */
tf_status bert_evaluate(const bert_model *model, bert_acts *acts, const text_seqs *seqs,
                        double select_prob, uint64_t seed, bert_eval_result *out);

/* Baseline for bert_evaluate: the mean cross-entropy of a unigram model, the frequencies of
 * the non-special tokens of train with add-one smoothing, on the masked tokens that
 * bert_evaluate(..., heldout, select_prob, seed, ...) scores. */
tf_status bert_unigram_loss(const text_seqs *train, const text_seqs *heldout, int vocab,
                            double select_prob, uint64_t seed, double *loss);

/* ---------------------------------------------------------------------------------------
 * Model files (src/bert_h5.c), laid out like ViT model files: one float32 dataset per tensor
 * under <group>/params/<name> (names from bert_param_name, shapes from bert_param_shape) and
 * root attributes format "tfuse-model", format_version 1, architecture "bert", and every
 * bert_config field under its C name. */

/* Saves a model to path. Collective on comm; every rank passes the same model. The file gets
 * its name only when complete (see h5f_create). Returns TF_ERR_EXISTS when path exists and
 * overwrite is 0, TF_ERR_IO when the directory is missing or not writable. */
tf_status bert_model_save(const bert_model *model, MPI_Comm comm, const char *path, int overwrite);
/* Writes the attributes and datasets into an open file under group ("/" for a model file).
 * Collective. */
tf_status bert_model_write(const bert_model *model, h5f_file *f, const char *group);
/* Loads a model on every rank of comm. Collective. Returns TF_ERR_FORMAT for a missing
 * attribute, another format or architecture, or a missing or misshapen dataset (naming
 * it), TF_ERR_ARG for an invalid configuration and TF_ERR_NUMERIC naming the tensor and
 * index of the first NaN or infinity. The caller frees *out with bert_model_free. */
tf_status bert_model_load(MPI_Comm comm, const char *path, bert_model **out);
/* Reads a model stored under group of an open file, with the checks of bert_model_load.
 * Collective. */
tf_status bert_model_read(h5f_file *f, const char *group, bert_model **out);

#endif
