"""Builds a Calibre-shaped ``metadata.db`` for tests and benchmarks.

Table and column definitions are Calibre's own (copied from a library made by ``calibredb``), so queries that
work here work on a real library. Calibre's triggers and views call Calibre-only SQL functions (``title_sort``,
``uuid4``); the insert trigger is left out so plain sqlite3 can write, and one view that calls such a function
is kept on purpose: reading it fails outside Calibre, so a reader that touches views fails the tests.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field

from exporter.demo_library import CALIBRE_SCHEMA, UNDEFINED_PUBDATE, insert_books  # noqa: F401 (re-exported)



@dataclass
class Book:
    title: str
    authors: list = field(default_factory=lambda: ["Anon"])
    formats: dict = field(default_factory=lambda: {"EPUB": 1000})  # format -> uncompressed_size
    series: str | None = None
    series_index: float = 1.0
    rating: int | None = None  # Calibre's 0..10
    pubdate: str = UNDEFINED_PUBDATE
    timestamp: str = "2024-01-01 12:00:00.000000+00:00"
    tags: list = field(default_factory=list)
    languages: list = field(default_factory=list)


def create(path: str) -> sqlite3.Connection:
    """An empty Calibre-shaped library database at ``path`` (returns a writable connection)."""
    conn = sqlite3.connect(path)
    conn.executescript(CALIBRE_SCHEMA)
    return conn


def _id(conn, table: str, column: str, value) -> int:
    row = conn.execute(f"SELECT id FROM {table} WHERE {column} = ?", (value,)).fetchone()
    if row:
        return row[0]
    return conn.execute(f"INSERT INTO {table} ({column}) VALUES (?)", (value,)).lastrowid


def add_book(conn: sqlite3.Connection, book: Book) -> int:
    """Insert one book with all its links, the way Calibre lays them out; returns the book id."""
    book_id = conn.execute(
        "INSERT INTO books (title, sort, timestamp, pubdate, series_index, author_sort, path, uuid) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, lower(hex(randomblob(16))))",
        (book.title, book.title, book.timestamp, book.pubdate, book.series_index, ", ".join(book.authors),
         f"{book.authors[0]}/{book.title}"),
    ).lastrowid
    for author in book.authors:
        conn.execute("INSERT INTO books_authors_link (book, author) VALUES (?, ?)",
                     (book_id, _id(conn, "authors", "name", author)))
    for fmt, size in book.formats.items():
        conn.execute("INSERT INTO data (book, format, uncompressed_size, name) VALUES (?, ?, ?, ?)",
                     (book_id, fmt, size, book.title))
    if book.series is not None:
        conn.execute("INSERT INTO books_series_link (book, series) VALUES (?, ?)",
                     (book_id, _id(conn, "series", "name", book.series)))
    if book.rating is not None:
        conn.execute("INSERT INTO books_ratings_link (book, rating) VALUES (?, ?)",
                     (book_id, _id(conn, "ratings", "rating", book.rating)))
    for tag in book.tags:
        conn.execute("INSERT INTO books_tags_link (book, tag) VALUES (?, ?)", (book_id, _id(conn, "tags", "name", tag)))
    for order, lang in enumerate(book.languages):
        conn.execute("INSERT INTO books_languages_link (book, lang_code, item_order) VALUES (?, ?, ?)",
                     (book_id, _id(conn, "languages", "lang_code", lang), order))
    return book_id


def build(path: str, books: list[Book]) -> list[int]:
    """A library holding ``books``; returns their ids."""
    conn = create(path)
    ids = [add_book(conn, b) for b in books]
    conn.commit()
    conn.close()
    return ids


FORMATS = ["EPUB", "MOBI", "PDF", "AZW3", "CBZ", "TXT", "KEPUB", "FB2", "DOCX"]
FORMAT_WEIGHTS = [40, 20, 15, 10, 5, 3, 3, 2, 2]


def build_large(path: str, n_books: int, n_series: int | None = None, seed: int = 1) -> None:
    """A big, realistic library fast (bulk ``executemany``): for the benchmark and scale tests."""
    rnd = random.Random(seed)
    n_series = n_series if n_series is not None else max(1, n_books // 8)
    n_authors = max(1, n_books // 4)
    conn = create(path)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.executemany("INSERT INTO authors (id, name, sort) VALUES (?, ?, ?)",
                     ((i, f"Author {i}", f"Author {i}") for i in range(1, n_authors + 1)))
    conn.executemany("INSERT INTO series (id, name, sort) VALUES (?, ?, ?)",
                     ((i, f"Series {i}", f"Series {i}") for i in range(1, n_series + 1)))
    conn.executemany("INSERT INTO ratings (id, rating) VALUES (?, ?)", ((r + 1, r) for r in range(11)))
    conn.executemany("INSERT INTO tags (id, name) VALUES (?, ?)", ((i, f"Tag {i}") for i in range(1, 501)))
    langs = ["eng", "deu", "fra", "spa", "ita", "nld", "jpn"]
    conn.executemany("INSERT INTO languages (id, lang_code) VALUES (?, ?)", ((i + 1, c) for i, c in enumerate(langs)))
    books, data, series_links, rating_links, author_links, tag_links, lang_links = [], [], [], [], [], [], []
    for i in range(1, n_books + 1):
        year = rnd.choice([None] * 1 + list(range(1900, 2026)) + list(range(2000, 2026)) * 3)
        pubdate = UNDEFINED_PUBDATE if year is None else f"{year}-{rnd.randint(1, 12):02d}-15 00:00:00+00:00"
        books.append((i, f"Title {i}", f"Title {i}", f"20{rnd.randint(10, 25)}-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)} "
                      f"10:00:00.000000+00:00", pubdate, float(rnd.randint(1, 12)), f"p/{i}", f"uuid-{i}"))
        for fmt in set(rnd.choices(FORMATS, FORMAT_WEIGHTS, k=rnd.choice([1, 1, 1, 2, 3]))):
            data.append((i, fmt, rnd.randint(20_000, 20_000_000), f"Title {i}"))
        if rnd.random() < 0.6:
            series_links.append((i, rnd.randint(1, n_series)))
        if rnd.random() < 0.7:
            rating_links.append((i, rnd.choice([3, 5, 6, 7, 8, 8, 8, 9, 10]) + 1))
        author_links.append((i, rnd.randint(1, n_authors)))
        for tag in set(rnd.choices(range(1, 501), k=3)):
            tag_links.append((i, tag))
        lang_links.append((i, rnd.randint(1, len(langs))))
    insert_books(conn, books, data, series_links, rating_links, author_links, tag_links, lang_links)
    conn.commit()
    conn.close()
