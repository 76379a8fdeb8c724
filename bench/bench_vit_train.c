/* Training throughput of the ViT: images per second for forward, backward and one AdamW
 * step on random inputs. Usage: bench_vit_train [steps] [batch] [repeats]. The number of
 * BLAS threads comes from OPENBLAS_NUM_THREADS. Prints one line per repeat and the medians of
 * images per second and per CPU second. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tfuse/vit.h"

/* CPU seconds used by all threads of this process. */
static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 30;
    int batch = argc > 2 ? atoi(argv[2]) : 128;
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    if (steps <= 0 || batch <= 0 || repeats <= 0 || repeats > 100) {
        fprintf(stderr, "usage: bench_vit_train [steps > 0] [batch > 0] [repeats in 1..100]\n");
        return 2;
    }
    vit_config cfg = {.image_size = 28,
                      .channels = 1,
                      .patch = 7,
                      .d = 64,
                      .layers = 4,
                      .heads = 4,
                      .mlp = 256,
                      .classes = 10,
                      .ln_eps = 1e-12};
    vit_model *model = NULL;
    vit_acts *acts = NULL;
    vit_adamw *opt = NULL;
    if (vit_model_create(&cfg, &model) != TF_OK || vit_acts_create(&cfg, batch, &acts) != TF_OK ||
        vit_adamw_create(model, 0.9, 0.999, 1e-8, 0.05, &opt) != TF_OK) {
        fprintf(stderr, "bench_vit_train: setup failed: %s\n", tf_error_get());
        return 1;
    }
    vit_model_init(model, 1);
    tf_rng rng;
    tf_rng_seed(&rng, 2);
    int64_t pixels = (int64_t)batch * 28 * 28;
    float *images = malloc((size_t)pixels * sizeof(float));
    float *grads = malloc((size_t)model->num_params * sizeof(float));
    int *labels = malloc((size_t)batch * sizeof(int));
    for (int64_t i = 0; i < pixels; i++) images[i] = (float)tf_rng_normal(&rng);
    for (int b = 0; b < batch; b++) labels[b] = (int)tf_rng_below(&rng, 10);

    const char *threads = getenv("OPENBLAS_NUM_THREADS");
    double rates[100], cpu_rates[100];
    float loss = 0.0f;
    for (int r = -1; r < repeats; r++) {
        double start = tf_seconds(), cpu_start = cpu_seconds();
        for (int s = 0; s < (r < 0 ? 3 : steps); s++) {
            if (vit_forward(model, acts, images, labels, batch, &loss) != TF_OK ||
                vit_backward(model, acts, labels, grads) != TF_OK) {
                fprintf(stderr, "bench_vit_train: step failed: %s\n", tf_error_get());
                return 1;
            }
            vit_adamw_step(opt, model, grads, 1e-4);
        }
        double seconds = tf_seconds() - start, cpu = cpu_seconds() - cpu_start;
        if (r < 0) continue; /* warmup */
        rates[r] = (double)steps * batch / seconds;
        cpu_rates[r] = (double)steps * batch / cpu;
        printf("tfuse repeat %d: %.1f images/s, %.1f images per CPU second (%.2f ms/step, "
               "loss %.4f)\n",
               r, rates[r], cpu_rates[r], 1e3 * seconds / steps, loss);
    }
    qsort(rates, (size_t)repeats, sizeof(double), compare_double);
    qsort(cpu_rates, (size_t)repeats, sizeof(double), compare_double);
    printf("tfuse median: %.1f images/s, %.1f images per CPU second, batch %d, "
           "OPENBLAS_NUM_THREADS=%s\n",
           rates[repeats / 2], cpu_rates[repeats / 2], batch, threads ? threads : "(unset)");
    free(images), free(grads), free(labels);
    vit_adamw_free(&opt);
    vit_acts_free(&acts);
    vit_model_free(&model);
    return 0;
}
