"""tasks.<t>.train as a list of files: one training set, read (and tokenised, and cached) file by file."""

from __future__ import annotations

import numpy as np
import pytest

from bertmt.config import ConfigError, load_config
from bertmt.data.loading import Loader, check_files
from bertmt.data.readers import DataError
from bertmt.model import load_tokenizer
from tests.e2e.helpers import QUICKSTART


@pytest.fixture
def quora_parts(data_dir, tmp_path):
    """quora-train-first998.csv cut in two files (300 and 200 records) and the same 500 records in one."""
    lines = (data_dir / "quora-train-first998.csv").read_text().splitlines(keepends=True)
    header, a, b = lines[0], lines[1:301], lines[301:501]
    for name, rows in (("a.csv", a), ("b.csv", b), ("ab.csv", a + b)):
        (tmp_path / name).write_text(header + "".join(rows))
    return tmp_path


def _train_set(data_dir, tmp_path, train: str, *overrides: str):
    cfg = load_config(QUICKSTART, [f"data.dir={data_dir}", f"tasks.quora.train={train}", *overrides])
    loader = Loader(load_tokenizer("minilm"), 64, tmp_path / "cache")
    return loader, cfg.resolved_tasks()["quora"]


def _assert_same_rows(enc, ref) -> None:
    assert enc.ids == ref.ids
    for field in ("input_ids", "token_types", "offsets", "labels"):
        np.testing.assert_array_equal(getattr(enc, field), getattr(ref, field), err_msg=field)


@pytest.mark.parametrize("encoding", ["cross", "siamese"])
def test_two_training_files_are_their_records_in_one_file(quora_parts, data_dir, encoding):
    """Tokenised from the files and then from their caches, [a, b] gives exactly the rows of a + b in one
    file (both sentences of a siamese pair), so a run on the list trains as on the concatenated file."""
    pair = f"tasks.quora.pair_encoding={encoding}"
    parts = f"[{quora_parts / 'a.csv'},{quora_parts / 'b.csv'}]"
    loader, listed = _train_set(data_dir, quora_parts, parts, pair)
    _, merged = _train_set(data_dir, quora_parts, str(quora_parts / "ab.csv"), pair)
    ref = loader.load(merged, "train")
    assert len(ref) == 500
    for _ in range(2):  # tokenised, then read back from the per-file caches
        enc = loader.load(listed, "train")
        _assert_same_rows(enc, ref)
        assert (enc.second is None) == (encoding == "cross")
        if enc.second is not None:
            _assert_same_rows(enc.second, ref.second)
    assert len(list((quora_parts / "cache").glob("quora-*.pt"))) == 3  # a, b and ab: one cache per file
    assert len(loader.read(listed, "train").texts) == 500  # what the MLM phase reads: both files


def test_a_record_in_two_training_files_is_an_error_naming_both(quora_parts, data_dir):
    lines = (quora_parts / "a.csv").read_text().splitlines(keepends=True)
    (quora_parts / "c.csv").write_text(lines[0] + lines[5])  # a's 5th record again
    rid = lines[5].split("\t")[1]
    loader, task = _train_set(data_dir, quora_parts, f"[{quora_parts / 'a.csv'},{quora_parts / 'c.csv'}]")
    for read in (loader.load, loader.read):
        with pytest.raises(DataError, match=rf"tasks.quora: id '{rid}' is in both .*a.csv and .*c.csv"):
            read(task, "train")


def test_a_missing_file_of_a_training_set_is_named_by_its_index(quora_parts, data_dir):
    _, task = _train_set(data_dir, quora_parts, f"[{quora_parts / 'a.csv'},{quora_parts / 'gone.csv'}]")
    with pytest.raises(DataError, match=r"tasks.quora.train\[1\]: .*gone.csv"):
        check_files([task], str(data_dir))


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("tasks.quora.train=[]", "tasks.quora.train", "a non-empty list of distinct files"),
        ("tasks.quora.train=[a.csv,a.csv]", "tasks.quora.train", "a non-empty list of distinct files"),
        ("tasks.quora.dev=[a.csv,b.csv]", "tasks.quora.dev", "a string"),
        ("tasks.quora.train=[a.csv,3.5e]", None, None),  # YAML strings: accepted
    ],
)
def test_only_train_takes_a_list_of_distinct_files(override, key, expected):
    if key is None:
        assert load_config(QUICKSTART, [override]).tasks["quora"].train == ["a.csv", "3.5e"]
        return
    with pytest.raises(ConfigError, match=rf"'{key}'.*{expected}"):
        load_config(QUICKSTART, [override])
