/* Rank-count independence of fusion: every variant below is fused twice, on MPI_COMM_WORLD
 * and, on rank 0, on MPI_COMM_SELF (the 1-rank computation), and the fused parameters and
 * every transport plan must be bitwise equal. Run under CTest at 1, 2, 4 and 8 ranks, so
 * each run compares N ranks against 1. The calibration set (200 images, 7 chunks of 32)
 * is not a multiple of the chunk size nor of the rank count. Variants: exact OT with the
 * joint stream map, Sinkhorn with per-join maps and head-aware attention, exact OT with
 * "stream" repair, Sinkhorn with "all" repair, and weight-based exact OT. With
 * ot_dist_threshold set, Sinkhorn problems are solved by all ranks together and the plans
 * must match the 1-rank ones up to the solver's tolerance instead. Statistics computed one
 * parent at a time (per_parent_stats) must give bitwise the same plans as one pass. */
#include "testutil.h"
#include "tfuse/fuse.h"
#include "tfuse/vit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N_PARENTS = 3, N_IMAGES = 200 };

static const vit_config cfg = {.image_size = 8,
                               .channels = 1,
                               .patch = 4,
                               .d = 16,
                               .layers = 2,
                               .heads = 2,
                               .mlp = 32,
                               .classes = 3,
                               .ln_eps = 1e-6};

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

/* FNV-1a over bytes, chained through h. */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t bytes)
{
    const unsigned char *b = data;
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

static uint64_t hash_plan(uint64_t h, const double *plan, int64_t count)
{
    return plan ? hash_bytes(h, plan, (size_t)count * sizeof(double)) : hash_bytes(h, "-", 1);
}

/* Hash of every plan of every parent, in a fixed order. */
static uint64_t hash_maps(fuse_maps **maps)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    const int64_t dd = (int64_t)cfg.d * cfg.d, ff = (int64_t)cfg.mlp * cfg.mlp;
    for (int p = 0; p < N_PARENTS; p++) {
        const fuse_maps *m = maps[p];
        if (!m) continue;
        h = hash_plan(hash_plan(hash_plan(h, m->stream0, dd), m->patch, dd), m->pos, dd);
        for (int l = 0; l < m->layers; l++) {
            h = hash_plan(hash_plan(hash_plan(h, m->qk[l], dd), m->v[l], dd), m->fc1[l], ff);
            h = hash_plan(hash_plan(h, m->attn_out[l], dd), m->stream1[l], dd);
            h = hash_plan(hash_plan(h, m->mlp_out[l], dd), m->stream2[l], dd);
        }
    }
    return h;
}

/* Fuses the parents with opt on comm; returns the fused model and the hash of its maps. */
static vit_model *fuse_on(MPI_Comm comm, vit_model **parents, const float *images,
                          const fuse_options *opt, uint64_t *maps_hash)
{
    const double weights[N_PARENTS] = {0.5, 0.3, 0.2};
    fuse_maps **maps = NULL;
    vit_model *aligned[N_PARENTS] = {0}, *fused = NULL;
    tf_status st = fuse_compute_maps(comm, parents, N_PARENTS, 0, images, N_IMAGES, opt, &maps);
    if (st != TF_OK) TF_DIE("fuse_compute_maps: %s", tf_error_get());
    *maps_hash = hash_maps(maps);
    for (int p = 0; p < N_PARENTS; p++) {
        vit_model_create(&cfg, &aligned[p]);
        if (p == 0)
            vit_model_copy(aligned[p], parents[p]);
        else if (fuse_align_parent(parents[p], maps[p], aligned[p]) != TF_OK)
            TF_DIE("fuse_align_parent: %s", tf_error_get());
    }
    vit_model_create(&cfg, &fused);
    if (fuse_average(aligned, weights, N_PARENTS, fused) != TF_OK)
        TF_DIE("fuse_average: %s", tf_error_get());
    st = fuse_repair(comm, fused, aligned, weights, N_PARENTS, images, N_IMAGES, opt->repair);
    if (st != TF_OK) TF_DIE("fuse_repair: %s", tf_error_get());
    for (int p = 0; p < N_PARENTS; p++) {
        vit_model_free(&aligned[p]);
        fuse_maps_free(&maps[p]);
    }
    free(maps);
    return fused;
}

static void check_variant(const char *name, const fuse_options *opt, vit_model **parents,
                          const float *images, int rank, int size)
{
    uint64_t world_maps = 0, self_maps = 0;
    vit_model *world = fuse_on(MPI_COMM_WORLD, parents, images, opt, &world_maps);
    if (rank == 0) {
        vit_model *self = fuse_on(MPI_COMM_SELF, parents, images, opt, &self_maps);
        int64_t bad = 0, first_bad = -1;
        for (int64_t k = 0; k < world->num_params; k++)
            if (memcmp(&world->params[k], &self->params[k], sizeof(float)) != 0 && bad++ == 0)
                first_bad = k;
        TU_CHECK(bad == 0,
                 "%s: %lld of %lld fused parameters at %d ranks differ from 1 rank, "
                 "first at %lld: %.9g vs %.9g",
                 name, (long long)bad, (long long)world->num_params, size, (long long)first_bad,
                 first_bad >= 0 ? world->params[first_bad] : 0.0f,
                 first_bad >= 0 ? self->params[first_bad] : 0.0f);
        TU_CHECK(world_maps == self_maps,
                 "%s: plans at %d ranks (hash %016llx) differ from 1 "
                 "rank (hash %016llx)",
                 name, size, (unsigned long long)world_maps, (unsigned long long)self_maps);
        uint64_t h = hash_bytes(0xcbf29ce484222325ULL, world->params,
                                (size_t)world->num_params * sizeof(float));
        printf("%-24s fused parameters %016llx, plans %016llx\n", name, (unsigned long long)h,
               (unsigned long long)world_maps);
        vit_model_free(&self);
    }
    /* Every rank ends with the same fused model. */
    uint64_t h =
        hash_bytes(0xcbf29ce484222325ULL, world->params, (size_t)world->num_params * sizeof(float));
    uint64_t h0 = h;
    MPI_Bcast(&h0, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    TU_CHECK(h == h0, "%s: rank %d's fused model differs from rank 0's", name, rank);
    vit_model_free(&world);
}

/* Statistics of one parent at a time must give the same plans, bitwise, as one pass. */
static void check_per_parent(const char *name, const fuse_options *opt, vit_model **parents,
                             const float *images)
{
    uint64_t hash[2] = {0, 0};
    for (int mode = 0; mode < 2; mode++) {
        fuse_options o = *opt;
        o.per_parent_stats = mode;
        fuse_maps **maps = NULL;
        tf_status st =
            fuse_compute_maps(MPI_COMM_WORLD, parents, N_PARENTS, 0, images, N_IMAGES, &o, &maps);
        TU_CHECK(st == TF_OK, "%s, per_parent_stats %d: %s", name, mode, tf_error_get());
        if (st != TF_OK) return;
        hash[mode] = hash_maps(maps);
        for (int p = 0; p < N_PARENTS; p++) fuse_maps_free(&maps[p]);
        free(maps);
    }
    TU_CHECK(hash[0] == hash[1],
             "%s: plans with per-parent statistics (hash %016llx) differ from "
             "one pass (hash %016llx)",
             name, (unsigned long long)hash[1], (unsigned long long)hash[0]);
}

/* Every plan of maps a and b, compared with tolerance. */
static void compare_maps(const char *name, fuse_maps **a, fuse_maps **b)
{
    const int64_t dd = (int64_t)cfg.d * cfg.d, ff = (int64_t)cfg.mlp * cfg.mlp;
    char what[128];
    for (int p = 1; p < N_PARENTS; p++) {
        snprintf(what, sizeof what, "%s: parent %d stream0", name, p);
        tu_close_f64(what, a[p]->stream0, b[p]->stream0, dd, 1e-6, 1e-9);
        for (int l = 0; l < cfg.layers; l++) {
            snprintf(what, sizeof what, "%s: parent %d layer %d Q/K", name, p, l);
            tu_close_f64(what, a[p]->qk[l], b[p]->qk[l], dd, 1e-6, 1e-9);
            snprintf(what, sizeof what, "%s: parent %d layer %d V", name, p, l);
            tu_close_f64(what, a[p]->v[l], b[p]->v[l], dd, 1e-6, 1e-9);
            snprintf(what, sizeof what, "%s: parent %d layer %d MLP hidden", name, p, l);
            tu_close_f64(what, a[p]->fc1[l], b[p]->fc1[l], ff, 1e-6, 1e-9);
        }
    }
}

/* Sinkhorn problems of at least 16 x 16 solved on a grid of all ranks, against 1 rank. */
static void check_distributed(vit_model **parents, const float *images, int rank)
{
    fuse_options opt = fuse_options_default();
    opt.solver = opt.solver_attn = opt.solver_mlp = opt.solver_stream = FUSE_SOLVER_SINKHORN;
    opt.ot_dist_threshold = 16 * 16;
    fuse_maps **world = NULL, **self = NULL;
    tf_status st =
        fuse_compute_maps(MPI_COMM_WORLD, parents, N_PARENTS, 0, images, N_IMAGES, &opt, &world);
    TU_CHECK(st == TF_OK, "distributed Sinkhorn: fuse_compute_maps failed: %s", tf_error_get());
    if (rank == 0 && st == TF_OK) {
        st = fuse_compute_maps(MPI_COMM_SELF, parents, N_PARENTS, 0, images, N_IMAGES, &opt, &self);
        TU_CHECK(st == TF_OK, "1-rank Sinkhorn: fuse_compute_maps failed: %s", tf_error_get());
        if (st == TF_OK) compare_maps("distributed Sinkhorn", world, self);
    }
    for (int p = 0; p < N_PARENTS; p++) {
        if (world) fuse_maps_free(&world[p]);
        if (self) fuse_maps_free(&self[p]);
    }
    free(world);
    free(self);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    vit_model *parents[N_PARENTS];
    for (int p = 0; p < N_PARENTS; p++) parents[p] = random_model(101 + (uint64_t)p);
    const int64_t image_len = (int64_t)cfg.channels * cfg.image_size * cfg.image_size;
    float *images = malloc((size_t)N_IMAGES * image_len * sizeof(float));
    tf_rng rng;
    tf_rng_seed(&rng, 7);
    for (int64_t k = 0; k < N_IMAGES * image_len; k++) images[k] = (float)tf_rng_normal(&rng);

    fuse_options exact = fuse_options_default();
    check_variant("exact, joint", &exact, parents, images, rank, size);

    fuse_options sinkhorn = fuse_options_default();
    sinkhorn.solver = sinkhorn.solver_attn = sinkhorn.solver_mlp = sinkhorn.solver_stream =
        FUSE_SOLVER_SINKHORN;
    sinkhorn.residual = FUSE_RESIDUAL_WEIGHTED;
    sinkhorn.attention = FUSE_ATTN_HEAD_AWARE;
    check_variant("sinkhorn, head-aware", &sinkhorn, parents, images, rank, size);

    fuse_options repair = exact;
    repair.repair = FUSE_REPAIR_STREAM;
    check_variant("exact, repair stream", &repair, parents, images, rank, size);

    fuse_options sinkhorn_repair = sinkhorn;
    sinkhorn_repair.attention = FUSE_ATTN_SHARED_QK;
    sinkhorn_repair.residual = FUSE_RESIDUAL_JOINT;
    sinkhorn_repair.repair = FUSE_REPAIR_ALL;
    check_variant("sinkhorn, repair all", &sinkhorn_repair, parents, images, rank, size);

    check_per_parent("per-parent statistics, exact", &exact, parents, images);
    check_per_parent("per-parent statistics, sinkhorn", &sinkhorn, parents, images);

    fuse_options weight = exact;
    weight.cost = FUSE_COST_WEIGHT;
    weight.residual = FUSE_RESIDUAL_MEAN;
    check_variant("weight cost, exact", &weight, parents, images, rank, size);

    check_distributed(parents, images, rank);

    for (int p = 0; p < N_PARENTS; p++) vit_model_free(&parents[p]);
    free(images);
    int rc = tu_finish("fuse_determinism");
    MPI_Finalize();
    return rc;
}
