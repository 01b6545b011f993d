"""A Calibre-shaped ``metadata.db`` for the demo, with Calibre's own table and column names.

Seed 000's demo library: 500-2000 books, a realistic format mix, series of 3-12 books, publication years
weighted towards 2000-present, ratings roughly normal around 3-4 stars, some unrated.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time

# Calibre's own table and column definitions (as in a library made by ``calibredb``). Calibre's triggers and
# views call Calibre-only SQL functions (``title_sort``, ``uuid4``): the insert trigger is left out so plain
# sqlite3 can write, and the ``meta`` view is kept, so anything that reads views fails as it would on a real
# library.
CALIBRE_SCHEMA = """
CREATE TABLE authors ( id   INTEGER PRIMARY KEY, name TEXT NOT NULL COLLATE NOCASE, sort TEXT COLLATE NOCASE,
    link TEXT NOT NULL DEFAULT "", UNIQUE(name));
CREATE TABLE books ( id      INTEGER PRIMARY KEY AUTOINCREMENT,
    title     TEXT NOT NULL DEFAULT 'Unknown' COLLATE NOCASE, sort      TEXT COLLATE NOCASE,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP, pubdate   TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    series_index REAL NOT NULL DEFAULT 1.0, author_sort TEXT COLLATE NOCASE, isbn TEXT DEFAULT "" COLLATE NOCASE,
    lccn TEXT DEFAULT "" COLLATE NOCASE, path TEXT NOT NULL DEFAULT "", flags INTEGER NOT NULL DEFAULT 1,
    uuid TEXT, has_cover BOOL DEFAULT 0, last_modified TIMESTAMP NOT NULL DEFAULT "2000-01-01 00:00:00+00:00");
CREATE TABLE books_authors_link ( id INTEGER PRIMARY KEY, book INTEGER NOT NULL, author INTEGER NOT NULL,
    UNIQUE(book, author));
CREATE TABLE books_languages_link ( id INTEGER PRIMARY KEY, book INTEGER NOT NULL, lang_code INTEGER NOT NULL,
    item_order INTEGER NOT NULL DEFAULT 0, UNIQUE(book, lang_code));
CREATE TABLE books_ratings_link ( id INTEGER PRIMARY KEY, book INTEGER NOT NULL, rating INTEGER NOT NULL,
    UNIQUE(book, rating));
CREATE TABLE books_series_link ( id INTEGER PRIMARY KEY, book INTEGER NOT NULL, series INTEGER NOT NULL,
    UNIQUE(book));
CREATE TABLE books_tags_link ( id INTEGER PRIMARY KEY, book INTEGER NOT NULL, tag INTEGER NOT NULL,
    UNIQUE(book, tag));
CREATE TABLE data ( id     INTEGER PRIMARY KEY, book   INTEGER NOT NULL, format TEXT NOT NULL COLLATE NOCASE,
    uncompressed_size INTEGER NOT NULL, name TEXT NOT NULL, UNIQUE(book, format));
CREATE TABLE languages    ( id        INTEGER PRIMARY KEY, lang_code TEXT NOT NULL COLLATE NOCASE,
    UNIQUE(lang_code));
CREATE TABLE ratings ( id   INTEGER PRIMARY KEY, rating INTEGER CHECK(rating > -1 AND rating < 11),
    UNIQUE (rating));
CREATE TABLE series ( id   INTEGER PRIMARY KEY, name TEXT NOT NULL COLLATE NOCASE, sort TEXT COLLATE NOCASE,
    UNIQUE (name));
CREATE TABLE tags ( id   INTEGER PRIMARY KEY, name TEXT NOT NULL COLLATE NOCASE, UNIQUE (name));
CREATE TRIGGER books_delete_trg AFTER DELETE ON books BEGIN
    DELETE FROM books_authors_link WHERE book=OLD.id;
    DELETE FROM books_ratings_link WHERE book=OLD.id;
    DELETE FROM books_series_link WHERE book=OLD.id;
    DELETE FROM books_tags_link WHERE book=OLD.id;
    DELETE FROM books_languages_link WHERE book=OLD.id;
    DELETE FROM data WHERE book=OLD.id;
END;
CREATE VIEW meta AS SELECT id, title, title_sort(title) AS sort FROM books;
"""

UNDEFINED_PUBDATE = "0101-01-01 00:00:00+00:00"
FORMAT_MIX = [("EPUB", 55), ("MOBI", 15), ("PDF", 15), ("AZW3", 8), ("KEPUB", 4), ("CBZ", 3)]


def _calibre_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S+00:00", time.gmtime(ts))


def insert_books(conn, books, data, series_links, rating_links, author_links, tag_links, lang_links) -> None:
    """Insert books (id, title, sort, timestamp, pubdate, series_index, path, uuid) and their links."""
    conn.executemany("INSERT INTO books (id, title, sort, timestamp, pubdate, series_index, path, uuid) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", books)
    conn.executemany("INSERT INTO data (book, format, uncompressed_size, name) VALUES (?, ?, ?, ?)", data)
    conn.executemany("INSERT INTO books_series_link (book, series) VALUES (?, ?)", series_links)
    conn.executemany("INSERT INTO books_ratings_link (book, rating) VALUES (?, ?)", rating_links)
    conn.executemany("INSERT INTO books_authors_link (book, author) VALUES (?, ?)", author_links)
    conn.executemany("INSERT INTO books_tags_link (book, tag) VALUES (?, ?)", tag_links)
    conn.executemany("INSERT INTO books_languages_link (book, lang_code) VALUES (?, ?)", lang_links)


def build_library(directory: str, rng: random.Random, books: int = 1000, start: float | None = None) -> int:
    """Create ``directory/metadata.db`` (replacing one there) and return the number of books."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "metadata.db")
    if os.path.exists(path):
        os.remove(path)
    now = time.time()
    start = now - 5 * 365 * 86400 if start is None else start
    conn = sqlite3.connect(path)
    conn.executescript(CALIBRE_SCHEMA)
    conn.executemany("INSERT INTO ratings(id, rating) VALUES (?, ?)", [(r + 1, r) for r in range(11)])
    conn.executemany("INSERT INTO languages(id, lang_code) VALUES (?, ?)", [(1, "eng"), (2, "deu"), (3, "fra")])
    conn.executemany("INSERT INTO tags(id, name) VALUES (?, ?)",
                     list(enumerate(["Fantasy", "Science Fiction", "Mystery", "History", "Poetry", "Cooking"], 1)))
    authors = [f"Author {i}" for i in range(1, max(books // 6, 2) + 1)]
    conn.executemany("INSERT INTO authors(id, name, sort) VALUES (?, ?, ?)", [(i, a, a) for i, a in enumerate(authors, 1)])
    book_rows, data_rows, series_links, rating_links, author_links, tag_links, lang_links = [], [], [], [], [], [], []
    series_id = 0
    remaining_in_series, series_index = 0, 0
    total_weight = sum(w for _, w in FORMAT_MIX)
    for book in range(1, books + 1):
        added = start + (now - start) * (book / books) ** 0.7  # growth curve
        year = min(int(rng.triangular(1900, 2026, 2018)), 2026)
        pubdate = UNDEFINED_PUBDATE if rng.random() < 0.05 else f"{year:04d}-{rng.randint(1, 12):02d}-15 00:00:00+00:00"
        if remaining_in_series == 0 and rng.random() < 0.3:
            series_id += 1
            remaining_in_series, series_index = rng.randint(3, 12), 0
            conn.execute("INSERT INTO series(id, name, sort) VALUES (?, ?, ?)", (series_id, f"Saga {series_id}", f"Saga {series_id}"))
        if remaining_in_series:
            series_index += 1
            remaining_in_series -= 1
            if rng.random() < 0.85:  # some volumes missing from the shelf
                series_links.append((book, series_id))
        title = f"Demo Book {book}"
        book_rows.append((book, title, title, _calibre_time(added), pubdate, float(series_index or 1), f"demo/{book}", f"uuid-{book}"))
        formats = {rng.choices([f for f, _ in FORMAT_MIX], [w / total_weight for _, w in FORMAT_MIX])[0]}
        if rng.random() < 0.25:
            formats.add(rng.choice([f for f, _ in FORMAT_MIX]))
        for fmt in formats:
            data_rows.append((book, fmt, rng.randint(150_000, 25_000_000 if fmt in ("PDF", "CBZ") else 3_000_000), title))
        if rng.random() < 0.8:
            stars = min(max(round(rng.gauss(3.6, 0.9) * 2), 1), 10)
            rating_links.append((book, stars + 1))
        author_links.append((book, rng.randint(1, len(authors))))
        tag_links.append((book, rng.randint(1, 6)))
        lang_links.append((book, rng.choices([1, 2, 3], [8, 1, 1])[0]))
    insert_books(conn, book_rows, data_rows, series_links, rating_links, author_links, tag_links, lang_links)
    conn.commit()
    conn.close()
    return books
