"""Reading CS224N files: column lookup by name, malformed records reported with their line, clear errors."""

from __future__ import annotations

import pytest

from bertmt.data.readers import DataError, read_task_file
from bertmt.data.tasks import TASKS

HEADER = "\tid\tsentence1\tsentence2\tsimilarity\n"


def _write(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "sts.csv"
    path.write_text(header + body, encoding="utf-8")
    return path


def test_real_quora_file_reports_its_two_malformed_records(data_dir, caplog):
    data = read_task_file(data_dir / "quora-small-train.csv", TASKS["quora"])
    assert len(data) == 14285 - 2
    assert [(b.line, b.reason) for b in data.skipped] == [
        (1840, "empty label in column 'is_duplicate'"),
        (10055, "empty text in column(s) ['sentence2']"),
    ]
    assert "quora-small-train.csv:1840" in caplog.text and "skipped 2 malformed" in caplog.text
    assert all(label in (0, 1) for label in data.labels)


def test_real_test_file_with_two_index_columns(data_dir):
    data = read_task_file(data_dir / "ids-sst-test-student.csv", TASKS["sst"], labelled=False)
    assert len(data) == 2210 and data.labels is None
    assert data.ids[0] == "b7573736a6ddf7be102b7fee0" and data.texts[0] == ("Effective but too-tepid biopic",)


@pytest.mark.parametrize(
    "row, reason",
    [
        ("1\tb\tx\ty\t7.5\n", "label '7.5' outside [0.0, 5.0]"),
        ("1\tb\tx\ty\thigh\n", "label 'high' in column 'similarity' is not a number"),
        ("1\tb\tx\ty\t\n", "empty label in column 'similarity'"),
        ("1\tb\tx\ty\t1.0\textra\n", "1 more fields than the header has columns"),
        ("1\tb\tx\n", "too few fields: no value for ['sentence2']"),
        ("1\ta\tx\ty\t1.0\n", "duplicate id 'a'"),
        ("1\t\tx\ty\t1.0\n", "empty id"),
    ],
)
def test_malformed_record_is_reported_with_line_and_skipped(tmp_path, row, reason):
    path = _write(tmp_path, "0\ta\tA cat.\tA dog.\t2.5\n" + row + "2\tc\tOne.\tTwo.\t4.0\n")
    data = read_task_file(path, TASKS["sts"])
    assert data.ids == ["a", "c"] and data.labels == [2.5, 4.0]
    assert [str(b) for b in data.skipped] == [f"{path}:3: {reason}"]


def test_line_numbers_count_physical_lines_of_quoted_multiline_records(tmp_path):
    path = _write(tmp_path, '0\ta\t"two\nlines"\ty\t1.0\n1\tb\tx\ty\t9\n')
    data = read_task_file(path, TASKS["sts"])
    assert data.texts[0] == ("two\nlines", "y") and data.skipped[0].line == 4


def test_strict_mode_raises_on_the_first_malformed_record(tmp_path):
    path = _write(tmp_path, "0\ta\tx\ty\t2.5\n1\tb\tx\ty\tnope\n")
    with pytest.raises(DataError, match=r"sts.csv:3: label 'nope'.*data.strict=true"):
        read_task_file(path, TASKS["sts"], strict=True)


def test_classification_label_must_be_a_class(tmp_path):
    path = tmp_path / "sst.csv"
    path.write_text("\tid\tsentence\tsentiment\n0\ta\tGood .\t4\n1\tb\tBad .\t5\n2\tc\tMeh .\t1.5\n")
    data = read_task_file(path, TASKS["sst"])
    assert data.labels == [4]
    assert [b.reason for b in data.skipped] == [
        "label '5' is not a class in 0..4",
        "label '1.5' is not a class in 0..4",
    ]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"sts: data file .*nothing.csv does not exist"):
        read_task_file(tmp_path / "nothing.csv", TASKS["sts"])


def test_missing_column_is_named_with_the_header(tmp_path):
    path = _write(tmp_path, "0\ta\tx\ty\t1.0\n", header="\tid\tsentence1\tsentence_2\tsimilarity\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['sentence2'\] for task sts; header has"):
        read_task_file(path, TASKS["sts"])


def test_unclosed_quote_that_swallows_records_is_reported(tmp_path):
    body = '0\ta\t"A cat.\tA dog.\t2.5\n1\tb\tx\ty\t1.0\n2\tc\tOne".\tTwo.\t4.0\n3\td\tu\tv\t3.0\n'
    path = _write(tmp_path, body)
    data = read_task_file(path, TASKS["sts"])
    assert data.ids == ["d"]
    (bad,) = data.skipped
    assert str(bad).startswith(
        f"{path}:2: an unclosed quote (\") in column(s) ['sentence1'] swallowed lines 3-4"
    )
    with pytest.raises(DataError, match=r"sts.csv:2: an unclosed quote"):
        read_task_file(path, TASKS["sts"], strict=True)


def test_non_utf8_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_bytes((HEADER + "0\ta\tA cat.\tA dog.\t2.5\n1\tb\tCaf\xe9.\ty\t1.0\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"sts.csv:3: not UTF-8 text \(byte 0xe9\)"):
        read_task_file(path, TASKS["sts"])
