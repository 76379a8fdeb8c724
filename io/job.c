/* Job file parser. Every object is checked against its list of allowed keys before any
 * value is read, so a misspelled key is reported instead of silently taking a default. */
#include "tfuse/job.h"
#include "tfuse/text.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_DATA_DIR "/usr/share/datasets/fashion-mnist"

typedef struct {
    const char *file;
} parse_ctx;

/* A value of the job file printed as compact JSON for messages, such as "400" or [1,2]. */
typedef struct {
    char text[72];
} json_excerpt;

/* Prints item as compact JSON. A longer text is cut to at most 60 bytes, at a UTF-8
 * character boundary, and marked with "...". */
static json_excerpt excerpt_of(const cJSON *item)
{
    enum { EXCERPT_MAX = 60 };
    json_excerpt e = {"?"};
    /* cJSON parses a number beyond the double range as infinity and prints it as null. */
    if (cJSON_IsNumber(item) && !isfinite(item->valuedouble)) {
        snprintf(e.text, sizeof e.text, "a number too large for a double");
        return e;
    }
    char *printed = item ? cJSON_PrintUnformatted(item) : NULL;
    if (!printed) return e;
    size_t len = strlen(printed);
    if (len > EXCERPT_MAX) {
        len = EXCERPT_MAX;
        while (len > 0 && ((unsigned char)printed[len] & 0xC0) == 0x80) len--;
        snprintf(e.text, sizeof e.text, "%.*s...", (int)len, printed);
    } else {
        snprintf(e.text, sizeof e.text, "%s", printed);
    }
    cJSON_free(printed);
    return e;
}

static int edit_distance(const char *a, const char *b)
{
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 99;
    int prev[64], cur[64];
    for (int j = 0; j <= lb; j++) prev[j] = j;
    for (int i = 1; i <= la; i++) {
        cur[0] = i;
        for (int j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (size_t)(lb + 1));
    }
    return prev[lb];
}

/* Rejects keys of obj that are not in allowed (NULL-terminated), with a hint. */
static tf_status check_keys(const parse_ctx *ctx, const cJSON *obj, const char *path,
                            const char *const *allowed)
{
    if (!cJSON_IsObject(obj))
        return tf_error_set(TF_ERR_ARG, "%s: %s must be a JSON object; found %s", ctx->file, path,
                            excerpt_of(obj).text);
    for (const cJSON *item = obj->child; item; item = item->next) {
        int known = 0, best = 99;
        const char *hint = NULL;
        for (const char *const *k = allowed; *k; k++) {
            if (strcmp(item->string, *k) == 0) known = 1;
            int dist = edit_distance(item->string, *k);
            if (dist < best) best = dist, hint = *k;
        }
        for (const cJSON *earlier = obj->child; known && earlier != item; earlier = earlier->next)
            if (strcmp(earlier->string, item->string) == 0)
                return tf_error_set(TF_ERR_ARG, "%s: key %s.%s appears twice; keep one", ctx->file,
                                    path, item->string);
        if (known) continue;
        if (hint && best <= 2)
            return tf_error_set(TF_ERR_ARG, "%s: unknown key %s.%s (did you mean \"%s\"?)",
                                ctx->file, path, item->string, hint);
        return tf_error_set(TF_ERR_ARG, "%s: unknown key %s.%s; see docs/JOBS.md for the schema",
                            ctx->file, path, item->string);
    }
    return TF_OK;
}

static tf_status get_double(const parse_ctx *ctx, const cJSON *obj, const char *path,
                            const char *key, int required, double fallback, double lo, double hi,
                            double *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item) {
        if (required)
            return tf_error_set(TF_ERR_ARG, "%s: missing required key %s.%s", ctx->file, path, key);
        *out = fallback;
        return TF_OK;
    }
    if (!cJSON_IsNumber(item))
        return tf_error_set(TF_ERR_ARG, "%s: %s.%s must be a number; found %s", ctx->file, path,
                            key, excerpt_of(item).text);
    double v = item->valuedouble;
    if (!isfinite(v) || v < lo || v > hi)
        return tf_error_set(TF_ERR_ARG, "%s: %s.%s = %g is out of range [%g, %g]", ctx->file, path,
                            key, v, lo, hi);
    *out = v;
    return TF_OK;
}

static tf_status get_int64(const parse_ctx *ctx, const cJSON *obj, const char *path,
                           const char *key, int required, int64_t fallback, int64_t lo, int64_t hi,
                           int64_t *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item) {
        if (required)
            return tf_error_set(TF_ERR_ARG, "%s: missing required key %s.%s", ctx->file, path, key);
        *out = fallback;
        return TF_OK;
    }
    double v = item->valuedouble;
    if (!cJSON_IsNumber(item) || v != floor(v))
        return tf_error_set(TF_ERR_ARG, "%s: %s.%s must be an integer; found %s", ctx->file, path,
                            key, excerpt_of(item).text);
    /* Past 2^53 (about 9.007e15) a double skips integers, and 1e400 parses as inf. */
    if (fabs(v) > 9.0e15)
        return tf_error_set(TF_ERR_ARG, "%s: %s.%s = %g is out of range [%lld, %lld]", ctx->file,
                            path, key, v, (long long)lo, (long long)hi);
    if ((int64_t)v < lo || (int64_t)v > hi)
        return tf_error_set(TF_ERR_ARG, "%s: %s.%s = %lld is out of range [%lld, %lld]", ctx->file,
                            path, key, (long long)v, (long long)lo, (long long)hi);
    *out = (int64_t)v;
    return TF_OK;
}

static tf_status get_int(const parse_ctx *ctx, const cJSON *obj, const char *path, const char *key,
                         int required, int fallback, int lo, int hi, int *out)
{
    int64_t v = 0;
    tf_status st = get_int64(ctx, obj, path, key, required, fallback, lo, hi, &v);
    if (st == TF_OK) *out = (int)v;
    return st;
}

static tf_status get_bool(const parse_ctx *ctx, const cJSON *obj, const char *path, const char *key,
                          int fallback, int *out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item) {
        *out = fallback;
        return TF_OK;
    }
    if (!cJSON_IsBool(item))
        return tf_error_set(TF_ERR_ARG, "%s: %s.%s must be true or false; found %s", ctx->file,
                            path, key, excerpt_of(item).text);
    *out = cJSON_IsTrue(item);
    return TF_OK;
}

static tf_status get_string(const parse_ctx *ctx, const cJSON *obj, const char *path,
                            const char *key, int required, const char *fallback, char *out,
                            size_t size)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item) {
        if (required)
            return tf_error_set(TF_ERR_ARG, "%s: missing required key %s.%s", ctx->file, path, key);
        snprintf(out, size, "%s", fallback);
        return TF_OK;
    }
    if (!cJSON_IsString(item))
        return tf_error_set(TF_ERR_ARG, "%s: %s.%s must be a string; found %s", ctx->file, path,
                            key, excerpt_of(item).text);
    if (strlen(item->valuestring) >= size)
        return tf_error_set(TF_ERR_ARG, "%s: %s.%s is longer than %zu characters; found %s",
                            ctx->file, path, key, size - 1, excerpt_of(item).text);
    snprintf(out, size, "%s", item->valuestring);
    return TF_OK;
}

/* Reads a string key whose value must be one of names; stores its index in *out. */
static tf_status get_choice(const parse_ctx *ctx, const cJSON *obj, const char *path,
                            const char *key, const char *const *names, int fallback, int *out)
{
    char value[64];
    tf_status st = get_string(ctx, obj, path, key, 0, names[fallback], value, sizeof value);
    if (st != TF_OK) return st;
    char list[512] = "";
    for (int i = 0; names[i]; i++) {
        if (strcmp(value, names[i]) == 0) {
            *out = i;
            return TF_OK;
        }
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, names[i], sizeof list - strlen(list) - 1);
    }
    return tf_error_set(TF_ERR_ARG, "%s: %s.%s = \"%s\" is not one of: %s", ctx->file, path, key,
                        value, list);
}

#define TRY(call)                                                                                  \
    do {                                                                                           \
        tf_status st_ = (call);                                                                    \
        if (st_ != TF_OK) return st_;                                                              \
    } while (0)

static tf_status parse_vit_model(const parse_ctx *ctx, const cJSON *obj, const char *path,
                                 vit_config *cfg)
{
    static const char *const keys[] = {
        "architecture", "image_size", "channels", "patch",  "d", "layers",
        "heads",        "mlp",        "classes",  "ln_eps", NULL};
    TRY(check_keys(ctx, obj, path, keys));
    TRY(get_int(ctx, obj, path, "image_size", 0, 28, 1, 4096, &cfg->image_size));
    TRY(get_int(ctx, obj, path, "channels", 0, 1, 1, 64, &cfg->channels));
    TRY(get_int(ctx, obj, path, "patch", 0, 7, 1, 4096, &cfg->patch));
    TRY(get_int(ctx, obj, path, "d", 0, 64, 1, 65536, &cfg->d));
    TRY(get_int(ctx, obj, path, "layers", 0, 4, 1, 1024, &cfg->layers));
    TRY(get_int(ctx, obj, path, "heads", 0, 4, 1, 4096, &cfg->heads));
    TRY(get_int(ctx, obj, path, "mlp", 0, 256, 1, 1 << 20, &cfg->mlp));
    TRY(get_int(ctx, obj, path, "classes", 0, 10, 2, 1 << 20, &cfg->classes));
    TRY(get_double(ctx, obj, path, "ln_eps", 0, 1e-12, 0, 1, &cfg->ln_eps));
    if (cfg->image_size % cfg->patch != 0)
        return tf_error_set(TF_ERR_ARG, "%s: %s.image_size = %d is not a multiple of patch = %d",
                            ctx->file, path, cfg->image_size, cfg->patch);
    if (cfg->d % cfg->heads != 0)
        return tf_error_set(TF_ERR_ARG, "%s: %s.d = %d is not a multiple of heads = %d", ctx->file,
                            path, cfg->d, cfg->heads);
    return TF_OK;
}

/* BERT model keys, defaults from bert_config_default. Without "vocab" the size is
 * TOK_DEFAULT_VOCAB, or 0 (the size of the file) when has_vocab_file. */
static tf_status parse_bert_model(const parse_ctx *ctx, const cJSON *obj, const char *path,
                                  int has_vocab_file, bert_config *cfg)
{
    static const char *const keys[] = {"architecture", "vocab", "seq_len", "d", "layers",
                                       "heads",        "mlp",   "ln_eps",  NULL};
    bert_config def;
    bert_config_default(&def);
    TRY(check_keys(ctx, obj, path, keys));
    TRY(get_int(ctx, obj, path, "vocab", 0, has_vocab_file ? 0 : def.vocab, TOK_NUM_SPECIAL + 1,
                1 << 24, &cfg->vocab));
    TRY(get_int(ctx, obj, path, "seq_len", 0, def.seq_len, 3, 65536, &cfg->seq_len));
    TRY(get_int(ctx, obj, path, "d", 0, def.d, 1, 65536, &cfg->d));
    TRY(get_int(ctx, obj, path, "layers", 0, def.layers, 1, 1024, &cfg->layers));
    TRY(get_int(ctx, obj, path, "heads", 0, def.heads, 1, 4096, &cfg->heads));
    TRY(get_int(ctx, obj, path, "mlp", 0, def.mlp, 1, 1 << 20, &cfg->mlp));
    TRY(get_double(ctx, obj, path, "ln_eps", 0, def.ln_eps, 0, 1, &cfg->ln_eps));
    if (cfg->d % cfg->heads != 0)
        return tf_error_set(TF_ERR_ARG, "%s: %s.d = %d is not a multiple of heads = %d", ctx->file,
                            path, cfg->d, cfg->heads);
    return TF_OK;
}

/* Reads the model object of a train task; "architecture" picks the key set. */
static tf_status parse_model(const parse_ctx *ctx, const cJSON *obj, const char *path, job_train *t)
{
    static const char *const archs[] = {"vit", "bert", NULL};
    int arch = 0;
    if (!cJSON_IsObject(obj))
        return tf_error_set(TF_ERR_ARG, "%s: %s must be a JSON object; found %s", ctx->file, path,
                            excerpt_of(obj).text);
    TRY(get_choice(ctx, obj, path, "architecture", archs, 0, &arch));
    t->arch = arch == 1 ? JOB_ARCH_BERT : JOB_ARCH_VIT;
    if (t->arch == JOB_ARCH_BERT)
        return parse_bert_model(ctx, obj, path, t->vocab[0] != 0, &t->bert);
    return parse_vit_model(ctx, obj, path, &t->model);
}

#define DEFAULT_CORPUS "runs/data/kjv.tsv"

/* Reads a data object that names a verse corpus (BERT). */
static tf_status parse_text_data(const parse_ctx *ctx, const cJSON *obj, const char *path,
                                 job_text *text)
{
    static const char *const keys[] = {"corpus",    "heldout",     "mask_prob",
                                       "eval_seed", "train_limit", NULL};
    TRY(check_keys(ctx, obj, path, keys));
    TRY(get_string(ctx, obj, path, "corpus", 0, DEFAULT_CORPUS, text->corpus, sizeof text->corpus));
    TRY(get_double(ctx, obj, path, "mask_prob", 0, 0.15, 0.001, 1, &text->mask_prob));
    int64_t seed = 0;
    TRY(get_int64(ctx, obj, path, "eval_seed", 0, 0, 0, INT64_C(1) << 52, &seed));
    text->eval_seed = (uint64_t)seed;
    TRY(get_int64(ctx, obj, path, "train_limit", 0, 0, 0, INT64_C(1) << 40, &text->train_limit));

    const cJSON *heldout = cJSON_GetObjectItemCaseSensitive(obj, "heldout");
    if (!heldout) {
        text->n_heldout = CORPUS_DEFAULT_HELDOUT_COUNT;
        for (int i = 0; i < CORPUS_DEFAULT_HELDOUT_COUNT; i++)
            snprintf(text->heldout[i], JOB_NAME_MAX, "%s", corpus_default_heldout[i]);
        return TF_OK;
    }
    int n = cJSON_IsArray(heldout) ? cJSON_GetArraySize(heldout) : -1;
    if (n < 1 || n > JOB_MAX_HELDOUT)
        return tf_error_set(TF_ERR_ARG,
                            "%s: %s.heldout must be an array of 1 to %d book names, such as "
                            "[\"Ruth\", \"Mark\"]; found %s",
                            ctx->file, path, JOB_MAX_HELDOUT, excerpt_of(heldout).text);
    text->n_heldout = n;
    for (int i = 0; i < n; i++) {
        const cJSON *item = cJSON_GetArrayItem(heldout, i);
        if (!cJSON_IsString(item) || !item->valuestring[0] ||
            strlen(item->valuestring) >= JOB_NAME_MAX)
            return tf_error_set(TF_ERR_ARG,
                                "%s: %s.heldout[%d] must be a book name of 1 to %d "
                                "characters; found %s",
                                ctx->file, path, i, JOB_NAME_MAX - 1, excerpt_of(item).text);
        snprintf(text->heldout[i], JOB_NAME_MAX, "%s", item->valuestring);
    }
    return TF_OK;
}

static tf_status parse_data(const parse_ctx *ctx, const cJSON *obj, const char *path,
                            job_data *data)
{
    static const char *const keys[] = {"dir",         "train_images", "train_labels",
                                       "test_images", "test_labels",  "train_offset",
                                       "train_limit", "test_limit",   NULL};
    char dir[JOB_PATH_MAX];
    char fallback[JOB_PATH_MAX + 64];
    cJSON *empty = NULL;
    if (!obj) obj = empty = cJSON_CreateObject(); /* every key takes its default */
    tf_status st = check_keys(ctx, obj, path, keys);
    if (st == TF_OK) st = get_string(ctx, obj, path, "dir", 0, DEFAULT_DATA_DIR, dir, sizeof dir);
    const char *names[4] = {"train_images", "train_labels", "test_images", "test_labels"};
    const char *files[4] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
    char *dst[4] = {data->train_images, data->train_labels, data->test_images, data->test_labels};
    for (int i = 0; i < 4 && st == TF_OK; i++) {
        snprintf(fallback, sizeof fallback, "%s/%s", dir, files[i]);
        st = get_string(ctx, obj, path, names[i], 0, fallback, dst[i], JOB_PATH_MAX);
    }
    if (st == TF_OK)
        st = get_int64(ctx, obj, path, "train_offset", 0, 0, 0, INT64_C(1) << 40,
                       &data->train_offset);
    if (st == TF_OK)
        st =
            get_int64(ctx, obj, path, "train_limit", 0, 0, 0, INT64_C(1) << 40, &data->train_limit);
    if (st == TF_OK)
        st = get_int64(ctx, obj, path, "test_limit", 0, 0, 0, INT64_C(1) << 40, &data->test_limit);
    cJSON_Delete(empty);
    return st;
}

static tf_status parse_optimizer(const parse_ctx *ctx, const cJSON *obj, const char *path,
                                 job_optimizer *o)
{
    static const char *const keys[] = {"lr",    "min_lr", "weight_decay", "beta1",
                                       "beta2", "eps",    "warmup_steps", NULL};
    cJSON *empty = NULL;
    if (!obj) obj = empty = cJSON_CreateObject();
    tf_status st = check_keys(ctx, obj, path, keys);
    if (st == TF_OK) st = get_double(ctx, obj, path, "lr", 0, 1e-3, 0, 10, &o->lr);
    if (st == TF_OK) st = get_double(ctx, obj, path, "min_lr", 0, 1e-5, 0, 10, &o->min_lr);
    if (st == TF_OK)
        st = get_double(ctx, obj, path, "weight_decay", 0, 0.05, 0, 10, &o->weight_decay);
    if (st == TF_OK) st = get_double(ctx, obj, path, "beta1", 0, 0.9, 0, 0.999999, &o->beta1);
    if (st == TF_OK) st = get_double(ctx, obj, path, "beta2", 0, 0.999, 0, 0.999999, &o->beta2);
    if (st == TF_OK) st = get_double(ctx, obj, path, "eps", 0, 1e-8, 1e-30, 1, &o->eps);
    if (st == TF_OK)
        st = get_int64(ctx, obj, path, "warmup_steps", 0, 100, 0, INT64_C(1) << 40,
                       &o->warmup_steps);
    cJSON_Delete(empty);
    return st;
}

static tf_status parse_train(const parse_ctx *ctx, const cJSON *obj, const char *path, job_train *t)
{
    static const char *const keys[] = {
        "task",       "name", "model",     "data",   "optimizer", "epochs", "steps",
        "batch_size", "seed", "log_every", "output", "overwrite", "vocab",  "checkpoint_every",
        NULL};
    char sub[256];
    TRY(check_keys(ctx, obj, path, keys));
    TRY(get_string(ctx, obj, path, "name", 0, "train", t->name, sizeof t->name));
    TRY(get_string(ctx, obj, path, "vocab", 0, "", t->vocab, sizeof t->vocab));
    snprintf(sub, sizeof sub, "%s.model", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(obj, "model");
    if (!model) return tf_error_set(TF_ERR_ARG, "%s: missing required key %s", ctx->file, sub);
    TRY(parse_model(ctx, model, sub, t));
    if (t->arch != JOB_ARCH_BERT && t->vocab[0])
        return tf_error_set(TF_ERR_ARG,
                            "%s: %s.vocab applies only to \"architecture\": "
                            "\"bert\"; remove it",
                            ctx->file, path);
    snprintf(sub, sizeof sub, "%s.data", path);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(obj, "data");
    if (t->arch == JOB_ARCH_BERT) {
        cJSON *empty = data ? NULL : cJSON_CreateObject();
        t->data.has_text = 1;
        tf_status st = parse_text_data(ctx, data ? data : empty, sub, &t->data.text);
        cJSON_Delete(empty);
        if (st != TF_OK) return st;
    } else {
        TRY(parse_data(ctx, data, sub, &t->data));
    }
    snprintf(sub, sizeof sub, "%s.optimizer", path);
    TRY(parse_optimizer(ctx, cJSON_GetObjectItemCaseSensitive(obj, "optimizer"), sub,
                        &t->optimizer));
    TRY(get_int(ctx, obj, path, "epochs", 0, 1, 0, 100000, &t->epochs));
    TRY(get_int64(ctx, obj, path, "steps", 0, 0, 0, INT64_C(1) << 40, &t->steps));
    if (t->epochs == 0 && t->steps == 0)
        return tf_error_set(TF_ERR_ARG, "%s: %s needs epochs > 0 or steps > 0", ctx->file, path);
    TRY(get_int(ctx, obj, path, "batch_size", 0, 128, 1, 1 << 20, &t->batch_size));
    int64_t seed = 0;
    TRY(get_int64(ctx, obj, path, "seed", 0, 0, 0, INT64_C(1) << 52, &seed));
    t->seed = (uint64_t)seed;
    TRY(get_int(ctx, obj, path, "log_every", 0, 100, 1, 1 << 30, &t->log_every));
    TRY(get_int64(ctx, obj, path, "checkpoint_every", 0, 0, 0, INT64_C(1) << 40,
                  &t->checkpoint_every));
    TRY(get_string(ctx, obj, path, "output", 1, "", t->output, sizeof t->output));
    TRY(get_bool(ctx, obj, path, "overwrite", 0, &t->overwrite));
    return TF_OK;
}

/* Names of the method choices in job files, indexed by the enum values. */
static const char *const kinds[] = {"vanilla", "ot", NULL};
static const char *const solvers[] = {"exact", "sinkhorn", NULL};
static const char *const costs[] = {"activation", "weight", NULL};
static const char *const residuals[] = {"joint",  "mean",     "weighted", "skip",
                                        "branch", "identity", NULL};
static const char *const attentions[] = {"shared_qk", "head_aware", NULL};
static const char *const tokens[] = {"all", "cls", "window", NULL};
static const char *const distances[] = {"euclidean", "sqeuclidean", "cosine", NULL};
static const char *const norms[] = {"max", "mean", "median", "none", NULL};
static const char *const stream_features[] = {"residual", "normalized", "both", NULL};
static const char *const repairs[] = {"none", "mlp", "all", "stream", NULL};

cJSON *job_method_json(const job_method *m)
{
    const fuse_options *o = &m->ot;
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    int ok = cJSON_AddStringToObject(j, "name", m->name) != NULL &&
             cJSON_AddStringToObject(j, "method", kinds[m->kind == JOB_METHOD_OT]) != NULL;
    cJSON *w = ok && m->n_weights > 0 ? cJSON_CreateDoubleArray(m->weights, m->n_weights) : NULL;
    if (w) cJSON_AddItemToObject(j, "weights", w);
    ok = ok && (w != NULL || m->n_weights == 0);
    if (m->kind == JOB_METHOD_OT) {
        ok = ok && cJSON_AddStringToObject(j, "cost", costs[o->cost]) &&
             cJSON_AddStringToObject(j, "solver", solvers[o->solver]) &&
             cJSON_AddNumberToObject(j, "epsilon", o->epsilon) &&
             cJSON_AddStringToObject(j, "solver_attention", solvers[o->solver_attn]) &&
             cJSON_AddStringToObject(j, "solver_mlp", solvers[o->solver_mlp]) &&
             cJSON_AddStringToObject(j, "solver_stream", solvers[o->solver_stream]) &&
             cJSON_AddStringToObject(j, "residual", residuals[o->residual]) &&
             cJSON_AddStringToObject(j, "attention", attentions[o->attention]) &&
             cJSON_AddStringToObject(j, "tokens", tokens[o->tokens]) &&
             cJSON_AddNumberToObject(j, "window", o->window) &&
             cJSON_AddBoolToObject(j, "zscore", o->zscore) &&
             cJSON_AddStringToObject(j, "distance", distances[o->distance]) &&
             cJSON_AddStringToObject(j, "normalize", norms[o->norm]) &&
             cJSON_AddStringToObject(j, "repair", repairs[o->repair]) &&
             cJSON_AddStringToObject(j, "stream_features", stream_features[o->stream_features]) &&
             cJSON_AddNumberToObject(j, "ot_distributed_threshold", (double)o->ot_dist_threshold) &&
             cJSON_AddNumberToObject(j, "ot_group_ranks", o->ot_group_ranks) &&
             cJSON_AddBoolToObject(j, "per_parent_statistics", o->per_parent_stats);
    }
    if (!ok) cJSON_Delete(j);
    return ok ? j : NULL;
}

cJSON *job_finetune_json(const job_finetune *f)
{
    cJSON *j = cJSON_CreateObject();
    int ok = j && cJSON_AddNumberToObject(j, "steps", (double)f->steps) &&
             cJSON_AddNumberToObject(j, "lr", f->lr) &&
             cJSON_AddNumberToObject(j, "min_lr", f->min_lr) &&
             cJSON_AddNumberToObject(j, "weight_decay", f->weight_decay) &&
             cJSON_AddNumberToObject(j, "warmup_steps", (double)f->warmup_steps) &&
             cJSON_AddNumberToObject(j, "batch_size", f->batch_size) &&
             cJSON_AddNumberToObject(j, "seed", (double)f->seed) &&
             cJSON_AddNumberToObject(j, "distill", f->distill);
    if (!ok) cJSON_Delete(j);
    return ok ? j : NULL;
}

/* Reads obj's optional "weights": n numbers >= 0 that sum to 1. Without the key, weights
 * keeps its contents. *present (if not NULL) is set to 1 when the key is there, else 0. */
static tf_status parse_weights(const parse_ctx *ctx, const cJSON *obj, const char *path, int n,
                               double *weights, int *present)
{
    const cJSON *item_w = cJSON_GetObjectItemCaseSensitive(obj, "weights");
    if (present) *present = item_w != NULL;
    if (!item_w) return TF_OK;
    if (!cJSON_IsArray(item_w) || cJSON_GetArraySize(item_w) != n)
        return tf_error_set(TF_ERR_ARG,
                            "%s: %s.weights must be an array of %d numbers, one per "
                            "parent; found %s",
                            ctx->file, path, n, excerpt_of(item_w).text);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *item = cJSON_GetArrayItem(item_w, i);
        if (!cJSON_IsNumber(item) || !(item->valuedouble >= 0) || !isfinite(item->valuedouble))
            return tf_error_set(TF_ERR_ARG, "%s: %s.weights[%d] must be a number >= 0; found %s",
                                ctx->file, path, i, excerpt_of(item).text);
        sum += item->valuedouble;
    }
    if (fabs(sum - 1.0) > 1e-9)
        return tf_error_set(TF_ERR_ARG, "%s: %s.weights sum to %.12g; they must sum to 1",
                            ctx->file, path, sum);
    for (int i = 0; i < n; i++) weights[i] = cJSON_GetArrayItem(item_w, i)->valuedouble;
    return TF_OK;
}

static tf_status parse_method(const parse_ctx *ctx, const cJSON *obj, const char *path,
                              const job_fuse *f, job_method *m)
{
    static const char *const keys[] = {"name",
                                       "method",
                                       "cost",
                                       "solver",
                                       "epsilon",
                                       "solver_attention",
                                       "solver_mlp",
                                       "solver_stream",
                                       "residual",
                                       "attention",
                                       "tokens",
                                       "window",
                                       "zscore",
                                       "distance",
                                       "normalize",
                                       "repair",
                                       "stream_features",
                                       "ot_distributed_threshold",
                                       "ot_group_ranks",
                                       "per_parent_statistics",
                                       "weights",
                                       NULL};
    fuse_options *o = &m->ot;
    *o = fuse_options_default();
    int kind = 0, v = 0;
    TRY(check_keys(ctx, obj, path, keys));
    TRY(get_string(ctx, obj, path, "name", 1, "", m->name, sizeof m->name));
    for (const char *c = m->name; *c; c++)
        if (!(*c == '-' || *c == '_' || *c == '.' || (*c >= '0' && *c <= '9') ||
              (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z')))
            return tf_error_set(TF_ERR_ARG,
                                "%s: %s.name = \"%s\" may contain only letters, digits, '-', '_' "
                                "and '.' because it names output files",
                                ctx->file, path, m->name);
    TRY(get_choice(ctx, obj, path, "method", kinds, 1, &kind));
    m->kind = kind == 0 ? JOB_METHOD_VANILLA : JOB_METHOD_OT;
    m->n_weights = f->n_parents;
    memcpy(m->weights, f->weights, (size_t)f->n_parents * sizeof *m->weights);
    TRY(parse_weights(ctx, obj, path, f->n_parents, m->weights, &m->own_weights));
    TRY(get_choice(ctx, obj, path, "cost", costs, 0, &v));
    o->cost = (enum fuse_cost)v;
    TRY(get_choice(ctx, obj, path, "solver", solvers, 0, &v));
    o->solver = (enum fuse_solver)v;
    TRY(get_double(ctx, obj, path, "epsilon", 0, o->epsilon, 1e-6, 100, &o->epsilon));
    TRY(get_choice(ctx, obj, path, "solver_attention", solvers, (int)o->solver, &v));
    o->solver_attn = (enum fuse_solver)v;
    TRY(get_choice(ctx, obj, path, "solver_mlp", solvers, (int)o->solver, &v));
    o->solver_mlp = (enum fuse_solver)v;
    TRY(get_choice(ctx, obj, path, "solver_stream", solvers, (int)o->solver, &v));
    o->solver_stream = (enum fuse_solver)v;
    TRY(get_choice(ctx, obj, path, "residual", residuals, (int)o->residual, &v));
    o->residual = (enum fuse_residual)v;
    TRY(get_choice(ctx, obj, path, "attention", attentions, (int)o->attention, &v));
    o->attention = (enum fuse_attention)v;
    TRY(get_choice(ctx, obj, path, "tokens", tokens, (int)o->tokens, &v));
    o->tokens = (enum fuse_tokens)v;
    TRY(get_int(ctx, obj, path, "window", 0, o->window, 1, 4096, &o->window));
    TRY(get_bool(ctx, obj, path, "zscore", o->zscore, &o->zscore));
    TRY(get_choice(ctx, obj, path, "distance", distances, (int)o->distance, &v));
    o->distance = (enum fuse_distance)v;
    TRY(get_choice(ctx, obj, path, "normalize", norms, (int)o->norm, &v));
    o->norm = (enum fuse_norm)v;
    TRY(get_choice(ctx, obj, path, "repair", repairs, (int)o->repair, &v));
    o->repair = (enum fuse_repair)v;
    TRY(get_choice(ctx, obj, path, "stream_features", stream_features, (int)o->stream_features,
                   &v));
    o->stream_features = (enum fuse_stream_features)v;
    TRY(get_int64(ctx, obj, path, "ot_distributed_threshold", 0, 0, 0, INT64_C(1) << 62,
                  &o->ot_dist_threshold));
    TRY(get_int(ctx, obj, path, "ot_group_ranks", 0, 0, 0, 1 << 24, &o->ot_group_ranks));
    TRY(get_bool(ctx, obj, path, "per_parent_statistics", o->per_parent_stats,
                 &o->per_parent_stats));
    if (o->cost == FUSE_COST_WEIGHT && !cJSON_GetObjectItemCaseSensitive(obj, "residual"))
        o->residual = FUSE_RESIDUAL_MEAN; /* joint needs activations */
    if (o->cost == FUSE_COST_WEIGHT &&
        (o->residual == FUSE_RESIDUAL_JOINT || o->residual == FUSE_RESIDUAL_WEIGHTED ||
         o->residual == FUSE_RESIDUAL_IDENTITY))
        return tf_error_set(TF_ERR_ARG,
                            "%s: %s.residual must be mean, skip or branch with "
                            "\"cost\": \"weight\"",
                            ctx->file, path);
    return TF_OK;
}

static tf_status parse_finetune(const parse_ctx *ctx, const cJSON *obj, const char *path,
                                job_finetune *f)
{
    static const char *const keys[] = {
        "steps",      "lr",   "min_lr",  "weight_decay",     "warmup_steps",
        "batch_size", "seed", "distill", "checkpoint_every", NULL};
    memset(f, 0, sizeof *f);
    if (!obj) return TF_OK;
    TRY(check_keys(ctx, obj, path, keys));
    TRY(get_int64(ctx, obj, path, "steps", 1, 0, 0, INT64_C(1) << 40, &f->steps));
    TRY(get_double(ctx, obj, path, "lr", 0, 2e-4, 0, 10, &f->lr));
    TRY(get_double(ctx, obj, path, "min_lr", 0, 1e-6, 0, 10, &f->min_lr));
    TRY(get_double(ctx, obj, path, "weight_decay", 0, 0.05, 0, 10, &f->weight_decay));
    TRY(get_int64(ctx, obj, path, "warmup_steps", 0, 10, 0, INT64_C(1) << 40, &f->warmup_steps));
    TRY(get_int(ctx, obj, path, "batch_size", 0, 128, 1, 1 << 20, &f->batch_size));
    int64_t seed = 0;
    TRY(get_int64(ctx, obj, path, "seed", 0, 0, 0, INT64_C(1) << 52, &seed));
    f->seed = (uint64_t)seed;
    TRY(get_double(ctx, obj, path, "distill", 0, 0.0, 0.0, 1.0, &f->distill));
    TRY(get_int64(ctx, obj, path, "checkpoint_every", 0, 0, 0, INT64_C(1) << 40,
                  &f->checkpoint_every));
    return TF_OK;
}

static tf_status parse_parents(const parse_ctx *ctx, const cJSON *obj, const char *path,
                               job_fuse *f)
{
    const cJSON *parents = cJSON_GetObjectItemCaseSensitive(obj, "parents");
    if (!parents)
        return tf_error_set(TF_ERR_ARG, "%s: missing required key %s.parents", ctx->file, path);
    if (!cJSON_IsArray(parents))
        return tf_error_set(TF_ERR_ARG, "%s: %s.parents must be an array of file names; found %s",
                            ctx->file, path, excerpt_of(parents).text);
    int n = cJSON_GetArraySize(parents);
    if (n < 2 || n > JOB_MAX_PARENTS)
        return tf_error_set(TF_ERR_ARG, "%s: %s.parents has %d entries; between 2 and %d needed",
                            ctx->file, path, n, JOB_MAX_PARENTS);
    f->n_parents = n;
    for (int i = 0; i < n; i++) {
        const cJSON *item = cJSON_GetArrayItem(parents, i);
        if (!cJSON_IsString(item) || strlen(item->valuestring) >= JOB_PATH_MAX)
            return tf_error_set(TF_ERR_ARG, "%s: %s.parents[%d] must be a file name; found %s",
                                ctx->file, path, i, excerpt_of(item).text);
        snprintf(f->parents[i], JOB_PATH_MAX, "%s", item->valuestring);
    }
    TRY(get_int(ctx, obj, path, "anchor", 0, 0, 0, n - 1, &f->anchor));
    for (int i = 0; i < n; i++) f->weights[i] = 1.0 / n;

    return parse_weights(ctx, obj, path, n, f->weights, NULL);
}

static tf_status parse_fuse(const parse_ctx *ctx, const cJSON *obj, const char *path, job_fuse *f)
{
    static const char *const keys[] = {"task",
                                       "name",
                                       "parents",
                                       "anchor",
                                       "weights",
                                       "data",
                                       "calibration_samples",
                                       "calibration_seed",
                                       "methods",
                                       "finetune",
                                       "output_dir",
                                       "report",
                                       "save_aligned",
                                       "save_maps",
                                       "overwrite",
                                       NULL};
    char sub[256];
    TRY(check_keys(ctx, obj, path, keys));
    TRY(get_string(ctx, obj, path, "name", 0, "fuse", f->name, sizeof f->name));
    TRY(parse_parents(ctx, obj, path, f));
    snprintf(sub, sizeof sub, "%s.data", path);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(obj, "data");
    if (data && cJSON_GetObjectItemCaseSensitive(data, "corpus")) {
        f->data.has_text = 1; /* BERT parents; the runner checks the architecture */
        TRY(parse_text_data(ctx, data, sub, &f->data.text));
    } else {
        TRY(parse_data(ctx, data, sub, &f->data));
    }
    TRY(get_int64(ctx, obj, path, "calibration_samples", 0, 200, 1, INT64_C(1) << 32,
                  &f->calib_samples));
    int64_t seed = 0;
    TRY(get_int64(ctx, obj, path, "calibration_seed", 0, 0, 0, INT64_C(1) << 52, &seed));
    f->calib_seed = (uint64_t)seed;

    const cJSON *methods = cJSON_GetObjectItemCaseSensitive(obj, "methods");
    if (!methods)
        return tf_error_set(TF_ERR_ARG, "%s: missing required key %s.methods", ctx->file, path);
    if (!cJSON_IsArray(methods) || cJSON_GetArraySize(methods) < 1)
        return tf_error_set(TF_ERR_ARG,
                            "%s: %s.methods must be a non-empty array of methods; found %s",
                            ctx->file, path, excerpt_of(methods).text);
    f->n_methods = cJSON_GetArraySize(methods);
    if (f->n_methods > JOB_MAX_METHODS)
        return tf_error_set(TF_ERR_ARG, "%s: %s.methods has %d entries; at most %d allowed",
                            ctx->file, path, f->n_methods, JOB_MAX_METHODS);
    for (int i = 0; i < f->n_methods; i++) {
        snprintf(sub, sizeof sub, "%s.methods[%d]", path, i);
        TRY(parse_method(ctx, cJSON_GetArrayItem(methods, i), sub, f, &f->methods[i]));
        for (int j = 0; j < i; j++)
            if (strcmp(f->methods[i].name, f->methods[j].name) == 0)
                return tf_error_set(TF_ERR_ARG, "%s: %s.name = \"%s\" is used twice", ctx->file,
                                    sub, f->methods[i].name);
    }
    snprintf(sub, sizeof sub, "%s.finetune", path);
    TRY(parse_finetune(ctx, cJSON_GetObjectItemCaseSensitive(obj, "finetune"), sub, &f->finetune));
    TRY(get_string(ctx, obj, path, "output_dir", 0, "", f->output_dir, sizeof f->output_dir));
    TRY(get_string(ctx, obj, path, "report", 0, "", f->report, sizeof f->report));
    TRY(get_bool(ctx, obj, path, "save_aligned", 0, &f->save_aligned));
    TRY(get_bool(ctx, obj, path, "save_maps", 1, &f->save_maps));
    TRY(get_bool(ctx, obj, path, "overwrite", 0, &f->overwrite));
    if (f->finetune.checkpoint_every > 0 && !f->output_dir[0])
        return tf_error_set(TF_ERR_ARG,
                            "%s: %s.finetune.checkpoint_every needs output_dir, the directory "
                            "that holds the checkpoints; set output_dir or remove the key",
                            ctx->file, path);
    return TF_OK;
}

static tf_status parse_root(const parse_ctx *ctx, const cJSON *root, job_file *job)
{
    static const char *const keys[] = {"tasks", "description", "resume", NULL};
    static const char *const task_kinds[] = {"train", "fuse", NULL};
    char path[64];
    TRY(check_keys(ctx, root, "job", keys));
    TRY(get_bool(ctx, root, "job", "resume", 0, &job->resume));
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(root, "description");
    if (desc && !cJSON_IsString(desc))
        return tf_error_set(TF_ERR_ARG, "%s: job.description must be a string; found %s", ctx->file,
                            excerpt_of(desc).text);
    const cJSON *tasks = cJSON_GetObjectItemCaseSensitive(root, "tasks");
    if (!tasks) return tf_error_set(TF_ERR_ARG, "%s: missing required key job.tasks", ctx->file);
    if (!cJSON_IsArray(tasks) || cJSON_GetArraySize(tasks) < 1)
        return tf_error_set(TF_ERR_ARG,
                            "%s: job.tasks must be a non-empty array of tasks; found %s", ctx->file,
                            excerpt_of(tasks).text);
    job->n_tasks = cJSON_GetArraySize(tasks);
    job->tasks = tf_calloc((size_t)job->n_tasks, sizeof *job->tasks);
    if (!job->tasks) return TF_ERR_NOMEM;
    for (int i = 0; i < job->n_tasks; i++) {
        const cJSON *task = cJSON_GetArrayItem(tasks, i);
        snprintf(path, sizeof path, "tasks[%d]", i);
        if (!cJSON_IsObject(task))
            return tf_error_set(TF_ERR_ARG, "%s: %s must be a JSON object; found %s", ctx->file,
                                path, excerpt_of(task).text);
        int kind = 0;
        if (!cJSON_GetObjectItemCaseSensitive(task, "task"))
            return tf_error_set(TF_ERR_ARG,
                                "%s: missing required key %s.task (\"train\" or "
                                "\"fuse\")",
                                ctx->file, path);
        TRY(get_choice(ctx, task, path, "task", task_kinds, 0, &kind));
        job->tasks[i].kind = kind == 0 ? JOB_TASK_TRAIN : JOB_TASK_FUSE;
        if (kind == 0)
            TRY(parse_train(ctx, task, path, &job->tasks[i].train));
        else
            TRY(parse_fuse(ctx, task, path, &job->tasks[i].fuse));
    }
    return TF_OK;
}

/* Reports a JSON syntax error at error_at (a position in text) as "path:line:column:"
 * with the text around it: up to 24 bytes before it and 12 after it, on its line. */
static tf_status report_syntax_error(const char *text, const char *error_at, const char *path)
{
    const char *end = text + strlen(text);
    if (!error_at || error_at < text || error_at > end) error_at = end;
    const char *first = text + strspn(text, " \t\r\n");
    if (*first == '\0')
        return tf_error_set(TF_ERR_ARG, "%s: invalid JSON: the file is empty", path);
    const int at_end = error_at[strspn(error_at, " \t\r\n")] == '\0';
    while (at_end && error_at > text && strchr(" \t\r\n", error_at[-1])) error_at--;

    /* Line and column (in characters, counting UTF-8 lead bytes only), both from 1. */
    int line = 1, column = 1;
    const char *line_start = text;
    for (const char *c = text; c < error_at; c++) {
        if (*c == '\n') {
            line++, column = 1, line_start = c + 1;
        } else if (((unsigned char)*c & 0xC0) != 0x80) {
            column++;
        }
    }

    const char *from = error_at - line_start > 24 ? error_at - 24 : line_start;
    if (from > line_start) {
        /* Start after a space in the first 12 bytes, so that the excerpt starts at a token. */
        const char *space = memchr(from, ' ', 12);
        if (space && space < error_at) from = space + 1;
    }
    while (from < error_at && (*from == ' ' || *from == '\t')) from++;
    while (from < error_at && ((unsigned char)*from & 0xC0) == 0x80) from++;
    const char *to = error_at;
    while (to < end && to - error_at < 12 && *to != '\n' && *to != '\r') to++;
    while (to > error_at && to < end && ((unsigned char)*to & 0xC0) == 0x80) to--;
    char excerpt[64];
    snprintf(excerpt, sizeof excerpt, "%.*s", (int)(to - from), from);
    for (char *c = excerpt; *c; c++)
        if (*c == '\t') *c = ' ';

    const char *reason = "";
    if (at_end) {
        reason = ": the file ends before the JSON is complete";
    } else {
        cJSON *prefix = cJSON_ParseWithOpts(text, NULL, 0);
        if (prefix) reason = ": text follows the end of the JSON document";
        cJSON_Delete(prefix);
    }
    return tf_error_set(TF_ERR_ARG, "%s:%d:%d: invalid JSON near '%s'%s", path, line, column,
                        excerpt, reason);
}

tf_status job_file_parse(const char *text, const char *path, job_file **out)
{
    *out = NULL;
    parse_ctx ctx = {path};
    const char *error_at = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &error_at, 1); /* 1: reject text after the JSON */
    if (!root) return report_syntax_error(text, error_at, path);
    job_file *job = tf_calloc(1, sizeof *job);
    if (!job) {
        cJSON_Delete(root);
        return TF_ERR_NOMEM;
    }
    snprintf(job->path, sizeof job->path, "%s", path);
    tf_status st = parse_root(&ctx, root, job);
    cJSON_Delete(root);
    if (st != TF_OK) {
        job_file_free(&job);
        return st;
    }
    *out = job;
    return TF_OK;
}

tf_status job_file_load(const char *path, job_file **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return tf_error_set(TF_ERR_IO, "cannot open job file %s: %s", path, strerror(errno));
    char *text = NULL;
    tf_status st = TF_OK;
    if (fseek(f, 0, SEEK_END) != 0) {
        st = tf_error_set(TF_ERR_IO, "cannot read job file %s: %s", path, strerror(errno));
        goto done;
    }
    long size = ftell(f);
    if (size < 0 || size > (1L << 26)) {
        st = tf_error_set(TF_ERR_IO, "job file %s is unreadable or larger than 64 MiB", path);
        goto done;
    }
    rewind(f);
    text = tf_malloc((size_t)size + 1);
    if (!text) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    if (fread(text, 1, (size_t)size, f) != (size_t)size) {
        st = tf_error_set(TF_ERR_IO, "cannot read job file %s", path);
        goto done;
    }
    text[size] = '\0';
    st = job_file_parse(text, path, out);
done:
    free(text);
    fclose(f);
    return st;
}

void job_file_free(job_file **job)
{
    if (!job || !*job) return;
    free((*job)->tasks);
    free(*job);
    *job = NULL;
}
