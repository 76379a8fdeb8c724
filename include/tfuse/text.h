/* Text pipeline for the BERT model: a WordPiece-format tokenizer trained in C, a verse
 * corpus file split into training and held-out books, and fixed-length token sequences.
 *
 * Tokenizer: text is lowercased (ASCII) and split into words at whitespace, and every ASCII
 * punctuation character is a word of its own. The vocabulary is learned by byte-pair merges:
 * the most frequent adjacent pair of pieces, weighted by word frequency, is merged until the
 * requested size is reached. It is stored in WordPiece form, so a piece that continues a word
 * is written with the prefix "##". Encoding splits each word greedily into the longest
 * vocabulary pieces from the left; a word that cannot be split, or is longer than
 * TOK_MAX_WORD bytes, becomes [UNK]. A vocabulary file has one token per line, line i
 * (0-based) being id i, and starts with the five special tokens in the order below.
 *
 * Corpus file (written by tools/bible_corpus.sh): one verse per line,
 * "book<TAB>chapter:verse<TAB>text", the verses of a book on consecutive lines. */
#ifndef TFUSE_TEXT_H
#define TFUSE_TEXT_H

#include <stdint.h>
#include "tfuse/common.h"

/* Special tokens, with fixed ids at the start of every vocabulary. */
enum { TOK_PAD = 0, TOK_UNK = 1, TOK_CLS = 2, TOK_SEP = 3, TOK_MASK = 4, TOK_NUM_SPECIAL = 5 };

/* Default vocabulary size for tok_train, equal to the vocab of bert_config_default. On the
 * King James Bible, trained without the default held-out books, it maps no word of any book
 * to [UNK]. */
#define TOK_DEFAULT_VOCAB 4096

/* Maximum length in bytes of a word that the tokenizer splits into pieces. */
#define TOK_MAX_WORD 100

typedef struct {
    int size;      /* number of tokens V */
    char **tokens; /* (V) token strings, owned */
    int *slots;    /* private hash table of token ids, -1 where empty */
    int num_slots; /* a power of two */
    int max_len;   /* maximum token length, bytes */
} tok_vocab;

/* Growable array of token ids. */
typedef struct {
    int *ids;
    int64_t count, capacity;
} tok_ids;

/* Trains a vocabulary of at most vocab_size tokens on count texts. Training stops earlier
 * if no pair of pieces occurs twice. Deterministic: the same texts give the same
 * vocabulary. Returns TF_ERR_ARG if the texts contain no words or vocab_size cannot hold
 * the special and single-character tokens. Caller frees *out with tok_vocab_free. */
tf_status tok_train(const char *const *texts, int64_t count, int vocab_size, tok_vocab **out);
/* Writes the vocabulary to path, one token per line. */
tf_status tok_vocab_save(const tok_vocab *vocab, const char *path);
/* Reads a vocabulary file. Returns TF_ERR_IO if it cannot be read and TF_ERR_FORMAT, with a
 * message naming the file and line, for an empty or duplicate token, a token containing
 * whitespace or control bytes, or missing special tokens. Caller frees with tok_vocab_free. */
tf_status tok_vocab_load(const char *path, tok_vocab **out);
/* Frees the vocabulary and sets *vocab to NULL; accepts NULL. */
void tok_vocab_free(tok_vocab **vocab);

/* Id of the token spelled by the len bytes at text, or -1 if it is not in the vocabulary. */
int tok_lookup(const tok_vocab *vocab, const char *text, size_t len);

/* Appends the ids of text (NUL-terminated) to out. Returns TF_ERR_NOMEM if out cannot grow. */
tf_status tok_encode(const tok_vocab *vocab, const char *text, tok_ids *out);
/* Joins tokens into text: pieces starting with "##" attach to the previous token, other
 * tokens are separated by one space. Returns a NUL-terminated string the caller frees with
 * free(), or NULL with TF_ERR_ARG or TF_ERR_NOMEM recorded. */
char *tok_decode(const tok_vocab *vocab, const int *ids, int64_t count);
/* Returns the text as the tokenizer splits it: lowercased words separated by one space. For text
 * without unknown words, tok_decode(tok_encode(text)) equals this. Caller frees. */
char *tok_normalize(const char *text);
/* Frees the array of out and zeroes it. */
void tok_ids_release(tok_ids *ids);

/* A verse corpus in memory. */
typedef struct {
    int64_t num_verses;
    int num_books;
    char **book_names; /* (num_books) in order of appearance, owned */
    int *verse_book;   /* (num_verses) index into book_names */
    int *chapter;      /* (num_verses) */
    int *verse;        /* (num_verses) verse number within the chapter */
    char **text;       /* (num_verses) verse texts, owned */
} corpus;

/* Books held out for evaluation by default: "Ruth", "Esther", "Jonah", "Mark", "James"
 * (1 086 of the 31 102 verses of the King James Bible). */
extern const char *const corpus_default_heldout[];
enum { CORPUS_DEFAULT_HELDOUT_COUNT = 5 };

/* Reads a corpus file. Returns TF_ERR_IO if it cannot be read. Returns TF_ERR_FORMAT, with a
 * message naming the file and line, for a line without three tab-separated fields, an empty
 * book or text, a reference that is not "chapter:verse" with positive numbers, or a book
 * whose verses are not on consecutive lines. Caller frees with corpus_free. */
tf_status corpus_load(const char *path, corpus **out);
/* Frees the corpus and sets *c to NULL; accepts NULL. */
void corpus_free(corpus **c);

/* Marks the books listed in heldout (count names, matched exactly) in is_heldout
 * (num_books entries of 0 or 1). Returns TF_ERR_ARG naming the first name that is not a
 * book of the corpus. */
tf_status corpus_split(const corpus *c, const char *const *heldout, int count, uint8_t *is_heldout);
/* Collects pointers to the texts of the verses whose book has is_heldout[book] == want.
 * *texts is an array the caller frees with free(); the strings stay owned by the corpus. */
tf_status corpus_texts(const corpus *c, const uint8_t *is_heldout, int want, const char ***texts,
                       int64_t *count);

/* Fixed-length token sequences [CLS] tokens [SEP] [PAD]... */
typedef struct {
    int64_t count; /* number of sequences S */
    int seq_len;   /* T */
    int *ids;      /* (S, T) */
    int *lengths;  /* (S) tokens before the padding, [CLS] and [SEP] included */
} text_seqs;

/* Tokenizes the verses whose book has is_heldout[book] == want and packs consecutive
 * verses of the same book into sequences of seq_len tokens: [CLS], as many whole verses as
 * fit, [SEP], then [PAD]. A verse longer than seq_len - 2 tokens fills whole sequences, and
 * its remaining tokens start the next one. Sequences never cross a book boundary. Caller frees with
 * text_seqs_free. */
tf_status text_seqs_build(const corpus *c, const uint8_t *is_heldout, int want,
                          const tok_vocab *vocab, int seq_len, text_seqs **out);
/* Frees the sequences and sets *seqs to NULL; accepts NULL. */
void text_seqs_free(text_seqs **seqs);

#endif
