/* Tokenizer tests on small handmade texts: a training result worked out by hand, known
 * WordPiece splits, round trips, determinism, the vocabulary file and its error messages. */
#include "tfuse/text.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void write_file(const char *path, const char *content)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(content, f) < 0 || fclose(f) != 0) TF_DIE("cannot write %s", path);
}

/* Encodes text and compares the token strings, joined by spaces, with want. */
static void check_split(const tok_vocab *v, const char *text, const char *want)
{
    tok_ids ids = {0};
    TU_CHECK(tok_encode(v, text, &ids) == TF_OK, "encode \"%s\": %s", text, tf_error_get());
    char got[512] = "";
    for (int64_t i = 0; i < ids.count; i++) {
        if (i > 0) strncat(got, " ", sizeof got - strlen(got) - 1);
        strncat(got, v->tokens[ids.ids[i]], sizeof got - strlen(got) - 1);
    }
    TU_CHECK(strcmp(got, want) == 0, "split of \"%s\": got \"%s\", expected \"%s\"", text, got,
             want);
    tok_ids_release(&ids);
}

/* Words "ab" x3 and "ac" x1: the alphabet sorted by byte is ##b ##c a, the pair (a, ##b)
 * occurs 3 times and becomes "ab", and (a, ##c) occurs once, so training stops there. */
static void check_training_by_hand(void)
{
    const char *texts[] = {"ab AB", "ab ac"};
    tok_vocab *v = NULL;
    TU_CHECK(tok_train(texts, 2, 50, &v) == TF_OK, "train: %s", tf_error_get());
    const char *want[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##b", "##c", "a", "ab"};
    const int n = (int)(sizeof want / sizeof want[0]);
    TU_CHECK(v->size == n, "vocabulary size %d, expected %d", v->size, n);
    for (int i = 0; i < n && i < v->size; i++)
        TU_CHECK(strcmp(v->tokens[i], want[i]) == 0, "token %d is \"%s\", expected \"%s\"", i,
                 v->tokens[i], want[i]);
    check_split(v, "ab ac abc", "ab a ##c ab ##c");
    check_split(v, "abd b", "[UNK] [UNK]");
    tok_vocab_free(&v);

    /* vocab_size caps the merges: with 8 tokens no merge fits */
    TU_CHECK(tok_train(texts, 2, 8, &v) == TF_OK, "train with 8: %s", tf_error_get());
    TU_CHECK(v && v->size == 8, "vocabulary capped at 8 tokens");
    tok_vocab_free(&v);
    TU_CHECK(tok_train(texts, 2, 7, &v) == TF_ERR_ARG, "vocab_size 7 cannot hold the alphabet");
    TU_CHECK(strstr(tf_error_get(), "at least 8") != NULL, "message gives the minimum: %s",
             tf_error_get());
    TU_CHECK(v == NULL, "no vocabulary on failure");
    const char *blank[] = {"  \t ", ""};
    TU_CHECK(tok_train(blank, 2, 50, &v) == TF_ERR_ARG, "texts without words rejected");
    TU_CHECK(v == NULL, "no vocabulary from texts without words");
}

/* The classic WordPiece example and punctuation, on a vocabulary file written by hand. */
static void check_known_splits(void)
{
    const char *path = "test_text_tokenizer_known.vocab";
    write_file(path, "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nun\n##aff\n##able\n##a\n##f\n"
                     "a\nff\n,\n!\nthe\n##s\ns\n");
    tok_vocab *v = NULL;
    TU_CHECK(tok_vocab_load(path, &v) == TF_OK, "load: %s", tf_error_get());
    if (!v) return;
    check_split(v, "unaffable", "un ##aff ##able");
    check_split(v, "UnAffable, the!", "un ##aff ##able , the !");
    check_split(v, "  the\tthes\n", "the the ##s");
    check_split(v, "affable xyz", "a ##f ##f ##able [UNK]");
    check_split(v, "", "");
    char *text = tf_malloc(TOK_MAX_WORD + 2);
    memset(text, 's', TOK_MAX_WORD + 1);
    text[TOK_MAX_WORD + 1] = '\0';
    check_split(v, text, "[UNK]");
    free(text);
    TU_CHECK(tok_lookup(v, "##aff", 5) == 6, "lookup of ##aff");
    TU_CHECK(tok_lookup(v, "##af", 4) == -1, "lookup of a missing token");
    tok_vocab_free(&v);
    remove(path);
}

static void check_round_trip_and_files(void)
{
    const char *texts[] = {
        "In the beginning God created the heaven and the earth.",
        "And God said, Let there be light: and there was light.",
        "The LORD's word (was) precious in those days; there was no open vision!",
        "Who is this King of glory? The LORD strong and mighty, the LORD mighty in battle."};
    const int n = 4;
    tok_vocab *v = NULL, *again = NULL, *loaded = NULL;
    TU_CHECK(tok_train(texts, n, 60, &v) == TF_OK, "train: %s", tf_error_get());
    TU_CHECK(tok_train(texts, n, 60, &again) == TF_OK, "train again: %s", tf_error_get());
    if (!v || !again) return;
    TU_CHECK(v->size == 60, "60 tokens learned, got %d", v->size);
    int same = v->size == again->size;
    for (int i = 0; same && i < v->size; i++) same = strcmp(v->tokens[i], again->tokens[i]) == 0;
    TU_CHECK(same, "training twice gives the same vocabulary");

    for (int i = 0; i < n; i++) {
        tok_ids ids = {0};
        TU_CHECK(tok_encode(v, texts[i], &ids) == TF_OK, "encode");
        char *back = tok_decode(v, ids.ids, ids.count), *norm = tok_normalize(texts[i]);
        TU_CHECK(back && norm && strcmp(back, norm) == 0,
                 "round trip of text %d: got \"%s\", expected \"%s\"", i, back, norm);
        for (int64_t k = 0; k < ids.count; k++)
            TU_CHECK(ids.ids[k] != TOK_UNK, "no [UNK] in a training text");
        free(back);
        free(norm);
        tok_ids_release(&ids);
    }
    char *norm = tok_normalize("  Hello,WORLD!\t(x) ");
    TU_CHECK(norm && strcmp(norm, "hello , world ! ( x )") == 0, "normalize: \"%s\"", norm);
    free(norm);
    int bad_ids[] = {5, 60};
    TU_CHECK(tok_decode(v, bad_ids, 2) == NULL, "decode rejects id 60 of 60");

    const char *path = "test_text_tokenizer_saved.vocab";
    TU_CHECK(tok_vocab_save(v, path) == TF_OK, "save: %s", tf_error_get());
    TU_CHECK(tok_vocab_load(path, &loaded) == TF_OK, "load: %s", tf_error_get());
    same = loaded && loaded->size == v->size;
    for (int i = 0; same && i < v->size; i++) same = strcmp(v->tokens[i], loaded->tokens[i]) == 0;
    TU_CHECK(same, "saved and loaded vocabularies are equal");
    remove(path);
    tok_vocab_free(&v);
    tok_vocab_free(&again);
    tok_vocab_free(&loaded);
}

static void check_malformed_file(const char *content, int line, const char *reason)
{
    const char *path = "test_text_tokenizer_bad.vocab";
    write_file(path, content);
    tok_vocab *v = NULL;
    tf_status st = tok_vocab_load(path, &v);
    char where[128];
    snprintf(where, sizeof where, "%s:%d:", path, line);
    TU_CHECK(st == TF_ERR_FORMAT, "%s: status %s", reason, tf_status_str(st));
    TU_CHECK(strstr(tf_error_get(), where) != NULL, "%s: message \"%s\" names %s", reason,
             tf_error_get(), where);
    TU_CHECK(v == NULL, "%s: no vocabulary returned", reason);
    remove(path);
}

static void check_malformed_files(void)
{
    const char *specials = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
    char buf[256];
    snprintf(buf, sizeof buf, "%sa\nb\na\n", specials);
    check_malformed_file(buf, 8, "duplicate token");
    snprintf(buf, sizeof buf, "%sa\n\nb\n", specials);
    check_malformed_file(buf, 7, "empty line");
    snprintf(buf, sizeof buf, "%sa b\n", specials);
    check_malformed_file(buf, 6, "token with a space");
    snprintf(buf, sizeof buf, "%s##\n", specials);
    check_malformed_file(buf, 6, "bare ##");
    check_malformed_file("[PAD]\n[CLS]\n[UNK]\n[SEP]\n[MASK]\na\n", 2, "specials out of order");
    check_malformed_file(specials, 5, "no token besides the specials");
    check_malformed_file("", 0, "empty file");
    tok_vocab *v = NULL;
    const char *crlf = "test_text_tokenizer_crlf.vocab";
    write_file(crlf, "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\nab\r\n##c");
    TU_CHECK(tok_vocab_load(crlf, &v) == TF_OK, "CRLF file without final newline: %s",
             tf_error_get());
    TU_CHECK(v && v->size == 7 && strcmp(v->tokens[5], "ab") == 0 &&
                 strcmp(v->tokens[6], "##c") == 0,
             "CRLF line ends are removed");
    tok_vocab_free(&v);
    remove(crlf);
    TU_CHECK(tok_vocab_load("no_such_dir/missing.vocab", &v) == TF_ERR_IO, "missing file");
    TU_CHECK(strstr(tf_error_get(), "no_such_dir/missing.vocab") != NULL, "message names it");
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    check_training_by_hand();
    check_known_splits();
    check_round_trip_and_files();
    check_malformed_files();
    int rc = tu_finish("test_text_tokenizer");
    MPI_Finalize();
    return rc;
}
