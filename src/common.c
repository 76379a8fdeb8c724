#include "tfuse/common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char error_message[2048];
static int log_level = TF_LOG_INFO;

const char *tf_status_str(tf_status status)
{
    switch (status) {
    case TF_OK: return "ok";
    case TF_ERR_ARG: return "invalid argument";
    case TF_ERR_IO: return "I/O error";
    case TF_ERR_FORMAT: return "malformed file";
    case TF_ERR_NOMEM: return "out of memory";
    case TF_ERR_NUMERIC: return "non-finite value";
    case TF_ERR_NOT_CONVERGED: return "not converged";
    case TF_ERR_INFEASIBLE: return "infeasible problem";
    case TF_ERR_MPI: return "MPI error";
    case TF_ERR_EXISTS: return "output exists";
    }
    return "unknown status";
}

tf_status tf_error_set(tf_status status, const char *fmt, ...)
{
    /* Format into a copy first: callers often pass tf_error_get() as an argument. */
    char message[sizeof error_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    memcpy(error_message, message, sizeof error_message);
    return status;
}

const char *tf_error_get(void)
{
    return error_message;
}

void tf_log_set_level(int level)
{
    log_level = level;
}

int tf_log_get_level(void)
{
    return log_level;
}

int tf_world_rank(void)
{
    int initialized = 0, finalized = 0, rank = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

int tf_world_size(void)
{
    int initialized = 0, finalized = 0, size = 1;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
}

double tf_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void tf_log(int level, const char *func, const char *fmt, ...)
{
    int rank = tf_world_rank();
    if (rank == 0 && level < log_level) return;
    if (rank != 0 && level < TF_LOG_WARN) return;

    static const char *names[] = {"debug", "info", "warning", "error"};
    char line[4096];
    int used = 0;
    if (rank != 0) used += snprintf(line + used, sizeof line - used, "[rank %d] ", rank);
    if (level != TF_LOG_INFO)
        used += snprintf(line + used, sizeof line - used, "%s: %s: ", names[level], func);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + used, sizeof line - used, fmt, ap);
    va_end(ap);
    FILE *sink = level >= TF_LOG_WARN ? stderr : stdout;
    fprintf(sink, "%s\n", line);
    fflush(sink);
}

_Noreturn void tf_die(const char *file, int line, const char *fmt, ...)
{
    char message[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    int size = tf_world_size();
    int rank = tf_world_rank();
    if (size > 1 && rank != 0) {
        /* A failure that every rank reaches (most are agreed on collectively) should print
         * once: rank 0's MPI_Abort usually ends the other ranks within this pause. */
        struct timespec pause = {0, 500 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    if (size > 1)
        fprintf(stderr, "error (rank %d): %s\n", rank, message);
    else
        fprintf(stderr, "error: %s\n", message);
    if (log_level <= TF_LOG_DEBUG) fprintf(stderr, "  (raised at %s:%d)\n", file, line);
    fflush(stderr);
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) {
        if (size == 1) {
            MPI_Finalize();
            exit(1);
        }
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    exit(1);
}

_Noreturn void tf_die_all(const char *fmt, ...)
{
    char message[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (tf_world_rank() == 0) {
        fprintf(stderr, "error: %s\n", message);
        fflush(stderr);
    }
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Finalize();
    exit(1);
}

_Noreturn void tf_mpi_fail(int rc, const char *call, const char *file, int line)
{
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) snprintf(text, sizeof text, "?");
    tf_die(file, line, "MPI call %s failed at %s:%d: %s", call, file, line, text);
}

void *tf_malloc_at(size_t bytes, const char *file, int line)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        tf_error_set(TF_ERR_NOMEM, "allocation of %zu bytes failed at %s:%d", bytes, file, line);
        TF_ERROR("allocation of %zu bytes failed at %s:%d", bytes, file, line);
    }
    return p;
}

void *tf_calloc_at(size_t count, size_t size, const char *file, int line)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) {
        tf_error_set(TF_ERR_NOMEM, "allocation of %zu x %zu bytes failed at %s:%d", count, size,
                     file, line);
        TF_ERROR("allocation of %zu x %zu bytes failed at %s:%d", count, size, file, line);
    }
    return p;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void tf_rng_seed(tf_rng *rng, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t tf_rng_next(tf_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double tf_rng_uniform(tf_rng *rng)
{
    return (double)(tf_rng_next(rng) >> 11) * 0x1.0p-53;
}

double tf_rng_normal(tf_rng *rng)
{
    double u1 = tf_rng_uniform(rng);
    double u2 = tf_rng_uniform(rng);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int64_t tf_rng_below(tf_rng *rng, int64_t n)
{
    return (int64_t)(tf_rng_uniform(rng) * (double)n);
}

void tf_rng_shuffle(tf_rng *rng, int64_t *perm, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = tf_rng_below(rng, i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}
