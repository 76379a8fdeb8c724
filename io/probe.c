/* Probes of input files in a forked child process (see include/tfuse/probe.h). Uses POSIX
 * fork, pipe, poll and setrlimit. On Linux the child also dies with its parent
 * (PR_SET_PDEATHSIG) and its memory limit is relative to the address space it inherits
 * (/proc/self/statm). */
#include "tfuse/probe.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define PROBE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROBE_ASAN 1
#endif
#endif
#ifdef PROBE_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#define PROBE_BASE_SECONDS 30.0
#define PROBE_BYTES_PER_SECOND 50e6 /* an estimate for a slow shared file system */
#define PROBE_BASE_MEMORY ((size_t)1 << 30)
/* Largest time limit, so that alarm() and the poll() milliseconds stay in range. */
#define PROBE_MAX_SECONDS 1e6

enum {
    PROBE_MESSAGE_BYTES = 2048, /* the size of tf_error_get's buffer */
    PROBE_STAGE_BYTES = 256,
    PROBE_MAX_OUT = 1024,
    PROBE_KNOWN_SLOTS = 64,
    PROBE_RECORD_STAGE = 1,
    PROBE_RECORD_RESULT = 2
};

/* One message from the child: a header followed by `bytes` of payload. A stage record
 * carries text; a result record carries an int32 status, the out bytes and the message. */
typedef struct {
    uint32_t kind;
    uint32_t bytes;
} probe_header;

/* What the parent has read from the child so far. */
typedef struct {
    unsigned char buf[sizeof(probe_header) + 4 + PROBE_MAX_OUT + PROBE_MESSAGE_BYTES];
    size_t used;
    char stage[PROBE_STAGE_BYTES];
    int have_result;
    int32_t status;
    unsigned char out[PROBE_MAX_OUT];
    char message[PROBE_MESSAGE_BYTES];
} probe_reply;

static int child_fd = -1; /* write end of the pipe, set only in a probe child */

/* ---- Limits and trust ---------------------------------------------------------------- */

/* Parses a positive finite number, or returns 0. */
static double probe_env_number(const char *name)
{
    const char *text = getenv(name);
    if (!text || !*text) return 0;
    char *end = NULL;
    double value = strtod(text, &end);
    if (*end != '\0' || !isfinite(value) || value <= 0) {
        static int warned = 0;
        if (!warned) TF_WARN("%s = '%s' is not a positive number; using the default", name, text);
        warned = 1;
        return 0;
    }
    return value;
}

void probe_limits_for_file(const char *path, probe_limits *limits)
{
    struct stat st;
    double size = path && stat(path, &st) == 0 ? (double)st.st_size : 0;
    limits->seconds = PROBE_BASE_SECONDS + size / PROBE_BYTES_PER_SECOND;
    limits->memory_bytes = PROBE_BASE_MEMORY + (size_t)(2 * size);
    double seconds = probe_env_number("TFUSE_PROBE_SECONDS");
    double megabytes = probe_env_number("TFUSE_PROBE_MEMORY_MB");
    if (seconds > 0) limits->seconds = seconds;
    if (limits->seconds > PROBE_MAX_SECONDS) limits->seconds = PROBE_MAX_SECONDS;
    if (megabytes > 0)
        limits->memory_bytes =
            megabytes < (double)(SIZE_MAX >> 21) ? (size_t)(megabytes * 1048576.0) : SIZE_MAX / 2;
}

int probe_enabled(void)
{
    const char *mode = getenv("TFUSE_PROBE");
    return !(mode && (strcmp(mode, "off") == 0 || strcmp(mode, "0") == 0));
}

/* A file this process has probed or written: the outcome, and the identity that shows
 * whether the file has changed since. */
typedef struct {
    int used;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    int accepted;                  /* 1: trusted; 0: the probe process failed */
    int in_time, wstatus;          /* how the failed probe process ended */
    char stage[PROBE_STAGE_BYTES]; /* its last stage */
    probe_limits limits;           /* the limits it ran with */
} probe_known_file;

static probe_known_file known[PROBE_KNOWN_SLOTS];
static int known_next = 0;

/* Returns the record of the unchanged file at path, or NULL. */
static probe_known_file *probe_find(const char *path)
{
    struct stat st;
    if (!path || stat(path, &st) != 0) return NULL;
    for (int i = 0; i < PROBE_KNOWN_SLOTS; i++) {
        probe_known_file *k = &known[i];
        if (k->used && k->dev == st.st_dev && k->ino == st.st_ino && k->size == st.st_size &&
            k->mtime.tv_sec == st.st_mtim.tv_sec && k->mtime.tv_nsec == st.st_mtim.tv_nsec)
            return k;
    }
    return NULL;
}

/* Records the outcome of a probe of the file at path, replacing an older record of it. */
static void probe_remember(const char *path, int accepted, int in_time, int wstatus,
                           const char *stage, const probe_limits *limits)
{
    struct stat st;
    if (!path || stat(path, &st) != 0) return;
    probe_known_file *k = probe_find(path);
    if (!k) {
        k = &known[known_next];
        known_next = (known_next + 1) % PROBE_KNOWN_SLOTS;
    }
    *k = (probe_known_file){1,        st.st_dev, st.st_ino, st.st_size, st.st_mtim,
                            accepted, in_time,   wstatus,   "",         *limits};
    snprintf(k->stage, sizeof k->stage, "%s", stage);
}

void probe_trust(const char *path)
{
    const probe_limits none = {0, 0};
    probe_remember(path, 1, 1, 0, "", &none);
}

int probe_is_trusted(const char *path)
{
    const probe_known_file *k = probe_find(path);
    return k && k->accepted;
}

/* ---- The child ------------------------------------------------------------------------ */

/* Writes a whole record to the pipe. Records of up to PIPE_BUF bytes arrive in one piece. */
static void probe_send(uint32_t kind, const void *a, size_t a_bytes, const void *b, size_t b_bytes,
                       const char *text)
{
    size_t text_bytes = text ? strlen(text) : 0;
    if (text_bytes >= PROBE_MESSAGE_BYTES) text_bytes = PROBE_MESSAGE_BYTES - 1;
    probe_header head = {kind, (uint32_t)(a_bytes + b_bytes + text_bytes)};
    unsigned char record[sizeof head + 4 + PROBE_MAX_OUT + PROBE_MESSAGE_BYTES];
    size_t used = 0;
    memcpy(record, &head, sizeof head);
    used += sizeof head;
    if (a_bytes) memcpy(record + used, a, a_bytes);
    used += a_bytes;
    if (b_bytes) memcpy(record + used, b, b_bytes);
    used += b_bytes;
    if (text_bytes) memcpy(record + used, text, text_bytes);
    used += text_bytes;
    for (size_t done = 0; done < used;) {
        ssize_t n = write(child_fd, record + done, used - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) _exit(3);
        done += (size_t)n;
    }
}

void probe_stage(const char *fmt, ...)
{
    if (child_fd < 0) return;
    char text[PROBE_STAGE_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    probe_send(PROBE_RECORD_STAGE, NULL, 0, NULL, 0, text);
}

/* Bytes of address space this process has mapped, or 0 when unknown. */
static size_t probe_mapped_bytes(void)
{
    unsigned long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    if (fscanf(f, "%lu", &pages) != 1) pages = 0;
    fclose(f);
    return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* Restores default signal actions, so that a crash ends the child instead of running the
 * handlers it inherited (MPI's, a fuzzer's), and sets the limits. */
static void probe_child_setup(const probe_limits *limits)
{
    static const int signals[] = {SIGSEGV, SIGBUS,  SIGILL,  SIGFPE,  SIGABRT, SIGTRAP, SIGSYS,
                                  SIGXCPU, SIGXFSZ, SIGALRM, SIGTERM, SIGINT,  SIGHUP,  SIGPIPE};
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) signal(signals[i], SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
#ifdef PROBE_ASAN
    __sanitizer_set_death_callback(NULL); /* a fuzzer's callback would save a crash file */
#endif
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);

    /* The limit counts from the inherited mappings: an MPI process (and a sanitizer's
     * shadow memory) already maps much more than a model's metadata needs. */
    size_t mapped = probe_mapped_bytes();
    struct rlimit as;
    if (mapped > 0 && getrlimit(RLIMIT_AS, &as) == 0) {
        rlim_t want = (rlim_t)mapped + (rlim_t)limits->memory_bytes;
        if (as.rlim_max == RLIM_INFINITY || want < as.rlim_max) as.rlim_cur = want;
        setrlimit(RLIMIT_AS, &as);
    }
    /* A second time limit, for when the parent is gone before it can kill the child. */
    alarm((unsigned)ceil(fmin(limits->seconds, PROBE_MAX_SECONDS)) + 2);
}

static void probe_child(int fd, const probe_limits *limits, const char *path, probe_fn fn,
                        void *out, size_t out_bytes)
{
    child_fd = fd;
    probe_child_setup(limits);
    tf_status status = fn(path, out);
    int32_t code = (int32_t)status;
    probe_send(PROBE_RECORD_RESULT, &code, sizeof code, out, out_bytes,
               status == TF_OK ? "" : tf_error_get());
    _exit(0);
}

/* ---- The parent ------------------------------------------------------------------------ */

/* Takes the complete records from the front of reply->buf. */
static void probe_parse(probe_reply *reply, size_t out_bytes)
{
    size_t start = 0;
    probe_header head;
    while (reply->used - start >= sizeof head) {
        memcpy(&head, reply->buf + start, sizeof head);
        if (reply->used - start < sizeof head + head.bytes) break;
        const unsigned char *payload = reply->buf + start + sizeof head;
        if (head.kind == PROBE_RECORD_STAGE) {
            size_t n = head.bytes < PROBE_STAGE_BYTES ? head.bytes : PROBE_STAGE_BYTES - 1;
            memcpy(reply->stage, payload, n);
            reply->stage[n] = '\0';
        } else if (head.kind == PROBE_RECORD_RESULT && head.bytes >= 4 + out_bytes) {
            size_t n = head.bytes - 4 - out_bytes;
            if (n >= PROBE_MESSAGE_BYTES) n = PROBE_MESSAGE_BYTES - 1;
            memcpy(&reply->status, payload, 4);
            memcpy(reply->out, payload + 4, out_bytes);
            memcpy(reply->message, payload + 4 + out_bytes, n);
            reply->message[n] = '\0';
            reply->have_result = 1;
        }
        start += sizeof head + head.bytes;
    }
    memmove(reply->buf, reply->buf + start, reply->used - start);
    reply->used -= start;
}

static double probe_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Reads the child's records until it closes the pipe (returns 1) or the deadline passes
 * (returns 0). Returns -1 for a record too long for the buffer. */
static int probe_read(int fd, double deadline, size_t out_bytes, probe_reply *reply)
{
    for (;;) {
        double left = deadline - probe_now();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ready = poll(&p, 1, (int)ceil(fmin(left, PROBE_MAX_SECONDS) * 1000));
        if (ready < 0 && errno == EINTR) continue;
        if (ready == 0) return 0;
        ssize_t n =
            ready > 0 ? read(fd, reply->buf + reply->used, sizeof reply->buf - reply->used) : -1;
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 1;
        reply->used += (size_t)n;
        probe_parse(reply, out_bytes);
        if (reply->used == sizeof reply->buf) return -1;
    }
}

/* Waits for the child until the deadline, then kills it. Returns its wait status, or -1
 * when it was collected elsewhere. Sets *in_time to 0 when the child had to be killed. */
static int probe_reap(pid_t pid, double deadline, int *in_time)
{
    int wstatus = 0;
    *in_time = 1;
    for (;;) {
        pid_t done = waitpid(pid, &wstatus, *in_time ? WNOHANG : 0);
        if (done == pid) return wstatus;
        if (done < 0 && errno != EINTR) return -1;
        if (done == 0 && probe_now() >= deadline) {
            kill(pid, SIGKILL);
            *in_time = 0;
        } else if (done == 0) {
            nanosleep(&(struct timespec){0, 2000000}, NULL); /* 2 ms */
        }
    }
}

/* Reports a probe process that ended without a result: killed at the time limit
 * (in_time 0, or the child's own alarm), killed by another signal, or exited. */
static tf_status probe_failure(const char *path, const char *kind, const probe_limits *limits,
                               int in_time, int wstatus, const char *where)
{
    const int signaled = wstatus != -1 && WIFSIGNALED(wstatus);
    if (!in_time || (signaled && WTERMSIG(wstatus) == SIGALRM))
        return tf_error_set(TF_ERR_FORMAT,
                            "%s '%s': reading the file timed out after %g s while %s, so the "
                            "probe process was killed; the file is corrupt, or the file system "
                            "is slow (TFUSE_PROBE_SECONDS raises the limit)",
                            kind, path, limits->seconds, where);
    if (signaled)
        return tf_error_set(TF_ERR_FORMAT,
                            "%s '%s': HDF5 crashed (signal %d, %s) while %s; the file is corrupt",
                            kind, path, WTERMSIG(wstatus), strsignal(WTERMSIG(wstatus)), where);
    char how[64] = "an unknown exit status"; /* when another waitpid collected the child */
    if (wstatus != -1) snprintf(how, sizeof how, "exit status %d", WEXITSTATUS(wstatus));
    return tf_error_set(TF_ERR_FORMAT,
                        "%s '%s': the probe process ended with %s and no result while %s; the "
                        "file is corrupt, or reading it needs more than %zu MiB "
                        "(TFUSE_PROBE_MEMORY_MB raises the limit)",
                        kind, path, how, where, limits->memory_bytes >> 20);
}

/* Forks the child and collects its end. Returns TF_OK with *reply and *wstatus filled, or
 * TF_ERR_IO when the pipe or the fork fails. */
static tf_status probe_fork(const char *path, const char *kind, const probe_limits *limits,
                            probe_fn fn, void *out, size_t out_bytes, probe_reply *reply,
                            int *in_time, int *wstatus)
{
    int fds[2];
    if (pipe(fds) != 0)
        return tf_error_set(TF_ERR_IO, "probing %s '%s': pipe() failed: %s", kind, path,
                            strerror(errno));
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    fflush(NULL); /* or the child would hold a copy of the buffered output */
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        probe_child(fds[1], limits, path, fn, out, out_bytes);
    }
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        return tf_error_set(TF_ERR_IO,
                            "probing %s '%s': fork() failed: %s; set TFUSE_PROBE=off to read "
                            "model files without a probe process",
                            kind, path, strerror(errno));
    }

    /* Read the records until the child closes the pipe or the time limit passes. */
    const double deadline = probe_now() + limits->seconds;
    if (probe_read(fds[0], deadline, out_bytes, reply) < 0) reply->have_result = 0;
    close(fds[0]);
    *wstatus = probe_reap(pid, deadline, in_time);
    return TF_OK;
}

tf_status probe_run(const char *path, const char *kind, const char *stage, probe_fn fn, void *out,
                    size_t out_bytes)
{
    if (!path || !kind || !stage || !fn || out_bytes > PROBE_MAX_OUT || (out_bytes && !out))
        return tf_error_set(TF_ERR_ARG, "probe_run: NULL argument or out_bytes above %d",
                            PROBE_MAX_OUT);
    if (!probe_enabled()) return fn(path, out);

    /* A file whose probe process failed before fails alike, without a second wait. */
    const probe_known_file *k = probe_find(path);
    if (k && !k->accepted)
        return probe_failure(path, kind, &k->limits, k->in_time, k->wstatus, k->stage);

    probe_limits limits;
    probe_limits_for_file(path, &limits);
    probe_reply *reply = tf_calloc(1, sizeof *reply);
    if (!reply) return TF_ERR_NOMEM;
    int in_time = 1, wstatus = 0;
    tf_status status =
        probe_fork(path, kind, &limits, fn, out, out_bytes, reply, &in_time, &wstatus);
    const char *where = reply->stage[0] ? reply->stage : stage;
    const int exited = wstatus == -1 || (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
    if (status == TF_OK && in_time && reply->have_result && exited) {
        status = (tf_status)reply->status;
        if (status != TF_OK) tf_error_set(status, "%s", reply->message);
        if (status == TF_OK && out_bytes) memcpy(out, reply->out, out_bytes);
        if (status == TF_OK) probe_trust(path);
    } else if (status == TF_OK) {
        status = probe_failure(path, kind, &limits, in_time, wstatus, where);
        probe_remember(path, 0, in_time, wstatus, where, &limits);
    }
    free(reply);
    return status;
}
