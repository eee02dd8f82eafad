"""Bad inputs to the runtime's CLIs, tried as a new user would (issue 11): a --file that is not
UTF-8, empty texts, an ONNX whose sidecar is left from another export, and a prompt longer than
the context. Each is one line on stderr, exit code 2, and nothing else printed first."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from click.testing import CliRunner

from common import artifacts
from common.errors import ToolkitError
from runtime.session import open_session


def _invoke(main, args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_line(result) -> str:
    """The one line the CLI printed, an error. ``output`` holds stdout and stderr together
    (click 8.1, on Python 3.8, mixes them; 8.2+ interleaves them there), so one line in all
    also proves nothing was printed before the error."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _classify(*args):
    from runtime.classify import main

    return _invoke(main, args)


# ---------------------------------------------------------------- classify --file

def test_file_that_is_not_utf8_names_the_file_line_and_byte(tiny_classifier_onnx, tmp_path):
    reviews = tmp_path / "reviews.txt"
    reviews.write_bytes(b"great film\n" + "so caf\xe9 and good\n".encode("latin-1"))
    line = _error_line(_classify("--model", tiny_classifier_onnx, "--file", reviews))
    assert str(reviews) in line
    assert "byte 17 (line 2, 0xe9) is not UTF-8" in line  # 11 bytes of line 1 + "so caf"


def test_utf8_file_with_a_byte_order_mark_and_blank_lines_is_read(tiny_classifier_onnx,
                                                                   tmp_path):
    reviews = tmp_path / "reviews.txt"
    reviews.write_bytes(b"\xef\xbb\xbfgreat caf\xc3\xa9 film\n\n   \nawful story\n")
    result = _classify("--model", tiny_classifier_onnx, "--json", "--file", reviews)
    assert result.exit_code == 0, result.output
    texts = [json.loads(line)["text"] for line in result.output.splitlines()
             if line.startswith("{")]  # (the summary line goes to stderr)
    assert texts == ["great caf\u00e9 film", "awful story"]


def test_bad_byte_after_a_byte_order_mark_counts_from_the_file_start(tmp_path):
    from runtime.classify import read_text_file

    reviews = tmp_path / "bom.txt"
    reviews.write_bytes(b"\xef\xbb\xbfok\n\xff\n")
    with pytest.raises(ToolkitError, match=r"byte 6 \(line 2, 0xff\)"):
        read_text_file(str(reviews))


def test_file_of_blank_lines_only_says_so(tiny_classifier_onnx, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n")
    line = _error_line(_classify("--model", tiny_classifier_onnx, "--file", blank))
    assert "only blank lines" in line and str(blank) in line


# ---------------------------------------------------------------- empty texts

@pytest.mark.parametrize("empty", ["", "   ", "<br /><br/>"])
def test_empty_text_is_refused_naming_it(tiny_classifier_onnx, empty):
    line = _error_line(_classify("--model", tiny_classifier_onnx, "great film", empty))
    assert "text 2" in line and "empty once cleaned" in line


def test_classifier_library_refuses_an_empty_text_too(tiny_classifier_onnx):
    from runtime.classify import open_classifier

    session, classifier = open_classifier(str(tiny_classifier_onnx), batch_size=2)
    with session:
        with pytest.raises(ToolkitError, match="text 1 .* empty once cleaned"):
            classifier.classify(["\n", "good"])
        assert len(classifier.classify(["good film"])) == 1  # the session is still usable


# ---------------------------------------------------------------- stale sidecar

def _model_copy(onnx_path, directory):
    """The tiny model, its sidecar and tokenizer copied under ``directory``."""
    directory.mkdir()
    for path in onnx_path.parent.iterdir():
        if path.name.startswith(onnx_path.stem + "."):
            shutil.copy(path, directory / path.name)
    return directory / onnx_path.name


def test_sidecar_from_another_export_is_refused(tiny_classifier_onnx, tmp_path):
    model = _model_copy(tiny_classifier_onnx, tmp_path / "m")
    sidecar = artifacts.sidecar_path(model)
    data = json.loads(sidecar.read_text())
    data["onnx_sha256"] = "0" * 64  # what a sidecar from another export names
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ToolkitError) as info:
        open_session(model)
    message = str(info.value)
    assert "\n" not in message and str(model) in message and "onnx_sha256 differs" in message
    assert "000000000000..." in message and "stale sidecar" in message
    line = _error_line(_classify("--model", model, "great film"))
    assert "onnx_sha256 differs" in line


def test_graph_replaced_under_its_sidecar_is_refused(tiny_classifier_onnx, tiny_decoder_onnx,
                                                     tmp_path):
    model = _model_copy(tiny_classifier_onnx, tmp_path / "m")
    shutil.copy(tiny_decoder_onnx, model)  # a re-export that left the old sidecar behind
    with pytest.raises(ToolkitError, match="onnx_sha256 differs"):
        open_session(model)


def test_matching_sidecar_opens_and_the_hash_is_cached_per_file_state(tiny_classifier_onnx,
                                                                      tmp_path):
    model = _model_copy(tiny_classifier_onnx, tmp_path / "m")
    old = time.time() - 60
    os.utime(model, (old, old))  # settled: older than the racy window
    with open_session(model) as session:
        assert session.backend == "onnxruntime"
    keys = [key for key in artifacts._SHA256_CACHE if key[0] == os.path.realpath(model)]
    assert len(keys) == 1
    # A rewrite (new bytes, new mtime) misses the cache and is checked again.
    shutil.copy(tiny_classifier_onnx.with_name("tiny_classifier.tokenizer.json"), model)
    with pytest.raises(ToolkitError, match="onnx_sha256 differs"):
        open_session(model)


def test_a_file_written_just_now_is_hashed_but_not_cached(tmp_path):
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"abc")
    digest = artifacts.cached_sha256(fresh)
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert not [key for key in artifacts._SHA256_CACHE if key[0] == os.path.realpath(fresh)]


# ---------------------------------------------------------------- generate: too long a prompt

def test_prompt_longer_than_the_context_is_refused_before_anything_is_printed(
        tiny_decoder_onnx):
    from runtime.generate import main

    prompt = "the cat sat on the mat and the dog ran " * 12  # > 64 tokens of the tiny model
    result = _invoke(main, ["--model", tiny_decoder_onnx, "--prompt", prompt,
                            "--max-new-tokens", "4"])
    line = _error_line(result)  # the only line: the prompt was not echoed before it
    assert "prompt 1 is" in line and "tokens long" in line and "at most 64" in line


def test_every_run_is_checked_before_the_first_is_printed(tiny_decoder_onnx):
    from runtime.generate import main

    long_prompt = "the cat sat on the mat and the dog ran " * 12
    result = _invoke(main, ["--model", tiny_decoder_onnx, "--prompt", "the cat",
                            "--prompt", long_prompt, "--batch", "1", "--max-new-tokens", "3"])
    _error_line(result)  # the only line: not even the first, valid run printed


def test_a_prompt_that_fits_still_streams(tiny_decoder_onnx):
    from runtime.generate import main

    result = _invoke(main, ["--model", tiny_decoder_onnx, "--prompt", "the cat",
                            "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("the cat")
