/* Shared infrastructure of libtfuse: status codes, the last-error message, leveled
 * logging through one sink, the checked allocator, checking macros for MPI and HDF5
 * calls, and a seeded random generator.
 *
 * Library functions return a tf_status and, on failure, record a message with
 * tf_error_set(). Only programs and tests abort. */
#ifndef TFUSE_COMMON_H
#define TFUSE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <mpi.h>

typedef enum {
    TF_OK = 0,
    TF_ERR_ARG,           /* invalid argument or option value */
    TF_ERR_IO,            /* a file could not be opened, read or written */
    TF_ERR_FORMAT,        /* a file's contents are malformed */
    TF_ERR_NOMEM,         /* allocation failed */
    TF_ERR_NUMERIC,       /* NaN or infinity where finite values are required */
    TF_ERR_NOT_CONVERGED, /* an iterative solver reached its iteration cap */
    TF_ERR_INFEASIBLE,    /* an optimization problem has no feasible point */
    TF_ERR_MPI,           /* an MPI call failed */
    TF_ERR_EXISTS         /* an output exists and the job does not allow overwriting */
} tf_status;

/* Returns a constant string naming the status, e.g. "invalid argument". */
const char *tf_status_str(tf_status status);

/* Records the message of the last failure on this rank (printf format). Returns `status`
 * so that library code can write `return tf_error_set(TF_ERR_ARG, "...")`. */
tf_status tf_error_set(tf_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Returns the message of the last failure on this rank, or "" if none. */
const char *tf_error_get(void);

enum { TF_LOG_DEBUG = 0, TF_LOG_INFO = 1, TF_LOG_WARN = 2, TF_LOG_ERROR = 3 };

/* Sets the minimum level that rank 0 prints. Other ranks print only warnings and errors,
 * prefixed with "[rank N]". */
void tf_log_set_level(int level);
int tf_log_get_level(void);
void tf_log(int level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define TF_DEBUG(...) tf_log(TF_LOG_DEBUG, __func__, __VA_ARGS__)
#define TF_INFO(...) tf_log(TF_LOG_INFO, __func__, __VA_ARGS__)
#define TF_WARN(...) tf_log(TF_LOG_WARN, __func__, __VA_ARGS__)
#define TF_ERROR(...) tf_log(TF_LOG_ERROR, __func__, __VA_ARGS__)

/* Prints "error: <message>" with the rank and calls MPI_Abort(MPI_COMM_WORLD, 1). For
 * programs and tests; library code returns a status instead. Ranks other than 0 wait
 * 0.5 s before printing, so a failure that all ranks reach is usually printed once, by
 * rank 0, whose abort ends the others first. */
_Noreturn void tf_die(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define TF_DIE(...) tf_die(__FILE__, __LINE__, __VA_ARGS__)

/* For a failure that every rank of MPI_COMM_WORLD reaches the same way (e.g. an invalid
 * job file): rank 0 prints "error: <message>", every rank finalizes MPI and exits with
 * status 1, so the message appears once. Collective on MPI_COMM_WORLD. */
_Noreturn void tf_die_all(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Checked allocation: on failure logs the byte count and the caller's file:line and returns
 * NULL (library code then returns TF_ERR_NOMEM). Memory is freed with free(). */
void *tf_malloc_at(size_t bytes, const char *file, int line);
void *tf_calloc_at(size_t count, size_t size, const char *file, int line);
#define tf_malloc(bytes) tf_malloc_at((bytes), __FILE__, __LINE__)
#define tf_calloc(count, size) tf_calloc_at((count), (size), __FILE__, __LINE__)

/* Checks an MPI call. On failure prints the call, file:line, rank and MPI's error text,
 * then calls MPI_Abort: an MPI error leaves the communicator unusable, so no caller could
 * recover anyway. */
#define TF_MPI_CHECK(call)                                                                     \
    do {                                                                                       \
        int tf_mpi_rc_ = (call);                                                               \
        if (tf_mpi_rc_ != MPI_SUCCESS) tf_mpi_fail(tf_mpi_rc_, #call, __FILE__, __LINE__);     \
    } while (0)
_Noreturn void tf_mpi_fail(int rc, const char *call, const char *file, int line);

/* Rank and size in MPI_COMM_WORLD (0 and 1 before MPI_Init). */
int tf_world_rank(void);
int tf_world_size(void);

/* Seconds since an arbitrary origin (MPI_Wtime when MPI is up). */
double tf_seconds(void);

/* xoshiro256** generator, seeded through splitmix64. One per rank or per purpose; never
 * rand(). */
typedef struct {
    uint64_t s[4];
} tf_rng;
void tf_rng_seed(tf_rng *rng, uint64_t seed);
uint64_t tf_rng_next(tf_rng *rng);
double tf_rng_uniform(tf_rng *rng); /* in [0, 1) */
double tf_rng_normal(tf_rng *rng);  /* standard normal, Box-Muller */
/* Uniform integer in [0, n). */
int64_t tf_rng_below(tf_rng *rng, int64_t n);
/* Fisher-Yates shuffle of perm[0..n) in place. */
void tf_rng_shuffle(tf_rng *rng, int64_t *perm, int64_t n);

#endif
