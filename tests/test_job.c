/* Job file parser: a valid job with defaults, and malformed jobs whose messages must name
 * the key path and the problem. */
#include "testutil.h"
#include "tfuse/job.h"
#include "tfuse/text.h"

#include <stdio.h>
#include <string.h>

static void test_valid(void)
{
    const char *text =
        "{\"tasks\": ["
        " {\"task\": \"train\", \"name\": \"a\", \"model\": {\"d\": 32, \"heads\": 2},"
        "  \"epochs\": 2, \"seed\": 7, \"output\": \"out/a.h5\"},"
        " {\"task\": \"fuse\", \"parents\": [\"out/a.h5\", \"out/b.h5\", \"out/c.h5\"],"
        "  \"anchor\": 1, \"weights\": [0.25, 0.5, 0.25],"
        "  \"methods\": [{\"name\": \"vanilla\", \"method\": \"vanilla\"},"
        "               {\"name\": \"ot\", \"solver\": \"sinkhorn\", \"epsilon\": 0.05,"
        "                \"residual\": \"mean\", \"attention\": \"head_aware\","
        "                \"weights\": [0, 0.875, 0.125]}],"
        "  \"finetune\": {\"steps\": 50}, \"report\": \"out/r.json\"}]}";
    job_file *job = NULL;
    tf_status st = job_file_parse(text, "valid.json", &job);
    TU_CHECK(st == TF_OK, "valid job rejected: %s", tf_error_get());
    if (st != TF_OK) return;
    TU_CHECK(job->n_tasks == 2, "expected 2 tasks, got %d", job->n_tasks);
    const job_train *t = &job->tasks[0].train;
    TU_CHECK(t->model.d == 32 && t->model.heads == 2 && t->model.layers == 4,
             "model fields or defaults wrong: d %d heads %d layers %d", t->model.d, t->model.heads,
             t->model.layers);
    TU_CHECK(t->epochs == 2 && t->seed == 7 && t->batch_size == 128, "train fields wrong");
    TU_CHECK(strstr(t->data.train_images, "train-images-idx3-ubyte.gz") != NULL,
             "default training images path wrong: %s", t->data.train_images);
    TU_CHECK(t->data.train_offset == 0 && t->data.train_limit == 0,
             "default train_offset and train_limit must be 0");
    const job_fuse *f = &job->tasks[1].fuse;
    TU_CHECK(f->n_parents == 3 && f->anchor == 1, "parents or anchor wrong");
    TU_CHECK(f->weights[1] == 0.5, "weights wrong");
    TU_CHECK(f->n_methods == 2 && f->methods[0].kind == JOB_METHOD_VANILLA, "methods wrong");
    TU_CHECK(f->methods[1].ot.solver == FUSE_SOLVER_SINKHORN &&
                 f->methods[1].ot.solver_mlp == FUSE_SOLVER_SINKHORN &&
                 f->methods[1].ot.epsilon == 0.05 &&
                 f->methods[1].ot.residual == FUSE_RESIDUAL_MEAN &&
                 f->methods[1].ot.attention == FUSE_ATTN_HEAD_AWARE,
             "OT options wrong");
    TU_CHECK(f->finetune.steps == 50 && f->finetune.batch_size == 128, "finetune wrong");
    /* A method without "weights" takes the task's. A method's own weights replace them for
     * that method only, and the task's stay for the distillation targets. */
    const job_method *m0 = &f->methods[0], *m1 = &f->methods[1];
    TU_CHECK(!m0->own_weights && m0->n_weights == 3 && m0->weights[0] == 0.25 &&
                 m0->weights[1] == 0.5 && m0->weights[2] == 0.25,
             "method 0 must take the task's weights");
    TU_CHECK(m1->own_weights && m1->n_weights == 3 && m1->weights[0] == 0 &&
                 m1->weights[1] == 0.875 && m1->weights[2] == 0.125,
             "method 1 weights wrong: %g %g %g", m1->weights[0], m1->weights[1], m1->weights[2]);
    TU_CHECK(f->weights[0] == 0.25 && f->weights[2] == 0.25, "method weights changed the task's");
    job_file_free(&job);
    TU_CHECK(job == NULL, "job_file_free must null the pointer");
}

static void expect_error(const char *text, const char *word1, const char *word2)
{
    job_file *job = NULL;
    tf_status st = job_file_parse(text, "bad.json", &job);
    const char *msg = tf_error_get();
    TU_CHECK(st != TF_OK && job == NULL, "accepted a bad job: %s", text);
    TU_CHECK(strstr(msg, "bad.json") != NULL, "message lacks the file name: %s", msg);
    TU_CHECK(strstr(msg, word1) != NULL, "message lacks \"%s\": %s", word1, msg);
    TU_CHECK(!word2 || strstr(msg, word2) != NULL, "message lacks \"%s\": %s", word2, msg);
    job_file_free(&job);
}

#define TRAIN_HEAD "{\"tasks\": [{\"task\": \"train\", \"output\": \"x.h5\", "
#define FUSE_HEAD "{\"tasks\": [{\"task\": \"fuse\", \"parents\": [\"a.h5\", \"b.h5\"], "
#define BERT_HEAD TRAIN_HEAD "\"model\": {\"architecture\": \"bert\"}, "

static void test_invalid(void)
{
    expect_error("{\"tasks\": [", "invalid JSON", NULL);
    expect_error("{}", "tasks", NULL);
    expect_error("{\"resume\": 1, \"tasks\": [{\"task\": \"train\", \"model\": {}, "
                 "\"output\": \"x.h5\"}]}",
                 "job.resume", "true or false");
    expect_error("{\"tasks\": []}", "tasks", "non-empty");
    expect_error("{\"taks\": []}", "taks", "did you mean \"tasks\"");
    expect_error("{\"tasks\": [{\"name\": \"x\"}]}", "tasks[0].task", "missing");
    expect_error("{\"tasks\": [{\"task\": \"bake\"}]}", "tasks[0].task", "\"bake\"");
    expect_error(TRAIN_HEAD "\"model\": {}, \"epohcs\": 2}]}", "tasks[0].epohcs",
                 "did you mean \"epochs\"");
    expect_error(TRAIN_HEAD "\"model\": {\"d\": \"64\"}}]}", "tasks[0].model.d",
                 "must be an integer");
    expect_error(TRAIN_HEAD "\"model\": {\"d\": 64.5}}]}", "tasks[0].model.d", "integer");
    expect_error(TRAIN_HEAD "\"model\": {\"d\": 0}}]}", "tasks[0].model.d", "out of range");
    expect_error(TRAIN_HEAD "\"model\": {}, \"data\": {\"train_offset\": -1}}]}",
                 "tasks[0].data.train_offset", "-1");
    expect_error(TRAIN_HEAD "\"model\": {\"d\": 30, \"heads\": 4}}]}", "tasks[0].model.d",
                 "multiple of heads");
    expect_error(TRAIN_HEAD "\"model\": {\"patch\": 5}}]}", "image_size", "patch");
    expect_error(TRAIN_HEAD "\"model\": {\"architecture\": \"resnet\"}}]}",
                 "tasks[0].model.architecture", "resnet");
    expect_error("{\"tasks\": [{\"task\": \"train\", \"model\": {}}]}", "tasks[0].output",
                 "missing");
    expect_error(TRAIN_HEAD "\"model\": {}, \"overwrite\": 1}]}", "tasks[0].overwrite",
                 "true or false");
    expect_error(TRAIN_HEAD "\"model\": {}, \"optimizer\": {\"lr\": -1}}]}",
                 "tasks[0].optimizer.lr", "out of range");
    expect_error(TRAIN_HEAD "\"model\": {}, \"data\": {\"train_imgs\": \"x\"}}]}",
                 "tasks[0].data.train_imgs", "unknown key");
    expect_error(TRAIN_HEAD "\"model\": {}, \"epochs\": 0}]}", "epochs", "steps");
    expect_error(FUSE_HEAD "\"methods\": []}]}", "tasks[0].methods", "non-empty");
    expect_error("{\"tasks\": [{\"task\": \"fuse\", \"parents\": [\"a.h5\"], \"methods\": "
                 "[{\"name\": \"v\"}]}]}",
                 "tasks[0].parents", "between 2");
    expect_error(FUSE_HEAD "\"anchor\": 2, \"methods\": [{\"name\": \"v\"}]}]}", "tasks[0].anchor",
                 "out of range");
    expect_error(FUSE_HEAD "\"weights\": [0.5, 0.6], \"methods\": [{\"name\": \"v\"}]}]}",
                 "tasks[0].weights", "sum to 1");
    expect_error(FUSE_HEAD "\"weights\": [1], \"methods\": [{\"name\": \"v\"}]}]}",
                 "tasks[0].weights", "one per parent");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\", \"weights\": [0.9, 0.2]}]}]}",
                 "tasks[0].methods[0].weights", "sum to 1");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\", \"weights\": [1, 0, 0]}]}]}",
                 "tasks[0].methods[0].weights must be an array of 2 numbers", "[1,0,0]");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\", \"weights\": [1.5, -0.5]}]}]}",
                 "tasks[0].methods[0].weights[1] must be a number >= 0", "-0.5");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\", \"solver\": \"hungarian\"}]}]}",
                 "tasks[0].methods[0].solver", "exact, sinkhorn");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\", \"residul\": \"mean\"}]}]}",
                 "tasks[0].methods[0].residul", "did you mean \"residual\"");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"a/b\"}]}]}", "tasks[0].methods[0].name",
                 "letters");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\"}, {\"name\": \"v\"}]}]}",
                 "tasks[0].methods[1].name", "used twice");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\", \"epsilon\": 0}]}]}",
                 "tasks[0].methods[0].epsilon", "out of range");
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\"}], \"finetune\": {}}]}",
                 "tasks[0].finetune.steps", "missing");
}

/* Wrong types: the message shows the value found as compact JSON. */
static void test_found_values(void)
{
    const char *method = "\"methods\": [{\"name\": \"v\"}]";
    char text[512];
    snprintf(text, sizeof text, FUSE_HEAD "\"calibration_samples\": \"400\", %s}]}", method);
    expect_error(text, "tasks[0].calibration_samples must be an integer; found \"400\"", NULL);
    snprintf(text, sizeof text, FUSE_HEAD "\"overwrite\": \"yes\", %s}]}", method);
    expect_error(text, "tasks[0].overwrite must be true or false; found \"yes\"", NULL);
    snprintf(text, sizeof text, FUSE_HEAD "\"weights\": [0.3, \"0.7\"], %s}]}", method);
    expect_error(text, "tasks[0].weights[1] must be a number >= 0; found \"0.7\"", NULL);
    snprintf(text, sizeof text, FUSE_HEAD "\"weights\": [1e400, 0], %s}]}", method);
    expect_error(text, "tasks[0].weights[0] must be a number >= 0; found a number too large", NULL);
    snprintf(text, sizeof text, FUSE_HEAD "\"weights\": [-0.5, 1.5], %s}]}", method);
    expect_error(text, "tasks[0].weights[0] must be a number >= 0; found -0.5", NULL);
    snprintf(text, sizeof text, FUSE_HEAD "\"weights\": {\"a\": 1}, %s}]}", method);
    expect_error(text, "tasks[0].weights must be an array of 2 numbers", "found {\"a\":1}");
    expect_error(FUSE_HEAD "\"methods\": \"ot\"}]}", "tasks[0].methods must be", "found \"ot\"");
    expect_error("{\"tasks\": [{\"task\": \"fuse\", \"parents\": [\"a.h5\", \"b.h5\"]}]}",
                 "missing required key tasks[0].methods", NULL);
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\", \"zscore\": null}]}]}",
                 "tasks[0].methods[0].zscore must be true or false; found null", NULL);
    expect_error(FUSE_HEAD "\"methods\": [{\"name\": \"v\", \"solver\": 2}]}]}",
                 "tasks[0].methods[0].solver must be a string; found 2", NULL);
    expect_error(FUSE_HEAD "\"methods\": [7]}]}", "tasks[0].methods[0] must be a JSON object",
                 "found 7");
    expect_error("{\"tasks\": [{\"task\": \"fuse\", \"parents\": \"a.h5\"}]}",
                 "tasks[0].parents must be an array of file names; found \"a.h5\"", NULL);
    expect_error("{\"tasks\": [{\"task\": \"fuse\", \"parents\": [\"a.h5\", null]}]}",
                 "tasks[0].parents[1] must be a file name; found null", NULL);
    expect_error(TRAIN_HEAD "\"model\": {\"d\": 64.5}}]}",
                 "tasks[0].model.d must be an integer; found 64.5", NULL);
    expect_error(TRAIN_HEAD "\"model\": {}, \"seed\": 1e20}]}",
                 "tasks[0].seed = 1e+20 is out of range [0, 4503599627370496]", NULL);
    expect_error(TRAIN_HEAD "\"model\": {}, \"steps\": -1e400}]}", "tasks[0].steps = -inf",
                 "out of range");
    expect_error(TRAIN_HEAD "\"model\": {\"d\": true}}]}",
                 "tasks[0].model.d must be an integer; found true", NULL);
    expect_error(TRAIN_HEAD "\"model\": [1, 2]}]}", "tasks[0].model must be a JSON object",
                 "found [1,2]");
    expect_error(TRAIN_HEAD "\"model\": {}, \"optimizer\": {\"lr\": \"fast\"}}]}",
                 "tasks[0].optimizer.lr must be a number; found \"fast\"", NULL);
    expect_error(TRAIN_HEAD "\"model\": {}, \"data\": \"mnist\"}]}",
                 "tasks[0].data must be a JSON object; found \"mnist\"", NULL);
    expect_error(TRAIN_HEAD "\"model\": {}, \"name\": [\"a\"]}]}",
                 "tasks[0].name must be a string; found [\"a\"]", NULL);
    expect_error(BERT_HEAD "\"data\": {\"heldout\": \"Ruth\"}}]}", "tasks[0].data.heldout",
                 "found \"Ruth\"");
    expect_error(BERT_HEAD "\"data\": {\"heldout\": [\"Ruth\", 3]}}]}",
                 "tasks[0].data.heldout[1] must be a book name", "found 3");
    expect_error("{\"description\": 5, \"tasks\": []}", "job.description must be a string; found 5",
                 NULL);
    expect_error("{\"tasks\": {}}", "job.tasks must be a non-empty array of tasks; found {}", NULL);
    expect_error("{\"tasks\": [\"train\"]}", "tasks[0] must be a JSON object; found \"train\"",
                 NULL);
    expect_error("[1, 2]", "job must be a JSON object; found [1,2]", NULL);
}

/* Long values are cut to at most 60 bytes, never inside a UTF-8 character. */
static void test_found_truncated(void)
{
    char text[1024], expected[128];
    int len = snprintf(text, sizeof text, TRAIN_HEAD "\"model\": {}, \"seed\": [");
    for (int i = 0; i < 100; i++) len += snprintf(text + len, sizeof text - (size_t)len, "%d,", i);
    snprintf(text + len - 1, sizeof text - (size_t)len + 1, "]}]}");
    /* "[0,1,...,": 60 characters of the array, then "...". */
    len = snprintf(expected, sizeof expected, "found [");
    for (int i = 0; len < 66; i++)
        len += snprintf(expected + len, sizeof expected - (size_t)len, "%d,", i);
    expected[66] = '\0';
    expect_error(text, "tasks[0].seed must be an integer", expected);
    const char *msg = tf_error_get();
    const char *found = strstr(msg, "found [");
    TU_CHECK(found && strlen(found) == strlen("found ") + 60 + 3 &&
                 strcmp(found + strlen(found) - 3, "...") == 0,
             "long value not cut to 60 characters and \"...\": %s", msg);

    /* 40 two-byte characters: the cut at byte 60 falls after the quote and 29 characters
     * plus one lead byte, so it must step back to 59 bytes. */
    len = snprintf(text, sizeof text, TRAIN_HEAD "\"model\": {}, \"seed\": \"");
    for (int i = 0; i < 40; i++) len += snprintf(text + len, sizeof text - (size_t)len, "\xc3\xa9");
    snprintf(text + len, sizeof text - (size_t)len, "\"}]}");
    expect_error(text, "tasks[0].seed must be an integer", "...");
    msg = tf_error_get();
    found = strstr(msg, "found \"");
    TU_CHECK(found != NULL, "no value in: %s", msg);
    if (!found) return;
    const char *value = found + strlen("found \"");
    size_t n = strlen(value) - 3;
    TU_CHECK(n == 58, "expected 29 characters (58 bytes) before \"...\", got %zu bytes: %s", n,
             msg);
    int broken = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        broken += (unsigned char)value[i] != 0xc3 || (unsigned char)value[i + 1] != 0xa9;
    TU_CHECK(broken == 0 && n % 2 == 0, "value cut inside a UTF-8 character: %s", msg);
}

/* Syntax errors name line and column (both from 1) and quote the text around them. */
static void test_syntax_errors(void)
{
    expect_error("{\n  \"tasks\": [],\n  \"steps\": 10 \"lr\": 1}",
                 "bad.json:3:15: invalid JSON near '\"steps\": 10 \"lr\": 1}'", NULL);
    expect_error("{\"tasks\": [", "bad.json:1:12: invalid JSON near '{\"tasks\": ['",
                 "ends before the JSON is complete");
    expect_error("{\"tasks\": [\n\n", "bad.json:1:12: invalid JSON near '{\"tasks\": ['",
                 "ends before the JSON is complete");
    expect_error("", "bad.json: invalid JSON: the file is empty", NULL);
    expect_error(" \n\t\n", "the file is empty", NULL);
    expect_error("{\"tasks\": []} x", "bad.json:1:15: invalid JSON near '{\"tasks\": []} x'",
                 "text follows the end of the JSON document");
    expect_error("{\r\n  \"a\": tru\r\n}", "bad.json:2:8: invalid JSON near '\"a\": tru'", NULL);
    expect_error("{\n\t\"a\":\t[1,]}", "bad.json:2:10: invalid JSON near '\"a\": [1,]}'", NULL);
    /* Column counts characters, so the two bytes of "é" count as one. */
    expect_error("{\"\xc3\xa9\": 1,, }", "bad.json:1:10: invalid JSON near '{\"\xc3\xa9\": 1,, }'",
                 NULL);

    /* A cut excerpt starts after a space, at the start of a token. */
    expect_error("{\"tasks\": [{\"task\": \"train\", \"steps\": 10 \"output\": \"x.h5\"}]}",
                 "bad.json:1:42: invalid JSON near '\"train\", \"steps\": 10 \"output\": \"x'",
                 NULL);

    /* On a long line the excerpt contains 24 characters before the error and 12 after it. */
    char text[512];
    int len = snprintf(text, sizeof text, "{\"description\": \"");
    for (int i = 0; i < 100; i++) text[len++] = (char)('a' + i % 26);
    snprintf(text + len, sizeof text - (size_t)len, "\" \"tasks\": [], \"more\": 123456789}");
    expect_error(
        text, "bad.json:1:120: invalid JSON near 'abcdefghijklmnopqrstuv\" \"tasks\": [],'", NULL);
}

static void test_bert_valid(void)
{
    const char *text =
        "{\"tasks\": ["
        " {\"task\": \"train\", \"output\": \"a.h5\", \"steps\": 10,"
        "  \"model\": {\"architecture\": \"bert\", \"d\": 64, \"vocab\": 512}},"
        " {\"task\": \"train\", \"output\": \"b.h5\", \"steps\": 10, \"vocab\": \"a.h5.vocab\","
        "  \"model\": {\"architecture\": \"bert\", \"d\": 64},"
        "  \"data\": {\"corpus\": \"c.tsv\", \"heldout\": [\"Ruth\", \"Mark\"], \"mask_prob\": 0.2,"
        "           \"eval_seed\": 5, \"train_limit\": 100}},"
        " {\"task\": \"fuse\", \"parents\": [\"a.h5\", \"b.h5\"], \"data\": {\"corpus\": "
        "\"c.tsv\"},"
        "  \"methods\": [{\"name\": \"ot\"}]}]}";
    job_file *job = NULL;
    tf_status st = job_file_parse(text, "bert.json", &job);
    TU_CHECK(st == TF_OK, "valid BERT job rejected: %s", tf_error_get());
    if (st != TF_OK) return;
    bert_config def;
    bert_config_default(&def);
    const job_train *a = &job->tasks[0].train, *b = &job->tasks[1].train;
    TU_CHECK(a->arch == JOB_ARCH_BERT && b->arch == JOB_ARCH_BERT, "architecture not bert");
    TU_CHECK(a->bert.d == 64 && a->bert.vocab == 512, "model fields wrong: d %d vocab %d",
             a->bert.d, a->bert.vocab);
    TU_CHECK(a->bert.layers == def.layers && a->bert.seq_len == def.seq_len &&
                 a->bert.mlp == def.mlp,
             "model defaults wrong");
    TU_CHECK(a->vocab[0] == '\0', "first task has a vocabulary file: %s", a->vocab);
    TU_CHECK(a->data.has_text && strcmp(a->data.text.corpus, "runs/data/kjv.tsv") == 0,
             "default corpus wrong: %s", a->data.text.corpus);
    TU_CHECK(a->data.text.n_heldout == CORPUS_DEFAULT_HELDOUT_COUNT &&
                 strcmp(a->data.text.heldout[0], corpus_default_heldout[0]) == 0,
             "default held-out books wrong");
    TU_CHECK(a->data.text.mask_prob == 0.15 && a->data.text.eval_seed == 0,
             "default masking wrong");
    TU_CHECK(b->bert.vocab == 0, "vocab size without model.vocab and with a file: %d",
             b->bert.vocab);
    TU_CHECK(strcmp(b->vocab, "a.h5.vocab") == 0, "vocab file wrong: %s", b->vocab);
    TU_CHECK(b->data.text.n_heldout == 2 && strcmp(b->data.text.heldout[1], "Mark") == 0,
             "held-out books wrong");
    TU_CHECK(b->data.text.mask_prob == 0.2 && b->data.text.eval_seed == 5 &&
                 b->data.text.train_limit == 100,
             "text data fields wrong");
    const job_fuse *f = &job->tasks[2].fuse;
    TU_CHECK(f->data.has_text && strcmp(f->data.text.corpus, "c.tsv") == 0, "fuse corpus wrong");
    job_file_free(&job);
}

static void test_bert_invalid(void)
{
    expect_error(TRAIN_HEAD "\"model\": {\"architecture\": \"bert\", \"patch\": 4}}]}",
                 "tasks[0].model.patch", "unknown key");
    expect_error(TRAIN_HEAD "\"model\": {\"architecture\": \"bert\", \"vocab\": 3}}]}",
                 "tasks[0].model.vocab", "out of range");
    expect_error(TRAIN_HEAD "\"model\": {\"architecture\": \"bert\", \"d\": 30, \"heads\": 4}}]}",
                 "d = 30", "heads = 4");
    expect_error(BERT_HEAD "\"data\": {\"dir\": \"x\"}}]}", "tasks[0].data.dir", "unknown key");
    expect_error(BERT_HEAD "\"data\": {\"heldout\": \"Ruth\"}}]}", "tasks[0].data.heldout",
                 "array");
    expect_error(BERT_HEAD "\"data\": {\"heldout\": []}}]}", "tasks[0].data.heldout", "array");
    expect_error(BERT_HEAD "\"data\": {\"heldout\": [\"\"]}}]}", "tasks[0].data.heldout[0]",
                 "book name");
    expect_error(BERT_HEAD "\"data\": {\"mask_prob\": 0}}]}", "tasks[0].data.mask_prob",
                 "out of range");
    expect_error(BERT_HEAD "\"vocab\": 12}]}", "tasks[0].vocab", "string");
    expect_error(TRAIN_HEAD "\"model\": {}, \"vocab\": \"v.txt\"}]}", "tasks[0].vocab",
                 "applies only");
    expect_error(FUSE_HEAD "\"data\": {\"corpus\": \"c.tsv\", \"train_images\": \"x\"}, "
                           "\"methods\": [{\"name\": \"v\"}]}]}",
                 "tasks[0].data.train_images", "unknown key");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    test_valid();
    test_invalid();
    test_bert_valid();
    test_bert_invalid();
    test_found_values();
    test_found_truncated();
    test_syntax_errors();
    int rc = tu_finish("test_job");
    MPI_Finalize();
    return rc;
}
