/* Training checkpoints and resume. The reference for every comparison is the same training
 * run without interruption, so equality is exact (bitwise):
 *   - ViT train_run stops after 6 of 12 steps with checkpoints every 4 steps. Resumed
 *     from a model with other initial values, it ends with the uninterrupted run's
 *     parameters. The resume starts mid-epoch, in an earlier epoch than the stop;
 *   - checkpoints of another seed, batch, model width or architecture, a file that is
 *     not a checkpoint and a truncated one are rejected, naming the file (and the
 *     setting);
 *   - at 2 ranks, a checkpoint continued by one rank ends within rounding of the
 *     uninterrupted run;
 *   - the job fields are read and checked;
 *   - a ViT train job and a ViT finetune, each stopped and resumed, write the models of
 *     the uninterrupted jobs and delete their checkpoints;
 *   - a BERT train job stopped and resumed writes the uninterrupted job's model and
 *     deletes its checkpoint; a resume with another seed or width is rejected;
 *   - a BERT fuse job stopped during a finetune and resumed writes the uninterrupted job's
 *     finetuned models; run again with resume, it loads every method's files instead of
 *     recomputing them (their modification times stay) and its report lists all methods.
 * Run at 1 and 2 ranks; each rank count works in its own directory. */
#include "tfuse/bert.h"
#include "tfuse/checkpoint.h"
#include "tfuse/job.h"
#include "tfuse/runner.h"
#include "tfuse/train.h"
#include "tfuse/vit.h"
#include "tfuse/vit_io.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

/* ---- ViT, library level -------------------------------------------------------------- */

static const vit_config vit_tiny = {.image_size = 8,
                                    .channels = 1,
                                    .patch = 4,
                                    .d = 8,
                                    .layers = 1,
                                    .heads = 2,
                                    .mlp = 16,
                                    .classes = 3,
                                    .ln_eps = 1e-5};

/* `count` random 8 x 8 images, labeled with the brightest of their first three 16-pixel
 * bands. */
static tf_image_set *synthetic_images(int count, uint64_t seed)
{
    tf_image_set *set = calloc(1, sizeof *set);
    set->count = count;
    set->rows = set->cols = 8;
    set->pixels = malloc((size_t)count * 64);
    set->labels = malloc((size_t)count);
    tf_rng rng;
    tf_rng_seed(&rng, seed);
    for (int i = 0; i < count; i++) {
        int sums[3] = {0, 0, 0};
        for (int k = 0; k < 64; k++) {
            set->pixels[i * 64 + k] = (uint8_t)tf_rng_below(&rng, 256);
            if (k < 48) sums[k / 16] += set->pixels[i * 64 + k];
        }
        set->labels[i] = (uint8_t)(sums[0] > sums[1] ? (sums[0] > sums[2] ? 0 : 2)
                                                     : (sums[1] > sums[2] ? 1 : 2));
    }
    return set;
}

static train_options vit_options(const char *checkpoint)
{
    return (train_options){.s = {.steps = 12,
                                 .batch_size = 8,
                                 .lr = 1e-2,
                                 .min_lr = 1e-4,
                                 .weight_decay = 0.05,
                                 .beta1 = 0.9,
                                 .beta2 = 0.999,
                                 .eps = 1e-8,
                                 .warmup_steps = 2,
                                 .seed = 5,
                                 .log_every = 4,
                                 .label = "vit",
                                 .checkpoint_path = checkpoint,
                                 .checkpoint_every = 4}};
}

/* Trains a fresh model (initialized with init_seed) with opt; returns it, or NULL when
 * training failed (status in *st). */
static vit_model *vit_train(const vit_config *cfg, uint64_t init_seed, const tf_image_set *set,
                            const train_options *opt, tf_status *st, train_result *result)
{
    vit_model *m = NULL;
    if (vit_model_create(cfg, &m) != TF_OK) TF_DIE("%s", tf_error_get());
    vit_model_init(m, init_seed);
    *st = train_run(MPI_COMM_WORLD, m, set, opt, result);
    if (*st != TF_OK) vit_model_free(&m);
    return m;
}

static void check_bitwise(const float *got, const float *want, int64_t n, const char *label)
{
    int64_t first = -1;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double diff = got[i] > want[i] ? got[i] - want[i] : want[i] - got[i];
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && first < 0) first = i;
        if (diff > worst) worst = diff;
    }
    TU_CHECK(first < 0,
             "%s: parameters differ from the uninterrupted run, first at index %lld, "
             "largest difference %.3g",
             label, (long long)first, worst);
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Expects status `want` and every word in the last error message. */
static void expect_error(tf_status got, tf_status want, const char *label, const char *word1,
                         const char *word2)
{
    TU_CHECK(got == want, "%s: status %s, expected %s (%s)", label, tf_status_str(got),
             tf_status_str(want), tf_error_get());
    TU_CHECK(!word1 || strstr(tf_error_get(), word1), "%s: message names \"%s\": %s", label, word1,
             tf_error_get());
    TU_CHECK(!word2 || strstr(tf_error_get(), word2), "%s: message names \"%s\": %s", label, word2,
             tf_error_get());
}

static void test_vit(void)
{
    char ckpt[128], model_path[128];
    snprintf(ckpt, sizeof ckpt, "%s/vit.ckpt.h5", dir);
    snprintf(model_path, sizeof model_path, "%s/vit_model.h5", dir);
    tf_image_set *set = synthetic_images(40, 11);
    tf_status st;
    train_result result = {0};

    /* The uninterrupted run, without checkpoints. */
    train_options opt = vit_options(NULL);
    vit_model *straight = vit_train(&vit_tiny, 3, set, &opt, &st, NULL);
    TU_CHECK(st == TF_OK, "uninterrupted ViT run: %s", tf_error_get());

    /* Stopped after step 6; the last checkpoint contains step 4, which is mid-epoch (5 steps
     * per epoch). */
    opt = vit_options(ckpt);
    opt.s.stop_after = 6;
    vit_model *m = vit_train(&vit_tiny, 3, set, &opt, &st, NULL);
    expect_error(st, TF_ERR_ARG, "stopped ViT run", "stopped after step 6", NULL);
    TU_CHECK(file_exists(ckpt), "checkpoint %s written", ckpt);

    /* Resumed from a model with other initial values: the checkpoint replaces them. */
    opt = vit_options(ckpt);
    opt.s.resume = 1;
    m = vit_train(&vit_tiny, 77, set, &opt, &st, &result);
    TU_CHECK(st == TF_OK, "resumed ViT run: %s", tf_error_get());
    TU_CHECK(result.first_step == 4, "resumed after step %lld, expected 4",
             (long long)result.first_step);
    if (m && straight) check_bitwise(m->params, straight->params, m->num_params, "ViT resume");
    vit_model_free(&m);

    /* The checkpoint after the last step, as a job that died while saving leaves it: the
     * resumed run takes no step. */
    m = vit_train(&vit_tiny, 77, set, &opt, &st, &result);
    TU_CHECK(st == TF_OK, "resume from the last step: %s", tf_error_get());
    TU_CHECK(result.first_step == 12, "resumed after step %lld, expected 12",
             (long long)result.first_step);
    if (m && straight) check_bitwise(m->params, straight->params, m->num_params, "last step");
    vit_model_free(&m);

    /* Without resume the checkpoint is ignored, and training starts from step 0. */
    opt.s.resume = 0;
    m = vit_train(&vit_tiny, 3, set, &opt, &st, &result);
    TU_CHECK(st == TF_OK && result.first_step == 0, "run without resume starts at step %lld",
             (long long)result.first_step);
    vit_model_free(&m);

    /* Checkpoints of other settings. */
    opt = vit_options(ckpt);
    opt.s.resume = 1;
    opt.s.seed = 6;
    m = vit_train(&vit_tiny, 3, set, &opt, &st, NULL);
    expect_error(st, TF_ERR_ARG, "other seed", ckpt, "seed = 5");
    opt.s.seed = 5;
    opt.s.batch_size = 4;
    m = vit_train(&vit_tiny, 3, set, &opt, &st, NULL);
    expect_error(st, TF_ERR_ARG, "other batch", ckpt, "batch_size = 8");
    opt.s.batch_size = 8;
    vit_config wider = vit_tiny;
    wider.d = 12;
    m = vit_train(&wider, 3, set, &opt, &st, NULL);
    expect_error(st, TF_ERR_ARG, "other width", ckpt, "d = 8");

    /* Another architecture, and a model file in place of a checkpoint. */
    float buffer[4];
    ckpt_state state = {.num_params = 1, .params = buffer, .adam_m = buffer, .adam_v = buffer};
    int found = 1;
    st = ckpt_load(MPI_COMM_WORLD, ckpt, "bert", NULL, 0, &state, &found);
    expect_error(st, TF_ERR_ARG, "BERT reading a ViT checkpoint", ckpt, "vit training");
    TU_CHECK(found == 0, "rejected checkpoint is not reported as found");
    if (straight) vit_model_save(straight, MPI_COMM_WORLD, model_path, 1);
    st = ckpt_load(MPI_COMM_WORLD, model_path, "vit", NULL, 0, &state, &found);
    expect_error(st, TF_ERR_FORMAT, "model file as checkpoint", model_path,
                 "not a tfuse checkpoint");
    st = ckpt_load(MPI_COMM_WORLD, "no_such_checkpoint.h5", "vit", NULL, 0, &state, &found);
    TU_CHECK(st == TF_OK && found == 0, "a missing checkpoint is not an error");

    /* A checkpoint cut short, as a disk running full would leave it. */
    if (tf_world_rank() == 0) {
        FILE *f = fopen(ckpt, "r+b");
        if (!f || ftruncate(fileno(f), 1000) != 0) TF_DIE("cannot truncate %s", ckpt);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    opt = vit_options(ckpt);
    opt.s.resume = 1;
    m = vit_train(&vit_tiny, 3, set, &opt, &st, NULL);
    TU_CHECK(st == TF_ERR_FORMAT || st == TF_ERR_IO, "truncated checkpoint: status %s (%s)",
             tf_status_str(st), tf_error_get());
    TU_CHECK(strstr(tf_error_get(), ckpt) != NULL, "message names %s: %s", ckpt, tf_error_get());

    TU_CHECK(ckpt_remove(MPI_COMM_WORLD, ckpt) == TF_OK, "remove: %s", tf_error_get());
    TU_CHECK(!file_exists(ckpt), "checkpoint removed");
    TU_CHECK(ckpt_remove(MPI_COMM_WORLD, ckpt) == TF_OK, "removing a missing checkpoint");
    vit_model_free(&straight);
    idx_image_set_free(&set);
}

/* A checkpoint written by all ranks of MPI_COMM_WORLD, continued by rank 0 alone. Only
 * the order of the gradient sums differs from the uninterrupted run, so the parameters
 * agree to rounding but not bitwise. */
static void test_vit_other_ranks(void)
{
    char ckpt[128];
    snprintf(ckpt, sizeof ckpt, "%s/vit_ranks.ckpt.h5", dir);
    tf_image_set *set = synthetic_images(40, 11);
    tf_status st;
    train_options opt = vit_options(NULL);
    vit_model *straight = vit_train(&vit_tiny, 3, set, &opt, &st, NULL);
    opt = vit_options(ckpt);
    opt.s.stop_after = 6;
    vit_model *m = vit_train(&vit_tiny, 3, set, &opt, &st, NULL);
    expect_error(st, TF_ERR_ARG, "stopped run before the rank change", "stopped", NULL);

    MPI_Comm alone;
    MPI_Comm_split(MPI_COMM_WORLD, tf_world_rank() == 0 ? 0 : MPI_UNDEFINED, 0, &alone);
    if (alone != MPI_COMM_NULL) {
        opt.s.stop_after = 0;
        opt.s.resume = 1;
        if (vit_model_create(&vit_tiny, &m) != TF_OK) TF_DIE("%s", tf_error_get());
        vit_model_init(m, 77);
        train_result result = {0};
        st = train_run(alone, m, set, &opt, &result);
        TU_CHECK(st == TF_OK, "resume at one rank: %s", tf_error_get());
        TU_CHECK(result.first_step == 4, "resumed after step %lld, expected 4",
                 (long long)result.first_step);
        if (straight)
            tu_close_f32("resume at one rank", m->params, straight->params, m->num_params, 1e-3,
                         1e-5);
        vit_model_free(&m);
        MPI_Comm_free(&alone);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    vit_model_free(&straight);
    idx_image_set_free(&set);
}

/* ---- Job fields ---------------------------------------------------------------------- */

static void expect_job_error(const char *text, const char *word1, const char *word2)
{
    job_file *job = NULL;
    tf_status st = job_file_parse(text, "bad.json", &job);
    expect_error(st, TF_ERR_ARG, text, word1, word2);
    TU_CHECK(job == NULL, "no job from invalid text");
    job_file_free(&job);
}

static void test_job_fields(void)
{
    const char *train = "{\"tasks\": [{\"task\": \"train\", \"model\": {}, "
                        "\"output\": \"x.h5\", ";
    const char *fuse = "{\"tasks\": [{\"task\": \"fuse\", \"parents\": [\"a\", \"b\"], "
                       "\"methods\": [{\"name\": \"v\"}], ";
    char text[512];
    job_file *job = NULL;
    snprintf(text, sizeof text, "%s\"checkpoint_every\": 50}]}", train);
    TU_CHECK(job_file_parse(text, "ok.json", &job) == TF_OK, "valid train: %s", tf_error_get());
    TU_CHECK(job && job->tasks[0].train.checkpoint_every == 50, "train checkpoint_every read");
    TU_CHECK(job && job->stop_after == 0, "stop_after is off in parsed jobs");
    job_file_free(&job);
    snprintf(text, sizeof text,
             "%s\"finetune\": {\"steps\": 9, \"checkpoint_every\": 3}, \"output_dir\": "
             "\"o\"}]}",
             fuse);
    TU_CHECK(job_file_parse(text, "ok.json", &job) == TF_OK, "valid fuse: %s", tf_error_get());
    TU_CHECK(job && job->tasks[0].fuse.finetune.checkpoint_every == 3,
             "finetune checkpoint_every read");
    job_file_free(&job);

    snprintf(text, sizeof text, "%s\"checkpoint_evry\": 50}]}", train);
    expect_job_error(text, "tasks[0].checkpoint_evry", "did you mean \"checkpoint_every\"");
    snprintf(text, sizeof text, "%s\"checkpoint_every\": -1}]}", train);
    expect_job_error(text, "tasks[0].checkpoint_every = -1", "out of range");
    snprintf(text, sizeof text, "%s\"checkpoint_every\": 2.5}]}", train);
    expect_job_error(text, "tasks[0].checkpoint_every", "integer");
    snprintf(text, sizeof text, "%s\"finetune\": {\"steps\": 9, \"checkpoint_every\": 3}}]}", fuse);
    expect_job_error(text, "tasks[0].finetune.checkpoint_every", "output_dir");
}

/* ---- ViT, job level ------------------------------------------------------------------ */

/* Writes set as plain idx files <stem>-images.idx and <stem>-labels.idx (rank 0). */
static void write_idx(const tf_image_set *set, const char *stem)
{
    char path[160];
    const uint32_t count = (uint32_t)set->count;
    const uint8_t image_header[16] = {0,
                                      0,
                                      8,
                                      3,
                                      (uint8_t)(count >> 24),
                                      (uint8_t)(count >> 16),
                                      (uint8_t)(count >> 8),
                                      (uint8_t)count,
                                      0,
                                      0,
                                      0,
                                      8,
                                      0,
                                      0,
                                      0,
                                      8};
    const uint8_t label_header[8] = {
        0, 0, 8, 1, image_header[4], image_header[5], image_header[6], image_header[7]};
    snprintf(path, sizeof path, "%s/%s-images.idx", dir, stem);
    FILE *f = fopen(path, "wb");
    if (!f) TF_DIE("cannot write %s", path);
    fwrite(image_header, 1, sizeof image_header, f);
    fwrite(set->pixels, 1, (size_t)set->count * 64, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/%s-labels.idx", dir, stem);
    if (!(f = fopen(path, "wb"))) TF_DIE("cannot write %s", path);
    fwrite(label_header, 1, sizeof label_header, f);
    fwrite(set->labels, 1, (size_t)set->count, f);
    fclose(f);
}

/* The model and data keys of the ViT jobs. */
static void vit_keys(char *out, size_t size)
{
    snprintf(out, size,
             "\"model\": {\"image_size\": 8, \"patch\": 4, \"d\": 8, \"layers\": 1, "
             "\"heads\": 2, \"mlp\": 16, \"classes\": 3}, "
             "\"data\": {\"train_images\": \"%s/train-images.idx\", "
             "\"train_labels\": \"%s/train-labels.idx\", "
             "\"test_images\": \"%s/test-images.idx\", "
             "\"test_labels\": \"%s/test-labels.idx\"}",
             dir, dir, dir, dir);
}

static void vit_train_job(char *text, size_t size, const char *name, int resume, int seed,
                          int64_t checkpoint_every)
{
    char keys[1024];
    vit_keys(keys, sizeof keys);
    snprintf(text, size,
             "{\"resume\": %s, \"tasks\": [{\"task\": \"train\", \"name\": \"%s\", %s, "
             "\"optimizer\": {\"lr\": 1e-2, \"warmup_steps\": 2}, \"steps\": 12, "
             "\"batch_size\": 8, \"seed\": %d, \"log_every\": 4, \"checkpoint_every\": %lld, "
             "\"output\": \"%s/%s.h5\"}]}",
             resume ? "true" : "false", name, keys, seed, (long long)checkpoint_every, dir, name);
}

static void vit_fuse_job(char *text, size_t size, const char *out, int resume,
                         int64_t checkpoint_every)
{
    char keys[1024];
    vit_keys(keys, sizeof keys);
    char *data = strstr(keys, "\"data\"");
    snprintf(text, size,
             "{\"resume\": %s, \"tasks\": [{\"task\": \"fuse\", \"name\": \"vf\", "
             "\"parents\": [\"%s/vstraight.h5\", \"%s/vother.h5\"], \"calibration_samples\": 8, "
             "%s, \"methods\": [{\"name\": \"vanilla\", \"method\": \"vanilla\"}], "
             "\"finetune\": {\"steps\": 6, \"batch_size\": 8, \"warmup_steps\": 1, "
             "\"distill\": 0.5, \"checkpoint_every\": %lld}, \"output_dir\": \"%s/%s\"}]}",
             resume ? "true" : "false", dir, dir, data, (long long)checkpoint_every, dir, out);
}

static vit_model *load_vit(const char *name)
{
    char path[160];
    vit_model *m = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    TU_CHECK(vit_model_load(MPI_COMM_WORLD, path, &m) == TF_OK, "load %s: %s", path,
             tf_error_get());
    return m;
}

static void compare_vit(const char *got_name, const char *want_name)
{
    vit_model *got = load_vit(got_name), *want = load_vit(want_name);
    if (got && want && got->num_params == want->num_params)
        check_bitwise(got->params, want->params, got->num_params, got_name);
    vit_model_free(&got);
    vit_model_free(&want);
}

static tf_status run_job(const char *text, int64_t stop_after);

static void test_vit_jobs(void)
{
    char text[4096], ckpt[128];
    snprintf(ckpt, sizeof ckpt, "%s/vresumed.h5.ckpt.h5", dir);

    /* Parents: uninterrupted, then stopped after step 6 and resumed from step 4. */
    vit_train_job(text, sizeof text, "vstraight", 0, 1, 0);
    TU_CHECK(run_job(text, 0) == TF_OK, "uninterrupted ViT job: %s", tf_error_get());
    vit_train_job(text, sizeof text, "vresumed", 0, 1, 4);
    expect_error(run_job(text, 6), TF_ERR_ARG, "stopped ViT job", "stopped after step 6", NULL);
    TU_CHECK(file_exists(ckpt), "ViT job checkpoint %s written", ckpt);
    vit_train_job(text, sizeof text, "vresumed", 1, 2, 4);
    expect_error(run_job(text, 0), TF_ERR_ARG, "ViT job resume with another seed", ckpt,
                 "seed = 1");
    vit_train_job(text, sizeof text, "vresumed", 1, 1, 4);
    TU_CHECK(run_job(text, 0) == TF_OK, "resumed ViT job: %s", tf_error_get());
    TU_CHECK(!file_exists(ckpt), "ViT job checkpoint deleted");
    compare_vit("vresumed.h5", "vstraight.h5");

    /* A finetune stopped after step 3 and resumed from its checkpoint at step 2. */
    vit_train_job(text, sizeof text, "vother", 0, 2, 0);
    TU_CHECK(run_job(text, 0) == TF_OK, "second ViT parent: %s", tf_error_get());
    vit_fuse_job(text, sizeof text, "va", 0, 0);
    TU_CHECK(run_job(text, 0) == TF_OK, "uninterrupted ViT fuse job: %s", tf_error_get());
    vit_fuse_job(text, sizeof text, "vb", 0, 2);
    expect_error(run_job(text, 3), TF_ERR_ARG, "stopped ViT finetune", "stopped after step 3",
                 NULL);
    snprintf(ckpt, sizeof ckpt, "%s/vb/vanilla-finetuned.h5.ckpt.h5", dir);
    TU_CHECK(file_exists(ckpt), "finetune checkpoint %s written", ckpt);
    vit_fuse_job(text, sizeof text, "vb", 1, 2);
    TU_CHECK(run_job(text, 0) == TF_OK, "resumed ViT fuse job: %s", tf_error_get());
    TU_CHECK(!file_exists(ckpt), "finetune checkpoint deleted");
    compare_vit("vb/vanilla-finetuned.h5", "va/vanilla-finetuned.h5");
}

/* ---- BERT, job level ----------------------------------------------------------------- */

/* Writes a corpus of three books of random verses; Gamma is held out. */
static void write_corpus(const char *path)
{
    static const char *const words[] = {"and",   "the",  "light", "was",  "good", "water",
                                        "earth", "made", "he",    "said", "let",  "there",
                                        "be",    "day",  "night", "first"};
    static const char *const books[] = {"Alpha", "Beta", "Gamma"};
    FILE *f = fopen(path, "w");
    if (!f) TF_DIE("cannot write %s", path);
    tf_rng rng;
    tf_rng_seed(&rng, 21);
    for (int b = 0; b < 3; b++)
        for (int v = 1; v <= 40; v++) {
            fprintf(f, "%s\t1:%d\t", books[b], v);
            int n = 6 + (int)tf_rng_below(&rng, 8);
            for (int w = 0; w < n; w++)
                fprintf(f, "%s%s", w ? " " : "", words[tf_rng_below(&rng, 16)]);
            fprintf(f, ".\n");
        }
    fclose(f);
}

/* Runs the job text with the stop hook; returns the status. */
static tf_status run_job(const char *text, int64_t stop_after)
{
    job_file *job = NULL;
    tf_status st = job_file_parse(text, "test job", &job);
    if (st != TF_OK) return st;
    job->stop_after = stop_after;
    st = runner_run_job(MPI_COMM_WORLD, job, 0);
    job_file_free(&job);
    return st;
}

/* A BERT train task writing dir/<name>.h5 (with its own vocabulary when vocab is NULL). */
static void bert_train_job(char *out, size_t size, const char *name, int resume, int seed, int d,
                           int64_t checkpoint_every, const char *vocab)
{
    char vocab_key[160] = "";
    if (vocab) snprintf(vocab_key, sizeof vocab_key, "\"vocab\": \"%s\", ", vocab);
    snprintf(out, size,
             "{\"resume\": %s, \"tasks\": [{\"task\": \"train\", \"name\": \"%s\", %s"
             "\"model\": {\"architecture\": \"bert\", %s\"seq_len\": 16, \"d\": %d, "
             "\"layers\": 1, \"heads\": 2, \"mlp\": 32}, "
             "\"data\": {\"corpus\": \"%s/corpus.tsv\", \"heldout\": [\"Gamma\"], "
             "\"train_limit\": 14}, "
             "\"optimizer\": {\"lr\": 3e-3, \"warmup_steps\": 2}, \"steps\": 10, "
             "\"batch_size\": 4, \"seed\": %d, \"log_every\": 5, \"checkpoint_every\": %lld, "
             "\"output\": \"%s/%s.h5\"}]}",
             resume ? "true" : "false", name, vocab_key, vocab ? "" : "\"vocab\": 40, ", d, dir,
             seed, (long long)checkpoint_every, dir, name);
}

static bert_model *load_bert(const char *name)
{
    char path[128];
    bert_model *m = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    tf_status st = bert_model_load(MPI_COMM_WORLD, path, &m);
    TU_CHECK(st == TF_OK, "load %s: %s", path, tf_error_get());
    return m;
}

static void compare_bert(const char *got_name, const char *want_name)
{
    bert_model *got = load_bert(got_name), *want = load_bert(want_name);
    if (got && want) {
        TU_CHECK(got->num_params == want->num_params, "%s: parameter count", got_name);
        if (got->num_params == want->num_params)
            check_bitwise(got->params, want->params, got->num_params, got_name);
    }
    bert_model_free(&got);
    bert_model_free(&want);
}

static void test_bert_train(void)
{
    char text[2048], ckpt[128], out[128];
    snprintf(ckpt, sizeof ckpt, "%s/resumed.h5.ckpt.h5", dir);
    snprintf(out, sizeof out, "%s/resumed.h5", dir);

    bert_train_job(text, sizeof text, "straight", 0, 1, 16, 0, NULL);
    TU_CHECK(run_job(text, 0) == TF_OK, "uninterrupted BERT job: %s", tf_error_get());

    /* 14 sequences in batches of 4 give 3 steps per epoch, so the checkpoint after step 4
     * resumes mid-epoch. */
    bert_train_job(text, sizeof text, "resumed", 0, 1, 16, 4, NULL);
    expect_error(run_job(text, 6), TF_ERR_ARG, "stopped BERT job", "stopped after step 6", NULL);
    TU_CHECK(file_exists(ckpt), "BERT checkpoint %s written", ckpt);
    TU_CHECK(!file_exists(out), "no output after the stop");

    /* Settings that differ from the checkpoint's. */
    bert_train_job(text, sizeof text, "resumed", 1, 2, 16, 4, NULL);
    expect_error(run_job(text, 0), TF_ERR_ARG, "BERT resume with another seed", ckpt, "seed = 1");
    bert_train_job(text, sizeof text, "resumed", 1, 1, 8, 4, NULL);
    expect_error(run_job(text, 0), TF_ERR_ARG, "BERT resume with another width", ckpt, "d = 16");
    TU_CHECK(!file_exists(out), "no output after a rejected checkpoint");

    bert_train_job(text, sizeof text, "resumed", 1, 1, 16, 4, NULL);
    TU_CHECK(run_job(text, 0) == TF_OK, "resumed BERT job: %s", tf_error_get());
    TU_CHECK(!file_exists(ckpt), "checkpoint deleted once the output is complete");
    compare_bert("resumed.h5", "straight.h5");
}

/* A fuse job of straight.h5 and other.h5 with two methods and a finetune, into dir/<out>. */
static void bert_fuse_job(char *text, size_t size, const char *out, int resume,
                          int64_t checkpoint_every)
{
    snprintf(text, size,
             "{\"resume\": %s, \"tasks\": [{\"task\": \"fuse\", \"name\": \"f\", "
             "\"parents\": [\"%s/straight.h5\", \"%s/other.h5\"], \"calibration_samples\": 8, "
             "\"data\": {\"corpus\": \"%s/corpus.tsv\", \"heldout\": [\"Gamma\"], "
             "\"train_limit\": 14}, "
             "\"methods\": [{\"name\": \"vanilla\", \"method\": \"vanilla\"}, "
             "{\"name\": \"exact\", \"solver\": \"exact\"}], "
             "\"finetune\": {\"steps\": 6, \"batch_size\": 4, \"warmup_steps\": 1, "
             "\"distill\": 0.5, \"checkpoint_every\": %lld}, "
             "\"output_dir\": \"%s/%s\", \"report\": \"%s/%s/report.json\"}]}",
             resume ? "true" : "false", dir, dir, dir, (long long)checkpoint_every, dir, out, dir,
             out);
}

static int64_t mtime_ns(const char *name)
{
    char path[160];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (stat(path, &sb) != 0) return -1;
    return (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
}

/* Reads the report's method names and finetuned losses (rank 0). */
static int read_report(const char *name, char names[2][16], double *losses)
{
    char path[160];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *root = cJSON_Parse(buf);
    const cJSON *methods = cJSON_GetObjectItem(root, "methods");
    int count = cJSON_GetArraySize(methods);
    for (int m = 0; m < count && m < 2; m++) {
        const cJSON *item = cJSON_GetArrayItem(methods, m);
        const cJSON *loss = cJSON_GetObjectItem(item, "finetuned_loss");
        snprintf(names[m], 16, "%s", cJSON_GetStringValue(cJSON_GetObjectItem(item, "name")));
        losses[m] = cJSON_IsNumber(loss) ? loss->valuedouble : -1;
    }
    cJSON_Delete(root);
    return count;
}

static void test_bert_fuse(void)
{
    char text[2048], vocab[128];
    static const char *const files[] = {"b/vanilla.h5", "b/vanilla-finetuned.h5", "b/exact.h5",
                                        "b/exact-finetuned.h5"};
    snprintf(vocab, sizeof vocab, "%s/straight.h5.vocab", dir);
    bert_train_job(text, sizeof text, "other", 0, 2, 16, 0, vocab);
    TU_CHECK(run_job(text, 0) == TF_OK, "second parent: %s", tf_error_get());

    bert_fuse_job(text, sizeof text, "a", 0, 0);
    TU_CHECK(run_job(text, 0) == TF_OK, "uninterrupted fuse job: %s", tf_error_get());

    /* Stopped in the first method's finetune after step 3, with a checkpoint at step 2. */
    bert_fuse_job(text, sizeof text, "b", 0, 2);
    expect_error(run_job(text, 3), TF_ERR_ARG, "stopped fuse job", "stopped after step 3", NULL);
    TU_CHECK(mtime_ns("b/vanilla.h5") > 0, "one-shot file written before the stop");
    TU_CHECK(mtime_ns("b/vanilla-finetuned.h5.ckpt.h5") > 0, "finetune checkpoint written");
    const int64_t one_shot_time = mtime_ns("b/vanilla.h5");

    bert_fuse_job(text, sizeof text, "b", 1, 2);
    TU_CHECK(run_job(text, 0) == TF_OK, "resumed fuse job: %s", tf_error_get());
    TU_CHECK(mtime_ns("b/vanilla.h5") == one_shot_time, "one-shot file loaded, not rewritten");
    TU_CHECK(mtime_ns("b/vanilla-finetuned.h5.ckpt.h5") < 0, "finetune checkpoint deleted");
    compare_bert("b/vanilla-finetuned.h5", "a/vanilla-finetuned.h5");
    compare_bert("b/exact-finetuned.h5", "a/exact-finetuned.h5");
    compare_bert("b/exact.h5", "a/exact.h5");

    /* Once more with resume: every file is loaded, none is written again. */
    int64_t before[4];
    char names[2][16] = {"", ""}, names_again[2][16] = {"", ""};
    double losses[2] = {0, 0}, losses_again[2] = {0, 0};
    int count = tf_world_rank() == 0 ? read_report("b/report.json", names, losses) : 2;
    for (int i = 0; i < 4; i++) before[i] = mtime_ns(files[i]);
    TU_CHECK(run_job(text, 0) == TF_OK, "second resumed fuse job: %s", tf_error_get());
    for (int i = 0; i < 4; i++)
        TU_CHECK(before[i] > 0 && mtime_ns(files[i]) == before[i], "%s not written again",
                 files[i]);
    if (tf_world_rank() == 0) {
        int again = read_report("b/report.json", names_again, losses_again);
        TU_CHECK(count == 2 && again == 2, "reports list %d and %d methods, expected 2", count,
                 again);
        for (int m = 0; m < 2; m++) {
            TU_CHECK(strcmp(names[m], names_again[m]) == 0, "method %d: %s, then %s", m, names[m],
                     names_again[m]);
            TU_CHECK(losses_again[m] > 0 && losses_again[m] == losses[m],
                     "method %s: finetuned loss %.17g, then %.17g", names[m], losses[m],
                     losses_again[m]);
        }
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    snprintf(dir, sizeof dir, "test_ckpt_np%d", tf_world_size());
    if (tf_world_rank() == 0) {
        char command[128];
        snprintf(command, sizeof command, "rm -rf %s && mkdir -p %s", dir, dir);
        if (system(command) != 0) TF_DIE("cannot prepare %s", dir);
        char corpus[96];
        snprintf(corpus, sizeof corpus, "%s/corpus.tsv", dir);
        write_corpus(corpus);
        tf_image_set *train = synthetic_images(40, 12), *test = synthetic_images(24, 13);
        write_idx(train, "train");
        write_idx(test, "test");
        idx_image_set_free(&train);
        idx_image_set_free(&test);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    test_vit();
    if (tf_world_size() > 1) test_vit_other_ranks();
    test_job_fields();
    test_vit_jobs();
    test_bert_train();
    test_bert_fuse();
    int rc = tu_finish("checkpoint");
    MPI_Finalize();
    return rc;
}
