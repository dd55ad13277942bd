"""The one reader of JSONL and CSV data files: records with their line numbers, errors naming file:line."""

import json

import pytest

from tunelab.io.records import csv_records, csv_text, jsonl_records, jsonl_text, records


class Bad(Exception):
    pass


def test_jsonl_numbers_lines_skips_blanks_and_keeps_unicode_separators(tmp_path):
    p = tmp_path / "d.jsonl"
    # U+2028 is legal inside a JSON string; str.splitlines() would cut the line there.
    rows = [{"a": 1}, {"text": "one\u2028two"}]
    p.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1], ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert jsonl_records(p, Bad) == [(1, rows[0]), (3, rows[1])]


@pytest.mark.parametrize("text,message", [
    ('{"a": 1}\n{"a": \n', r"d\.jsonl:2: not valid JSON \(Expecting value, column 7\)"),
    ('{"a": 1}\n[1, 2]\n', r"d\.jsonl:2: expected a JSON object, got list"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, text, message):
    p = tmp_path / "d.jsonl"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(Bad, match=message):
        jsonl_records(p, Bad)


def test_unreadable_files_say_what_and_where(tmp_path):
    with pytest.raises(Bad, match=r"nope\.jsonl: items file not found"):
        jsonl_records(tmp_path / "nope.jsonl", Bad, "items")
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(Bad, match=r"latin1\.jsonl:2: not UTF-8 text"):
        jsonl_records(p, Bad)


def test_csv_rows_end_lines_header_and_bom(tmp_path):
    p = tmp_path / "r.csv"
    # A byte-order mark (spreadsheet exports) must not become part of the first column's name.
    p.write_bytes('\ufeffid,text\r\n1,"two\r\nlines"\r\n2,plain\r\n'.encode("utf-8"))
    assert csv_records(p, Bad, required_columns={"id"}) == [(3, {"id": "1", "text": "two\r\nlines"}),
                                                             (4, {"id": "2", "text": "plain"})]
    assert records(p, Bad) == csv_records(p, Bad)


@pytest.mark.parametrize("text,message", [
    ("", r"r\.csv:1: empty CSV \(expected a header row\)"),
    ("id,text\n", r"r\.csv:1: CSV header lacks column\(s\) score"),
    ("id,text,score\n1,a,2,extra\n", r"r\.csv:2: more values than header columns"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    p = tmp_path / "r.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(Bad, match=message):
        csv_records(p, Bad, required_columns={"id", "score"})


def test_records_chooses_jsonl_by_extension(tmp_path):
    p = tmp_path / "r.ndjson"
    p.write_text('{"id": "x"}\n', encoding="utf-8")
    assert records(p, Bad) == [(1, {"id": "x"})]


def test_written_records_read_back(tmp_path):
    rows = [{"id": "1", "text": "a, \"quoted\"\nline", "note": None}, {"id": "2", "text": "café", "note": "x"}]
    (tmp_path / "w.jsonl").write_text(jsonl_text(rows), encoding="utf-8")
    assert jsonl_records(tmp_path / "w.jsonl", Bad) == [(1, rows[0]), (2, rows[1])]
    (tmp_path / "w.csv").write_text(csv_text(rows, ["id", "text", "note"], lineterminator="\r\n"),
                                    encoding="utf-8", newline="")
    got = [r for _, r in csv_records(tmp_path / "w.csv", Bad)]
    assert got == [{**rows[0], "note": ""}, rows[1]]
