"""Library gauges equal independent SQL over metadata.db: fixture edge cases and a genuine calibredb library."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
import zipfile

import pytest

from calibre_fixture import UNDEFINED_PUBDATE, Book, add_book, build, build_large
from exporter.aggregate.health import Health
from exporter.aggregate.library import LibrarySource, book_added_timestamps, parse_calibre_time
from exporter.config import load

NOW = time.time()


def samples(families) -> dict:
    """{(metric name, frozenset(labels)): value} over every sample."""
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def by_label(families, name: str, label: str) -> dict:
    return {s.labels[label]: s.value for f in families for s in f.samples if s.name == name}


def scalar(families, name: str):
    values = [s.value for f in families for s in f.samples if s.name == name]
    assert len(values) <= 1
    return values[0] if values else None


def source_for(path, **kw) -> LibrarySource:
    return LibrarySource(load(overrides={"calibre_library": str(path)}, environ={}), Health(), **kw)


def expected(path) -> dict:
    """The seed's queries, written independently of the exporter, straight over metadata.db."""
    c = sqlite3.connect(path)
    q = lambda sql: c.execute(sql).fetchall()  # noqa: E731
    out = {
        "books": q("SELECT COUNT(*) FROM books")[0][0],
        "formats": {f.upper(): n for f, n in q("SELECT format, COUNT(*) FROM data GROUP BY format")},
        "sizes": {f.upper(): n for f, n in q("SELECT format, SUM(uncompressed_size) FROM data GROUP BY format")},
        "series": {n: (cnt, mx) for n, cnt, mx in q(
            "SELECT series.name, COUNT(books.id), MAX(books.series_index) FROM books_series_link "
            "JOIN series ON series.id = books_series_link.series JOIN books ON books.id = books_series_link.book "
            "GROUP BY series.id")},
        "years": {str(y): n for y, n in q(
            "SELECT strftime('%Y', substr(pubdate, 1, 19)) AS y, COUNT(*) FROM books "
            "WHERE pubdate NOT LIKE '0101-01-01%' AND y >= '1000' AND y <= strftime('%Y', 'now', '+10 years') "
            "GROUP BY y")},
        "ratings": {r: n for r, n in q(
            "SELECT ratings.rating, COUNT(*) FROM books_ratings_link JOIN ratings ON ratings.id = books_ratings_link.rating "
            "WHERE ratings.rating > 0 GROUP BY ratings.rating")},
        "avg": q("SELECT AVG(ratings.rating / 2.0) FROM books_ratings_link JOIN ratings "
                 "ON ratings.id = books_ratings_link.rating WHERE ratings.rating > 0")[0][0],
        "authors": q("SELECT COUNT(DISTINCT author) FROM books_authors_link")[0][0],
        "tags": q("SELECT COUNT(DISTINCT tag) FROM books_tags_link")[0][0],
        "languages": q("SELECT COUNT(DISTINCT lang_code) FROM books_languages_link")[0][0],
    }
    c.close()
    return out


def assert_matches_sql(families, path):
    exp = expected(path)
    assert scalar(families, "calibre_books") == exp["books"]
    assert by_label(families, "calibre_format_books", "format") == exp["formats"]
    assert by_label(families, "calibre_format_size_bytes", "format") == exp["sizes"]
    assert by_label(families, "calibre_series_books", "series") == {k: v[0] for k, v in exp["series"].items()}
    assert by_label(families, "calibre_series_max_index", "series") == {k: v[1] for k, v in exp["series"].items()}
    assert by_label(families, "calibre_books_by_pubyear", "year") == exp["years"]
    assert by_label(families, "calibre_books_by_rating", "stars") == {f"{r / 2:g}": n for r, n in exp["ratings"].items()}
    assert scalar(families, "calibre_unrated_books") == exp["books"] - sum(exp["ratings"].values())
    if exp["avg"] is None:
        assert scalar(families, "calibre_average_rating_stars") is None
    else:
        assert scalar(families, "calibre_average_rating_stars") == pytest.approx(exp["avg"])
    assert scalar(families, "calibre_authors") == exp["authors"]
    assert scalar(families, "calibre_tags") == exp["tags"]
    assert scalar(families, "calibre_languages") == exp["languages"]


EDGE_BOOKS = [
    Book("Unrated, no series", rating=None, pubdate=UNDEFINED_PUBDATE),
    Book("Rated zero", rating=0, pubdate="1999-03-01 00:00:00+00:00"),
    Book("Perfect ten", rating=10, series="Dune", series_index=1, pubdate="1965-08-01 00:00:00+00:00",
         tags=["SF"], languages=["eng"]),
    Book("Half star", rating=1, series="Dune", series_index=6.5, pubdate="1985-01-01 00:00:00+00:00"),
    Book("Five formats", rating=7, series="Discworld", series_index=41,
         formats={"EPUB": 100, "MOBI": 200, "PDF": 300, "AZW3": 400, "TXT": 50},
         authors=["Terry Pratchett", "Neil Gaiman"], tags=["Fantasy", "Humour"], languages=["eng", "deu"],
         pubdate="2011-10-24 00:00:00+00:00"),
    Book("Time-zone-shifted undefined", pubdate="0100-12-31 23:00:00+00:00"),
    Book("Absurd future", pubdate="9999-01-01 00:00:00+00:00"),
    Book("No formats", formats={}, rating=4),
]


@pytest.fixture
def edge_library(tmp_path):
    path = tmp_path / "metadata.db"
    build(str(path), EDGE_BOOKS)
    return path


def test_edge_cases_equal_independent_sql(edge_library):
    src = source_for(edge_library)
    assert src.refresh(NOW) is True
    fams = src.families(NOW)
    assert_matches_sql(fams, edge_library)
    # Spelled out, so that a shared mistake in the SQL above cannot hide a wrong value.
    assert scalar(fams, "calibre_books") == 8
    assert by_label(fams, "calibre_books_by_rating", "stars") == {"5": 1, "0.5": 1, "3.5": 1, "2": 1}
    assert scalar(fams, "calibre_unrated_books") == 4  # no link, rated 0, tz-shifted, absurd
    assert scalar(fams, "calibre_average_rating_stars") == pytest.approx((5 + 0.5 + 3.5 + 2) / 4)
    assert by_label(fams, "calibre_series_max_index", "series") == {"Dune": 6.5, "Discworld": 41.0}
    assert by_label(fams, "calibre_books_by_pubyear", "year") == {"1999": 1, "1965": 1, "1985": 1, "2011": 1}
    assert by_label(fams, "calibre_format_books", "format")["TXT"] == 1
    assert scalar(fams, "calibre_series") == 2


def test_deleted_book_disappears_from_library(edge_library):
    """Calibre's delete trigger removes links; the gauges follow (the book may live on in cwa_enforcement)."""
    src = source_for(edge_library)
    src.refresh(NOW)
    conn = sqlite3.connect(edge_library)
    conn.execute("DELETE FROM books WHERE title = 'Five formats'")
    conn.commit()
    conn.close()
    assert src.refresh(NOW) is True
    fams = src.families(NOW)
    assert_matches_sql(fams, edge_library)
    assert scalar(fams, "calibre_books") == 7
    assert "AZW3" not in by_label(fams, "calibre_format_books", "format")


def test_empty_library(tmp_path):
    path = tmp_path / "metadata.db"
    build(str(path), [])
    src = source_for(path)
    src.refresh(NOW)
    fams = src.families(NOW)
    assert_matches_sql(fams, path)
    assert scalar(fams, "calibre_books") == 0
    assert scalar(fams, "calibre_average_rating_stars") is None


def test_refresh_skipped_when_unchanged_and_redone_after_a_write(edge_library):
    src = source_for(edge_library)
    assert src.refresh(NOW) is True
    assert src.refresh(NOW) is False
    assert src.refresh(NOW) is False
    assert src.reads == 1
    conn = sqlite3.connect(edge_library)
    add_book(conn, Book("New one", rating=8))
    conn.commit()
    conn.close()
    assert src.refresh(NOW) is True
    assert src.reads == 2
    assert scalar(src.families(NOW), "calibre_books") == 9
    assert src.refresh(NOW) is False


def test_replaced_file_is_reopened(edge_library, tmp_path):
    """A restore or copy replaces the inode: the kept connection must not keep reading the old file."""
    src = source_for(edge_library)
    src.refresh(NOW)
    other = tmp_path / "new.db"
    build(str(other), [Book("Only one")])
    os.replace(other, edge_library)
    assert src.refresh(NOW) is True
    assert scalar(src.families(NOW), "calibre_books") == 1


def test_never_writes_and_never_creates(tmp_path, edge_library):
    before = edge_library.read_bytes()
    src = source_for(edge_library)
    src.refresh(NOW)
    src.close()
    assert edge_library.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.db"]
    missing = LibrarySource(load(environ={}), Health(), path=str(tmp_path / "gone" / "metadata.db"))
    with pytest.raises(FileNotFoundError):
        missing.refresh(NOW)
    assert not (tmp_path / "gone").exists()


def test_views_with_calibre_functions_are_not_queried(edge_library):
    """The fixture keeps a view calling title_sort(); plain sqlite cannot read it, the source never does."""
    with pytest.raises(sqlite3.OperationalError, match="title_sort"):
        sqlite3.connect(edge_library).execute("SELECT * FROM meta").fetchall()
    src = source_for(edge_library)
    assert src.refresh(NOW) is True


def test_series_label_is_capped_with_other_summed(tmp_path):
    path = tmp_path / "metadata.db"
    books = [Book(f"B{i}", series=f"S{i % 7}", series_index=i) for i in range(40)]
    build(str(path), books)
    src = source_for(path, series_cap=3)
    src.refresh(NOW)
    fams = src.families(NOW)
    got = by_label(fams, "calibre_series_books", "series")
    assert len(got) == 4 and "other" in got
    assert sum(got.values()) == 40
    assert got["S0"] == got["S1"] == got["S2"] == 6  # 40 = 5*6 + 2*5: the six-book series, ties by name
    assert "other" not in by_label(fams, "calibre_series_max_index", "series")


def test_book_added_timestamps(edge_library):
    got = book_added_timestamps(str(edge_library))
    assert len(got) == len(EDGE_BOOKS)
    assert got[0] == parse_calibre_time("2024-01-01 12:00:00+00:00")


def test_large_library_series_bounded(tmp_path):
    path = tmp_path / "metadata.db"
    build_large(str(path), 5000, n_series=2000)
    src = source_for(path)
    src.refresh(NOW)
    fams = src.families(NOW)
    assert len(by_label(fams, "calibre_series_books", "series")) == 501
    exp = expected(path)
    assert scalar(fams, "calibre_books") == exp["books"] == 5000
    assert by_label(fams, "calibre_format_books", "format") == exp["formats"]
    assert by_label(fams, "calibre_books_by_pubyear", "year") == exp["years"]
    assert sum(by_label(fams, "calibre_series_books", "series").values()) == sum(v[0] for v in exp["series"].values())


# --- a genuine library made by Debian's calibre package --------------------------------------------------

CALIBREDB = shutil.which("calibredb")


def _make_epub(path, title: str):
    """A minimal valid EPUB 2 so calibredb reads real metadata from it."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr("META-INF/container.xml",
                   '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                   '<rootfiles><rootfile full-path="content.opf" media-type="application/oebps-package+xml"/>'
                   '</rootfiles></container>')
        z.writestr("content.opf",
                   '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="id">'
                   '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>' + title + '</dc:title>'
                   '<dc:creator>Test Author</dc:creator><dc:language>en</dc:language>'
                   '<dc:date>1984-06-01</dc:date><dc:identifier id="id">urn:uuid:' + title + '</dc:identifier></metadata>'
                   '<manifest><item id="c" href="c.html" media-type="application/xhtml+xml"/></manifest>'
                   '<spine><itemref idref="c"/></spine></package>')
        z.writestr("c.html", "<html xmlns='http://www.w3.org/1999/xhtml'><body><p>" + title + "</p></body></html>")


def _calibredb(*args):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=os.environ.get("HOME", "/tmp"))
    subprocess.run([CALIBREDB, *args], check=True, env=env, capture_output=True, timeout=180)


@pytest.mark.slow
@pytest.mark.skipif(CALIBREDB is None, reason="calibredb not installed (Debian package 'calibre'); "
                                              "the genuine-library test needs it")
def test_genuine_calibredb_library(tmp_path):
    lib = tmp_path / "library"
    txt = tmp_path / "notes.txt"
    txt.write_text("A small plain-text book.\n")
    epub = tmp_path / "story.epub"
    _make_epub(epub, "A Story")
    _calibredb("add", "--library-path", str(lib), str(txt))
    _calibredb("add", "--library-path", str(lib), "--series", "Tales", "--series-index", "2.5",
               "--tags", "short,test", str(epub))
    _calibredb("set_metadata", "--library-path", str(lib), "--field", "rating:3.5", "1")  # stars; stored as 7
    db = lib / "metadata.db"
    src = source_for(lib)
    assert src.refresh(NOW) is True
    fams = src.families(NOW)
    assert_matches_sql(fams, db)
    assert scalar(fams, "calibre_books") == 2
    assert by_label(fams, "calibre_format_books", "format") == {"TXT": 1, "EPUB": 1}
    assert by_label(fams, "calibre_series_max_index", "series") == {"Tales": 2.5}
    assert by_label(fams, "calibre_books_by_rating", "stars") == {"3.5": 1}
    assert by_label(fams, "calibre_books_by_pubyear", "year") == {"1984": 1}  # the .txt has calibre's undefined date
    assert len(book_added_timestamps(str(db))) == 2
    # calibredb writing again is seen as a change; an untouched library is not re-read.
    assert src.refresh(NOW) is False
    _calibredb("add", "--library-path", str(lib), "--empty", "--title", "Placeholder")
    assert src.refresh(NOW) is True
    assert scalar(src.families(NOW), "calibre_books") == 3


def test_deleted_book_still_in_cwa_enforcement(tmp_path, edge_library):
    """CWA keeps enforcement history of books deleted since: the leaderboard keeps them, the library does not."""
    from exporter import schema
    from exporter.aggregate.history import HistorySource
    from exporter.db import reader_engine, writer_engine

    lib = sqlite3.connect(edge_library)
    book_id = lib.execute("SELECT id FROM books WHERE title = 'Five formats'").fetchone()[0]
    lib.execute("DELETE FROM books WHERE id = ?", (book_id,))
    lib.commit()
    lib.close()
    cwa = str(tmp_path / "cwa.db")
    schema.create_all(writer_engine(cwa))
    conn = sqlite3.connect(cwa)
    conn.executemany("INSERT INTO cwa_enforcement (timestamp, book_id, book_title, author, file_path, trigger_type) "
                     "VALUES (?, ?, ?, 'A', '/x', 'auto -log')",
                     [("2024-01-0%d 10:00:00" % d, book_id, "Five formats") for d in range(1, 4)]
                     + [("2024-01-05 10:00:00", 1, "Unrated, no series")])
    conn.commit()
    conn.close()
    config = load(overrides={"calibre_library": str(edge_library), "history_timezone": "UTC"}, environ={})
    history = HistorySource(config, Health(), reader_engine(cwa))
    history.refresh(NOW)
    top = by_label(history.families(NOW), "activity_top_enforced_books", "book_id")
    assert top == {str(book_id): 3, "1": 1}
    library = LibrarySource(config, Health())
    library.refresh(NOW)
    assert_matches_sql(library.families(NOW), edge_library)
    assert scalar(library.families(NOW), "calibre_books") == len(EDGE_BOOKS) - 1
