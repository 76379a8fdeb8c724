/* Head-aware attention maps. Multi-head attention is invariant under a permutation of its
 * heads combined with any permutation inside each head that is shared by Q and K (and a
 * separate one for V), but not under maps that move a dimension from one head to another.
 * Here a head-to-head cost is the optimal inner transport cost between the two heads' Q/K
 * dimensions plus that between their V dimensions; an exact assignment on that h x h cost
 * picks the head permutation, and the full plan is block-structured: the inner plan of
 * each matched pair, scaled by the pair's outer mass. */
#include "fuse_internal.h"
#include "tfuse/ot.h"

#include <stdlib.h>
#include <string.h>

/* Copies the (e_p, e_a) sub-matrix of head pair (a, b) out of an (n, m) cost. */
static void head_block(const double *cost, int m, int a, int b, int e_p, int e_a, double *out)
{
    for (int i = 0; i < e_p; i++)
        memcpy(out + (int64_t)i * e_a, cost + (int64_t)(a * e_p + i) * m + (int64_t)b * e_a,
               (size_t)e_a * sizeof(double));
}

static tf_status solve_inner(const double *cost, int e_p, int e_a, const fuse_options *opt,
                             double *plan, double *objective)
{
    ot_info info;
    tf_status st;
    if (opt->solver_attn == FUSE_SOLVER_EXACT) {
        st = ot_emd_solve(e_p, e_a, cost, NULL, NULL, plan, &info);
    } else {
        ot_sinkhorn_options so = ot_sinkhorn_defaults(opt->epsilon);
        st = ot_sinkhorn_solve(e_p, e_a, cost, NULL, NULL, &so, plan, &info);
        if (st == TF_ERR_NOT_CONVERGED) st = TF_OK;
    }
    double obj = 0;
    for (int64_t k = 0; k < (int64_t)e_p * e_a; k++) obj += cost[k] * plan[k];
    *objective = obj;
    return st;
}

tf_status fuse_head_aware_layer(const double *cost_qk, const double *cost_v, int heads, int n,
                                int m, const fuse_options *opt, double *plan_qk,
                                double *plan_v)
{
    const int e_p = n / heads, e_a = m / heads;
    const int64_t inner = (int64_t)e_p * e_a;
    double *sub = tf_malloc((size_t)inner * sizeof(double));
    double *inner_qk = tf_malloc((size_t)heads * heads * inner * sizeof(double));
    double *inner_v = tf_malloc((size_t)heads * heads * inner * sizeof(double));
    double *outer_cost = tf_malloc((size_t)heads * heads * sizeof(double));
    double *outer = tf_malloc((size_t)heads * heads * sizeof(double));
    tf_status st = sub && inner_qk && inner_v && outer_cost && outer ? TF_OK : TF_ERR_NOMEM;
    for (int a = 0; st == TF_OK && a < heads; a++)
        for (int b = 0; st == TF_OK && b < heads; b++) {
            double o_qk = 0, o_v = 0;
            int64_t pair = (int64_t)a * heads + b;
            head_block(cost_qk, m, a, b, e_p, e_a, sub);
            st = solve_inner(sub, e_p, e_a, opt, inner_qk + pair * inner, &o_qk);
            if (st != TF_OK) break;
            head_block(cost_v, m, a, b, e_p, e_a, sub);
            st = solve_inner(sub, e_p, e_a, opt, inner_v + pair * inner, &o_v);
            outer_cost[pair] = o_qk + o_v;
        }
    ot_info info;
    if (st == TF_OK) st = ot_emd_solve(heads, heads, outer_cost, NULL, NULL, outer, &info);
    if (st == TF_OK) {
        memset(plan_qk, 0, (size_t)n * m * sizeof(double));
        memset(plan_v, 0, (size_t)n * m * sizeof(double));
        for (int a = 0; a < heads; a++)
            for (int b = 0; b < heads; b++) {
                int64_t pair = (int64_t)a * heads + b;
                if (outer[pair] == 0) continue;
                for (int i = 0; i < e_p; i++)
                    for (int j = 0; j < e_a; j++) {
                        int64_t dst = (int64_t)(a * e_p + i) * m + (int64_t)b * e_a + j;
                        plan_qk[dst] = outer[pair] * inner_qk[pair * inner + i * e_a + j];
                        plan_v[dst] = outer[pair] * inner_v[pair * inner + i * e_a + j];
                    }
            }
    }
    free(sub);
    free(inner_qk);
    free(inner_v);
    free(outer_cost);
    free(outer);
    return st;
}

tf_status fuse_head_aware_maps(const fuse_stats *stats, const fuse_view *parent,
                               const fuse_view *anchor, const fuse_options *opt,
                               fuse_maps *maps, int layer)
{
    const int n = parent->cfg.d, m = anchor->cfg.d, heads = anchor->cfg.heads, l = layer;
    double *cost_qk = tf_malloc((size_t)n * m * sizeof(double));
    double *cost_v = tf_malloc((size_t)n * m * sizeof(double));
    tf_status st = cost_qk && cost_v ? TF_OK : TF_ERR_NOMEM;
    int qk[2] = {fuse_layer_block(l, BLOCK_Q), fuse_layer_block(l, BLOCK_K)};
    int v = fuse_layer_block(l, BLOCK_V);
    if (st == TF_OK) st = fuse_stats_cost(stats, qk, 2, opt, cost_qk);
    if (st == TF_OK) st = fuse_stats_cost(stats, &v, 1, opt, cost_v);
    if (st == TF_OK) {
        maps->qk[l] = tf_malloc((size_t)n * m * sizeof(double));
        maps->v[l] = tf_malloc((size_t)n * m * sizeof(double));
        if (!maps->qk[l] || !maps->v[l]) st = TF_ERR_NOMEM;
    }
    if (st == TF_OK) {
        st = fuse_head_aware_layer(cost_qk, cost_v, heads, n, m, opt, maps->qk[l], maps->v[l]);
        if (st != TF_OK)
            st = tf_error_set(st, "head-aware OT for layer %d failed: %s", l, tf_error_get());
    }
    free(cost_qk);
    free(cost_v);
    return st;
}
