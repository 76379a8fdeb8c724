/* WordPiece-format tokenizer: vocabulary training by byte-pair merges, greedy longest-match
 * encoding, decoding and the vocabulary file. */
#include "tfuse/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const special_tokens[TOK_NUM_SPECIAL] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                            "[MASK]"};

/* ---------------------------------------------------------------------------------------
 * Characters and words */

static int is_space(unsigned char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* ASCII punctuation: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ */
static int is_punct(unsigned char ch)
{
    return (ch >= 33 && ch <= 47) || (ch >= 58 && ch <= 64) || (ch >= 91 && ch <= 96) ||
           (ch >= 123 && ch <= 126);
}

static char lower(unsigned char ch)
{
    return (char)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
}

/* Finds the next word of text at or after *pos: sets *start and *len (bytes of the original
 * text) and advances *pos past it. Returns 0 at the end of the text. */
static int next_word(const char *text, size_t *pos, size_t *start, size_t *len)
{
    size_t i = *pos;
    while (text[i] && (is_space((unsigned char)text[i]) || (unsigned char)text[i] < 32)) i++;
    if (!text[i]) {
        *pos = i;
        return 0;
    }
    *start = i;
    if (is_punct((unsigned char)text[i])) {
        i++;
    } else {
        while (text[i] && !is_space((unsigned char)text[i]) && (unsigned char)text[i] >= 32 &&
               !is_punct((unsigned char)text[i]))
            i++;
    }
    *len = i - *start;
    *pos = i;
    return 1;
}

char *tok_normalize(const char *text)
{
    /* every byte may become a punctuation word with a space before it */
    size_t n = strlen(text), out = 0, pos = 0, start, len;
    char *s = tf_malloc(2 * n + 1);
    if (!s) {
        tf_error_set(TF_ERR_NOMEM, "tok_normalize: out of memory");
        return NULL;
    }
    while (next_word(text, &pos, &start, &len)) {
        if (out > 0) s[out++] = ' ';
        for (size_t k = 0; k < len; k++) s[out++] = lower((unsigned char)text[start + k]);
    }
    s[out] = '\0';
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Vocabulary hash table */

static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

int tok_lookup(const tok_vocab *v, const char *text, size_t len)
{
    if ((int64_t)len > v->max_len) return -1;
    const int mask = v->num_slots - 1;
    for (int s = (int)(hash_bytes(text, len) & (uint64_t)mask);; s = (s + 1) & mask) {
        int id = v->slots[s];
        if (id < 0) return -1;
        if (strncmp(v->tokens[id], text, len) == 0 && v->tokens[id][len] == '\0') return id;
    }
}

/* Appends token (copied) with the next id; returns its id, or -1 if memory ran out. The
 * table grows so that at most half of its slots are used. */
static int vocab_add(tok_vocab *v, const char *token, size_t len)
{
    if (2 * (v->size + 1) > v->num_slots) {
        int ns = v->num_slots ? 2 * v->num_slots : 64;
        int *slots = tf_malloc((size_t)ns * sizeof(int));
        if (!slots) return -1;
        for (int s = 0; s < ns; s++) slots[s] = -1;
        for (int id = 0; id < v->size; id++) {
            int s = (int)(hash_bytes(v->tokens[id], strlen(v->tokens[id])) & (uint64_t)(ns - 1));
            while (slots[s] >= 0) s = (s + 1) & (ns - 1);
            slots[s] = id;
        }
        free(v->slots);
        v->slots = slots;
        v->num_slots = ns;
    }
    char **tokens = realloc(v->tokens, (size_t)(v->size + 1) * sizeof(char *));
    char *copy = tf_malloc(len + 1);
    if (tokens) v->tokens = tokens;
    if (!tokens || !copy) {
        free(copy);
        return -1;
    }
    memcpy(copy, token, len);
    copy[len] = '\0';
    const int id = v->size++;
    v->tokens[id] = copy;
    int s = (int)(hash_bytes(copy, len) & (uint64_t)(v->num_slots - 1));
    while (v->slots[s] >= 0) s = (s + 1) & (v->num_slots - 1);
    v->slots[s] = id;
    if ((int)len > v->max_len) v->max_len = (int)len;
    return id;
}

void tok_vocab_free(tok_vocab **vocab)
{
    if (!vocab || !*vocab) return;
    tok_vocab *v = *vocab;
    for (int i = 0; i < v->size; i++) free(v->tokens[i]);
    free(v->tokens);
    free(v->slots);
    free(v);
    *vocab = NULL;
}

static tok_vocab *vocab_new_with_specials(void)
{
    tok_vocab *v = tf_calloc(1, sizeof *v);
    if (!v) return NULL;
    for (int i = 0; i < TOK_NUM_SPECIAL; i++) {
        if (vocab_add(v, special_tokens[i], strlen(special_tokens[i])) < 0) {
            tok_vocab_free(&v);
            return NULL;
        }
    }
    return v;
}

/* ---------------------------------------------------------------------------------------
 * Encoding and decoding */

static tf_status ids_push(tok_ids *out, int id)
{
    if (out->count == out->capacity) {
        int64_t cap = out->capacity ? 2 * out->capacity : 256;
        int *ids = realloc(out->ids, (size_t)cap * sizeof(int));
        if (!ids)
            return tf_error_set(TF_ERR_NOMEM, "tok_encode: no memory for %lld ids", (long long)cap);
        out->ids = ids;
        out->capacity = cap;
    }
    out->ids[out->count++] = id;
    return TF_OK;
}

void tok_ids_release(tok_ids *ids)
{
    free(ids->ids);
    ids->ids = NULL;
    ids->count = ids->capacity = 0;
}

/* Splits one lowercased word (len bytes, at most TOK_MAX_WORD) into the longest pieces from
 * the left; returns the number of ids written to pieces, or 0 if some part has no piece. */
static int split_word(const tok_vocab *v, const char *word, int len, int *pieces)
{
    char buf[TOK_MAX_WORD + 3] = "##";
    int n = 0;
    for (int start = 0; start < len;) {
        int prefix = start > 0 ? 2 : 0, found = -1, end = len;
        if (end - start + prefix > v->max_len) end = start + v->max_len - prefix;
        while (end > start) {
            memcpy(buf + 2, word + start, (size_t)(end - start));
            found = tok_lookup(v, buf + 2 - prefix, (size_t)(end - start + prefix));
            if (found >= 0) break;
            end--;
        }
        if (found < 0) return 0;
        pieces[n++] = found;
        start = end;
    }
    return n;
}

tf_status tok_encode(const tok_vocab *v, const char *text, tok_ids *out)
{
    size_t pos = 0, start, len;
    char word[TOK_MAX_WORD];
    int pieces[TOK_MAX_WORD];
    while (next_word(text, &pos, &start, &len)) {
        int n = 0;
        if (len <= TOK_MAX_WORD) {
            for (size_t k = 0; k < len; k++) word[k] = lower((unsigned char)text[start + k]);
            n = split_word(v, word, (int)len, pieces);
        }
        if (n == 0) pieces[n++] = TOK_UNK;
        for (int k = 0; k < n; k++) {
            tf_status st = ids_push(out, pieces[k]);
            if (st != TF_OK) return st;
        }
    }
    return TF_OK;
}

char *tok_decode(const tok_vocab *v, const int *ids, int64_t count)
{
    size_t bytes = 1;
    for (int64_t i = 0; i < count; i++) {
        if (ids[i] < 0 || ids[i] >= v->size) {
            tf_error_set(TF_ERR_ARG, "tok_decode: id %d at index %lld is outside [0, %d)", ids[i],
                         (long long)i, v->size);
            return NULL;
        }
        bytes += strlen(v->tokens[ids[i]]) + 1;
    }
    char *s = tf_malloc(bytes);
    if (!s) {
        tf_error_set(TF_ERR_NOMEM, "tok_decode: out of memory");
        return NULL;
    }
    size_t out = 0;
    for (int64_t i = 0; i < count; i++) {
        const char *tok = v->tokens[ids[i]];
        int cont = i > 0 && ids[i] >= TOK_NUM_SPECIAL && strncmp(tok, "##", 2) == 0;
        if (cont)
            tok += 2;
        else if (i > 0)
            s[out++] = ' ';
        size_t n = strlen(tok);
        memcpy(s + out, tok, n);
        out += n;
    }
    s[out] = '\0';
    return s;
}

/* ---------------------------------------------------------------------------------------
 * Vocabulary file */

tf_status tok_vocab_save(const tok_vocab *v, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return tf_error_set(TF_ERR_IO, "tok_vocab_save: cannot open %s for writing", path);
    for (int i = 0; i < v->size; i++) fprintf(f, "%s\n", v->tokens[i]);
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad) return tf_error_set(TF_ERR_IO, "tok_vocab_save: writing %s failed", path);
    return TF_OK;
}

/* Checks one line of a vocabulary file (newline removed); returns a description of the
 * problem or NULL. */
static const char *vocab_line_problem(const tok_vocab *v, const char *line, size_t len, int lineno)
{
    if (len == 0) return "empty token";
    if (len > TOK_MAX_WORD + 2) return "token longer than 102 bytes";
    for (size_t i = 0; i < len; i++)
        if (is_space((unsigned char)line[i]) || (unsigned char)line[i] < 32 || line[i] == 127)
            return "token contains whitespace or a control byte";
    if (len == 2 && line[0] == '#' && line[1] == '#') return "token \"##\" has no characters";
    if (lineno <= TOK_NUM_SPECIAL && strcmp(line, special_tokens[lineno - 1]) != 0)
        return "the first five lines must be [PAD] [UNK] [CLS] [SEP] [MASK] in this order";
    if (tok_lookup(v, line, len) >= 0) return "duplicate token";
    return NULL;
}

tf_status tok_vocab_load(const char *path, tok_vocab **out)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f) return tf_error_set(TF_ERR_IO, "tok_vocab_load: cannot open vocabulary file %s", path);
    tok_vocab *v = tf_calloc(1, sizeof *v);
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int lineno = 0;
    tf_status st = v ? TF_OK : tf_error_set(TF_ERR_NOMEM, "tok_vocab_load: out of memory");
    while (st == TF_OK && (got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t len = (size_t)got;
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        if (len > 0 && line[len - 1] == '\r') line[--len] = '\0';
        const char *problem = strlen(line) != len ? "token contains a NUL byte"
                                                  : vocab_line_problem(v, line, len, lineno);
        if (problem)
            st = tf_error_set(TF_ERR_FORMAT, "%s:%d: invalid vocabulary file: %s", path, lineno,
                              problem);
        else if (vocab_add(v, line, len) < 0)
            st = tf_error_set(TF_ERR_NOMEM, "tok_vocab_load: out of memory at %s:%d", path, lineno);
    }
    if (st == TF_OK && ferror(f))
        st = tf_error_set(TF_ERR_IO, "tok_vocab_load: reading %s failed", path);
    if (st == TF_OK && lineno <= TOK_NUM_SPECIAL)
        st = tf_error_set(TF_ERR_FORMAT,
                          "%s:%d: invalid vocabulary file: it has %d lines, but needs the five "
                          "special tokens and at least one more",
                          path, lineno, lineno);
    free(line);
    fclose(f);
    if (st != TF_OK) {
        tok_vocab_free(&v);
        return st;
    }
    *out = v;
    return TF_OK;
}

/* ---------------------------------------------------------------------------------------
 * Training */

/* Distinct training words with their frequencies and their current split into pieces. */
typedef struct {
    int64_t num, capacity;
    char **words;      /* (num) lowercased words, owned */
    int64_t *counts;   /* (num) occurrences */
    int *slots;        /* hash table of word indices, -1 where empty */
    int64_t num_slots; /* a power of two */
    int64_t *offset;   /* (num) start of each word's pieces in pieces */
    int *num_pieces;   /* (num) current number of pieces of each word */
    int *pieces;       /* piece ids of all words, one byte of text each at the start */
} word_table;

static void words_release(word_table *w)
{
    for (int64_t i = 0; i < w->num; i++) free(w->words[i]);
    free(w->words);
    free(w->counts);
    free(w->slots);
    free(w->offset);
    free(w->num_pieces);
    free(w->pieces);
}

/* Rebuilds the hash table with twice the slots; returns 0 if memory ran out. */
static int words_grow(word_table *w)
{
    int64_t ns = w->num_slots ? 2 * w->num_slots : 1024;
    int *slots = tf_malloc((size_t)ns * sizeof(int));
    int64_t cap = ns / 2;
    char **words = realloc(w->words, (size_t)cap * sizeof(char *));
    if (words) w->words = words;
    int64_t *counts = realloc(w->counts, (size_t)cap * sizeof(int64_t));
    if (counts) w->counts = counts;
    if (!slots || !words || !counts) {
        free(slots);
        return 0;
    }
    for (int64_t s = 0; s < ns; s++) slots[s] = -1;
    for (int64_t i = 0; i < w->num; i++) {
        int64_t s = (int64_t)(hash_bytes(w->words[i], strlen(w->words[i])) & (uint64_t)(ns - 1));
        while (slots[s] >= 0) s = (s + 1) & (ns - 1);
        slots[s] = (int)i;
    }
    free(w->slots);
    w->slots = slots;
    w->num_slots = ns;
    w->capacity = cap;
    return 1;
}

/* Counts one occurrence of the lowercased word (len bytes); returns 0 if memory ran out. */
static int words_count(word_table *w, const char *word, size_t len)
{
    if (w->num + 1 > w->capacity && !words_grow(w)) return 0;
    int64_t s = (int64_t)(hash_bytes(word, len) & (uint64_t)(w->num_slots - 1));
    for (; w->slots[s] >= 0; s = (s + 1) & (w->num_slots - 1)) {
        const char *known = w->words[w->slots[s]];
        if (strncmp(known, word, len) == 0 && known[len] == '\0') {
            w->counts[w->slots[s]]++;
            return 1;
        }
    }
    char *copy = tf_malloc(len + 1);
    if (!copy) return 0;
    memcpy(copy, word, len);
    copy[len] = '\0';
    w->slots[s] = (int)w->num;
    w->words[w->num] = copy;
    w->counts[w->num++] = 1;
    return 1;
}

static tf_status words_collect(word_table *w, const char *const *texts, int64_t count)
{
    char word[TOK_MAX_WORD];
    for (int64_t t = 0; t < count; t++) {
        size_t pos = 0, start, len;
        while (next_word(texts[t], &pos, &start, &len)) {
            if (len > TOK_MAX_WORD) continue;
            for (size_t k = 0; k < len; k++) word[k] = lower((unsigned char)texts[t][start + k]);
            if (!words_count(w, word, len))
                return tf_error_set(TF_ERR_NOMEM, "tok_train: out of memory after %lld words",
                                    (long long)w->num);
        }
    }
    return TF_OK;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Adds the single-character pieces ("c" at the start of a word, "##c" inside) in sorted
 * order and splits every word into them. */
static tf_status words_split_chars(word_table *w, tok_vocab *v, int vocab_size)
{
    int64_t total = 0;
    for (int64_t i = 0; i < w->num; i++) total += (int64_t)strlen(w->words[i]);
    w->offset = tf_malloc((size_t)(w->num + 1) * sizeof(int64_t));
    w->num_pieces = tf_malloc((size_t)(w->num + 1) * sizeof(int));
    w->pieces = tf_malloc((size_t)(total + 1) * sizeof(int));
    char *seen = tf_calloc(2 * 256, 1), *names[2 * 256];
    if (!w->offset || !w->num_pieces || !w->pieces || !seen) {
        free(seen);
        return tf_error_set(TF_ERR_NOMEM, "tok_train: no memory for %lld pieces", (long long)total);
    }
    for (int64_t i = 0; i < w->num; i++)
        for (int k = 0; w->words[i][k]; k++)
            seen[(k > 0) * 256 + (unsigned char)w->words[i][k]] = 1;
    int num_chars = 0;
    char spelled[2 * 256][4];
    for (int c = 0; c < 2 * 256; c++) {
        if (!seen[c]) continue;
        snprintf(spelled[c], sizeof spelled[c], "%s%c", c >= 256 ? "##" : "", (char)(c % 256));
        names[num_chars++] = spelled[c];
    }
    free(seen);
    if (TOK_NUM_SPECIAL + num_chars > vocab_size)
        return tf_error_set(TF_ERR_ARG,
                            "tok_train: vocab_size = %d cannot hold the %d special and %d "
                            "single-character tokens; use at least %d",
                            vocab_size, TOK_NUM_SPECIAL, num_chars, TOK_NUM_SPECIAL + num_chars);
    qsort(names, (size_t)num_chars, sizeof names[0], compare_strings);
    for (int c = 0; c < num_chars; c++)
        if (vocab_add(v, names[c], strlen(names[c])) < 0)
            return tf_error_set(TF_ERR_NOMEM, "tok_train: out of memory");

    int64_t off = 0;
    char piece[4] = "##";
    for (int64_t i = 0; i < w->num; i++) {
        w->offset[i] = off;
        w->num_pieces[i] = 0;
        for (int k = 0; w->words[i][k]; k++) {
            piece[2] = w->words[i][k];
            const char *p = k > 0 ? piece : piece + 2;
            w->pieces[off + w->num_pieces[i]++] = tok_lookup(v, p, k > 0 ? 3 : 1);
        }
        off += w->num_pieces[i];
    }
    return TF_OK;
}

/* Counts of adjacent piece pairs (a, b), keyed by a * 2^32 + b in open addressing. Only the
 * slots listed in used are cleared between rounds. */
typedef struct {
    uint64_t *keys;
    int64_t *counts;
    int64_t *used;
    int64_t num_used, num_slots;
} pair_table;

static void pairs_add(pair_table *p, uint64_t key, int64_t count)
{
    const int64_t mask = p->num_slots - 1;
    int64_t s = (int64_t)((key * 0x9E3779B97F4A7C15ULL) >> 20) & mask;
    while (p->counts[s] != 0 && p->keys[s] != key) s = (s + 1) & mask;
    if (p->counts[s] == 0) {
        p->keys[s] = key;
        p->used[p->num_used++] = s;
    }
    p->counts[s] += count;
}

/* Finds the most frequent pair of the current splits; ties go to the smaller key. Returns
 * its count (0 if no word has two pieces). */
static int64_t pairs_best(pair_table *p, const word_table *w, uint64_t *best_key)
{
    for (int64_t u = 0; u < p->num_used; u++) p->counts[p->used[u]] = 0;
    p->num_used = 0;
    for (int64_t i = 0; i < w->num; i++) {
        const int *pc = w->pieces + w->offset[i];
        for (int k = 0; k + 1 < w->num_pieces[i]; k++)
            pairs_add(p, (uint64_t)pc[k] << 32 | (uint32_t)pc[k + 1], w->counts[i]);
    }
    int64_t best = 0;
    for (int64_t u = 0; u < p->num_used; u++) {
        int64_t s = p->used[u];
        if (p->counts[s] > best || (p->counts[s] == best && p->keys[s] < *best_key)) {
            best = p->counts[s];
            *best_key = p->keys[s];
        }
    }
    return best;
}

/* Replaces every adjacent (a, b) in the words' splits by merged. */
static void words_merge(word_table *w, int a, int b, int merged)
{
    for (int64_t i = 0; i < w->num; i++) {
        int *pc = w->pieces + w->offset[i], n = w->num_pieces[i], out = 0;
        for (int k = 0; k < n; k++) {
            if (k + 1 < n && pc[k] == a && pc[k + 1] == b) {
                pc[out++] = merged;
                k++;
            } else {
                pc[out++] = pc[k];
            }
        }
        w->num_pieces[i] = out;
    }
}

/* Merges the most frequent pair until the vocabulary has vocab_size tokens or no pair occurs
 * twice. The merged token is the first piece followed by the second without its "##". */
static tf_status merge_until(word_table *w, tok_vocab *v, int vocab_size)
{
    int64_t total = w->num > 0 ? w->offset[w->num - 1] + w->num_pieces[w->num - 1] : 0;
    pair_table p = {0};
    p.num_slots = 1024;
    while (p.num_slots < 2 * total) p.num_slots *= 2;
    p.keys = tf_malloc((size_t)p.num_slots * sizeof(uint64_t));
    p.counts = tf_calloc((size_t)p.num_slots, sizeof(int64_t));
    p.used = tf_malloc((size_t)p.num_slots * sizeof(int64_t));
    tf_status st = TF_OK;
    if (!p.keys || !p.counts || !p.used)
        st = tf_error_set(TF_ERR_NOMEM, "tok_train: no memory for %lld pair slots",
                          (long long)p.num_slots);
    char buf[2 * (TOK_MAX_WORD + 3)];
    while (st == TF_OK && v->size < vocab_size) {
        uint64_t key = UINT64_MAX;
        if (pairs_best(&p, w, &key) < 2) break;
        int a = (int)(key >> 32), b = (int)(key & 0xffffffffu);
        size_t la = strlen(v->tokens[a]), lb = strlen(v->tokens[b] + 2);
        memcpy(buf, v->tokens[a], la);
        memcpy(buf + la, v->tokens[b] + 2, lb);
        int merged = tok_lookup(v, buf, la + lb);
        if (merged < 0) merged = vocab_add(v, buf, la + lb);
        if (merged < 0)
            st = tf_error_set(TF_ERR_NOMEM, "tok_train: out of memory");
        else
            words_merge(w, a, b, merged);
    }
    free(p.keys);
    free(p.counts);
    free(p.used);
    return st;
}

tf_status tok_train(const char *const *texts, int64_t count, int vocab_size, tok_vocab **out)
{
    *out = NULL;
    if (vocab_size <= TOK_NUM_SPECIAL || count < 0)
        return tf_error_set(TF_ERR_ARG,
                            "tok_train: vocab_size = %d is invalid; it must exceed the %d "
                            "special tokens",
                            vocab_size, TOK_NUM_SPECIAL);
    word_table w = {0};
    tok_vocab *v = vocab_new_with_specials();
    tf_status st = v ? TF_OK : tf_error_set(TF_ERR_NOMEM, "tok_train: out of memory");

    /* distinct words, the single-character alphabet, then merges */
    if (st == TF_OK) st = words_collect(&w, texts, count);
    if (st == TF_OK && w.num == 0)
        st = tf_error_set(TF_ERR_ARG, "tok_train: the %lld training texts contain no words",
                          (long long)count);
    if (st == TF_OK) st = words_split_chars(&w, v, vocab_size);
    if (st == TF_OK) st = merge_until(&w, v, vocab_size);
    if (st == TF_OK)
        TF_INFO("%d tokens learned from %lld distinct words", v->size, (long long)w.num);

    words_release(&w);
    if (st != TF_OK) {
        tok_vocab_free(&v);
        return st;
    }
    *out = v;
    return TF_OK;
}
