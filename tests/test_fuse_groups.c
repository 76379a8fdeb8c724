/* OT units spread over process groups ("ot_group_ranks"). Checks, in this order:
 * - fuse_schedule_units against assignments worked out by hand, including a remainder
 *   rank that is in no group, one group of all ranks, ties and invalid arguments;
 * - at 4 ranks with groups of 2, that both groups solve large units, disjoint ones, in the
 *   same call (fuse_group_report), and that the weight-based plans of the groups equal
 *   the 1-rank Sinkhorn plans within the solver's tolerance;
 * - activation-based fusion with groups of 2: the plans and fused parameters at N ranks
 *   are bitwise equal to those on the first 2 ranks alone. Plans of exact OT and of
 *   Sinkhorn problems below the threshold are bitwise equal to the 1-rank ones, and the
 *   group-solved MLP plans agree with them within the Sinkhorn tolerance;
 * - a unit that fails on one rank of a group only: every rank returns the failure with
 *   that rank's message, and none waits forever;
 * - the job field: parsed, and rejected when negative or not an integer.
 * CTest runs it at 2, 3 and 4 ranks: 3 ranks leave one rank in no group. */
#include "fuse_internal.h"
#include "testutil.h"
#include "tfuse/job.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_PARENTS = 5, N_IMAGES = 96 };

static const vit_config cfg = {.image_size = 8,
                               .channels = 1,
                               .patch = 4,
                               .d = 16,
                               .layers = 2,
                               .heads = 2,
                               .mlp = 32,
                               .classes = 3,
                               .ln_eps = 1e-6};

/* Tolerance of a group-solved Sinkhorn plan against the 1-rank one. Both stop once the
 * L1 marginal error is below 1e-9 (ot_sinkhorn_defaults), and the entries are near
 * 1 / (n m) >= 1e-3. Weight-based costs depend on the plans of the layer before, so the
 * differences add up over the layers: at most 1.4e-9 was measured, within the bound
 * atol + rtol * 1e-3 = 2e-9. */
static const double PLAN_RTOL = 1e-6, PLAN_ATOL = 1e-9;

/* Largest absolute difference seen in the comparisons made with this tolerance. */
static double largest_plan_diff = 0.0;

static vit_model *random_model(uint64_t seed)
{
    vit_model *m = NULL;
    if (vit_model_create(&cfg, &m) != TF_OK) TF_DIE("vit_model_create: %s", tf_error_get());
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int64_t k = 0; k < m->num_params; k++) m->params[k] = (float)(0.3 * tf_rng_normal(&rng));
    for (int64_t k = 0; k < m->size[VIT_LN1_G]; k++) m->p[VIT_LN1_G][k] += 1.0f;
    for (int64_t k = 0; k < m->size[VIT_LN2_G]; k++) m->p[VIT_LN2_G][k] += 1.0f;
    for (int64_t k = 0; k < m->size[VIT_LNF_G]; k++) m->p[VIT_LNF_G][k] += 1.0f;
    return m;
}

/* ---- Schedule ------------------------------------------------------------------------ */

static void expect_schedule(const char *name, int count, const double *work, const int *large,
                            int size, int group_ranks, const int *want_group, const int *want_owner)
{
    int group[16], owner[16];
    tf_status st = fuse_schedule_units(count, work, large, size, group_ranks, group, owner);
    TU_CHECK(st == TF_OK, "%s: fuse_schedule_units failed: %s", name, tf_error_get());
    if (st != TF_OK) return;
    for (int i = 0; i < count; i++) {
        TU_CHECK(group[i] == want_group[i], "%s: unit %d in group %d, expected %d", name, i,
                 group[i], want_group[i]);
        TU_CHECK(owner[i] == want_owner[i], "%s: unit %d owned by rank %d, expected %d", name, i,
                 owner[i], want_owner[i]);
    }
}

static void test_schedule(void)
{
    /* 4 ranks, groups of 2. Large units 10, 9, 3: 10 to group 0, 9 to group 1, 3 to the
     * lighter group 1 (9 < 10), so the groups carry 10 and 12 and the ranks 5, 5, 6, 6.
     * Small units 5, 4, 3, 2 then go to ranks 0 (5), 1 (5), 2 (6, lower than rank 0's
     * 10 and rank 1's 9) and 3 (6). */
    const double work[] = {10, 5, 9, 4, 3, 3, 2};
    const int large[] = {1, 0, 1, 0, 1, 0, 0};
    const int group_4x2[] = {0, -1, 1, -1, 1, -1, -1}, owner_4x2[] = {0, 0, 2, 1, 2, 2, 3};
    expect_schedule("4 ranks, groups of 2", 7, work, large, 4, 2, group_4x2, owner_4x2);

    /* Both groups solve large units, so they work at the same time. */
    int group[7], owner[7], in_group[2] = {0, 0};
    if (fuse_schedule_units(7, work, large, 4, 2, group, owner) == TF_OK)
        for (int i = 0; i < 7; i++)
            if (group[i] >= 0) in_group[group[i]]++;
    TU_CHECK(in_group[0] == 1 && in_group[1] == 2,
             "4 ranks, groups of 2: groups solve %d and %d large units, expected 1 and 2",
             in_group[0], in_group[1]);

    /* 5 ranks, groups of 2: rank 4 is in no group and carries no group work, so it takes
     * the largest small unit, 5. Then 4 goes to rank 0 (5), 3 to rank 1 (5) and 2 to
     * rank 4 (5, against 9, 8, 6 and 6). */
    const int owner_5x2[] = {0, 4, 2, 0, 2, 1, 4};
    expect_schedule("5 ranks, groups of 2", 7, work, large, 5, 2, group_4x2, owner_5x2);

    /* One group of all 3 ranks, each carrying 22 / 3, so the small units go as without
     * groups. 5 goes to rank 0, 4 to rank 1, 3 to rank 2, and 2 to rank 2 again, the
     * lightest at 7.33 + 3 against 12.33 and 11.33. */
    const int group_3x3[] = {0, -1, 0, -1, 0, -1, -1}, owner_3x3[] = {0, 0, 0, 1, 0, 2, 2};
    expect_schedule("3 ranks, one group", 7, work, large, 3, 3, group_3x3, owner_3x3);

    /* Groups of 1: the large units 10, 9 and 3 go to ranks 0, 1 and 2, which then carry
     * 10, 9, 3 and 0. Small 5 goes to rank 3 (0), 4 to rank 2 (3), 3 to rank 3 (5) and 2
     * to rank 2 (7). */
    const int group_4x1[] = {0, -1, 1, -1, 2, -1, -1}, owner_4x1[] = {0, 3, 1, 2, 2, 3, 2};
    expect_schedule("4 ranks, groups of 1", 7, work, large, 4, 1, group_4x1, owner_4x1);

    /* Equal work keeps list order: units 0 and 1 to groups 0 and 1, unit 2 to group 0. */
    const double equal[] = {1, 1, 1};
    const int all_large[] = {1, 1, 1}, group_eq[] = {0, 1, 0}, owner_eq[] = {0, 2, 0};
    expect_schedule("ties", 3, equal, all_large, 4, 2, group_eq, owner_eq);

    /* No units at all. */
    TU_CHECK(fuse_schedule_units(0, NULL, NULL, 4, 2, NULL, NULL) == TF_OK,
             "no units: rejected: %s", tf_error_get());

    /* Invalid group sizes. */
    int g1[1], o1[1];
    const double w1[] = {1};
    const int l1[] = {1};
    TU_CHECK(fuse_schedule_units(1, w1, l1, 4, 0, g1, o1) == TF_ERR_ARG, "group_ranks 0 accepted");
    TU_CHECK(strstr(tf_error_get(), "group_ranks 0") != NULL, "message lacks the value: %s",
             tf_error_get());
    TU_CHECK(fuse_schedule_units(1, w1, l1, 4, 5, g1, o1) == TF_ERR_ARG,
             "group_ranks 5 > size 4 accepted");
    TU_CHECK(fuse_schedule_units(1, w1, l1, 0, 1, g1, o1) == TF_ERR_ARG, "size 0 accepted");

    /* Effective group size: 0 and requests above the rank count mean all ranks. */
    TU_CHECK(fuse_group_ranks(0, 4) == 4, "fuse_group_ranks(0, 4) = %d", fuse_group_ranks(0, 4));
    TU_CHECK(fuse_group_ranks(2, 4) == 2, "fuse_group_ranks(2, 4) = %d", fuse_group_ranks(2, 4));
    TU_CHECK(fuse_group_ranks(1, 4) == 1, "fuse_group_ranks(1, 4) = %d", fuse_group_ranks(1, 4));
    TU_CHECK(fuse_group_ranks(8, 4) == 4, "fuse_group_ranks(8, 4) = %d", fuse_group_ranks(8, 4));
}

/* ---- Weight-based units on groups ---------------------------------------------------- */

static fuse_maps **maps_create(void)
{
    fuse_maps **maps = calloc(N_PARENTS, sizeof *maps);
    for (int p = 1; p < N_PARENTS; p++) maps[p] = fuse_maps_create(cfg.layers);
    return maps;
}

static void maps_free(fuse_maps **maps)
{
    for (int p = 0; maps && p < N_PARENTS; p++) fuse_maps_free(&maps[p]);
    free(maps);
}

/* Compares every plan of a and b: bitwise, or with the Sinkhorn tolerance when tolerant. */
static void compare_plans(const char *what, const double *a, const double *b, int64_t count,
                          int tolerant)
{
    TU_CHECK(a && b, "%s: plan missing (%p, %p)", what, (const void *)a, (const void *)b);
    if (!a || !b) return;
    if (tolerant) {
        tu_close_f64(what, a, b, count, PLAN_RTOL, PLAN_ATOL);
        for (int64_t k = 0; k < count; k++)
            largest_plan_diff = fmax(largest_plan_diff, fabs(a[k] - b[k]));
        return;
    }
    int64_t first = -1;
    for (int64_t k = 0; k < count && first < 0; k++)
        if (memcmp(&a[k], &b[k], sizeof(double)) != 0) first = k;
    TU_CHECK(first < 0, "%s: not bitwise equal, first at %lld: %.17g vs %.17g", what,
             (long long)first, first >= 0 ? a[first] : 0.0, first >= 0 ? b[first] : 0.0);
}

/* Compares all maps of every parent; fc1 (MLP hidden) and, if stream_tolerant, the
 * stream maps with the Sinkhorn tolerance, the others bitwise. */
static void compare_maps(const char *name, fuse_maps **a, fuse_maps **b, int fc1_tolerant,
                         int stream_tolerant, int qkv_tolerant)
{
    const int64_t dd = (int64_t)cfg.d * cfg.d, ff = (int64_t)cfg.mlp * cfg.mlp;
    char what[160];
    for (int p = 1; p < N_PARENTS; p++) {
        const fuse_maps *x = a[p], *y = b[p];
        snprintf(what, sizeof what, "%s: parent %d stream0", name, p);
        if (x->stream0 || y->stream0)
            compare_plans(what, x->stream0, y->stream0, dd, stream_tolerant);
        for (int l = 0; l < cfg.layers; l++) {
            snprintf(what, sizeof what, "%s: parent %d layer %d Q/K", name, p, l);
            compare_plans(what, x->qk[l], y->qk[l], dd, qkv_tolerant);
            snprintf(what, sizeof what, "%s: parent %d layer %d V", name, p, l);
            compare_plans(what, x->v[l], y->v[l], dd, qkv_tolerant);
            snprintf(what, sizeof what, "%s: parent %d layer %d MLP hidden", name, p, l);
            compare_plans(what, x->fc1[l], y->fc1[l], ff, fc1_tolerant);
            snprintf(what, sizeof what, "%s: parent %d layer %d stream after MLP", name, p, l);
            if (x->stream2[l] || y->stream2[l])
                compare_plans(what, x->stream2[l], y->stream2[l], dd, stream_tolerant);
        }
    }
}

static fuse_options weight_options(void)
{
    fuse_options opt = fuse_options_default();
    opt.cost = FUSE_COST_WEIGHT;
    opt.residual = FUSE_RESIDUAL_MEAN;
    opt.solver = opt.solver_attn = opt.solver_mlp = opt.solver_stream = FUSE_SOLVER_SINKHORN;
    opt.ot_dist_threshold = 16 * 16;
    opt.ot_group_ranks = 2;
    return opt;
}

/* Weight-based units (one per non-anchor parent, each with 16 x 16 Sinkhorn problems)
 * on groups of 2 ranks, against 1 rank. */
static void test_weight_groups(const fuse_view *views, int rank, int size)
{
    fuse_options opt = weight_options();
    fuse_stats *stats[N_PARENTS] = {0};
    fuse_maps **world = maps_create(), **self = NULL;
    fuse_group_report report;
    memset(&report, 0xff, sizeof report);
    tf_status st =
        fuse_solve_units_report(MPI_COMM_WORLD, views, N_PARENTS, 0, stats, &opt, world, &report);
    TU_CHECK(st == TF_OK, "weight units on groups: failed: %s", tf_error_get());

    /* The report, and what every group solved. */
    const int groups = size / 2, want_group = rank < 2 * groups ? rank / 2 : -1;
    TU_CHECK(report.group_ranks == 2 && report.groups == groups && report.my_group == want_group,
             "rank %d: report says groups of %d, %d groups, my group %d; expected 2, %d, %d", rank,
             report.group_ranks, report.groups, report.my_group, groups, want_group);
    TU_CHECK(report.large_units == N_PARENTS - 1, "%d large units, expected %d", report.large_units,
             N_PARENTS - 1);
    int solved[8] = {0};
    int mine = rank % 2 == 0 && want_group >= 0 ? report.group_units : 0;
    int *all = rank == 0 ? calloc((size_t)size, sizeof(int)) : NULL;
    MPI_Gather(&mine, 1, MPI_INT, all, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        int total = 0;
        for (int r = 0; r < size; r += 2)
            if (r / 2 < groups && r / 2 < 8) solved[r / 2] = all[r];
        for (int k = 0; k < groups; k++) {
            total += solved[k];
            TU_CHECK(solved[k] == (N_PARENTS - 1) / groups,
                     "group %d solved %d units, expected %d (equal estimates, split evenly)", k,
                     solved[k], (N_PARENTS - 1) / groups);
        }
        TU_CHECK(total == N_PARENTS - 1,
                 "groups solved %d units in total, expected %d: each "
                 "large unit must be solved by exactly one group",
                 total, N_PARENTS - 1);
        printf("weight units: %d groups of 2 ranks solved %d, %d units\n", groups, solved[0],
               groups > 1 ? solved[1] : 0);
    }
    free(all);
    if (rank == 2 * groups)
        TU_CHECK(report.group_units == 0, "rank %d is in no group but solved %d units", rank,
                 report.group_units);

    /* Plans against 1 rank (no groups, ot_sinkhorn_solve): every plan within tolerance. */
    if (rank == 0 && st == TF_OK) {
        fuse_options one = opt;
        one.ot_dist_threshold = 0;
        self = maps_create();
        st = fuse_solve_units(MPI_COMM_SELF, views, N_PARENTS, 0, stats, &one, self);
        TU_CHECK(st == TF_OK, "weight units on 1 rank: failed: %s", tf_error_get());
        if (st == TF_OK) compare_maps("weight units", world, self, 1, 1, 1);
        printf("weight units: largest difference from 1-rank plans %.3g\n", largest_plan_diff);
        largest_plan_diff = 0.0;
    }
    maps_free(world);
    maps_free(self);
}

/* A unit that fails on rank 1 only (no ViT view of the parents there): rank 1 returns
 * before the group's first distributed solve, which rank 0 has entered. */
static void test_failure_on_one_rank(const fuse_view *views, int rank)
{
    fuse_view broken[N_PARENTS];
    memcpy(broken, views, sizeof broken);
    if (rank == 1)
        for (int p = 1; p < N_PARENTS; p++) broken[p].vit = NULL;
    fuse_options opt = weight_options();
    fuse_stats *stats[N_PARENTS] = {0};
    fuse_maps **maps = maps_create();
    tf_status st = fuse_solve_units(MPI_COMM_WORLD, broken, N_PARENTS, 0, stats, &opt, maps);
    const char *msg = tf_error_get();
    TU_CHECK(st == TF_ERR_ARG, "rank %d: failure on rank 1 returned status %d, expected %d", rank,
             (int)st, (int)TF_ERR_ARG);
    TU_CHECK(strstr(msg, "implemented for ViT models only") != NULL,
             "rank %d: message lacks rank 1's error: %s", rank, msg);
    TU_CHECK(strstr(msg, "rank 1:") != NULL, "rank %d: message does not name rank 1: %s", rank,
             msg);
    maps_free(maps);

    /* The same options work afterwards: nothing is left behind from the failure. */
    maps = maps_create();
    st = fuse_solve_units(MPI_COMM_WORLD, views, N_PARENTS, 0, stats, &opt, maps);
    TU_CHECK(st == TF_OK, "rank %d: run after the failure failed: %s", rank, tf_error_get());
    maps_free(maps);

    /* A negative group size is rejected on every rank before any collective. */
    opt.ot_group_ranks = -2;
    maps = maps_create();
    st = fuse_solve_units(MPI_COMM_WORLD, views, N_PARENTS, 0, stats, &opt, maps);
    TU_CHECK(st == TF_ERR_ARG && strstr(tf_error_get(), "ot_group_ranks = -2") != NULL,
             "ot_group_ranks -2: status %d, message: %s", (int)st, tf_error_get());
    maps_free(maps);
}

/* ---- Activation-based fusion ----------------------------------------------------------- */

/* Fuses with opt on comm; returns the maps and the fused model (weights 1 / N_PARENTS). */
static fuse_maps **fuse_on(MPI_Comm comm, vit_model **parents, const float *images,
                           const fuse_options *opt, vit_model **fused_out)
{
    fuse_maps **maps = NULL;
    tf_status st = fuse_compute_maps(comm, parents, N_PARENTS, 0, images, N_IMAGES, opt, &maps);
    if (st != TF_OK) TF_DIE("fuse_compute_maps: %s", tf_error_get());
    vit_model *aligned[N_PARENTS] = {0}, *fused = NULL;
    double weights[N_PARENTS];
    for (int p = 0; p < N_PARENTS; p++) {
        weights[p] = 1.0 / N_PARENTS;
        if (vit_model_create(&cfg, &aligned[p]) != TF_OK) TF_DIE("vit_model_create failed");
        if (p == 0)
            vit_model_copy(aligned[p], parents[p]);
        else if (fuse_align_parent(parents[p], maps[p], aligned[p]) != TF_OK)
            TF_DIE("fuse_align_parent: %s", tf_error_get());
    }
    if (vit_model_create(&cfg, &fused) != TF_OK) TF_DIE("vit_model_create failed");
    if (fuse_average(aligned, weights, N_PARENTS, fused) != TF_OK)
        TF_DIE("fuse_average: %s", tf_error_get());
    for (int p = 0; p < N_PARENTS; p++) vit_model_free(&aligned[p]);
    *fused_out = fused;
    return maps;
}

/* Exact Q/K and V maps, 16 x 16 Sinkhorn stream maps (below the threshold) and 32 x 32
 * Sinkhorn MLP maps (at the threshold), so the layer units go to groups of 2 and the
 * stream units to single ranks. */
static void test_activation_groups(vit_model **parents, const float *images, int rank)
{
    fuse_options opt = fuse_options_default();
    opt.solver_attn = FUSE_SOLVER_EXACT;
    opt.solver_mlp = opt.solver_stream = FUSE_SOLVER_SINKHORN;
    opt.ot_dist_threshold = 32 * 32;
    opt.ot_group_ranks = 2;
    vit_model *world_model = NULL, *pair_model = NULL, *self_model = NULL;
    fuse_maps **world = fuse_on(MPI_COMM_WORLD, parents, images, &opt, &world_model);

    /* The first two ranks alone: one group of 2, the same grid as every group above. */
    MPI_Comm pair = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : MPI_UNDEFINED, rank, &pair);
    fuse_maps **two = NULL;
    if (pair != MPI_COMM_NULL) two = fuse_on(pair, parents, images, &opt, &pair_model);

    if (rank == 0) {
        compare_maps("N ranks against 2 ranks", world, two, 0, 0, 0);
        int64_t bad = 0, first = -1;
        for (int64_t k = 0; k < world_model->num_params; k++)
            if (memcmp(&world_model->params[k], &pair_model->params[k], sizeof(float)) != 0 &&
                bad++ == 0)
                first = k;
        TU_CHECK(bad == 0,
                 "fused parameters at N ranks and at 2 ranks: %lld of %lld differ, first at "
                 "%lld",
                 (long long)bad, (long long)world_model->num_params, (long long)first);

        /* 1 rank without groups: exact and small Sinkhorn plans bitwise, MLP within tolerance. */
        fuse_options one = opt;
        one.ot_dist_threshold = 0;
        fuse_maps **self = fuse_on(MPI_COMM_SELF, parents, images, &one, &self_model);
        compare_maps("groups of 2 against 1 rank", world, self, 1, 0, 0);
        printf("activation units: largest difference of MLP plans from 1 rank %.3g\n",
               largest_plan_diff);
        maps_free(self);
        vit_model_free(&self_model);
    }
    if (pair != MPI_COMM_NULL) MPI_Comm_free(&pair);
    maps_free(world);
    maps_free(two);
    vit_model_free(&world_model);
    vit_model_free(&pair_model);
}

/* ---- Job field ------------------------------------------------------------------------- */

static tf_status parse_method(const char *extra, job_file **job)
{
    char text[1024];
    snprintf(text, sizeof text,
             "{\"tasks\": [{\"task\": \"fuse\", \"parents\": [\"a.h5\", \"b.h5\"],"
             " \"methods\": [{\"name\": \"ot\", \"solver\": \"sinkhorn\","
             " \"ot_distributed_threshold\": 100000%s}]}]}",
             extra);
    return job_file_parse(text, "groups.json", job);
}

static void test_job_field(void)
{
    job_file *job = NULL;
    tf_status st = parse_method(", \"ot_group_ranks\": 16", &job);
    TU_CHECK(st == TF_OK, "ot_group_ranks 16 rejected: %s", tf_error_get());
    if (st == TF_OK)
        TU_CHECK(job->tasks[0].fuse.methods[0].ot.ot_group_ranks == 16,
                 "ot_group_ranks parsed as %d, expected 16",
                 job->tasks[0].fuse.methods[0].ot.ot_group_ranks);
    job_file_free(&job);

    st = parse_method("", &job);
    TU_CHECK(st == TF_OK && job->tasks[0].fuse.methods[0].ot.ot_group_ranks == 0,
             "default ot_group_ranks is not 0 (all ranks)");
    job_file_free(&job);

    const char *bad[] = {", \"ot_group_ranks\": -1", ", \"ot_group_ranks\": 2.5",
                         ", \"ot_group_ranks\": \"4\""};
    for (int k = 0; k < 3; k++) {
        st = parse_method(bad[k], &job);
        TU_CHECK(st == TF_ERR_ARG && job == NULL, "accepted%s", bad[k]);
        TU_CHECK(strstr(tf_error_get(), "ot_group_ranks") != NULL,
                 "message for%s lacks the key: %s", bad[k], tf_error_get());
        job_file_free(&job);
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        if (rank == 0) fprintf(stderr, "test_fuse_groups needs at least 2 ranks\n");
        MPI_Finalize();
        return 1;
    }

    vit_model *parents[N_PARENTS];
    fuse_view views[N_PARENTS];
    for (int p = 0; p < N_PARENTS; p++) {
        parents[p] = random_model(301 + (uint64_t)p);
        fuse_view_vit(parents[p], &views[p]);
    }
    const int64_t image_len = (int64_t)cfg.channels * cfg.image_size * cfg.image_size;
    float *images = malloc((size_t)N_IMAGES * image_len * sizeof(float));
    tf_rng rng;
    tf_rng_seed(&rng, 11);
    for (int64_t k = 0; k < N_IMAGES * image_len; k++) images[k] = (float)tf_rng_normal(&rng);

    if (rank == 0) {
        test_schedule();
        test_job_field();
    }
    test_weight_groups(views, rank, size);
    test_failure_on_one_rank(views, rank);
    test_activation_groups(parents, images, rank);

    for (int p = 0; p < N_PARENTS; p++) vit_model_free(&parents[p]);
    free(images);
    int rc = tu_finish("fuse_groups");
    MPI_Finalize();
    return rc;
}
