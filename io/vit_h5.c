/* ViT models in HDF5 files: attributes for the architecture, one float32 dataset per
 * parameter tensor. The layout is documented in docs/FORMAT.md. */
#include "tfuse/vit_io.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define VIT_H5_FORMAT "tfuse-model"
#define VIT_H5_FORMAT_VERSION 1
#define VIT_H5_ARCHITECTURE "vit"

/* Integer fields of vit_config, stored as int64 attributes under their C names. */
typedef struct {
    const char *name;
    size_t offset;
} vit_h5_int_field;

static const vit_h5_int_field int_fields[] = {
    {"image_size", offsetof(vit_config, image_size)},
    {"channels", offsetof(vit_config, channels)},
    {"patch", offsetof(vit_config, patch)},
    {"d", offsetof(vit_config, d)},
    {"layers", offsetof(vit_config, layers)},
    {"heads", offsetof(vit_config, heads)},
    {"mlp", offsetof(vit_config, mlp)},
    {"classes", offsetof(vit_config, classes)},
};
enum { NUM_INT_FIELDS = sizeof int_fields / sizeof int_fields[0] };

/* Builds the dataset path of tensor `which`: "params/<name>" for the root group, else
 * "<group>/params/<name>". */
static const char *vit_h5_dataset(char *buf, size_t size, const char *group, int which)
{
    size_t n = strlen(group);
    while (n > 0 && group[n - 1] == '/') n--;
    if (n == 0)
        snprintf(buf, size, "params/%s", vit_param_name(which));
    else
        snprintf(buf, size, "%.*s/params/%s", (int)n, group, vit_param_name(which));
    return buf;
}

static tf_status vit_h5_write_attrs(const vit_config *cfg, h5f_file *f, const char *group)
{
    tf_status status = h5f_set_attr_string(f, group, "format", VIT_H5_FORMAT);
    if (status == TF_OK)
        status = h5f_set_attr_int(f, group, "format_version", VIT_H5_FORMAT_VERSION);
    if (status == TF_OK)
        status = h5f_set_attr_string(f, group, "architecture", VIT_H5_ARCHITECTURE);
    for (int i = 0; i < NUM_INT_FIELDS && status == TF_OK; i++) {
        const int *field = (const int *)((const char *)cfg + int_fields[i].offset);
        status = h5f_set_attr_int(f, group, int_fields[i].name, *field);
    }
    if (status == TF_OK) status = h5f_set_attr_double(f, group, "ln_eps", cfg->ln_eps);
    return status;
}

tf_status vit_model_write(const vit_model *model, h5f_file *f, const char *group)
{
    if (!model || !f || !group) return tf_error_set(TF_ERR_ARG, "vit_model_write: NULL argument");

    /* Datasets first: writing them creates the group that receives the attributes. */
    for (int k = 0; k < VIT_NUM_PARAMS; k++) {
        char name[512];
        int64_t dims[4];
        int ndims = vit_param_shape(&model->cfg, k, dims);
        int64_t count = 1;
        for (int i = 0; i < ndims; i++) count *= dims[i];
        if (count != model->size[k])
            return tf_error_set(TF_ERR_ARG,
                                "vit_model_write: tensor '%s' has %lld elements but its shape "
                                "needs %lld",
                                vit_param_name(k), (long long)model->size[k], (long long)count);
        tf_status status =
            h5f_write_f32(f, vit_h5_dataset(name, sizeof name, group, k), ndims, dims, model->p[k]);
        if (status != TF_OK) return status;
    }
    return vit_h5_write_attrs(&model->cfg, f, group);
}

tf_status vit_model_save(const vit_model *model, MPI_Comm comm, const char *path, int overwrite)
{
    h5f_file *f = NULL;
    if (!model) return tf_error_set(TF_ERR_ARG, "vit_model_save: model is NULL");
    tf_status status = h5f_create(comm, path, overwrite, &f);
    if (status != TF_OK) return status;
    status = vit_model_write(model, f, "/");
    if (status != TF_OK) {
        h5f_discard(&f);
        return status;
    }
    return h5f_commit(&f);
}

/* Reads and checks format, format_version and architecture. */
static tf_status vit_h5_check_format(h5f_file *f, const char *group)
{
    char text[64];
    int64_t version = 0;
    tf_status status = h5f_get_attr_string(f, group, "format", text, sizeof text);
    if (status != TF_OK) return status;
    if (strcmp(text, VIT_H5_FORMAT) != 0)
        return tf_error_set(TF_ERR_FORMAT,
                            "file '%s' has format '%s' on '%s'; expected '%s' (a tfuse model)",
                            h5f_path(f), text, group, VIT_H5_FORMAT);
    status = h5f_get_attr_int(f, group, "format_version", &version);
    if (status != TF_OK) return status;
    if (version != VIT_H5_FORMAT_VERSION)
        return tf_error_set(TF_ERR_FORMAT,
                            "model file '%s' has format_version %lld; this build reads version %d",
                            h5f_path(f), (long long)version, VIT_H5_FORMAT_VERSION);
    status = h5f_get_attr_string(f, group, "architecture", text, sizeof text);
    if (status != TF_OK) return status;
    if (strcmp(text, VIT_H5_ARCHITECTURE) != 0)
        return tf_error_set(TF_ERR_FORMAT, "model file '%s' has architecture '%s'; expected '%s'",
                            h5f_path(f), text, VIT_H5_ARCHITECTURE);
    return TF_OK;
}

/* Reads the vit_config attributes and validates the configuration. */
static tf_status vit_h5_read_config(h5f_file *f, const char *group, vit_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (int i = 0; i < NUM_INT_FIELDS; i++) {
        int64_t value = 0;
        tf_status status = h5f_get_attr_int(f, group, int_fields[i].name, &value);
        if (status != TF_OK) return status;
        if (value < INT32_MIN || value > INT32_MAX)
            return tf_error_set(TF_ERR_FORMAT,
                                "model file '%s': attribute %s = %lld is out of range", h5f_path(f),
                                int_fields[i].name, (long long)value);
        *(int *)((char *)cfg + int_fields[i].offset) = (int)value;
    }
    tf_status status = h5f_get_attr_double(f, group, "ln_eps", &cfg->ln_eps);
    if (status != TF_OK) return status;

    status = vit_config_validate(cfg);
    if (status != TF_OK) {
        char reason[1024];
        snprintf(reason, sizeof reason, "%s", tf_error_get());
        return tf_error_set(status, "model file '%s': %s", h5f_path(f), reason);
    }
    return TF_OK;
}

/* Fails with TF_ERR_NUMERIC at the first NaN or infinity of a tensor, naming its index. */
static tf_status vit_h5_check_finite(h5f_file *f, const char *dataset, const float *x, int ndims,
                                     const int64_t *dims)
{
    int64_t count = 1;
    for (int i = 0; i < ndims; i++) count *= dims[i];
    for (int64_t flat = 0; flat < count; flat++) {
        if (isfinite(x[flat])) continue;
        int64_t index[4] = {0}, rest = flat;
        for (int i = ndims - 1; i >= 0; i--) {
            index[i] = rest % dims[i];
            rest /= dims[i];
        }
        char where[128];
        int used = snprintf(where, sizeof where, "(");
        for (int i = 0; i < ndims; i++)
            used += snprintf(where + used, sizeof where - (size_t)used, "%s%lld", i ? ", " : "",
                             (long long)index[i]);
        snprintf(where + used, sizeof where - (size_t)used, ")");
        return tf_error_set(TF_ERR_NUMERIC,
                            "model file '%s': tensor '%s' has %s at index %s (flat index %lld); "
                            "the model is corrupt or diverged in training",
                            h5f_path(f), dataset, isnan(x[flat]) ? "NaN" : "an infinite value",
                            where, (long long)flat);
    }
    return TF_OK;
}

tf_status vit_model_read(h5f_file *f, const char *group, vit_model **out)
{
    vit_config cfg;
    vit_model *model = NULL;
    if (!f || !group || !out) return tf_error_set(TF_ERR_ARG, "vit_model_read: NULL argument");
    *out = NULL;

    /* Attributes: format, architecture and configuration. */
    tf_status status = vit_h5_check_format(f, group);
    if (status == TF_OK) status = vit_h5_read_config(f, group, &cfg);
    if (status == TF_OK) status = vit_model_create(&cfg, &model);
    if (status != TF_OK) return status;

    /* Every tensor: presence and shape (checked by h5f_read_f32), then finite values. */
    for (int k = 0; k < VIT_NUM_PARAMS && status == TF_OK; k++) {
        char name[512];
        int64_t dims[4];
        int ndims = vit_param_shape(&cfg, k, dims);
        vit_h5_dataset(name, sizeof name, group, k);
        status = h5f_read_f32(f, name, ndims, dims, model->p[k]);
        if (status == TF_OK) status = vit_h5_check_finite(f, name, model->p[k], ndims, dims);
    }
    if (status != TF_OK) {
        vit_model_free(&model);
        return status;
    }
    *out = model;
    return TF_OK;
}

tf_status vit_model_load(MPI_Comm comm, const char *path, vit_model **out)
{
    h5f_file *f = NULL;
    if (!out) return tf_error_set(TF_ERR_ARG, "vit_model_load: output is NULL");
    *out = NULL;
    tf_status status = h5f_open(comm, path, &f);
    if (status != TF_OK) return status;
    status = vit_model_read(f, "/", out);
    h5f_close(&f);
    if (status == TF_OK)
        TF_INFO("loaded ViT model '%s': d %d, %d layer%s, %d head%s, %lld parameters", path,
                (*out)->cfg.d, (*out)->cfg.layers, (*out)->cfg.layers == 1 ? "" : "s",
                (*out)->cfg.heads, (*out)->cfg.heads == 1 ? "" : "s",
                (long long)(*out)->num_params);
    return status;
}
