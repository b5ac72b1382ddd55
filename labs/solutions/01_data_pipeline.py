"""Solutions to lab 01's exercises. Try each one in the lab first: the check tells you what
differs, and recognises the common mistakes."""

from collections import Counter

from labkit.data.quality import words_of

STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}


def too_few_stop_words(text):
    return sum(w in STOP_WORDS for w in words_of(text)) < 2  # case-sensitive, as datatrove


def my_candidate_probability(s, bands, rows):
    return 1 - (1 - s ** rows) ** bands  # missed only if all bands fail


def my_jaccard(words_a, words_b, n):
    a = {tuple(words_a[i:i + n]) for i in range(len(words_a) - n + 1)}
    b = {tuple(words_b[i:i + n]) for i in range(len(words_b) - n + 1)}
    return len(a & b) / len(a | b)


def most_frequent_pair(chunks):
    counts = Counter()
    for chunk in chunks:  # never across a chunk boundary
        data = chunk.encode("utf-8")
        counts.update(zip(data, data[1:]))
    return min(counts, key=lambda pair: (-counts[pair], pair))  # ties: the smallest pair
