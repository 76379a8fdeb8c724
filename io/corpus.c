/* Verse corpus file: loading with validation, the split by book, and packing of tokenized
 * verses into fixed-length sequences. */
#include "tfuse/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const corpus_default_heldout[CORPUS_DEFAULT_HELDOUT_COUNT] = {"Ruth", "Esther", "Jonah",
                                                                          "Mark", "James"};

void corpus_free(corpus **c)
{
    if (!c || !*c) return;
    corpus *k = *c;
    for (int b = 0; b < k->num_books; b++) free(k->book_names[b]);
    for (int64_t v = 0; v < k->num_verses; v++) free(k->text[v]);
    free(k->book_names);
    free(k->verse_book);
    free(k->chapter);
    free(k->verse);
    free(k->text);
    free(k);
    *c = NULL;
}

/* Parses a positive decimal number of at most 6 digits from s[0..len); returns 0 if invalid. */
static int parse_positive(const char *s, size_t len)
{
    if (len == 0 || len > 6) return 0;
    int value = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        value = 10 * value + (s[i] - '0');
    }
    return value;
}

/* Makes room for one more verse; returns 0 if memory ran out. */
static int corpus_reserve(corpus *c, int64_t *capacity)
{
    if (c->num_verses < *capacity) return 1;
    int64_t cap = *capacity ? 2 * *capacity : 4096;
    int *vb = realloc(c->verse_book, (size_t)cap * sizeof(int));
    if (vb) c->verse_book = vb;
    int *ch = realloc(c->chapter, (size_t)cap * sizeof(int));
    if (ch) c->chapter = ch;
    int *vs = realloc(c->verse, (size_t)cap * sizeof(int));
    if (vs) c->verse = vs;
    char **tx = realloc(c->text, (size_t)cap * sizeof(char *));
    if (tx) c->text = tx;
    if (!vb || !ch || !vs || !tx) return 0;
    *capacity = cap;
    return 1;
}

/* Returns the index of book (len bytes), appending it if it differs from the last book.
 * Returns -1 for a book seen before that is not the last one (its verses are not
 * consecutive) and -2 if memory ran out. */
static int corpus_book(corpus *c, const char *book, size_t len)
{
    for (int b = c->num_books - 1; b >= 0; b--) {
        if (strlen(c->book_names[b]) == len && memcmp(c->book_names[b], book, len) == 0)
            return b == c->num_books - 1 ? b : -1;
    }
    char **names = realloc(c->book_names, (size_t)(c->num_books + 1) * sizeof(char *));
    if (!names) return -2;
    c->book_names = names;
    char *copy = tf_malloc(len + 1);
    if (!copy) return -2;
    memcpy(copy, book, len);
    copy[len] = '\0';
    c->book_names[c->num_books] = copy;
    return c->num_books++;
}

/* Parses one line (newline removed) into a new verse; returns NULL or a description of the
 * format problem. Sets *nomem if memory ran out. */
static const char *corpus_parse_line(corpus *c, char *line, size_t len, int64_t *capacity,
                                     int *nomem)
{
    char *tab1 = memchr(line, '\t', len);
    char *tab2 = tab1 ? memchr(tab1 + 1, '\t', len - (size_t)(tab1 + 1 - line)) : NULL;
    if (!tab1 || !tab2) return "expected three tab-separated fields: book, chapter:verse, text";
    if (memchr(tab2 + 1, '\t', len - (size_t)(tab2 + 1 - line)))
        return "more than three tab-separated fields";
    if (tab1 == line) return "empty book name";
    const char *ref = tab1 + 1, *colon = memchr(ref, ':', (size_t)(tab2 - ref));
    int chapter = colon ? parse_positive(ref, (size_t)(colon - ref)) : 0;
    int verse = colon ? parse_positive(colon + 1, (size_t)(tab2 - colon - 1)) : 0;
    if (!chapter || !verse) return "the second field must be chapter:verse with positive numbers";
    const char *text = tab2 + 1;
    size_t text_len = len - (size_t)(text - line);
    if (text_len == 0) return "empty verse text";

    int book = corpus_book(c, line, (size_t)(tab1 - line));
    if (book == -1) return "this book already appeared earlier; its verses must be consecutive";
    char *copy = book >= 0 && corpus_reserve(c, capacity) ? tf_malloc(text_len + 1) : NULL;
    if (!copy) {
        *nomem = 1;
        return "out of memory";
    }
    memcpy(copy, text, text_len);
    copy[text_len] = '\0';
    c->verse_book[c->num_verses] = book;
    c->chapter[c->num_verses] = chapter;
    c->verse[c->num_verses] = verse;
    c->text[c->num_verses++] = copy;
    return NULL;
}

tf_status corpus_load(const char *path, corpus **out)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f) return tf_error_set(TF_ERR_IO, "corpus_load: cannot open corpus file %s", path);
    corpus *c = tf_calloc(1, sizeof *c);
    tf_status st = c ? TF_OK : tf_error_set(TF_ERR_NOMEM, "corpus_load: out of memory");
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int64_t lineno = 0, capacity = 0;
    while (st == TF_OK && (got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t len = (size_t)got;
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        if (len > 0 && line[len - 1] == '\r') line[--len] = '\0';
        int nomem = 0;
        const char *problem = strlen(line) != len
                                  ? "line contains a NUL byte"
                                  : corpus_parse_line(c, line, len, &capacity, &nomem);
        if (problem)
            st = tf_error_set(nomem ? TF_ERR_NOMEM : TF_ERR_FORMAT,
                              "%s:%lld: invalid corpus line: %s", path, (long long)lineno, problem);
    }
    if (st == TF_OK && ferror(f))
        st = tf_error_set(TF_ERR_IO, "corpus_load: reading %s failed", path);
    if (st == TF_OK && c->num_verses == 0)
        st = tf_error_set(TF_ERR_FORMAT,
                          "%s: corpus file has no verses; create it with tools/bible_corpus.sh",
                          path);
    free(line);
    fclose(f);
    if (st != TF_OK) {
        corpus_free(&c);
        return st;
    }
    *out = c;
    return TF_OK;
}

tf_status corpus_split(const corpus *c, const char *const *heldout, int count, uint8_t *is_heldout)
{
    memset(is_heldout, 0, (size_t)c->num_books);
    for (int i = 0; i < count; i++) {
        int found = 0;
        for (int b = 0; b < c->num_books; b++) {
            if (strcmp(c->book_names[b], heldout[i]) == 0) {
                is_heldout[b] = 1;
                found = 1;
            }
        }
        if (!found)
            return tf_error_set(TF_ERR_ARG,
                                "corpus_split: held-out book \"%s\" is not in the corpus; use a "
                                "name from the first field, e.g. \"%s\"",
                                heldout[i], c->book_names[0]);
    }
    return TF_OK;
}

tf_status corpus_texts(const corpus *c, const uint8_t *is_heldout, int want, const char ***texts,
                       int64_t *count)
{
    *texts = NULL;
    *count = 0;
    const char **t = tf_malloc((size_t)(c->num_verses + 1) * sizeof(char *));
    if (!t) return tf_error_set(TF_ERR_NOMEM, "corpus_texts: out of memory");
    int64_t n = 0;
    for (int64_t v = 0; v < c->num_verses; v++)
        if ((is_heldout[c->verse_book[v]] != 0) == (want != 0)) t[n++] = c->text[v];
    *texts = t;
    *count = n;
    return TF_OK;
}

void text_seqs_free(text_seqs **seqs)
{
    if (!seqs || !*seqs) return;
    free((*seqs)->ids);
    free((*seqs)->lengths);
    free(*seqs);
    *seqs = NULL;
}

/* Appends one sequence [CLS] content [SEP] [PAD]... of content_len (<= T - 2) tokens. */
static tf_status seqs_append(text_seqs *s, int64_t *capacity, const int *content, int content_len)
{
    const int T = s->seq_len;
    if (s->count == *capacity) {
        int64_t cap = *capacity ? 2 * *capacity : 1024;
        int *ids = realloc(s->ids, (size_t)cap * T * sizeof(int));
        if (ids) s->ids = ids;
        int *lengths = realloc(s->lengths, (size_t)cap * sizeof(int));
        if (lengths) s->lengths = lengths;
        if (!ids || !lengths)
            return tf_error_set(TF_ERR_NOMEM, "text_seqs_build: no memory for %lld sequences",
                                (long long)cap);
        *capacity = cap;
    }
    int *row = s->ids + s->count * T;
    row[0] = TOK_CLS;
    memcpy(row + 1, content, (size_t)content_len * sizeof(int));
    row[content_len + 1] = TOK_SEP;
    for (int t = content_len + 2; t < T; t++) row[t] = TOK_PAD;
    s->lengths[s->count++] = content_len + 2;
    return TF_OK;
}

/* Packs the tokens of the verses [first, end) of one book. pending (T - 2 ints) collects the
 * tokens of the sequence being filled; verse is reused between calls. */
static tf_status seqs_pack_book(const corpus *c, const tok_vocab *vocab, int64_t first, int64_t end,
                                text_seqs *s, int64_t *capacity, int *pending, tok_ids *verse)
{
    const int room = s->seq_len - 2;
    int num_pending = 0;
    tf_status st = TF_OK;
    for (int64_t v = first; v < end && st == TF_OK; v++) {
        verse->count = 0;
        st = tok_encode(vocab, c->text[v], verse);
        if (st == TF_OK && num_pending + verse->count > room && num_pending > 0) {
            st = seqs_append(s, capacity, pending, num_pending);
            num_pending = 0;
        }

        /* a verse longer than one sequence fills whole sequences; its rest stays pending */
        int64_t k = 0;
        for (; st == TF_OK && verse->count - k > room; k += room)
            st = seqs_append(s, capacity, verse->ids + k, room);
        for (; k < verse->count; k++) pending[num_pending++] = verse->ids[k];
    }
    if (st == TF_OK && num_pending > 0) st = seqs_append(s, capacity, pending, num_pending);
    return st;
}

tf_status text_seqs_build(const corpus *c, const uint8_t *is_heldout, int want,
                          const tok_vocab *vocab, int seq_len, text_seqs **out)
{
    *out = NULL;
    if (seq_len < 3)
        return tf_error_set(TF_ERR_ARG,
                            "text_seqs_build: seq_len = %d is too short; it must be >= 3 to "
                            "hold [CLS], a token and [SEP]",
                            seq_len);
    text_seqs *s = tf_calloc(1, sizeof *s);
    int *pending = tf_malloc((size_t)seq_len * sizeof(int));
    tok_ids verse = {0};
    int64_t capacity = 0;
    tf_status st =
        s && pending ? TF_OK : tf_error_set(TF_ERR_NOMEM, "text_seqs_build: out of memory");
    if (s) s->seq_len = seq_len;

    /* each run of verses of one selected book is packed on its own */
    for (int64_t v = 0; v < c->num_verses && st == TF_OK;) {
        int64_t end = v;
        while (end < c->num_verses && c->verse_book[end] == c->verse_book[v]) end++;
        if ((is_heldout[c->verse_book[v]] != 0) == (want != 0))
            st = seqs_pack_book(c, vocab, v, end, s, &capacity, pending, &verse);
        v = end;
    }

    free(pending);
    tok_ids_release(&verse);
    if (st != TF_OK) {
        text_seqs_free(&s);
        return st;
    }
    *out = s;
    return TF_OK;
}
