/* Helpers for tfuse's test programs: checks that count failures, tolerance comparisons
 * that print the largest error and the first mismatches, and a closing line. */
#ifndef TFUSE_TESTUTIL_H
#define TFUSE_TESTUTIL_H

#include <stdint.h>

/* Records one check. On failure prints the message with file:line. */
void tu_check(int ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define TU_CHECK(cond, ...) tu_check(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

/* Compares got with want elementwise: |got - want| <= atol + rtol * |want|. Prints the
 * largest absolute and relative error and the first 10 mismatches with indices. Returns
 * 1 if all match. Counts as one check. */
int tu_close_f64(const char *what, const double *got, const double *want, int64_t n,
                 double rtol, double atol);
int tu_close_f32(const char *what, const float *got, const float *want, int64_t n,
                 double rtol, double atol);

/* Prints "<name>: N passed, N failed" on rank 0 after combining the counts of all ranks
 * of MPI_COMM_WORLD, and returns the exit code (0 if nothing failed anywhere).
 * Collective on MPI_COMM_WORLD. */
int tu_finish(const char *name);

/* Failures counted so far on this rank. */
int tu_failures(void);

#endif
