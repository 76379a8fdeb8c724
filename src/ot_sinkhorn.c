/* Entropic optimal transport: log-domain Sinkhorn with epsilon scaling.
 *
 * The plan is P_ij = exp((f_i + g_j - C_ij) / eps) with dual potentials f (n) and g (m)
 * kept in cost units, so warm starts carry over between epsilon stages unchanged.
 * One iteration is one pass over C with one exp per entry. The row update of f and the
 * column sums of the updated plan come out of the same exponentials (see
 * ot_sinkhorn_rows), and g is then updated from the column sums without reading C.
 * The log-sum-exp of a row is shifted by the current f_i instead of the row maximum,
 * which saves a pass: once the potentials are near their fixed point, the shifted sum
 * is close to the row's mass. A row or column whose shifted sum leaves [1e-200, 1e200]
 * is recomputed with the exact maximum as shift. */
#include "tfuse/ot.h"
#include "ot_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__AVX512F__) && defined(__AVX512DQ__)) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

/* Range of shifted sums accepted without recomputing with the exact maximum. */
#define OT_SUM_MIN 1e-200
#define OT_SUM_MAX 1e200

/* Splitting of ln(2) for the range reduction of the vector exp: the high part has
 * trailing zero bits, so k * hi is exact for the k that occur. */
#define OT_LN2_HI 6.93147180369123816490e-01
#define OT_LN2_LO 1.90821492927058770002e-10
#define OT_LOG2E 1.4426950408889634

static double exp_scalar(double x)
{
    return exp(x);
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
/* 2^(i/16) for i = 0..15, correctly rounded. */
static const double exp_table16[16] = {
    0x1.0000000000000p+0, 0x1.0b5586cf9890fp+0, 0x1.172b83c7d517bp+0, 0x1.2387a6e756238p+0,
    0x1.306fe0a31b715p+0, 0x1.3dea64c123422p+0, 0x1.4bfdad5362a27p+0, 0x1.5ab07dd485429p+0,
    0x1.6a09e667f3bcdp+0, 0x1.7a11473eb0187p+0, 0x1.8ace5422aa0dbp+0, 0x1.9c49182a3f090p+0,
    0x1.ae89f995ad3adp+0, 0x1.c199bdd85529cp+0, 0x1.d5818dcfba487p+0, 0x1.ea4afa2a490dap+0};

/* exp of 8 lanes: x = k ln2 / 16 + r with integer k and |r| <= ln2 / 32, so
 * exp(x) = 2^floor(k / 16) 2^((k mod 16) / 16) p(r). The table lookup is one two-register
 * permute, which reads only the low 4 bits of k, and scalef applies 2^floor(k / 16),
 * giving 0 and +inf on underflow and overflow. The degree-7 Taylor polynomial leaves a
 * truncation error below 2e-18. The clamp keeps k finite for infinite arguments. */
static inline __m512d exp_vec8(__m512d x)
{
    __m512d xc = _mm512_max_pd(_mm512_min_pd(x, _mm512_set1_pd(710.0)), _mm512_set1_pd(-746.0));
    __m512d k = _mm512_roundscale_pd(_mm512_mul_pd(xc, _mm512_set1_pd(16.0 * OT_LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(k, _mm512_set1_pd(OT_LN2_HI / 16.0), xc);
    r = _mm512_fnmadd_pd(k, _mm512_set1_pd(OT_LN2_LO / 16.0), r);
    __m512i idx = _mm512_cvtpd_epi64(k);
    __m512d t =
        _mm512_permutex2var_pd(_mm512_loadu_pd(exp_table16), idx, _mm512_loadu_pd(exp_table16 + 8));
    __m512d p = _mm512_set1_pd(1.0 / 5040.0);
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 720.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 120.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 24.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 6.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
    p = _mm512_mul_pd(p, r);
    /* t (1 + r + r^2 p') = t + t (r + r^2 p'), which keeps the leading term exact. */
    __m512d q = _mm512_fmadd_pd(p, r, r);
    return _mm512_scalef_pd(_mm512_fmadd_pd(t, q, t), _mm512_mul_pd(k, _mm512_set1_pd(0.0625)));
}
#elif defined(__AVX2__) && defined(__FMA__)
/* Taylor coefficients 1/k! for k = 13 down to 2. The reduced argument lies in
 * [-ln(2)/2, ln(2)/2], where the degree-13 truncation error is below 1e-17. */
static const double exp_coef[12] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                                    1.0 / 3628800.0,    1.0 / 362880.0,    1.0 / 40320.0,
                                    1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,
                                    1.0 / 24.0,         1.0 / 6.0,         1.0 / 2.0};

/* exp of 4 lanes: x = k ln2 + r and exp(x) = 2^k p(r), with 2^k built in the exponent
 * bits. The clamp keeps k in [-1021, 1023]. */
static inline __m256d exp_vec4(__m256d x)
{
    __m256d xc = _mm256_max_pd(_mm256_min_pd(x, _mm256_set1_pd(709.0)), _mm256_set1_pd(-708.0));
    __m256d k = _mm256_round_pd(_mm256_mul_pd(xc, _mm256_set1_pd(OT_LOG2E)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(OT_LN2_HI), xc);
    r = _mm256_fnmadd_pd(k, _mm256_set1_pd(OT_LN2_LO), r);
    __m256d p = _mm256_set1_pd(exp_coef[0]);
    for (int c = 1; c < 12; c++) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(exp_coef[c]));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
    __m256i k64 = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(k));
    __m256i bits = _mm256_slli_epi64(_mm256_add_epi64(k64, _mm256_set1_epi64x(1023)), 52);
    __m256d y = _mm256_mul_pd(p, _mm256_castsi256_pd(bits));
    y = _mm256_blendv_pd(y, _mm256_setzero_pd(),
                         _mm256_cmp_pd(x, _mm256_set1_pd(-708.0), _CMP_LT_OQ));
    return _mm256_blendv_pd(y, _mm256_set1_pd(INFINITY),
                            _mm256_cmp_pd(x, _mm256_set1_pd(709.0), _CMP_GT_OQ));
}
#endif

void ot_exp_array(int64_t len, const double *x, double *out)
{
    int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    for (; j + 8 <= len; j += 8) _mm512_storeu_pd(out + j, exp_vec8(_mm512_loadu_pd(x + j)));
#elif defined(__AVX2__) && defined(__FMA__)
    for (; j + 4 <= len; j += 4) _mm256_storeu_pd(out + j, exp_vec4(_mm256_loadu_pd(x + j)));
#endif
    for (; j < len; j++) out[j] = exp_scalar(x[j]);
}

double ot_exp_row_sum(int64_t m, const double *row, const double *g, double shift, double inv_eps,
                      double *out)
{
    int64_t j = 0;
    double sum = 0.0;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    /* Two independent chains per iteration keep both FMA ports busy. */
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    __m512d vs = _mm512_set1_pd(shift), vi = _mm512_set1_pd(inv_eps);
    for (; j + 16 <= m; j += 16) {
        __m512d t0 =
            _mm512_sub_pd(_mm512_add_pd(vs, _mm512_loadu_pd(g + j)), _mm512_loadu_pd(row + j));
        __m512d t1 = _mm512_sub_pd(_mm512_add_pd(vs, _mm512_loadu_pd(g + j + 8)),
                                   _mm512_loadu_pd(row + j + 8));
        __m512d e0 = exp_vec8(_mm512_mul_pd(t0, vi));
        __m512d e1 = exp_vec8(_mm512_mul_pd(t1, vi));
        _mm512_storeu_pd(out + j, e0);
        _mm512_storeu_pd(out + j + 8, e1);
        acc0 = _mm512_add_pd(acc0, e0);
        acc1 = _mm512_add_pd(acc1, e1);
    }
    sum = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256d acc = _mm256_setzero_pd(), vs = _mm256_set1_pd(shift), vi = _mm256_set1_pd(inv_eps);
    for (; j + 4 <= m; j += 4) {
        __m256d t =
            _mm256_sub_pd(_mm256_add_pd(vs, _mm256_loadu_pd(g + j)), _mm256_loadu_pd(row + j));
        __m256d e = exp_vec4(_mm256_mul_pd(t, vi));
        _mm256_storeu_pd(out + j, e);
        acc = _mm256_add_pd(acc, e);
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, acc);
    sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#endif
    for (; j < m; j++) {
        out[j] = exp_scalar((shift + g[j] - row[j]) * inv_eps);
        sum += out[j];
    }
    return sum;
}

void ot_add_scaled(int64_t m, double alpha, const double *x, double *y)
{
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512d va = _mm512_set1_pd(alpha);
    for (; j + 8 <= m; j += 8)
        _mm512_storeu_pd(y + j,
                         _mm512_fmadd_pd(va, _mm512_loadu_pd(x + j), _mm512_loadu_pd(y + j)));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256d va = _mm256_set1_pd(alpha);
    for (; j + 4 <= m; j += 4)
        _mm256_storeu_pd(y + j,
                         _mm256_fmadd_pd(va, _mm256_loadu_pd(x + j), _mm256_loadu_pd(y + j)));
#endif
    for (; j < m; j++) y[j] += alpha * x[j];
}

/* Shapes: row (m), g (m). Returns max_j (g_j - row_j). */
static double row_max(int64_t m, const double *row, const double *g)
{
    double mx = -INFINITY;
    for (int64_t j = 0; j < m; j++) mx = fmax(mx, g[j] - row[j]);
    return mx;
}

double ot_sinkhorn_rows(int64_t rows, int64_t m, const double *cost, int64_t ld, double eps,
                        const double *la, const double *g, double *f, double *colsum, double *work)
{
    double inv_eps = 1.0 / eps, err = 0.0;
    for (int64_t i = 0; i < rows; i++) {
        if (la[i] == -INFINITY) {
            f[i] = -INFINITY;
            continue;
        }
        const double *row = cost + i * ld;
        double a = exp(la[i]);
        double s = ot_exp_row_sum(m, row, g, f[i], inv_eps, work);
        err += fabs(s - a);

        /* Shifted sum out of range: shift by the exact maximum instead. */
        if (s >= OT_SUM_MIN && s <= OT_SUM_MAX) {
            f[i] += eps * (la[i] - log(s));
        } else {
            double mx = row_max(m, row, g);
            s = ot_exp_row_sum(m, row, g, -mx, inv_eps, work);
            f[i] = eps * la[i] - mx - eps * log(s);
        }

        /* Row i of the updated plan is work * a / s. */
        ot_add_scaled(m, a / s, work, colsum);
    }
    return err;
}

/* Exact column update g_j = eps * (lb_j - log sum_i exp((f_i - C_ij) / eps)) with the
 * maximum over i as shift. cost (n, m), f (n), lb (m), g (m), colmax and colsum (m)
 * scratch, work (m) scratch. */
static void sinkhorn_columns_exact(int64_t n, int64_t m, const double *cost, double eps,
                                   const double *f, const double *lb, double *g, double *colmax,
                                   double *colsum, double *work)
{
    for (int64_t j = 0; j < m; j++) {
        colmax[j] = -INFINITY;
        colsum[j] = 0.0;
    }
    for (int64_t i = 0; i < n; i++) {
        if (f[i] == -INFINITY) continue;
        const double *row = cost + i * m;
        for (int64_t j = 0; j < m; j++) colmax[j] = fmax(colmax[j], f[i] - row[j]);
    }
    for (int64_t i = 0; i < n; i++) {
        if (f[i] == -INFINITY) continue;
        const double *row = cost + i * m;
        for (int64_t j = 0; j < m; j++) work[j] = (f[i] - row[j] - colmax[j]) / eps;
        ot_exp_array(m, work, work);
        for (int64_t j = 0; j < m; j++) colsum[j] += work[j];
    }
    for (int64_t j = 0; j < m; j++)
        g[j] = lb[j] == -INFINITY ? -INFINITY : eps * lb[j] - colmax[j] - eps * log(colsum[j]);
}

/* Returns the L1 column-marginal error sum_j |colsum_j - b_j|. colsum, lb (m). */
static double column_error(int64_t m, const double *colsum, const double *lb)
{
    double err = 0.0;
    for (int64_t j = 0; j < m; j++) err += fabs(colsum[j] - exp(lb[j]));
    return err;
}

/* Column update from the column sums of the current plan. Returns 1 if some column sum
 * is out of range and the exact update is needed. g, colsum, lb (m). */
static int sinkhorn_columns_from_sums(int64_t m, double eps, const double *colsum, const double *lb,
                                      double *g)
{
    int exact = 0;
    for (int64_t j = 0; j < m; j++) {
        if (lb[j] == -INFINITY) {
            g[j] = -INFINITY;
        } else if (colsum[j] >= OT_SUM_MIN && colsum[j] <= OT_SUM_MAX) {
            g[j] += eps * (lb[j] - log(colsum[j]));
        } else {
            exact = 1;
        }
    }
    return exact;
}

ot_sinkhorn_options ot_sinkhorn_defaults(double epsilon)
{
    ot_sinkhorn_options opt = {.epsilon = epsilon,
                               .tolerance = 1e-9,
                               .max_iter = 100000,
                               .eps_scaling = 1,
                               .eps_start = 0.0,
                               .eps_factor = 0.5};
    return opt;
}

tf_status ot_sinkhorn_check_options(const char *caller, const ot_sinkhorn_options *opt)
{
    if (!opt) return tf_error_set(TF_ERR_ARG, "%s: options are NULL", caller);
    if (!(opt->epsilon > 0.0) || !isfinite(opt->epsilon))
        return tf_error_set(TF_ERR_ARG, "%s: epsilon = %g is invalid; it must be finite and > 0",
                            caller, opt->epsilon);
    if (!(opt->tolerance > 0.0))
        return tf_error_set(TF_ERR_ARG, "%s: tolerance = %g is invalid; it must be > 0", caller,
                            opt->tolerance);
    if (opt->max_iter < 1)
        return tf_error_set(TF_ERR_ARG, "%s: max_iter = %lld is invalid; it must be >= 1", caller,
                            (long long)opt->max_iter);
    if (opt->eps_scaling && !(opt->eps_factor > 0.0 && opt->eps_factor < 1.0))
        return tf_error_set(TF_ERR_ARG, "%s: eps_factor = %g is invalid; it must lie in (0, 1)",
                            caller, opt->eps_factor);
    if (opt->eps_scaling && (!isfinite(opt->eps_start) || opt->eps_start < 0.0))
        return tf_error_set(TF_ERR_ARG,
                            "%s: eps_start = %g is invalid; it must be finite and >= 0 "
                            "(0 selects max |C|)",
                            caller, opt->eps_start);
    return TF_OK;
}

int ot_sinkhorn_schedule(const ot_sinkhorn_options *opt, double cost_absmax, double *eps)
{
    int count = 0;
    if (opt->eps_scaling) {
        double e = opt->eps_start > 0.0 ? opt->eps_start : cost_absmax;
        while (e > opt->epsilon && count < 63) {
            eps[count++] = e;
            e *= opt->eps_factor;
        }
    }
    eps[count++] = opt->epsilon;
    return count;
}

typedef struct {
    int64_t n, m;
    const double *cost; /* (n, m) */
    double *la, *lb;    /* (n), (m) log marginals */
    double *f, *g;      /* (n), (m) potentials */
    double *colsum;     /* (m) */
    double *colmax;     /* (m) */
    double *work;       /* (m) */
} sk_state;

/* Runs Sinkhorn iterations at one epsilon until the L1 column error of the plan (whose
 * rows are exact after the row update) is below tol or max_iter iterations ran.
 * Returns the number of iterations and writes the last error into *err. */
static int64_t sinkhorn_stage(sk_state *s, double eps, double tol, int64_t max_iter, double *err)
{
    int64_t it = 0;
    *err = INFINITY;
    while (it < max_iter) {
        memset(s->colsum, 0, (size_t)s->m * sizeof(double));
        ot_sinkhorn_rows(s->n, s->m, s->cost, s->m, eps, s->la, s->g, s->f, s->colsum, s->work);
        it++;
        *err = column_error(s->m, s->colsum, s->lb);
        if (*err < tol) break;
        if (sinkhorn_columns_from_sums(s->m, eps, s->colsum, s->lb, s->g))
            sinkhorn_columns_exact(s->n, s->m, s->cost, eps, s->f, s->lb, s->g, s->colmax,
                                   s->colsum, s->work);
    }
    return it;
}

/* Writes plan_ij = exp((f_i + g_j - C_ij) / eps) and returns its L1 marginal error
 * (rows plus columns). plan (n, m). */
static double sinkhorn_write_plan(sk_state *s, double eps, double *plan)
{
    double err = 0.0;
    memset(s->colsum, 0, (size_t)s->m * sizeof(double));
    for (int64_t i = 0; i < s->n; i++) {
        double *prow = plan + i * s->m;
        double r = 0.0;
        if (s->f[i] == -INFINITY)
            memset(prow, 0, (size_t)s->m * sizeof(double));
        else
            r = ot_exp_row_sum(s->m, s->cost + i * s->m, s->g, s->f[i], 1.0 / eps, prow);
        err += fabs(r - exp(s->la[i]));
        for (int64_t j = 0; j < s->m; j++) s->colsum[j] += prow[j];
    }
    return err + column_error(s->m, s->colsum, s->lb);
}

static void sk_state_free(sk_state *s)
{
    free(s->la);
    free(s->lb);
    free(s->f);
    free(s->g);
    free(s->colsum);
    free(s->colmax);
    free(s->work);
}

tf_status ot_sinkhorn_solve(int n, int m, const double *cost, const double *mu, const double *nu,
                            const ot_sinkhorn_options *opt, double *plan, ot_info *info)
{
    const char *fn = "ot_sinkhorn_solve";
    double mass = 0.0;
    tf_status st = ot_check_problem(fn, n, m, cost, mu, nu, &mass);
    if (st == TF_OK) st = ot_sinkhorn_check_options(fn, opt);
    if (st != TF_OK) return st;
    if (!plan) return tf_error_set(TF_ERR_ARG, "%s: plan is NULL", fn);

    sk_state s = {.n = n, .m = m, .cost = cost};
    s.la = tf_malloc((size_t)n * sizeof(double));
    s.f = tf_calloc((size_t)n, sizeof(double));
    s.lb = tf_malloc((size_t)m * sizeof(double));
    s.g = tf_calloc((size_t)m, sizeof(double));
    s.colsum = tf_malloc((size_t)m * sizeof(double));
    s.colmax = tf_malloc((size_t)m * sizeof(double));
    s.work = tf_malloc((size_t)m * sizeof(double));
    if (!s.la || !s.f || !s.lb || !s.g || !s.colsum || !s.colmax || !s.work) {
        st = tf_error_set(TF_ERR_NOMEM, "%s: out of memory for n = %d, m = %d", fn, n, m);
        goto done;
    }
    for (int i = 0; i < n; i++) s.la[i] = log(ot_marginal_at(mu, i, n));
    for (int j = 0; j < m; j++) s.lb[j] = log(ot_marginal_at(nu, j, m));

    /* Epsilon schedule from max |C| (or eps_start) down to the target. */
    double absmax = 0.0, eps[64];
    for (int64_t k = 0; k < (int64_t)n * m; k++) absmax = fmax(absmax, fabs(cost[k]));
    int stages = ot_sinkhorn_schedule(opt, absmax, eps);

    /* Intermediate stages only warm-start the potentials, so they stop early. */
    int64_t iterations = 0;
    double err = INFINITY;
    for (int k = 0; k < stages; k++) {
        int last = k == stages - 1;
        double tol = last ? opt->tolerance : fmax(opt->tolerance, 1e-3 * mass);
        int64_t cap = last ? opt->max_iter : 100;
        iterations += sinkhorn_stage(&s, eps[k], tol, cap, &err);
    }
    int converged = err < opt->tolerance;

    double plan_err = sinkhorn_write_plan(&s, opt->epsilon, plan);
    if (info) {
        double objective = 0.0;
        for (int64_t k = 0; k < (int64_t)n * m; k++) objective += cost[k] * plan[k];
        info->objective = objective;
        info->iterations = iterations;
        info->marginal_error = plan_err;
        info->converged = converged;
    }
    if (!converged)
        st = tf_error_set(TF_ERR_NOT_CONVERGED,
                          "%s: no convergence in max_iter = %lld iterations at epsilon = %g "
                          "(marginal error %g, tolerance %g); raise max_iter or epsilon",
                          fn, (long long)opt->max_iter, opt->epsilon, err, opt->tolerance);

done:
    sk_state_free(&s);
    return st;
}
