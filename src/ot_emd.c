/* Exact optimal transport.
 *
 * Three solvers share the entry point ot_emd_solve. Uniform square problems are
 * assignment problems, solved by the Jonker-Volgenant algorithm: column reduction,
 * augmenting row reduction, then one shortest augmenting path per remaining free row.
 * Uniform problems with n a multiple of m (or m of n) are assignment problems with
 * column capacities, solved by successive shortest paths. All other problems go to a primal
 * network simplex on the bipartite transportation graph. It starts from an artificial
 * root, keeps the spanning tree strongly feasible (Cunningham's leaving-arc rule, which
 * prevents cycling on degenerate pivots) and prices arcs by block search. */
#include "tfuse/ot.h"
#include "ot_internal.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Relative tolerance on the difference of the two masses. */
#define OT_MASS_RTOL 1e-9

tf_status ot_check_marginals(const char *caller, int n, int m, const double *mu, const double *nu,
                             double *mass)
{
    if (n < 1 || m < 1)
        return tf_error_set(
            TF_ERR_ARG, "%s: invalid problem size n = %d, m = %d; both must be >= 1", caller, n, m);

    double sum_mu = 0.0, sum_nu = 0.0;
    for (int i = 0; i < n; i++) {
        double a = ot_marginal_at(mu, i, n);
        if (!isfinite(a) || a < 0.0)
            return tf_error_set(TF_ERR_ARG,
                                "%s: mu[%d] = %g is invalid; marginals must be finite and >= 0",
                                caller, i, a);
        sum_mu += a;
    }
    for (int j = 0; j < m; j++) {
        double b = ot_marginal_at(nu, j, m);
        if (!isfinite(b) || b < 0.0)
            return tf_error_set(TF_ERR_ARG,
                                "%s: nu[%d] = %g is invalid; marginals must be finite and >= 0",
                                caller, j, b);
        sum_nu += b;
    }
    if (fabs(sum_mu - sum_nu) > OT_MASS_RTOL * fmax(sum_mu, sum_nu))
        return tf_error_set(TF_ERR_ARG,
                            "%s: sum(mu) = %.17g differs from sum(nu) = %.17g by more than "
                            "%g relative; normalize both marginals to the same mass",
                            caller, sum_mu, sum_nu, OT_MASS_RTOL);
    if (mass) *mass = sum_mu;
    return TF_OK;
}

tf_status ot_check_problem(const char *caller, int n, int m, const double *cost, const double *mu,
                           const double *nu, double *mass)
{
    tf_status st = ot_check_marginals(caller, n, m, mu, nu, mass);
    if (st != TF_OK) return st;
    if (!cost) return tf_error_set(TF_ERR_ARG, "%s: cost is NULL", caller);
    for (int64_t k = 0; k < (int64_t)n * m; k++) {
        if (!isfinite(cost[k]))
            return tf_error_set(TF_ERR_ARG, "%s: cost[%lld, %lld] = %g is not finite", caller,
                                (long long)(k / m), (long long)(k % m), cost[k]);
    }
    return TF_OK;
}

/* ------------------------------------------------------------------------------------ */
/* Jonker-Volgenant assignment                                                           */
/* ------------------------------------------------------------------------------------ */

typedef struct {
    int n;
    const double *c; /* (n, n) row-major */
    int *x;          /* (n) column assigned to row i, -1 if free */
    int *y;          /* (n) row assigned to column j, -1 if free */
    double *v;       /* (n) column dual */
    int *free_rows;  /* (n) */
    int num_free;
    double *d;    /* (n) shortest path distances, augmentation scratch */
    int *pred;    /* (n) */
    int *collist; /* (n) */
} jv_state;

/* Column reduction and reduction transfer. c (n, n); sets v, x, y and the free rows. */
static void jv_column_reduction(jv_state *s, int *matches)
{
    int n = s->n;
    const double *c = s->c;
    double *v = s->v;
    int *argmin = s->pred;

    for (int j = 0; j < n; j++) {
        v[j] = c[j];
        argmin[j] = 0;
    }
    for (int i = 1; i < n; i++) {
        const double *row = c + (int64_t)i * n;
        for (int j = 0; j < n; j++) {
            if (row[j] < v[j]) {
                v[j] = row[j];
                argmin[j] = i;
            }
        }
    }

    /* Each row takes the cheapest of the columns whose minimum it holds. */
    for (int j = n - 1; j >= 0; j--) {
        int i = argmin[j];
        if (++matches[i] == 1) {
            s->x[i] = j;
            s->y[j] = i;
        } else if (v[j] < v[s->x[i]]) {
            s->y[s->x[i]] = -1;
            s->x[i] = j;
            s->y[j] = i;
        } else {
            s->y[j] = -1;
        }
    }

    /* Reduction transfer: lower v of a singly matched column by the row's second best. */
    s->num_free = 0;
    for (int i = 0; i < n; i++) {
        if (matches[i] == 0) {
            s->free_rows[s->num_free++] = i;
            continue;
        }
        if (matches[i] != 1) continue;
        const double *row = c + (int64_t)i * n;
        int j1 = s->x[i];
        double best = INFINITY;
        for (int j = 0; j < n; j++)
            if (j != j1 && row[j] - v[j] < best) best = row[j] - v[j];
        if (isfinite(best)) v[j1] = row[j1] - best;
    }
}

/* Finds the smallest and second smallest of row[j] - v[j]. row, v (n), n >= 2. */
static void jv_two_smallest(int n, const double *row, const double *v, double *u1, int *j1,
                            double *u2, int *j2)
{
    double best = row[0] - v[0], second = INFINITY;
    int jb = 0, js = -1;
    for (int j = 1; j < n; j++) {
        double h = row[j] - v[j];
        if (h < second) {
            if (h >= best) {
                second = h;
                js = j;
            } else {
                second = best;
                js = jb;
                best = h;
                jb = j;
            }
        }
    }
    *u1 = best;
    *j1 = jb;
    *u2 = second;
    *j2 = js;
}

/* Augmenting row reduction, two passes. A free row takes its best column, and the
 * column's previous owner, if any, becomes free. The steps per pass are capped because
 * floating-point near-ties can make the price decrements shrink without bound. Rows left
 * free go to the augmentation phase, which needs only the dual invariant. */
static void jv_augmenting_row_reduction(jv_state *s)
{
    int n = s->n;
    for (int pass = 0; pass < 2; pass++) {
        int previous = s->num_free, k = 0;
        int64_t steps = 0, cap = 4 * (int64_t)n + 100;
        s->num_free = 0;
        while (k < previous) {
            int i = s->free_rows[k++];
            double u1, u2;
            int j1, j2;
            jv_two_smallest(n, s->c + (int64_t)i * n, s->v, &u1, &j1, &u2, &j2);
            int i0 = s->y[j1];
            int strict = u1 < u2;
            if (strict) {
                s->v[j1] -= u2 - u1;
            } else if (i0 >= 0) {
                j1 = j2;
                i0 = s->y[j2];
            }
            s->x[i] = j1;
            s->y[j1] = i;
            if (i0 < 0) continue;
            s->x[i0] = -1;
            if (strict && ++steps < cap)
                s->free_rows[--k] = i0;
            else
                s->free_rows[s->num_free++] = i0;
        }
    }
}

/* Finds the minimum of d over the columns collist[up..len) and moves the columns that
 * attain it to the front of that range, advancing *up past them. A new lower minimum
 * restarts the range at low. Returns the minimum. d (len), collist (len). */
static double collect_minimum(int len, const double *d, int *collist, int low, int *up)
{
    int u = *up;
    double dmin = d[collist[u++]];
    for (int k = u; k < len; k++) {
        int j = collist[k];
        double h = d[j];
        if (h <= dmin) {
            if (h < dmin) {
                u = low;
                dmin = h;
            }
            collist[k] = collist[u];
            collist[u++] = j;
        }
    }
    *up = u;
    return dmin;
}

/* Dijkstra-like search for a shortest augmenting path from free row f over reduced costs
 * c_ij - v_j. Returns the free column ending the path; sets *last to the number of scanned
 * columns minus one and *dmin to the path length. */
static int jv_shortest_path(jv_state *s, int f, int *last, double *dmin_out)
{
    int n = s->n;
    const double *crow = s->c + (int64_t)f * n;
    for (int j = 0; j < n; j++) {
        s->d[j] = crow[j] - s->v[j];
        s->pred[j] = f;
        s->collist[j] = j;
    }
    int low = 0, up = 0;
    double dmin = 0.0;
    for (;;) {
        if (up == low) {
            *last = low - 1;
            dmin = collect_minimum(n, s->d, s->collist, low, &up);
            for (int k = low; k < up; k++) {
                if (s->y[s->collist[k]] < 0) {
                    *dmin_out = dmin;
                    return s->collist[k];
                }
            }
        }
        int j1 = s->collist[low++];
        int i = s->y[j1];
        const double *row = s->c + (int64_t)i * n;
        double u1 = row[j1] - s->v[j1] - dmin;
        for (int k = up; k < n; k++) {
            int j = s->collist[k];
            double h = row[j] - s->v[j] - u1;
            if (h >= s->d[j]) continue;
            s->d[j] = h;
            s->pred[j] = i;
            if (h <= dmin) {
                if (s->y[j] < 0) {
                    *last = low - 1;
                    *dmin_out = dmin;
                    return j;
                }
                s->collist[k] = s->collist[up];
                s->collist[up++] = j;
            }
        }
    }
}

/* Augmentation phase: one shortest path per remaining free row. */
static void jv_augment(jv_state *s)
{
    for (int r = 0; r < s->num_free; r++) {
        int f = s->free_rows[r], last = -1;
        double dmin = 0.0;
        int end = jv_shortest_path(s, f, &last, &dmin);

        /* Update the duals of the scanned columns, then flip the path. */
        for (int k = 0; k <= last; k++) {
            int j = s->collist[k];
            s->v[j] += s->d[j] - dmin;
        }
        int i;
        do {
            i = s->pred[end];
            s->y[end] = i;
            int next = s->x[i];
            s->x[i] = end;
            end = next;
        } while (i != f);
    }
}

/* Solves the square assignment problem min sum_i c[i, x_i]. c (n, n) row-major; writes
 * the column of each row into x (n). */
static tf_status jv_solve(int n, const double *c, int *x)
{
    if (n == 1) {
        x[0] = 0;
        return TF_OK;
    }
    tf_status st = TF_OK;
    jv_state s = {.n = n, .c = c, .x = x};
    int *matches = tf_calloc((size_t)n, sizeof(int));
    s.y = tf_malloc((size_t)n * sizeof(int));
    s.v = tf_malloc((size_t)n * sizeof(double));
    s.free_rows = tf_malloc((size_t)n * sizeof(int));
    s.d = tf_malloc((size_t)n * sizeof(double));
    s.pred = tf_malloc((size_t)n * sizeof(int));
    s.collist = tf_malloc((size_t)n * sizeof(int));
    if (!matches || !s.y || !s.v || !s.free_rows || !s.d || !s.pred || !s.collist) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < n; i++) x[i] = -1;

    jv_column_reduction(&s, matches);
    jv_augmenting_row_reduction(&s);
    jv_augment(&s);

done:
    free(matches);
    free(s.y);
    free(s.v);
    free(s.free_rows);
    free(s.d);
    free(s.pred);
    free(s.collist);
    return st;
}

/* Assignment with column capacities: every one of n rows goes to one of m columns and
 * every column takes exactly cap = n / m rows. This is the uniform n x m problem without
 * replicating columns, which would create ties that stall the augmenting row reduction.
 * Rows are added one at a time by shortest augmenting paths over the columns (successive
 * shortest paths), with the invariant that each assigned row sits at a column of minimum
 * reduced cost c_ij - v_j. The path search is a dense Dijkstra whose relaxation and
 * minimum search run over all m columns in vector registers. Scanned columns are marked
 * by key -inf, which no relaxation can lower further. */
typedef struct {
    int n, m, cap;
    const double *c;   /* (n, m) row-major */
    int *x;            /* (n) column of row i, -1 if unassigned */
    int *count;        /* (m) rows assigned to column j */
    int *members;      /* (m, cap) rows of column j in members[j * cap .. + count[j]) */
    double *v;         /* (m) column duals */
    double *key;       /* (m) tentative distance, -inf once scanned */
    int *pred;         /* (m) row through which column j was reached */
    int *scanned;      /* (m) scanned columns in order */
    double *scanned_d; /* (m) their distances */
} cap_state;

/* Shapes: row, v, key, pred (m). Lowers key_j to row_j - v_j - u1 where that is smaller
 * and records pred_j = i there. */
static void cap_relax(int m, const double *row, const double *v, double u1, int i, double *key,
                      int *pred)
{
    int j = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
    __m512d vu = _mm512_set1_pd(u1);
    __m256i vi = _mm256_set1_epi32(i);
    for (; j + 8 <= m; j += 8) {
        __m512d h =
            _mm512_sub_pd(_mm512_sub_pd(_mm512_loadu_pd(row + j), _mm512_loadu_pd(v + j)), vu);
        __mmask8 lower = _mm512_cmp_pd_mask(h, _mm512_loadu_pd(key + j), _CMP_LT_OQ);
        _mm512_mask_storeu_pd(key + j, lower, h);
        _mm256_mask_storeu_epi32(pred + j, lower, vi);
    }
#endif
    for (; j < m; j++) {
        double h = row[j] - v[j] - u1;
        if (h < key[j]) {
            key[j] = h;
            pred[j] = i;
        }
    }
}

/* Shapes: key (m). Returns the first column of smallest key among those not scanned
 * (key > -inf) and writes the key into *kmin. */
static int cap_argmin(int m, const double *key, double *kmin)
{
    double best = INFINITY;
    int j = 0;
#if defined(__AVX512F__)
    __m512d vbest = _mm512_set1_pd(INFINITY), ninf = _mm512_set1_pd(-INFINITY);
    for (; j + 8 <= m; j += 8) {
        __m512d k = _mm512_loadu_pd(key + j);
        __mmask8 open = _mm512_cmp_pd_mask(k, ninf, _CMP_GT_OQ);
        vbest = _mm512_mask_min_pd(vbest, open, vbest, k);
    }
    best = _mm512_reduce_min_pd(vbest);
#endif
    for (; j < m; j++)
        if (key[j] > -INFINITY && key[j] < best) best = key[j];
    for (j = 0; key[j] != best; j++) continue;
    *kmin = best;
    return j;
}

/* Shortest augmenting path from unassigned row f to a column with spare capacity.
 * Returns that column and writes the path length into *dmin; the scanned columns and
 * their distances are left in s->scanned and s->scanned_d (count in *nscanned). */
static int cap_shortest_path(cap_state *s, int f, int *nscanned, double *dmin)
{
    const double *crow = s->c + (int64_t)f * s->m;
    for (int j = 0; j < s->m; j++) {
        s->key[j] = crow[j] - s->v[j];
        s->pred[j] = f;
    }
    *nscanned = 0;
    for (;;) {
        double d1;
        int j1 = cap_argmin(s->m, s->key, &d1);
        if (s->count[j1] < s->cap) {
            *dmin = d1;
            return j1;
        }

        /* Scan j1: relax every column through each row assigned to it. */
        s->key[j1] = -INFINITY;
        s->scanned[*nscanned] = j1;
        s->scanned_d[(*nscanned)++] = d1;
        for (int t = 0; t < s->count[j1]; t++) {
            int i = s->members[(int64_t)j1 * s->cap + t];
            const double *row = s->c + (int64_t)i * s->m;
            cap_relax(s->m, row, s->v, row[j1] - s->v[j1] - d1, i, s->key, s->pred);
        }
    }
}

/* Moves row i from its column (if any) to column j. */
static void cap_move(cap_state *s, int i, int j)
{
    int old = s->x[i];
    if (old >= 0) {
        int *list = s->members + (int64_t)old * s->cap;
        int t = 0;
        while (list[t] != i) t++;
        list[t] = list[--s->count[old]];
    }
    s->members[(int64_t)j * s->cap + s->count[j]++] = i;
    s->x[i] = j;
}

/* Adds row f: finds the path, updates the duals of the scanned columns, then shifts each
 * row on the path to the next column. */
static void cap_add_row(cap_state *s, int f)
{
    int nscanned = 0;
    double dmin = 0.0;
    int end = cap_shortest_path(s, f, &nscanned, &dmin);
    for (int k = 0; k < nscanned; k++) s->v[s->scanned[k]] += s->scanned_d[k] - dmin;
    for (;;) {
        int i = s->pred[end];
        int next = s->x[i];
        cap_move(s, i, end);
        if (i == f) break;
        end = next;
    }
}

/* Solves the capacitated assignment problem. c (n, m) row-major with n = cap * m; writes
 * the column of each row into x (n). */
static tf_status cap_solve(int n, int m, const double *c, int *x)
{
    tf_status st = TF_OK;
    cap_state s = {.n = n, .m = m, .cap = n / m, .c = c, .x = x};
    s.count = tf_calloc((size_t)m, sizeof(int));
    s.members = tf_malloc((size_t)n * sizeof(int));
    s.v = tf_calloc((size_t)m, sizeof(double));
    s.key = tf_malloc((size_t)m * sizeof(double));
    s.pred = tf_malloc((size_t)m * sizeof(int));
    s.scanned = tf_malloc((size_t)m * sizeof(int));
    s.scanned_d = tf_malloc((size_t)m * sizeof(double));
    if (!s.count || !s.members || !s.v || !s.key || !s.pred || !s.scanned || !s.scanned_d) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < n; i++) x[i] = -1;
    for (int i = 0; i < n; i++) cap_add_row(&s, i);

done:
    free(s.count);
    free(s.members);
    free(s.v);
    free(s.key);
    free(s.pred);
    free(s.scanned);
    free(s.scanned_d);
    return st;
}

/* Uniform marginals with max(n, m) a multiple of min(n, m). Square problems go to
 * Jonker-Volgenant. Otherwise the larger side's points each take one unit and the smaller
 * side's take k = max / min units (the cost is transposed first when m > n). cost (n, m);
 * plan (n, m) zeroed by the caller. */
static tf_status emd_uniform(int n, int m, const double *cost, double mass, double *plan)
{
    int size = n > m ? n : m;
    double entry = mass / size;
    int *x = tf_malloc((size_t)size * sizeof(int));
    double *transposed = NULL;
    if (!x) return TF_ERR_NOMEM;

    tf_status st;
    if (n == m) {
        st = jv_solve(n, cost, x);
    } else if (n > m) {
        st = cap_solve(n, m, cost, x);
    } else {
        /* Transposed cost (m, n): rows are the columns of the problem. */
        transposed = tf_malloc((size_t)n * m * sizeof(double));
        if (!transposed) {
            free(x);
            return TF_ERR_NOMEM;
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < m; j++) transposed[(int64_t)j * n + i] = cost[(int64_t)i * m + j];
        st = cap_solve(m, n, transposed, x);
    }

    if (st == TF_OK) {
        for (int r = 0; r < size; r++) {
            if (n >= m)
                plan[(int64_t)r * m + x[r]] += entry;
            else
                plan[(int64_t)x[r] * m + r] += entry;
        }
    }
    free(transposed);
    free(x);
    return st;
}

/* ------------------------------------------------------------------------------------ */
/* Network simplex for the transportation problem                                        */
/* ------------------------------------------------------------------------------------ */

/* Nodes 0..ns-1 are sources (rows of positive mass), ns..ns+nt-1 sinks (columns of
 * positive mass), and ns+nt the root. Every arc points from a source to a sink, from a
 * source to the root or from the root to a sink. So the direction of the tree edge
 * between a node and its parent follows from the node's kind. The spanning tree is
 * stored as parent pointers plus doubly linked adjacency lists, which let a pivot walk
 * the subtree it moves. */
typedef struct {
    int ns, nt, nodes;
    const double *c; /* (ns, nt) costs shifted to be >= 0 */
    double art;      /* cost of the artificial root arcs */
    int *parent;     /* (nodes) */
    int *pedge;      /* (nodes) tree edge to the parent */
    int *depth;      /* (nodes) */
    double *pi;      /* (nodes) node potentials */
    int *edge_end;   /* (2 * nodes) endpoints of edge e at 2e and 2e + 1 */
    double *flow;    /* (nodes) flow on edge e */
    int *head;       /* (nodes) first half-edge at a node, -1 if none */
    int *next;       /* (2 * nodes) doubly linked half-edge lists */
    int *prev;       /* (2 * nodes) */
    int *stack;      /* (nodes) */
} ns_state;

static int ns_is_source(const ns_state *s, int v)
{
    return v < s->ns;
}

/* Cost of the tree edge between v and its neighbor w. */
static double ns_edge_cost(const ns_state *s, int v, int w)
{
    int root = s->nodes - 1;
    if (v == root || w == root) return s->art;
    int src = ns_is_source(s, v) ? v : w, snk = ns_is_source(s, v) ? w : v;
    return s->c[(int64_t)src * s->nt + (snk - s->ns)];
}

static void ns_link(ns_state *s, int e, int u, int w)
{
    s->edge_end[2 * e] = u;
    s->edge_end[2 * e + 1] = w;
    for (int h = 2 * e; h <= 2 * e + 1; h++) {
        int node = s->edge_end[h];
        s->prev[h] = -1;
        s->next[h] = s->head[node];
        if (s->head[node] >= 0) s->prev[s->head[node]] = h;
        s->head[node] = h;
    }
}

static void ns_unlink(ns_state *s, int e)
{
    for (int h = 2 * e; h <= 2 * e + 1; h++) {
        int node = s->edge_end[h];
        if (s->prev[h] >= 0)
            s->next[s->prev[h]] = s->next[h];
        else
            s->head[node] = s->next[h];
        if (s->next[h] >= 0) s->prev[s->next[h]] = s->prev[h];
    }
}

/* Sets parent data of v below p through edge e, recomputing v's potential from p's. */
static void ns_attach(ns_state *s, int v, int p, int e)
{
    s->parent[v] = p;
    s->pedge[v] = e;
    s->depth[v] = s->depth[p] + 1;
    double cost = ns_edge_cost(s, v, p);
    s->pi[v] = ns_is_source(s, v) ? s->pi[p] - cost : s->pi[p] + cost;
}

/* Walks the subtree hanging from top (whose parent data is already set) and resets
 * parent and depth of every node in it. The tree edges inside the subtree did not change,
 * so every potential in it moves by the same amount delta as top's did. */
static void ns_rehang(ns_state *s, int top, double delta)
{
    int sp = 0;
    s->stack[sp++] = top;
    while (sp > 0) {
        int v = s->stack[--sp];
        for (int h = s->head[v]; h >= 0; h = s->next[h]) {
            int w = s->edge_end[h ^ 1];
            if (w == s->parent[v]) continue;
            s->parent[w] = v;
            s->pedge[w] = h >> 1;
            s->depth[w] = s->depth[v] + 1;
            s->pi[w] += delta;
            s->stack[sp++] = w;
        }
    }
}

/* Initial strongly feasible tree: every source i sends a_i to the root, the root sends
 * b_j to every sink j. a (ns), b (nt) positive. */
static void ns_init_tree(ns_state *s, const double *a, const double *b)
{
    int root = s->nodes - 1;
    for (int v = 0; v < s->nodes; v++) s->head[v] = -1;
    s->parent[root] = -1;
    s->pedge[root] = -1;
    s->depth[root] = 0;
    s->pi[root] = 0.0;
    for (int v = 0; v < root; v++) {
        ns_link(s, v, v, root);
        s->flow[v] = ns_is_source(s, v) ? a[v] : b[v - s->ns];
        ns_attach(s, v, root, v);
    }
}

/* Shapes: row, pi_sink (len). Returns min_j row_j + pi_i - pi_sink_j, the smallest
 * reduced cost of a segment of arcs out of one source. */
static double ns_segment_min(int64_t len, const double *row, const double *pi_sink, double pi_i)
{
    double best = INFINITY;
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512d vbest = _mm512_set1_pd(INFINITY), vpi = _mm512_set1_pd(pi_i);
    for (; j + 8 <= len; j += 8) {
        __m512d rc = _mm512_sub_pd(_mm512_add_pd(_mm512_loadu_pd(row + j), vpi),
                                   _mm512_loadu_pd(pi_sink + j));
        vbest = _mm512_min_pd(vbest, rc);
    }
    best = _mm512_reduce_min_pd(vbest);
#endif
    for (; j < len; j++) best = fmin(best, row[j] + pi_i - pi_sink[j]);
    return best;
}

/* Block search pricing: scans arcs in blocks from *cursor and returns the arc (as
 * source * nt + sink) of most negative reduced cost in the first block that contains
 * one below -tol. Returns -1 if no arc is below -tol, which proves optimality. */
static int64_t ns_price(const ns_state *s, int64_t *cursor, int64_t block, double tol)
{
    int64_t total = (int64_t)s->ns * s->nt, best = -1, scanned = 0, k = *cursor;
    const double *pi_sink = s->pi + s->ns;
    double best_rc = -tol;
    while (scanned < total) {
        int64_t i = k / s->nt, j0 = k % s->nt;
        int64_t len = s->nt - j0;
        if (len > total - scanned) len = total - scanned;
        const double *row = s->c + i * s->nt;
        double pi_i = s->pi[i];
        if (ns_segment_min(len, row + j0, pi_sink + j0, pi_i) < best_rc) {
            for (int64_t j = j0; j < j0 + len; j++) {
                double rc = row[j] + pi_i - pi_sink[j];
                if (rc < best_rc) {
                    best_rc = rc;
                    best = i * s->nt + j;
                }
            }
        }
        scanned += len;
        k = (k + len) % total;
        if (best >= 0 && scanned >= block) break;
    }
    *cursor = k;
    return best;
}

/* Pivots arc source i -> sink node j into the tree: pushes the largest feasible flow
 * around the cycle and removes the blocking edge chosen by Cunningham's rule (the last
 * blocking edge met when walking the cycle from its apex in the direction of the
 * entering arc), which keeps the tree strongly feasible. */
static void ns_pivot(ns_state *s, int i, int j)
{
    int u = i, w = j;
    while (u != w) {
        if (s->depth[u] >= s->depth[w])
            u = s->parent[u];
        else
            w = s->parent[w];
    }
    int apex = u;

    /* Ratio test. On the source side, edges of source nodes lose flow; on the sink side,
     * edges of sink nodes do. */
    double delta = INFINITY;
    int out = -1;
    for (int v = i; v != apex; v = s->parent[v])
        if (ns_is_source(s, v) && s->flow[s->pedge[v]] < delta) {
            delta = s->flow[s->pedge[v]];
            out = v;
        }
    for (int v = j; v != apex; v = s->parent[v])
        if (!ns_is_source(s, v) && s->flow[s->pedge[v]] <= delta) {
            delta = s->flow[s->pedge[v]];
            out = v;
        }

    for (int v = i; v != apex; v = s->parent[v])
        s->flow[s->pedge[v]] += ns_is_source(s, v) ? -delta : delta;
    for (int v = j; v != apex; v = s->parent[v])
        s->flow[s->pedge[v]] += ns_is_source(s, v) ? delta : -delta;

    /* Replace the leaving edge by the entering one and re-hang the cut-off subtree from
     * the endpoint of the entering arc that lies in it. */
    int on_source_side = 0;
    for (int v = i; v != apex; v = s->parent[v])
        if (v == out) on_source_side = 1;
    int e = s->pedge[out];
    ns_unlink(s, e);
    ns_link(s, e, i, j);
    s->flow[e] = delta;
    int top = on_source_side ? i : j;
    double old_pi = s->pi[top];
    ns_attach(s, top, on_source_side ? j : i, e);
    ns_rehang(s, top, s->pi[top] - old_pi);
}

typedef struct {
    int *rows, *cols; /* original indices of the sources and sinks */
    double *a, *b;    /* (ns), (nt) masses */
    double *c;        /* (ns, nt) shifted costs */
} ns_problem;

/* Runs the network simplex to optimality or to the pivot cap. Writes flows of tree arcs
 * into plan (n, m), which the caller zeroed. */
static tf_status ns_run(ns_state *s, const ns_problem *p, int m, double *plan, int64_t *pivots)
{
    int64_t total = (int64_t)s->ns * s->nt;
    int64_t block = (int64_t)sqrt((double)total);
    if (block < 16) block = 16;
    /* NOTE: the cap guards against a floating-point loop and is not a measured bound.
     * Random Euclidean problems with 1537 to 6145 nodes and random marginals needed 7 to
     * 12 pivots per node. */
    int64_t cap = 1000 * (int64_t)s->nodes + 10 * total;
    double tol = 64 * DBL_EPSILON * s->art;
    int64_t cursor = 0, count = 0;

    ns_init_tree(s, p->a, p->b);
    for (;;) {
        int64_t arc = ns_price(s, &cursor, block, tol);
        if (arc < 0) break;
        if (count == cap) {
            *pivots = count;
            return tf_error_set(TF_ERR_NOT_CONVERGED,
                                "ot_emd_solve: network simplex reached its cap of %lld pivots "
                                "(ns = %d, nt = %d) without proving optimality",
                                (long long)cap, s->ns, s->nt);
        }
        ns_pivot(s, (int)(arc / s->nt), s->ns + (int)(arc % s->nt));
        count++;
    }
    *pivots = count;

    int root = s->nodes - 1;
    for (int v = 0; v < root; v++) {
        int pa = s->parent[v];
        if (pa == root || !ns_is_source(s, v)) continue;
        plan[(int64_t)p->rows[v] * m + p->cols[pa - s->ns]] = s->flow[s->pedge[v]];
    }
    for (int v = s->ns; v < root; v++) {
        int pa = s->parent[v];
        if (pa == root) continue;
        plan[(int64_t)p->rows[pa] * m + p->cols[v - s->ns]] = s->flow[s->pedge[v]];
    }
    return TF_OK;
}

/* General marginals: drops rows and columns of zero mass, shifts costs to be >= 0 (a
 * constant shift does not change the optimal plan because the mass is fixed) and runs
 * the network simplex. cost (n, m); plan (n, m) zeroed by the caller. */
static tf_status emd_network_simplex(int n, int m, const double *cost, const double *mu,
                                     const double *nu, double *plan, int64_t *pivots)
{
    tf_status st = TF_OK;
    ns_problem p = {0};
    ns_state s = {0};
    p.rows = tf_malloc((size_t)n * sizeof(int));
    p.cols = tf_malloc((size_t)m * sizeof(int));
    p.a = tf_malloc((size_t)n * sizeof(double));
    p.b = tf_malloc((size_t)m * sizeof(double));
    if (!p.rows || !p.cols || !p.a || !p.b) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    for (int i = 0; i < n; i++) {
        double a = ot_marginal_at(mu, i, n);
        if (a > 0.0) {
            p.rows[s.ns] = i;
            p.a[s.ns++] = a;
        }
    }
    for (int j = 0; j < m; j++) {
        double b = ot_marginal_at(nu, j, m);
        if (b > 0.0) {
            p.cols[s.nt] = j;
            p.b[s.nt++] = b;
        }
    }

    p.c = tf_malloc((size_t)s.ns * s.nt * sizeof(double));
    if (!p.c) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    double cmin = INFINITY, cmax = -INFINITY;
    for (int i = 0; i < s.ns; i++)
        for (int j = 0; j < s.nt; j++) {
            double v = cost[(int64_t)p.rows[i] * m + p.cols[j]];
            p.c[(int64_t)i * s.nt + j] = v;
            cmin = fmin(cmin, v);
            cmax = fmax(cmax, v);
        }
    for (int64_t k = 0; k < (int64_t)s.ns * s.nt; k++) p.c[k] -= cmin;

    /* An artificial arc must cost more than any path of real arcs. */
    s.nodes = s.ns + s.nt + 1;
    s.c = p.c;
    s.art = (cmax > cmin ? cmax - cmin : 1.0) * (double)(s.nodes + 1);
    s.parent = tf_malloc((size_t)s.nodes * sizeof(int));
    s.pedge = tf_malloc((size_t)s.nodes * sizeof(int));
    s.depth = tf_malloc((size_t)s.nodes * sizeof(int));
    s.pi = tf_malloc((size_t)s.nodes * sizeof(double));
    s.edge_end = tf_malloc((size_t)2 * s.nodes * sizeof(int));
    s.flow = tf_malloc((size_t)s.nodes * sizeof(double));
    s.head = tf_malloc((size_t)s.nodes * sizeof(int));
    s.next = tf_malloc((size_t)2 * s.nodes * sizeof(int));
    s.prev = tf_malloc((size_t)2 * s.nodes * sizeof(int));
    s.stack = tf_malloc((size_t)s.nodes * sizeof(int));
    if (!s.parent || !s.pedge || !s.depth || !s.pi || !s.edge_end || !s.flow || !s.head ||
        !s.next || !s.prev || !s.stack) {
        st = TF_ERR_NOMEM;
        goto done;
    }
    st = ns_run(&s, &p, m, plan, pivots);

done:
    free(p.rows);
    free(p.cols);
    free(p.a);
    free(p.b);
    free(p.c);
    free(s.parent);
    free(s.pedge);
    free(s.depth);
    free(s.pi);
    free(s.edge_end);
    free(s.flow);
    free(s.head);
    free(s.next);
    free(s.prev);
    free(s.stack);
    return st;
}

/* ------------------------------------------------------------------------------------ */

/* Returns 1 if every entry of w (len) equals the first (NULL counts as uniform). */
static int is_uniform(const double *w, int len)
{
    if (!w) return 1;
    for (int k = 1; k < len; k++)
        if (w[k] != w[0]) return 0;
    return 1;
}

tf_status ot_emd_solve(int n, int m, const double *cost, const double *mu, const double *nu,
                       double *plan, ot_info *info)
{
    double mass = 0.0;
    int64_t pivots = 0;
    tf_status st = ot_check_problem("ot_emd_solve", n, m, cost, mu, nu, &mass);
    if (st != TF_OK) return st;
    if (!plan) return tf_error_set(TF_ERR_ARG, "ot_emd_solve: plan is NULL");
    memset(plan, 0, (size_t)n * m * sizeof(double));

    /* Pick the solver: assignment when the problem is a replicated assignment problem. */
    int big = n > m ? n : m, small = n > m ? m : n;
    if (mass == 0.0)
        st = TF_OK;
    else if (is_uniform(mu, n) && is_uniform(nu, m) && big % small == 0)
        st = emd_uniform(n, m, cost, mass, plan);
    else
        st = emd_network_simplex(n, m, cost, mu, nu, plan, &pivots);
    if (st == TF_ERR_NOMEM)
        return tf_error_set(TF_ERR_NOMEM, "ot_emd_solve: out of memory for n = %d, m = %d", n, m);

    if (info) {
        double objective = 0.0;
        for (int64_t k = 0; k < (int64_t)n * m; k++) objective += cost[k] * plan[k];
        info->objective = objective;
        info->iterations = pivots;
        info->marginal_error = 0.0;
        info->converged = st == TF_OK;
    }
    return st;
}
