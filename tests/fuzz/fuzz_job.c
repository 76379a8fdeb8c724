/* libFuzzer target: the job file parser on arbitrary text. Every input must either parse
 * or fail with a message that names the file. */
#include "tfuse/job.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    job_file *job = NULL;
    tf_status st = job_file_parse(text, "fuzz.json", &job);
    if (st != TF_OK && (job != NULL || strstr(tf_error_get(), "fuzz.json") == NULL)) abort();
    if (st == TF_OK && (job == NULL || job->n_tasks < 1)) abort();
    job_file_free(&job);
    free(text);
    return 0;
}
