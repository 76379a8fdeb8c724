/* Probes: the first parse of an input file runs in a forked child process. HDF5 1.10's
 * decoder crashes or hangs on some corrupt files, and in a child such a file ends in an
 * error message instead of killing the MPI job.
 *
 * The child must not call MPI. It runs the probe function, sends its status, message and
 * result through a pipe and ends with _exit. The parent waits with a time limit and turns
 * a crash, a time-out or an exit without a result into TF_ERR_FORMAT naming the file.
 *
 * Limits, read from the environment on every probe:
 *   TFUSE_PROBE_SECONDS    wall-clock limit in seconds (default 30 s plus 1 s per 50 MB of
 *                          file)
 *   TFUSE_PROBE_MEMORY_MB  address space in MiB that the child may add to what it inherits
 *                          (default 1024 MiB plus twice the file size)
 *   TFUSE_PROBE=off        runs the probe functions in the calling process, for systems
 *                          where fork() is unsafe for the MPI library */
#ifndef TFUSE_PROBE_H
#define TFUSE_PROBE_H

#include <stddef.h>
#include "tfuse/common.h"

/* Limits of one probe process. */
typedef struct {
    double seconds;      /* wall-clock time before the child is killed */
    size_t memory_bytes; /* address space the child may map beyond what it inherits */
} probe_limits;

/* Work done in the child: checks the file at path, writes its result to out (the
 * out_bytes given to probe_run) and returns a status with a message set by tf_error_set. */
typedef tf_status (*probe_fn)(const char *path, void *out);

/* Computes the limits for the file at path: the defaults scaled by its size, replaced by
 * TFUSE_PROBE_SECONDS and TFUSE_PROBE_MEMORY_MB when they hold a positive number. A missing
 * file gets the defaults for size 0. */
void probe_limits_for_file(const char *path, probe_limits *limits);

/* Returns 0 when TFUSE_PROBE is "off" or "0", else 1. */
int probe_enabled(void);

/* Runs fn(path, out) in a forked child with the limits of probe_limits_for_file. `kind`
 * names the file in messages ("model file"), and `stage` describes what the child does
 * ("reading the file's metadata"). Not collective, and the caller's communicators are untouched.
 * Returns the child's status and message; on TF_OK, out receives the child's out_bytes
 * and the file is recorded as trusted (probe_is_trusted). A child that is killed by a
 * signal, exceeds the time limit or exits without a result gives TF_ERR_FORMAT with a
 * message naming the file, the signal or limit, and the last stage the child reported.
 * TF_ERR_IO when the pipe or the fork fails. With TFUSE_PROBE=off, runs fn in this process.
 * NOTE: the child inherits HDF5's state, so the file must not be open in this process. */
tf_status probe_run(const char *path, const char *kind, const char *stage, probe_fn fn, void *out,
                    size_t out_bytes);

/* Reports what the probe child is doing now (printf format), so that a crash message can
 * name it, e.g. "reading attribute 'format'". Does nothing outside a probe child. */
void probe_stage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Records that this process has parsed the file at path without failure (a probe accepted
 * it, or this process wrote it). The record stores the device, inode, size and modification
 * time, so a file replaced or changed afterwards is no longer trusted. */
void probe_trust(const char *path);

/* Returns 1 if probe_trust recorded the file at path and it is unchanged, else 0. */
int probe_is_trusted(const char *path);

#endif
