#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { FUZZ_SLOTS = 4 };

static char paths[FUZZ_SLOTS][256];

/* Removes the temporary files when the fuzzer exits. */
static void fuzz_remove_temps(void)
{
    for (int i = 0; i < FUZZ_SLOTS; i++)
        if (paths[i][0]) unlink(paths[i]);
}

const char *fuzz_write_temp(int slot, const char *suffix, const uint8_t *bytes, size_t size)
{
    if (slot < 0 || slot >= FUZZ_SLOTS) abort();
    if (!paths[slot][0]) {
        const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(paths[slot], sizeof paths[slot], "%s/tfuse-fuzz-%ld-%d%s", dir, (long)getpid(),
                 slot, suffix);
        static int registered = 0;
        if (!registered) atexit(fuzz_remove_temps);
        registered = 1;
    }
    FILE *f = fopen(paths[slot], "wb");
    if (!f || (size > 0 && fwrite(bytes, 1, size, f) != size) || fclose(f) != 0) abort();
    return paths[slot];
}
