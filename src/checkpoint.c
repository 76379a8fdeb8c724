/* Training checkpoints in HDF5 files, written and read collectively through h5file. */
#include "tfuse/checkpoint.h"
#include "tfuse/h5file.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define CKPT_FORMAT "tfuse-checkpoint"
#define CKPT_FORMAT_VERSION 1

int ckpt_exists(MPI_Comm comm, const char *path)
{
    int rank, exists = 0;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    struct stat sb;
    if (rank == 0) exists = stat(path, &sb) == 0;
    TF_MPI_CHECK(MPI_Bcast(&exists, 1, MPI_INT, 0, comm));
    return exists;
}

/* Writes the root attributes: format, architecture, counters and settings. */
static tf_status write_attributes(h5f_file *h5, const char *arch, const ckpt_setting *settings,
                                  int n_settings, const ckpt_state *s)
{
    tf_status st = h5f_set_attr_string(h5, "/", "format", CKPT_FORMAT);
    if (st == TF_OK) st = h5f_set_attr_int(h5, "/", "format_version", CKPT_FORMAT_VERSION);
    if (st == TF_OK) st = h5f_set_attr_string(h5, "/", "architecture", arch);
    if (st == TF_OK) st = h5f_set_attr_int(h5, "/", "step", s->step);
    if (st == TF_OK) st = h5f_set_attr_int(h5, "/", "ranks", s->ranks);
    if (st == TF_OK) st = h5f_set_attr_double(h5, "/", "loss_sum", s->loss_sum);
    if (st == TF_OK) st = h5f_set_attr_int(h5, "/", "loss_steps", s->loss_steps);
    if (st == TF_OK) st = h5f_set_attr_double(h5, "/", "last_loss", s->last_loss);
    for (int i = 0; st == TF_OK && i < n_settings; i++) {
        char name[128];
        snprintf(name, sizeof name, "setting_%s", settings[i].name);
        st = settings[i].is_real ? h5f_set_attr_double(h5, "/", name, settings[i].real)
                                 : h5f_set_attr_int(h5, "/", name, settings[i].integer);
    }
    return st;
}

tf_status ckpt_save(MPI_Comm comm, const char *path, const char *arch, const ckpt_setting *settings,
                    int n_settings, const ckpt_state *state)
{
    h5f_file *h5 = NULL;
    const int64_t dims[1] = {state->num_params};
    tf_status st = h5f_create(comm, path, 1, &h5);
    if (st != TF_OK) return st;
    st = write_attributes(h5, arch, settings, n_settings, state);
    if (st == TF_OK) st = h5f_write_f32(h5, "params", 1, dims, state->params);
    if (st == TF_OK) st = h5f_write_f32(h5, "adam_m", 1, dims, state->adam_m);
    if (st == TF_OK) st = h5f_write_f32(h5, "adam_v", 1, dims, state->adam_v);
    if (st != TF_OK) {
        h5f_discard(&h5);
        return tf_error_set(st, "cannot write checkpoint %s: %s", path, tf_error_get());
    }
    return h5f_commit(&h5);
}

/* Checks the format and architecture attributes of an open checkpoint. */
static tf_status check_format(h5f_file *h5, const char *path, const char *arch)
{
    char format[64] = "", found_arch[32] = "";
    int64_t version = 0;
    tf_status st = h5f_get_attr_string(h5, "/", "format", format, sizeof format);
    if (st == TF_OK && strcmp(format, CKPT_FORMAT) != 0) st = TF_ERR_FORMAT;
    if (st == TF_OK) st = h5f_get_attr_int(h5, "/", "format_version", &version);
    if (st == TF_OK && version != CKPT_FORMAT_VERSION) st = TF_ERR_FORMAT;
    if (st != TF_OK)
        return tf_error_set(TF_ERR_FORMAT,
                            "%s is not a tfuse checkpoint of format version %d; delete it to "
                            "train from the start",
                            path, CKPT_FORMAT_VERSION);
    st = h5f_get_attr_string(h5, "/", "architecture", found_arch, sizeof found_arch);
    if (st != TF_OK) return st;
    if (strcmp(found_arch, arch) != 0)
        return tf_error_set(TF_ERR_ARG,
                            "checkpoint %s was written by %s training, but this run trains a "
                            "%s model; delete the checkpoint to train from the start",
                            path, found_arch, arch);
    return TF_OK;
}

/* Compares every setting of the run with the checkpoint's; names the first that differs. */
static tf_status check_settings(h5f_file *h5, const char *path, const ckpt_setting *settings,
                                int n_settings)
{
    for (int i = 0; i < n_settings; i++) {
        const ckpt_setting *s = &settings[i];
        char name[128];
        snprintf(name, sizeof name, "setting_%s", s->name);
        int64_t integer = 0;
        double real = 0;
        tf_status st = s->is_real ? h5f_get_attr_double(h5, "/", name, &real)
                                  : h5f_get_attr_int(h5, "/", name, &integer);
        if (st != TF_OK)
            return tf_error_set(TF_ERR_FORMAT,
                                "checkpoint %s has no setting %s; delete it to train from the "
                                "start",
                                path, s->name);
        if (s->is_real && memcmp(&real, &s->real, sizeof real) != 0)
            return tf_error_set(TF_ERR_ARG,
                                "checkpoint %s was written with %s = %.17g, but this run has "
                                "%s = %.17g; restore the setting or delete the checkpoint",
                                path, s->name, real, s->name, s->real);
        if (!s->is_real && integer != s->integer)
            return tf_error_set(TF_ERR_ARG,
                                "checkpoint %s was written with %s = %lld, but this run has "
                                "%s = %lld; restore the setting or delete the checkpoint",
                                path, s->name, (long long)integer, s->name, (long long)s->integer);
    }
    return TF_OK;
}

/* Reads the counters and the three flat tensors into state. */
static tf_status read_state(h5f_file *h5, ckpt_state *s)
{
    const int64_t dims[1] = {s->num_params};
    int64_t ranks = 0;
    tf_status st = h5f_get_attr_int(h5, "/", "step", &s->step);
    if (st == TF_OK) st = h5f_get_attr_int(h5, "/", "ranks", &ranks);
    if (st == TF_OK) st = h5f_get_attr_double(h5, "/", "loss_sum", &s->loss_sum);
    if (st == TF_OK) st = h5f_get_attr_int(h5, "/", "loss_steps", &s->loss_steps);
    if (st == TF_OK) st = h5f_get_attr_double(h5, "/", "last_loss", &s->last_loss);
    if (st == TF_OK) st = h5f_read_f32(h5, "params", 1, dims, s->params);
    if (st == TF_OK) st = h5f_read_f32(h5, "adam_m", 1, dims, s->adam_m);
    if (st == TF_OK) st = h5f_read_f32(h5, "adam_v", 1, dims, s->adam_v);
    s->ranks = (int)ranks;
    return st;
}

tf_status ckpt_load(MPI_Comm comm, const char *path, const char *arch, const ckpt_setting *settings,
                    int n_settings, ckpt_state *state, int *found)
{
    *found = 0;
    if (!ckpt_exists(comm, path)) return TF_OK;
    h5f_file *h5 = NULL;
    tf_status st = h5f_open(comm, path, &h5);
    if (st != TF_OK) return st;
    st = check_format(h5, path, arch);
    if (st == TF_OK) st = check_settings(h5, path, settings, n_settings);
    if (st == TF_OK) {
        st = read_state(h5, state);
        if (st != TF_OK) st = tf_error_set(st, "checkpoint %s: %s", path, tf_error_get());
    }
    h5f_close(&h5);
    if (st == TF_OK) *found = 1;
    return st;
}

tf_status ckpt_remove(MPI_Comm comm, const char *path)
{
    int rank;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    struct {
        int status;
        char message[512];
    } result = {TF_OK, ""};
    if (rank == 0 && remove(path) != 0 && errno != ENOENT) {
        result.status = TF_ERR_IO;
        snprintf(result.message, sizeof result.message, "cannot delete checkpoint %s: %s", path,
                 strerror(errno));
    }
    TF_MPI_CHECK(MPI_Bcast(&result, (int)sizeof result, MPI_BYTE, 0, comm));
    if (result.status != TF_OK) return tf_error_set((tf_status)result.status, "%s", result.message);
    return TF_OK;
}

tf_status ckpt_save_training(MPI_Comm comm, const char *path, const char *arch, const char *label,
                             const ckpt_setting *settings, int n_settings, const ckpt_state *local)
{
    ckpt_state state = *local;
    TF_MPI_CHECK(MPI_Comm_size(comm, &state.ranks));
    TF_MPI_CHECK(MPI_Allreduce(&local->loss_sum, &state.loss_sum, 1, MPI_DOUBLE, MPI_SUM, comm));
    double t0 = tf_seconds();
    tf_status st = ckpt_save(comm, path, arch, settings, n_settings, &state);
    if (st == TF_OK)
        TF_INFO("%s: checkpoint after step %lld written to %s in %.2f s", label,
                (long long)state.step, path, tf_seconds() - t0);
    return st;
}

tf_status ckpt_resume_training(MPI_Comm comm, const char *path, const char *arch, const char *label,
                               const ckpt_setting *settings, int n_settings, int64_t total_steps,
                               ckpt_state *state, int *found)
{
    int rank, size;
    TF_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TF_MPI_CHECK(MPI_Comm_size(comm, &size));
    tf_status st = ckpt_load(comm, path, arch, settings, n_settings, state, found);
    if (st != TF_OK || !*found) return st;
    if (state->step < 0 || state->step > total_steps) {
        *found = 0;
        return tf_error_set(TF_ERR_FORMAT,
                            "checkpoint %s holds step %lld of a %lld-step run; delete it to "
                            "train from the start",
                            path, (long long)state->step, (long long)total_steps);
    }
    if (state->ranks != size)
        TF_WARN("%s: checkpoint %s was written by %d ranks and is continued by %d, so the "
                "result differs from an uninterrupted run by rounding",
                label, path, state->ranks, size);
    TF_INFO("%s: resuming after step %lld of %lld from %s", label, (long long)state->step,
            (long long)total_steps, path);
    if (rank != 0) state->loss_sum = 0;
    return TF_OK;
}
