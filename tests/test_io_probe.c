/* Tests of probes in a child process (io/probe.c). Mock probe functions return a result,
 * fail, crash, hang, exit or allocate beyond the memory limit. h5f_probe reads an HDF5 file
 * written by h5f and a file that crashes HDF5 1.10, found by fuzzing and passed as argv[1].
 * Every rank probes its own files, so the results are the same at every rank count.
 *
 *   usage: test_io_probe CRASHING_HDF5_FILE */
#include "testutil.h"
#include "tfuse/h5file.h"
#include "tfuse/probe.h"

#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

typedef struct {
    int layers;
    double eps;
} mock_result;

static char dir[64];
static int ran_in_this_process = 0;

/* Creates a file of `bytes` bytes at dir/name and returns its path in buf. */
static const char *make_file(char *buf, size_t n, const char *name, size_t bytes)
{
    snprintf(buf, n, "%s/%s", dir, name);
    FILE *f = fopen(buf, "wb");
    for (size_t i = 0; f && i < bytes; i++) fputc('x', f);
    if (f) fclose(f);
    return buf;
}

/* Creates <path>.ran, which shows the parent that the probe function ran. */
static void mark_run(const char *path)
{
    char marker[256];
    snprintf(marker, sizeof marker, "%s.ran", path);
    FILE *f = fopen(marker, "w");
    if (f) fclose(f);
}

static int was_run(const char *path)
{
    char marker[256];
    snprintf(marker, sizeof marker, "%s.ran", path);
    int found = access(marker, F_OK) == 0;
    unlink(marker);
    return found;
}

static tf_status mock_ok(const char *path, void *out)
{
    mock_result *r = out;
    r->layers = 12;
    r->eps = 1e-6;
    ran_in_this_process = 1;
    return TF_OK;
}

static tf_status mock_error(const char *path, void *out)
{
    return tf_error_set(TF_ERR_ARG, "model file '%s': attribute heads = 3 does not divide d = 16",
                        path);
}

static tf_status mock_crash(const char *path, void *out)
{
    mark_run(path);
    probe_stage("reading attribute '%s'", "format");
    raise(SIGSEGV);
    return TF_OK;
}

static tf_status mock_hang(const char *path, void *out)
{
    probe_stage("decoding an object header");
    for (;;) pause();
    return TF_OK;
}

static tf_status mock_exit(const char *path, void *out)
{
    _exit(7);
}

/* Allocates and touches 256 MiB. */
static tf_status mock_allocate(const char *path, void *out)
{
    const size_t bytes = (size_t)256 << 20;
    char *block = malloc(bytes);
    if (!block) return tf_error_set(TF_ERR_NOMEM, "allocating %zu bytes failed", bytes);
    memset(block, 1, bytes);
    int sum = block[0] + block[bytes - 1];
    free(block);
    return sum == 2 ? TF_OK : TF_ERR_NOMEM;
}

static void test_result_and_error(void)
{
    char path[128];
    make_file(path, sizeof path, "ok.bin", 10);
    mock_result r = {0, 0};
    ran_in_this_process = 0;
    TU_CHECK(!probe_is_trusted(path), "a new file must not be trusted");
    tf_status st = probe_run(path, "model file", "reading", mock_ok, &r, sizeof r);
    TU_CHECK(st == TF_OK, "probe of mock_ok: status %d: %s", st, tf_error_get());
    TU_CHECK(r.layers == 12 && r.eps == 1e-6, "result not copied: layers %d eps %g", r.layers,
             r.eps);
    TU_CHECK(!ran_in_this_process, "the probe function must run in the child");
    TU_CHECK(probe_is_trusted(path), "an accepted file must be trusted");

    char want[256];
    snprintf(want, sizeof want, "model file '%s': attribute heads = 3 does not divide d = 16",
             path);
    st = probe_run(path, "model file", "reading", mock_error, &r, sizeof r);
    TU_CHECK(st == TF_ERR_ARG, "the child's status must come back: got %d", st);
    TU_CHECK(strcmp(tf_error_get(), want) == 0, "the child's message must come back whole: '%s'",
             tf_error_get());
}

static void test_crash_and_remembered_failure(void)
{
    char path[128];
    make_file(path, sizeof path, "crash.bin", 10);
    tf_status st = probe_run(path, "model file", "reading the metadata", mock_crash, NULL, 0);
    const char *message = tf_error_get();
    TU_CHECK(st == TF_ERR_FORMAT, "crash: status %d", st);
    TU_CHECK(strstr(message, "HDF5 crashed (signal 11") != NULL, "crash: no signal: %s", message);
    TU_CHECK(strstr(message, "while reading attribute 'format'") != NULL,
             "crash: the last stage is missing: %s", message);
    TU_CHECK(strstr(message, path) != NULL, "crash: the path is missing: %s", message);
    TU_CHECK(was_run(path), "crash: the probe function did not run");
    TU_CHECK(!probe_is_trusted(path), "a crashing file must not be trusted");

    /* The same unchanged file fails alike without a second child. */
    st = probe_run(path, "HDF5 file", "reading", mock_crash, NULL, 0);
    TU_CHECK(st == TF_ERR_FORMAT && strstr(tf_error_get(), "signal 11") != NULL,
             "second probe: status %d: %s", st, tf_error_get());
    TU_CHECK(!was_run(path), "second probe of an unchanged file ran the function again");

    /* A changed file is probed again. */
    make_file(path, sizeof path, "crash.bin", 20);
    mock_result r;
    st = probe_run(path, "model file", "reading", mock_ok, &r, sizeof r);
    TU_CHECK(st == TF_OK, "changed file: status %d: %s", st, tf_error_get());
}

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + 1e-9 * (double)(now.tv_nsec - start->tv_nsec);
}

static void test_time_limit(void)
{
    char path[128];
    make_file(path, sizeof path, "hang.bin", 10);
    setenv("TFUSE_PROBE_SECONDS", "0.5", 1);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    tf_status st = probe_run(path, "model file", "reading", mock_hang, NULL, 0);
    double elapsed = seconds_since(&start);
    unsetenv("TFUSE_PROBE_SECONDS");
    const char *message = tf_error_get();
    TU_CHECK(st == TF_ERR_FORMAT, "hang: status %d", st);
    TU_CHECK(strstr(message, "timed out after 0.5 s") != NULL, "hang: %s", message);
    TU_CHECK(strstr(message, "while decoding an object header") != NULL, "hang: %s", message);
    /* The bound is loose because other jobs share the machine. */
    TU_CHECK(elapsed >= 0.5 && elapsed < 10, "hang: the probe took %.2f s with a 0.5 s limit",
             elapsed);
}

static void test_exit_and_memory_limit(void)
{
    char path[128];
    make_file(path, sizeof path, "exit.bin", 10);
    tf_status st = probe_run(path, "model file", "reading", mock_exit, NULL, 0);
    TU_CHECK(st == TF_ERR_FORMAT && strstr(tf_error_get(), "exit status 7") != NULL,
             "exit: status %d: %s", st, tf_error_get());

    make_file(path, sizeof path, "memory.bin", 10);
    st = probe_run(path, "model file", "reading", mock_allocate, NULL, 0);
    TU_CHECK(st == TF_OK, "256 MiB under the default limit: status %d: %s", st, tf_error_get());
    make_file(path, sizeof path, "memory-small.bin", 10);
    setenv("TFUSE_PROBE_MEMORY_MB", "32", 1);
    st = probe_run(path, "model file", "reading", mock_allocate, NULL, 0);
    unsetenv("TFUSE_PROBE_MEMORY_MB");
#ifdef TEST_ASAN
    /* AddressSanitizer ends the child on a failed allocation instead of returning NULL. */
    TU_CHECK(st == TF_ERR_NOMEM || st == TF_ERR_FORMAT, "256 MiB over a 32 MiB limit: %d: %s", st,
             tf_error_get());
#else
    TU_CHECK(st == TF_ERR_NOMEM && strstr(tf_error_get(), "allocating") != NULL,
             "256 MiB over a 32 MiB limit: status %d: %s", st, tf_error_get());
#endif
}

static void test_switched_off_and_arguments(void)
{
    char path[128];
    make_file(path, sizeof path, "off.bin", 10);
    mock_result r = {0, 0};
    ran_in_this_process = 0;
    setenv("TFUSE_PROBE", "off", 1);
    TU_CHECK(!probe_enabled(), "TFUSE_PROBE=off must switch probes off");
    tf_status st = probe_run(path, "model file", "reading", mock_ok, &r, sizeof r);
    unsetenv("TFUSE_PROBE");
    TU_CHECK(st == TF_OK && ran_in_this_process && r.layers == 12,
             "TFUSE_PROBE=off must run the function in this process");
    TU_CHECK(probe_enabled(), "probes must be on by default");

    st = probe_run(NULL, "model file", "reading", mock_ok, &r, sizeof r);
    TU_CHECK(st == TF_ERR_ARG, "NULL path: status %d", st);
    static char big[2048];
    st = probe_run(path, "model file", "reading", mock_ok, big, sizeof big);
    TU_CHECK(st == TF_ERR_ARG, "out_bytes above the limit: status %d", st);

    probe_limits limits;
    setenv("TFUSE_PROBE_SECONDS", "soon", 1);
    probe_limits_for_file(path, &limits);
    unsetenv("TFUSE_PROBE_SECONDS");
    TU_CHECK(limits.seconds >= 30, "an invalid TFUSE_PROBE_SECONDS must keep the default: %g",
             limits.seconds);
}

/* Writes a small file with h5f on MPI_COMM_SELF and probes it, then probes the crasher. */
static void test_hdf5_files(const char *crasher)
{
    char path[128];
    snprintf(path, sizeof path, "%s/tensors.h5", dir);
    h5f_file *f = NULL;
    const int64_t dims[2] = {3, 4};
    float data[12];
    for (int i = 0; i < 12; i++) data[i] = (float)i;
    tf_status st = h5f_create(MPI_COMM_SELF, path, 1, &f);
    if (st == TF_OK) st = h5f_write_f32(f, "params/w", 2, dims, data);
    if (st == TF_OK) st = h5f_set_attr_string(f, "/", "format", "tfuse-model");
    if (st == TF_OK) st = h5f_set_attr_int(f, "/", "layers", 2);
    if (st == TF_OK) st = h5f_commit(&f);
    TU_CHECK(st == TF_OK, "writing %s: %s", path, tf_error_get());
    TU_CHECK(probe_is_trusted(path), "a file this process wrote must be trusted");
    st = h5f_scan(path);
    TU_CHECK(st == TF_OK, "h5f_scan of a valid file: %s", tf_error_get());
    st = h5f_probe(path);
    TU_CHECK(st == TF_OK, "h5f_probe of a valid file: %s", tf_error_get());

    st = h5f_probe(crasher);
    TU_CHECK(st == TF_ERR_FORMAT && strstr(tf_error_get(), "HDF5 crashed") != NULL,
             "h5f_probe of %s: status %d: %s", crasher, st, tf_error_get());
    st = h5f_open(MPI_COMM_SELF, crasher, &f);
    TU_CHECK(st == TF_ERR_FORMAT && f == NULL && strstr(tf_error_get(), crasher) != NULL,
             "h5f_open of %s: status %d: %s", crasher, st, tf_error_get());
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (argc != 2) {
        fprintf(stderr, "usage: test_io_probe CRASHING_HDF5_FILE\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    snprintf(dir, sizeof dir, "io_probe_%ld_%d", (long)getppid(), rank);
    char command[128];
    snprintf(command, sizeof command, "rm -rf %s && mkdir -p %s", dir, dir);
    if (system(command) != 0) MPI_Abort(MPI_COMM_WORLD, 1);

    test_result_and_error();
    test_crash_and_remembered_failure();
    test_time_limit();
    test_exit_and_memory_limit();
    test_switched_off_and_arguments();
    test_hdf5_files(argv[1]);

    snprintf(command, sizeof command, "rm -rf %s", dir);
    if (system(command) != 0) fprintf(stderr, "removing %s failed\n", dir);
    int code = tu_finish("io_probe");
    MPI_Finalize();
    return code;
}
