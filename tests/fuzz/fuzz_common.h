/* Helpers shared by the fuzz targets that read files: each input is written to a
 * temporary file that the target reuses for every input. */
#ifndef TFUSE_FUZZ_COMMON_H
#define TFUSE_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Creates (once per process) a temporary file whose name ends in suffix, writes bytes to
 * it, replacing what it held, and returns its path. Aborts on an I/O failure. */
const char *fuzz_write_temp(int slot, const char *suffix, const uint8_t *bytes, size_t size);

#endif
