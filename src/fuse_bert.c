/* OT fusion of BERT masked-language models. Only the calibration statistics and the list
 * of tensors are specific to BERT; the OT problems, residual policies, head-aware maps and
 * the alignment loop are the ones the ViT uses.
 *
 * BERT is post-LN: the stream entering layer 0 is the embedding LayerNorm output, and the
 * stream after each residual join is that join's LayerNorm output, so those are the
 * activations of the stream blocks. The MLM head's dense layer writes into the space of the
 * token embeddings, because the decoder reuses the embedding matrix. Its outputs therefore
 * take the embedding map. */
#include "tfuse/fuse_bert.h"
#include "fuse_internal.h"
#include "tfuse/reduce.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Calibration sequences per chunk of the reproducible reduction (fixed, so the sums do not
 * depend on the number of ranks). */
#define FUSE_BERT_CHUNK 32

static void bert_view(const bert_model *m, fuse_view *v)
{
    memset(v, 0, sizeof *v);
    v->cfg.d = m->cfg.d;
    v->cfg.mlp = m->cfg.mlp;
    v->cfg.heads = m->cfg.heads;
    v->cfg.layers = m->cfg.layers;
    v->pos = m->p[BERT_POS_EMB];
    v->pos_rows = m->cfg.seq_len;
    v->vit = NULL;
}

/* Copies block `block` of a BERT forward pass for every real (non-padding) position into
 * rows of out, as doubles; returns the row count. Block meanings follow fuse_internal.h. */
static int64_t gather_bert_block(const bert_model *model, const bert_acts *a, int block,
                                 double *out)
{
    const bert_config *c = &model->cfg;
    const int B = a->batch, T = c->seq_len, d = c->d, f = c->mlp;
    const int64_t plane = (int64_t)B * T;
    const int l = block < BLOCK_LAYER0 ? -1 : (block - BLOCK_LAYER0) / BLOCK_PER_LAYER;
    const int kind = block < BLOCK_LAYER0 ? block : (block - BLOCK_LAYER0) % BLOCK_PER_LAYER;
    const float *stream_in = l <= 0 ? a->emb_ln : a->ln2 + (int64_t)(l - 1) * plane * d;
    const int width = kind == BLOCK_FC1 && block >= BLOCK_LAYER0 ? f : d;
    int64_t rows = 0;
    for (int b = 0; b < B; b++) {
        const int length = a->lengths ? a->lengths[b] : T;
        for (int t = 0; t < length; t++) {
            const int64_t row = (int64_t)b * T + t, lrow = (int64_t)l * plane + row;
            const float *x = NULL, *minus = NULL;
            if (block == BLOCK_X0)
                x = a->emb_ln + row * d;
            else if (block == BLOCK_PATCH) {
                x = a->emb + row * d; /* token embedding = embedding sum - position */
                minus = model->p[BERT_POS_EMB] + (int64_t)t * d;
            } else if (kind <= BLOCK_V)
                x = a->qkv + lrow * 3 * d + (int64_t)kind * d;
            else if (kind == BLOCK_ATTN_OUT)
                x = a->attn_out + lrow * d;
            else if (kind == BLOCK_RES1)
                x = a->ln1 + lrow * d;
            else if (kind == BLOCK_FC1)
                x = a->fc1 + lrow * f;
            else if (kind == BLOCK_MLP_OUT) {
                x = a->res2 + lrow * d;
                minus = a->ln1 + lrow * d;
            } else if (kind == BLOCK_RES2)
                x = a->ln2 + lrow * d;
            else if (kind == BLOCK_LN1)
                x = stream_in + row * d;
            else
                x = a->ln1 + lrow * d; /* BLOCK_LN2: the stream as the MLP reads it */
            double *dst = out + rows * width;
            for (int j = 0; j < width; j++) dst[j] = (double)x[j] - (minus ? minus[j] : 0.0);
            rows++;
        }
    }
    return rows;
}

typedef struct {
    bert_model *const *parents;
    int n_parents, anchor, T;
    const int *ids, *lengths;
    int64_t n_seqs;
    int *ignore;        /* (chunk, T) labels, all BERT_IGNORE: no decoder in the forward pass */
    bert_acts **acts;   /* [n_parents] */
    fuse_stats **stats; /* [n_parents] scratch sums of one chunk (NULL at the anchor) */
    double *xp, *xa;    /* gather buffers */
} bert_chunk_ctx;

static tf_status bert_chunk_fill(int64_t chunk, double *buffer, int64_t len, void *ctx)
{
    bert_chunk_ctx *c = ctx;
    const int64_t start = chunk * FUSE_BERT_CHUNK;
    const int B = (int)(c->n_seqs - start < FUSE_BERT_CHUNK ? c->n_seqs - start : FUSE_BERT_CHUNK);
    const int *ids = c->ids + start * c->T, *lengths = c->lengths ? c->lengths + start : NULL;
    tf_status st = TF_OK;
    for (int p = 0; st == TF_OK && p < c->n_parents; p++)
        st = bert_forward(c->parents[p], c->acts[p], ids, lengths, c->ignore, B, NULL);
    int64_t off = 0;
    for (int p = 0; st == TF_OK && p < c->n_parents; p++) {
        fuse_stats *s = c->stats[p];
        if (p == c->anchor) continue;
        /* The reduction hands over a zeroed buffer: accumulate straight into it. */
        double *own = fuse_stats_bind(s, buffer + off);
        int64_t rows = 0;
        for (int b = 0; b < s->n_blocks; b++) {
            rows = gather_bert_block(c->parents[p], c->acts[p], b, c->xp);
            gather_bert_block(c->parents[c->anchor], c->acts[c->anchor], b, c->xa);
            fuse_stats_add(s, b, c->xp, c->xa, rows);
        }
        fuse_stats_bind(s, own);
        s->samples = (double)rows;
        buffer[off + s->buffer_len] += s->samples;
        off += s->buffer_len + 1;
    }
    return st == TF_OK && off != len
               ? tf_error_set(TF_ERR_ARG, "bert_chunk_fill: wrote %lld of %lld values",
                              (long long)off, (long long)len)
               : st;
}

/* Collective: calibration statistics of every parent against the anchor, summed over
 * fixed chunks of sequences with reduce_chunks_sum. */
static tf_status bert_accumulate(MPI_Comm comm, bert_model *const *parents, int n_parents,
                                 int anchor, const int *ids, const int *lengths, int64_t n_seqs,
                                 fuse_stats **stats)
{
    const int T = parents[anchor]->cfg.seq_len;
    int max_width = 0;
    for (int p = 0; p < n_parents; p++) {
        if (parents[p]->cfg.d > max_width) max_width = parents[p]->cfg.d;
        if (parents[p]->cfg.mlp > max_width) max_width = parents[p]->cfg.mlp;
    }
    const size_t gather = (size_t)FUSE_BERT_CHUNK * T * max_width * sizeof(double);
    bert_chunk_ctx ctx = {.parents = parents,
                          .n_parents = n_parents,
                          .anchor = anchor,
                          .T = T,
                          .ids = ids,
                          .lengths = lengths,
                          .n_seqs = n_seqs,
                          .stats = stats};
    ctx.acts = tf_calloc((size_t)n_parents, sizeof *ctx.acts);
    ctx.ignore = tf_malloc((size_t)FUSE_BERT_CHUNK * T * sizeof(int));
    ctx.xp = tf_malloc(gather);
    ctx.xa = tf_malloc(gather);
    tf_status st = ctx.acts && ctx.ignore && ctx.xp && ctx.xa ? TF_OK : TF_ERR_NOMEM;
    for (int k = 0; ctx.ignore && k < FUSE_BERT_CHUNK * T; k++) ctx.ignore[k] = BERT_IGNORE;
    for (int p = 0; st == TF_OK && p < n_parents; p++)
        st = bert_acts_create(&parents[p]->cfg, FUSE_BERT_CHUNK, &ctx.acts[p]);
    const int64_t n_chunks = (n_seqs + FUSE_BERT_CHUNK - 1) / FUSE_BERT_CHUNK;
    st = fuse_reduce_stats(comm, st, stats, n_parents, anchor, n_chunks, bert_chunk_fill, &ctx);
    for (int p = 0; ctx.acts && p < n_parents; p++) bert_acts_free(&ctx.acts[p]);
    free(ctx.acts);
    free(ctx.ignore);
    free(ctx.xp);
    free(ctx.xa);
    return st;
}

static tf_status bert_check(bert_model *const *parents, int n_parents, int anchor,
                            const fuse_options *opt)
{
    const bert_config *a = &parents[anchor]->cfg;
    for (int p = 0; p < n_parents; p++) {
        const bert_config *c = &parents[p]->cfg;
        if (c->vocab != a->vocab || c->seq_len != a->seq_len || c->layers != a->layers ||
            c->heads != a->heads)
            return tf_error_set(TF_ERR_ARG,
                                "BERT parent %d is incompatible with the anchor (parent %d): "
                                "vocabulary, sequence length, layers and heads must match "
                                "(found %d/%d/%d/%d, anchor %d/%d/%d/%d)",
                                p, anchor, c->vocab, c->seq_len, c->layers, c->heads, a->vocab,
                                a->seq_len, a->layers, a->heads);
    }
    if (opt->cost != FUSE_COST_ACTIVATION)
        return tf_error_set(TF_ERR_ARG, "BERT fusion supports activation costs only");
    if (opt->tokens != FUSE_TOKENS_ALL)
        return tf_error_set(TF_ERR_ARG, "BERT fusion uses every real token as a sample; "
                                        "\"tokens\" must be \"all\"");
    if (opt->repair == FUSE_REPAIR_STREAM)
        return tf_error_set(TF_ERR_ARG, "repair \"stream\" is implemented for ViT models only; "
                                        "use \"mlp\" or \"all\" for BERT parents");
    return TF_OK;
}

/* Statistics and maps of the n parents against parents[anchor] into maps[p] (created by
 * the caller for p != anchor): one statistics pass over all of them, then their OT units.
 * Collective on comm. */
static tf_status bert_maps_of(MPI_Comm comm, bert_model *const *parents, int n, int anchor,
                              const int *ids, const int *lengths, int64_t n_seqs,
                              const fuse_options *opt, fuse_maps **maps)
{
    tf_status st = TF_OK;
    fuse_stats **stats = tf_calloc((size_t)n, sizeof *stats);
    fuse_view *views = tf_calloc((size_t)n, sizeof *views);
    if (!stats || !views) st = TF_ERR_NOMEM;
    for (int p = 0; st == TF_OK && p < n; p++) bert_view(parents[p], &views[p]);

    /* Step 1: activation statistics over the calibration sequences. */
    for (int p = 0; st == TF_OK && p < n; p++) {
        if (p == anchor) continue;
        stats[p] = fuse_stats_create(&views[p].cfg, &views[anchor].cfg);
        if (!stats[p]) st = TF_ERR_NOMEM;
    }
    st = fuse_agree(comm, st, "allocating the statistics");
    const double t0 = tf_seconds();
    if (st == TF_OK) st = bert_accumulate(comm, parents, n, anchor, ids, lengths, n_seqs, stats);
    if (opt->timings) opt->timings->statistics += tf_seconds() - t0;

    /* Step 2: the OT problems, shared with the ViT path. */
    if (st == TF_OK) st = fuse_solve_units(comm, views, n, anchor, stats, opt, maps);
    for (int p = 0; stats && p < n; p++) fuse_stats_free(&stats[p]);
    free(stats);
    free(views);
    return st;
}

tf_status fuse_bert_compute_maps(MPI_Comm comm, bert_model *const *parents, int n_parents,
                                 int anchor, const int *ids, const int *lengths, int64_t n_seqs,
                                 const fuse_options *opt, fuse_maps ***maps_out)
{
    *maps_out = NULL;
    tf_status st = bert_check(parents, n_parents, anchor, opt);
    if (st != TF_OK) return st;
    fuse_maps **maps = NULL;
    st = fuse_maps_create_all(comm, n_parents, anchor, parents[anchor]->cfg.layers, &maps);

    /* All parents in one pass, or one parent at a time with the anchor (per_parent_stats). */
    if (st == TF_OK && !opt->per_parent_stats)
        st = bert_maps_of(comm, parents, n_parents, anchor, ids, lengths, n_seqs, opt, maps);
    for (int p = 0; st == TF_OK && opt->per_parent_stats && p < n_parents; p++) {
        if (p == anchor) continue;
        bert_model *pair[2] = {parents[anchor], parents[p]};
        fuse_maps *pair_maps[2] = {NULL, maps[p]};
        st = bert_maps_of(comm, pair, 2, 0, ids, lengths, n_seqs, opt, pair_maps);
    }
    if (st != TF_OK) {
        fuse_maps_free_all(&maps, n_parents);
        return st;
    }
    *maps_out = maps;
    return TF_OK;
}

/* Appends one entry of the alignment table. */
static void add(fuse_entry *list, int *n, const char *name, int layer, const float *src, float *dst,
                int rows_p, int rows_a, int cols_p, int cols_a, enum fuse_group row_group,
                enum fuse_group col_group, int col_output)
{
    list[(*n)++] = (fuse_entry){name,   layer,  src,       dst,       rows_p,    rows_a,
                                cols_p, cols_a, row_group, col_group, col_output};
}

/* The BERT tensors as alignment entries; returns the count (8 + 16 L at most). */
static int bert_entries(const bert_model *pm, bert_model *am, fuse_entry *list)
{
    const int dp = pm->cfg.d, da = am->cfg.d, fp = pm->cfg.mlp, fa = am->cfg.mlp;
    const int V = am->cfg.vocab, T = am->cfg.seq_len;
    int n = 0;
#define S(which, off) (pm->p[which] + (int64_t)(off))
#define D(which, off) (am->p[which] + (int64_t)(off))
    /* Embeddings (V, d) and (T, d): their columns are neurons of the embedding output. */
    add(list, &n, "tok_emb", 0, S(BERT_TOK_EMB, 0), D(BERT_TOK_EMB, 0), V, V, dp, da,
        FUSE_GROUP_NONE, FUSE_GROUP_EMBED, 1);
    add(list, &n, "pos_emb", 0, S(BERT_POS_EMB, 0), D(BERT_POS_EMB, 0), T, T, dp, da,
        FUSE_GROUP_NONE, FUSE_GROUP_POS, 1);
    add(list, &n, "emb_ln_g", 0, S(BERT_EMB_LN_G, 0), D(BERT_EMB_LN_G, 0), dp, da, 1, 1,
        FUSE_GROUP_STREAM0, FUSE_GROUP_NONE, 0);
    add(list, &n, "emb_ln_b", 0, S(BERT_EMB_LN_B, 0), D(BERT_EMB_LN_B, 0), dp, da, 1, 1,
        FUSE_GROUP_STREAM0, FUSE_GROUP_NONE, 0);

    for (int l = 0; l < am->cfg.layers; l++) {
        for (int part = 0; part < 3; part++) {
            enum fuse_group g = part < 2 ? FUSE_GROUP_QK : FUSE_GROUP_V;
            add(list, &n, "qkv_w", l, S(BERT_QKV_W, ((int64_t)l * 3 + part) * dp * dp),
                D(BERT_QKV_W, ((int64_t)l * 3 + part) * da * da), dp, da, dp, da, g,
                FUSE_GROUP_STREAM_IN, 0);
            add(list, &n, "qkv_b", l, S(BERT_QKV_B, (l * 3 + part) * dp),
                D(BERT_QKV_B, (l * 3 + part) * da), dp, da, 1, 1, g, FUSE_GROUP_NONE, 0);
        }
        add(list, &n, "proj_w", l, S(BERT_PROJ_W, (int64_t)l * dp * dp),
            D(BERT_PROJ_W, (int64_t)l * da * da), dp, da, dp, da, FUSE_GROUP_ATTN_OUT, FUSE_GROUP_V,
            0);
        add(list, &n, "proj_b", l, S(BERT_PROJ_B, l * dp), D(BERT_PROJ_B, l * da), dp, da, 1, 1,
            FUSE_GROUP_ATTN_OUT, FUSE_GROUP_NONE, 0);
        add(list, &n, "ln1_g", l, S(BERT_LN1_G, l * dp), D(BERT_LN1_G, l * da), dp, da, 1, 1,
            FUSE_GROUP_STREAM1, FUSE_GROUP_NONE, 0);
        add(list, &n, "ln1_b", l, S(BERT_LN1_B, l * dp), D(BERT_LN1_B, l * da), dp, da, 1, 1,
            FUSE_GROUP_STREAM1, FUSE_GROUP_NONE, 0);
        add(list, &n, "fc1_w", l, S(BERT_FC1_W, (int64_t)l * fp * dp),
            D(BERT_FC1_W, (int64_t)l * fa * da), fp, fa, dp, da, FUSE_GROUP_FC1, FUSE_GROUP_STREAM1,
            0);
        add(list, &n, "fc1_b", l, S(BERT_FC1_B, l * fp), D(BERT_FC1_B, l * fa), fp, fa, 1, 1,
            FUSE_GROUP_FC1, FUSE_GROUP_NONE, 0);
        add(list, &n, "fc2_w", l, S(BERT_FC2_W, (int64_t)l * dp * fp),
            D(BERT_FC2_W, (int64_t)l * da * fa), dp, da, fp, fa, FUSE_GROUP_MLP_OUT, FUSE_GROUP_FC1,
            0);
        add(list, &n, "fc2_b", l, S(BERT_FC2_B, l * dp), D(BERT_FC2_B, l * da), dp, da, 1, 1,
            FUSE_GROUP_MLP_OUT, FUSE_GROUP_NONE, 0);
        add(list, &n, "ln2_g", l, S(BERT_LN2_G, l * dp), D(BERT_LN2_G, l * da), dp, da, 1, 1,
            FUSE_GROUP_STREAM2, FUSE_GROUP_NONE, 0);
        add(list, &n, "ln2_b", l, S(BERT_LN2_B, l * dp), D(BERT_LN2_B, l * da), dp, da, 1, 1,
            FUSE_GROUP_STREAM2, FUSE_GROUP_NONE, 0);
    }

    /* MLM head: its dense output and LayerNorm live in the token-embedding space of the
     * tied decoder. The decoder bias is per vocabulary entry, so it stays as it is. */
    add(list, &n, "head_w", 0, S(BERT_HEAD_W, 0), D(BERT_HEAD_W, 0), dp, da, dp, da,
        FUSE_GROUP_EMBED, FUSE_GROUP_STREAM_FINAL, 0);
    add(list, &n, "head_b", 0, S(BERT_HEAD_B, 0), D(BERT_HEAD_B, 0), dp, da, 1, 1, FUSE_GROUP_EMBED,
        FUSE_GROUP_NONE, 0);
    add(list, &n, "head_ln_g", 0, S(BERT_HEAD_LN_G, 0), D(BERT_HEAD_LN_G, 0), dp, da, 1, 1,
        FUSE_GROUP_EMBED, FUSE_GROUP_NONE, 0);
    add(list, &n, "head_ln_b", 0, S(BERT_HEAD_LN_B, 0), D(BERT_HEAD_LN_B, 0), dp, da, 1, 1,
        FUSE_GROUP_EMBED, FUSE_GROUP_NONE, 0);
    add(list, &n, "decoder_b", 0, S(BERT_DECODER_B, 0), D(BERT_DECODER_B, 0), V, V, 1, 1,
        FUSE_GROUP_NONE, FUSE_GROUP_NONE, 0);
#undef S
#undef D
    return n;
}

tf_status fuse_bert_align_parent(const bert_model *parent, const fuse_maps *maps,
                                 bert_model *aligned)
{
    fuse_entry *entries = tf_malloc((size_t)(16 + 16 * aligned->cfg.layers) * sizeof *entries);
    if (!entries) return TF_ERR_NOMEM;
    int count = bert_entries(parent, aligned, entries);
    tf_status st = fuse_apply_entries(entries, count, maps);
    free(entries);
    return st;
}

tf_status fuse_bert_average(bert_model *const *models, const double *weights, int n,
                            bert_model *out)
{
    const float *buffers[FUSE_MAX_AVERAGE];
    if (n > FUSE_MAX_AVERAGE)
        return tf_error_set(TF_ERR_ARG, "fuse_bert_average: %d models; at most %d", n,
                            FUSE_MAX_AVERAGE);
    for (int p = 0; p < n; p++) {
        if (models[p]->num_params != out->num_params)
            return tf_error_set(TF_ERR_ARG,
                                "fuse_bert_average: model %d has %lld parameters, "
                                "the output %lld",
                                p, (long long)models[p]->num_params, (long long)out->num_params);
        buffers[p] = models[p]->params;
    }
    fuse_average_buffers(buffers, weights, n, out->num_params, out->params);
    return TF_OK;
}
