#!/bin/sh
# Writes the King James Bible as a corpus file for the BERT pipeline: one verse per line,
# "book<TAB>chapter:verse<TAB>text", in canonical order (Genesis 1:1 to Revelation 22:21).
#
# Usage: tools/bible_corpus.sh OUTPUT
#
# The text comes from the `bible` program of Debian's bible-kjv package, whose output is a
# header line "Book Chapter" (e.g. "1 Samuel 3") between blank lines, then one line per verse,
# "  N text". -l sets the line width, large so that no verse is wrapped; -m sets the maximum
# number of verses printed.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTPUT" >&2
    exit 2
fi
out=$1
BIBLE=${BIBLE:-bible}
if ! command -v "$BIBLE" >/dev/null 2>&1; then
    echo "$0: the program '$BIBLE' was not found; install it with: apt-get install bible-kjv" >&2
    exit 1
fi

tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"$BIBLE" -m 8192 -l 100000 'Gen1:1-Rev22:21' | awk -v OFS='\t' '
    /^$/ { next }
    /^  *[0-9]+ / {
        if (book == "") { print "verse before any book header at line " NR > "/dev/stderr"; exit 1 }
        n = $1
        text = $0
        sub(/^ *[0-9]+ +/, "", text)
        sub(/ +$/, "", text)
        if (text == "") { print "empty verse text at line " NR > "/dev/stderr"; exit 1 }
        print book, chapter ":" n, text
        verses++
        next
    }
    {
        chapter = $NF
        if (chapter !~ /^[0-9]+$/) { print "unexpected line " NR ": " $0 > "/dev/stderr"; exit 1 }
        book = $0
        sub(/ +[0-9]+ *$/, "", book)
    }
    END { if (verses == 0) { print "no verses found" > "/dev/stderr"; exit 1 } }
' >"$tmp"

verses=$(wc -l <"$tmp")
books=$(cut -f1 "$tmp" | uniq | wc -l)
mv "$tmp" "$out"
trap - EXIT
echo "$0: wrote $verses verses of $books books to $out"
