"""train.run: run files checked key by key, resolved, recorded beside the checkpoint and
repeatable from that record."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.errors import ToolkitError
from train import feature_sample, run
from train.run_config import TASKS, load_run_config, resolve, schema, to_argv, to_toml

REPO = Path(__file__).resolve().parents[2]
TINY_FEATURES = """
task = "feature_classifier"
[data]
source = "{data}"
[model]
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 32
[training]
epochs = 2
batch_size = 8
warmup_steps = 5
threads = 1
[output]
dir = "{out}"
"""


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text, name="run.toml"):
    with pytest.raises(ToolkitError) as info:
        load_run_config(write(tmp_path, text, name))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / name))
    return message


def test_unknown_keys_name_the_key_and_the_allowed_ones(tmp_path):
    message = error_of(tmp_path, 'task = "decoder_lm"\n[training]\nepoch = 3\n')
    assert "unknown key 'training.epoch'; [training] takes" in message
    assert "epochs" in message and "seq_len" in message and "lr" in message
    message = error_of(tmp_path, 'task = "token_classifier"\n[data.columns]\nid = "x"\n')
    assert "unknown key 'data.columns'" in message and "val_size" in message  # features only
    assert "top level takes task, data, model, training, output" in error_of(
        tmp_path, 'task = "decoder_lm"\n[optimizer]\nlr = 1\n')
    assert "unknown key 'data.columns.ident'" in error_of(
        tmp_path, 'task = "feature_classifier"\n[data.columns]\nident = "x"\n')


@pytest.mark.parametrize("body, message", [
    ('task = "regression"', "task = 'regression': expected one of 'token_classifier'"),
    ('[data]\nsource = "x"', "task = None: expected one of"),
    ('task = "decoder_lm"\n[training]\nepochs = "ten"',
     "training.epochs = 'ten': expected an integer"),
    ('task = "decoder_lm"\n[training]\nepochs = 2.5', "training.epochs = 2.5: expected an integer"),
    ('task = "decoder_lm"\n[training]\nlr = true', "training.lr = True: expected a number"),
    ('task = "decoder_lm"\n[training]\namp = "yes"',
     "training.amp = 'yes': expected true or false"),
    ('task = "token_classifier"\n[model]\npooling = "sum"',
     "[model] pooling='sum': expected one of ('mean', 'cls', 'meanmax')"),
    ('task = "decoder_lm"\n[model]\nd_model = 30', "[model] d_model=30 is not divisible by"),
    ('task = "feature_classifier"\n[data]\nformat = "xlsx"',
     "data.format = 'xlsx': expected one of 'auto', 'npz', 'csv', 'parquet'"),
    ('task = "feature_classifier"\n[data.columns]\nfeatures = "a,b"',
     "data.columns.features = 'a,b': expected a list of names"),
    ('task = "decoder_lm"\nmodel = 3', "[model] must be a table of keys, not 3"),
    ('task = "decoder_lm"\n[training\n', "not valid TOML"),
])
def test_bad_values_name_the_key_the_value_and_what_is_expected(tmp_path, body, message):
    assert message in error_of(tmp_path, body)


def test_yaml_and_json_run_files_read_like_toml(tmp_path):
    pytest.importorskip("yaml")
    as_yaml = write(tmp_path, "task: decoder_lm\ntraining:\n  epochs: 3\n  lr: 1\n", "r.yaml")
    as_json = write(tmp_path, json.dumps({"task": "decoder_lm",
                                          "training": {"epochs": 3, "lr": 1}}), "r.json")
    for path in (as_yaml, as_json):
        task, _, given = load_run_config(path)
        assert task == "decoder_lm" and given == {"training.epochs": 3, "training.lr": 1.0}
    assert "unknown config format '.ini'" in error_of(tmp_path, "", "r.ini")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_cli_option_has_a_key_and_the_resolved_record_reads_back(task, tmp_path):
    from train.run_config import task_module

    keys = schema(task)
    options = {k.option.name for k in keys.values()}
    assert options == {p.name for p in task_module(task).main.params} - {"resume"}
    values = resolve(task, keys, {})
    record = write(tmp_path, to_toml(task, keys, values, ["header"]))
    again_task, _, again = load_run_config(record)
    assert again_task == task
    assert again == {k: v for k, v in values.items() if v is not None}
    # the command line parses with the task's own CLI
    ctx = task_module(task).main.make_context("x", to_argv(keys, values))
    assert ctx.params["out_dir"] == Path(values["output.dir"])


@pytest.mark.parametrize("name", ["imdb.toml", "tinystories.toml", "features.toml"])
def test_example_configs_are_valid(name):
    result = CliRunner().invoke(run.main, ["--config", str(REPO / "configs" / name),
                                           "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("task = ") == 1


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    result = CliRunner().invoke(feature_sample.main, ["--out", str(out), "--train", "48",
                                                      "--valid", "12", "--test", "0"])
    assert result.exit_code == 0, result.output
    return out


def test_a_config_run_records_its_resolved_config_and_repeats_exactly(tmp_path, tiny_data):
    first = tmp_path / "first"
    config = write(tmp_path, TINY_FEATURES.format(data=tiny_data, out=first))
    result = CliRunner().invoke(run.main, ["--config", str(config)])
    assert result.exit_code == 0, result.output
    record = first / run.RESOLVED_NAME
    text = record.read_text()
    assert "d_model = 16" in text and "lr = 0.002" in text and "max_seq_len" not in text
    second = tmp_path / "second"
    result = CliRunner().invoke(run.main, ["--config", str(record), "--out-dir", str(second)])
    assert result.exit_code == 0, result.output
    body = lambda p: [line for line in p.read_text().splitlines()  # noqa: E731
                      if not line.startswith(("#", "dir = "))]
    assert body(second / run.RESOLVED_NAME) == body(record)
    history = [json.loads((d / "history.json").read_text())["epochs"] for d in (first, second)]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert len(history[0]) == 2 and strip(history[0]) == strip(history[1])


def test_resume_refuses_another_config_than_the_recorded_one(tmp_path, tiny_data):
    out = tmp_path / "run"
    config = write(tmp_path, TINY_FEATURES.format(data=tiny_data, out=out).replace(
        "epochs = 2", "epochs = 1"))
    assert CliRunner().invoke(run.main, ["--config", str(config)]).exit_code == 0
    changed = write(tmp_path, config.read_text().replace("d_ff = 32", "d_ff = 64"), "b.toml")
    result = CliRunner().invoke(run.main, ["--config", str(changed), "--resume"])
    assert result.exit_code == 2 and "--resume with another config" in result.output
    assert "d_ff = 64" in result.output
    more = write(tmp_path, (out / run.RESOLVED_NAME).read_text(), "more.toml")
    result = CliRunner().invoke(run.main, ["--config", str(more), "--resume"])
    assert result.exit_code == 0, result.output  # the same config: continues (nothing left)


def test_resume_mismatch_names_the_first_differing_or_missing_line_as_text(tmp_path):
    record = write(tmp_path, "# header\ntask = \"x\"\n[model]\nd_ff = 32\n", "rec.toml")
    cases = [("task = \"x\"\n[model]\nd_ff = 64\n",
              "('d_ff = 64' where the record has 'd_ff = 32')"),
             ("task = \"x\"\n", "(the record's '[model]' is missing)"),
             ("task = \"x\"\n[model]\nd_ff = 32\nlr = 1\n", "('lr = 1' is not in the record)")]
    for text, expected in cases:
        with pytest.raises(ToolkitError) as info:
            run.check_resume_record(record, text)
        message = str(info.value)
        assert expected in message and "[" + "'" not in message, message
    run.check_resume_record(record, "# other header\ntask = \"x\"\n[model]\nd_ff = 32\n")


def test_a_non_integer_rank_is_one_line(tmp_path, tiny_data, monkeypatch):
    config = write(tmp_path, TINY_FEATURES.format(data=tiny_data, out=tmp_path / "out"))
    monkeypatch.setenv("RANK", "zero")
    result = CliRunner().invoke(run.main, ["--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "error: environment variable RANK='zero': expected an integer" in result.output
    assert not (tmp_path / "out" / run.RESOLVED_NAME).exists()


def test_a_token_task_runs_through_its_own_cli(tmp_path):
    out = tmp_path / "imdb"
    config = write(tmp_path, f"""
task = "token_classifier"
[data]
source = "sample"
limit = 300
val_size = 50
[model]
vocab_size = 300
max_seq_len = 64
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 32
[training]
epochs = 1
threads = 1
[output]
dir = "{out}"
""")
    result = CliRunner().invoke(run.main, ["--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "SAMPLE" in result.output and (out / "best.pt").is_file()
    assert 'source = "sample"' in (out / run.RESOLVED_NAME).read_text()
