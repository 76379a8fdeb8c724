/* Corpus file tests: loading, the split by book, packing into sequences (worked out by hand
 * on a small file) and format errors that name the file and line. Given the path of
 * tools/bible_corpus.sh as argument, the test checks the King James Bible corpus it writes. */
#include "tfuse/text.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { SKIPPED = 77 };

static void write_file(const char *path, const char *content)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(content, f) < 0 || fclose(f) != 0) TF_DIE("cannot write %s", path);
}

/* Every word of the small corpus is one token: a .. h. */
static tok_vocab *letter_vocab(void)
{
    const char *path = "test_text_corpus_letters.vocab";
    write_file(path, "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\nc\nd\ne\nf\ng\nh\n");
    tok_vocab *v = NULL;
    if (tok_vocab_load(path, &v) != TF_OK) TF_DIE("%s", tf_error_get());
    remove(path);
    return v;
}

/* Compares sequence s of seqs with the letters of want ("abc" means [CLS] a b c [SEP]). */
static void check_sequence(const text_seqs *seqs, int64_t s, const char *want)
{
    const int T = seqs->seq_len, n = (int)strlen(want);
    TU_CHECK(seqs->lengths[s] == n + 2, "sequence %lld has length %d, expected %d", (long long)s,
             seqs->lengths[s], n + 2);
    const int *row = seqs->ids + s * T;
    int ok = row[0] == TOK_CLS && row[n + 1] == TOK_SEP;
    for (int k = 0; k < n; k++) ok &= row[k + 1] == TOK_NUM_SPECIAL + (want[k] - 'a');
    for (int t = n + 2; t < T; t++) ok &= row[t] == TOK_PAD;
    TU_CHECK(ok, "sequence %lld is [CLS] %s [SEP] padded with [PAD]", (long long)s, want);
}

static void check_small_corpus(void)
{
    const char *path = "test_text_corpus_small.tsv";
    write_file(path, "Alpha\t1:1\tA b\nAlpha\t1:2\tc d e\nAlpha\t2:1\tf\n"
                     "Beta Two\t1:1\ta b c d e f g h\nBeta Two\t1:2\ta\n"
                     "Gamma\t3:7\ta b c\r\nGamma\t3:8\td e f g\n");
    corpus *c = NULL;
    TU_CHECK(corpus_load(path, &c) == TF_OK, "load: %s", tf_error_get());
    if (!c) return;
    TU_CHECK(c->num_verses == 7 && c->num_books == 3, "7 verses of 3 books, got %lld of %d",
             (long long)c->num_verses, c->num_books);
    TU_CHECK(strcmp(c->book_names[1], "Beta Two") == 0, "book name with a space");
    TU_CHECK(c->chapter[5] == 3 && c->verse[5] == 7, "reference 3:7 parsed");
    TU_CHECK(strcmp(c->text[5], "a b c") == 0, "carriage return removed: \"%s\"", c->text[5]);

    uint8_t held[3];
    const char *names[] = {"Beta Two"};
    TU_CHECK(corpus_split(c, names, 1, held) == TF_OK, "split: %s", tf_error_get());
    TU_CHECK(held[0] == 0 && held[1] == 1 && held[2] == 0, "only Beta Two is held out");
    const char **texts = NULL;
    int64_t count = 0;
    TU_CHECK(corpus_texts(c, held, 0, &texts, &count) == TF_OK && count == 5,
             "5 training verses, got %lld", (long long)count);
    free(texts);
    const char *unknown[] = {"Delta"};
    TU_CHECK(corpus_split(c, unknown, 1, held) == TF_ERR_ARG, "unknown book rejected");
    TU_CHECK(strstr(tf_error_get(), "\"Delta\"") != NULL, "message names it: %s", tf_error_get());

    /* T = 8 leaves room for 6 tokens: Alpha packs 2 + 3 + 1; the 8-token verse of Beta Two
     * fills one sequence and its rest joins the next verse; Gamma's 3 + 4 do not fit. */
    corpus_split(c, names, 1, held);
    tok_vocab *v = letter_vocab();
    text_seqs *train = NULL, *test = NULL;
    TU_CHECK(text_seqs_build(c, held, 0, v, 8, &train) == TF_OK, "build: %s", tf_error_get());
    TU_CHECK(text_seqs_build(c, held, 1, v, 8, &test) == TF_OK, "build: %s", tf_error_get());
    if (train && test) {
        TU_CHECK(train->count == 3, "3 training sequences, got %lld", (long long)train->count);
        TU_CHECK(test->count == 2, "2 held-out sequences, got %lld", (long long)test->count);
        if (train->count == 3) {
            check_sequence(train, 0, "abcdef");
            check_sequence(train, 1, "abc");
            check_sequence(train, 2, "defg");
        }
        if (test->count == 2) {
            check_sequence(test, 0, "abcdef");
            check_sequence(test, 1, "gha");
        }
    }
    text_seqs *too_short = NULL;
    TU_CHECK(text_seqs_build(c, held, 0, v, 2, &too_short) == TF_ERR_ARG, "seq_len 2 rejected");
    text_seqs_free(&train);
    text_seqs_free(&test);
    tok_vocab_free(&v);
    corpus_free(&c);
    remove(path);
}

static void check_bad_file(const char *content, int line, const char *reason)
{
    const char *path = "test_text_corpus_bad.tsv";
    write_file(path, content);
    corpus *c = NULL;
    tf_status st = corpus_load(path, &c);
    char where[128];
    snprintf(where, sizeof where, line > 0 ? "%s:%d:" : "%s:", path, line);
    TU_CHECK(st == TF_ERR_FORMAT, "%s: status %s", reason, tf_status_str(st));
    TU_CHECK(strstr(tf_error_get(), where) != NULL, "%s: message \"%s\" names %s", reason,
             tf_error_get(), where);
    TU_CHECK(c == NULL, "%s: no corpus returned", reason);
    remove(path);
}

static void check_bad_files(void)
{
    check_bad_file("A\t1:1\tx\nA 1:2 y\n", 2, "no tabs");
    check_bad_file("A\t1:1\tx\tz\n", 1, "four fields");
    check_bad_file("A\t1:1\tx\nA\t1-2\ty\n", 2, "reference without colon");
    check_bad_file("A\t0:1\tx\n", 1, "chapter 0");
    check_bad_file("A\t1:x\tx\n", 1, "verse not a number");
    check_bad_file("A\t1:1\t\n", 1, "empty text");
    check_bad_file("\t1:1\tx\n", 1, "empty book");
    check_bad_file("A\t1:1\tx\nB\t1:1\ty\nA\t1:2\tz\n", 3, "book not consecutive");
    check_bad_file("", 0, "empty file");
    corpus *c = NULL;
    TU_CHECK(corpus_load("no_such_dir/corpus.tsv", &c) == TF_ERR_IO, "missing file");
    TU_CHECK(strstr(tf_error_get(), "no_such_dir/corpus.tsv") != NULL, "message names it");
}

/* Runs tools/bible_corpus.sh and checks the corpus: 31 102 verses in 66 books from
 * Genesis 1:1 to Revelation 22:21, and 1 086 verses in the default held-out books. */
static int check_bible(const char *script)
{
    if (system("command -v bible >/dev/null 2>&1") != 0) {
        printf("bible (Debian package bible-kjv) is not installed; skipping\n");
        return SKIPPED;
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "sh '%s' test_text_corpus_kjv.tsv", script);
    TU_CHECK(system(cmd) == 0, "%s failed", cmd);
    corpus *c = NULL;
    TU_CHECK(corpus_load("test_text_corpus_kjv.tsv", &c) == TF_OK, "load: %s", tf_error_get());
    if (!c) return 1;
    const int64_t last = c->num_verses - 1;
    TU_CHECK(c->num_verses == 31102, "31102 verses, got %lld", (long long)c->num_verses);
    TU_CHECK(c->num_books == 66, "66 books, got %d", c->num_books);
    TU_CHECK(strcmp(c->book_names[0], "Genesis") == 0 && c->chapter[0] == 1 && c->verse[0] == 1,
             "first verse is Genesis 1:1");
    TU_CHECK(strncmp(c->text[0], "In the beginning God created", 28) == 0, "Genesis 1:1 text");
    TU_CHECK(strcmp(c->book_names[c->verse_book[last]], "Revelation") == 0 &&
                 c->chapter[last] == 22 && c->verse[last] == 21,
             "last verse is Revelation 22:21");
    uint8_t held[66];
    TU_CHECK(corpus_split(c, corpus_default_heldout, CORPUS_DEFAULT_HELDOUT_COUNT, held) == TF_OK,
             "default split: %s", tf_error_get());
    const char **texts = NULL;
    int64_t count = 0;
    corpus_texts(c, held, 1, &texts, &count);
    TU_CHECK(count == 1086, "1086 held-out verses, got %lld", (long long)count);
    free(texts);
    corpus_free(&c);
    remove("test_text_corpus_kjv.tsv");
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc > 1) {
        if (check_bible(argv[1]) == SKIPPED) {
            MPI_Finalize();
            return SKIPPED;
        }
    } else {
        check_small_corpus();
        check_bad_files();
    }
    int rc = tu_finish("test_text_corpus");
    MPI_Finalize();
    return rc;
}
