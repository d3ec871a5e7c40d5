"""neojax.cli: one-line errors, checked option types, escapes, output checks."""
import argparse
import os
import re

import pytest

from neojax import cli


def test_run_turns_input_errors_into_one_line_and_exit_2(capsys):
    def bad(_):
        raise FileNotFoundError(2, "No such file or directory", "/data/x.jsonl")
    assert cli.run(bad, []) == 2
    assert capsys.readouterr().err == "error: /data/x.jsonl: No such file or directory\n"

    def multi(_):
        with cli.about("--tasks"):  # reading an input: its ValueError is the input's fault
            raise ValueError("first\n   second")
    assert cli.run(multi, []) == 2 and capsys.readouterr().err == "error: --tasks: first second\n"

    def regex(_):
        with cli.about("--lora_targets"):
            re.compile("(")
    assert cli.run(regex, []) == 2 and "invalid regular expression '('" in capsys.readouterr().err


@pytest.mark.parametrize("error", [ValueError("bad shape"), KeyError("h_0")])
def test_a_value_or_key_error_outside_an_input_is_a_bug_not_the_users(error, capsys):
    """A ValueError or KeyError raised by neojax's own code exits 1 as a bug, not 2 blaming the input."""
    def bug(_):
        raise error
    assert cli.run(bug, []) == 1 and "internal" in capsys.readouterr().err


def test_run_reports_a_bug_in_one_line_with_exit_1_and_debug_reraises(capsys, monkeypatch):
    def bug(_):
        raise ZeroDivisionError("division by zero")
    assert cli.run(bug, []) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal ZeroDivisionError" in err and "NEOJAX_DEBUG=1" in err
    monkeypatch.setenv("NEOJAX_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.run(bug, [])


def test_parser_errors_are_one_line(capsys):
    parser = cli.ArgumentParser(prog="python -m neojax.x")
    parser.add_argument("--n", type=cli.positive_int, required=True)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--n", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: argument --n: '0' is not a positive integer "
                                       "(see python -m neojax.x --help)\n")


@pytest.mark.parametrize("parse,good,bad", [
    (cli.positive_int, ["1", "64"], ["0", "-1", "1.5", "x"]),
    (cli.nonneg_int, ["0", "3"], ["-1", "nan"]),
    (cli.nonneg_float, ["0", "0.7"], ["-0.1", "nan", "inf"]),
    (cli.positive_float, ["1e-3"], ["0", "nan", "-inf"]),
    (cli.probability, ["1", "0.95"], ["0", "1.01", "nan"]),
])
def test_option_types(parse, good, bad):
    for text in good:
        parse(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_unescape_takes_the_escapes_the_readme_shows():
    assert cli.unescape(r"\n\n") == "\n\n"
    assert cli.unescape(r"a\tb\\n") == "a\tb\\n"
    assert cli.unescape("é\n") == "é\n"  # real characters pass through


def test_paths_are_checked_before_work(tmp_path):
    with pytest.raises(cli.UsageError, match="--output .*does not exist"):
        cli.writable_output("--output", str(tmp_path / "missing" / "r.json"))
    with pytest.raises(cli.UsageError, match="is a directory"):
        cli.writable_output("--output", str(tmp_path))
    assert cli.writable_output("--output", str(tmp_path / "r.json"))
    with pytest.raises(cli.UsageError, match="is a directory"):
        cli.readable_file("--prompt_file", str(tmp_path))
    with pytest.raises(cli.UsageError, match="no such file"):
        cli.readable_file("--prompt_file", os.path.join(str(tmp_path), "x"))
    with pytest.raises(cli.UsageError, match="^--checkpoint: "):
        with cli.about("--checkpoint"):
            raise ValueError("bad")


def test_commands_keep_compiled_programs_where_the_user_lets_them(tmp_path, monkeypatch):
    """cli.run turns on jax's persistent compilation cache in $XDG_CACHE_HOME/neojax/xla, unless one is
    named already, the cache is turned off, or the folder cannot be made (it stays off then)."""
    import jax
    named, enabled = jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        assert cli.run(lambda _: 0, []) == 0
        folder = tmp_path / "cache" / "neojax" / "xla"
        assert jax.config.jax_compilation_cache_dir == str(folder) and folder.is_dir()

        jax.config.update("jax_compilation_cache_dir", "/elsewhere")  # named already: left as it is
        cli.keep_compiled_programs()
        assert jax.config.jax_compilation_cache_dir == "/elsewhere"

        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_enable_compilation_cache", False)
        cli.keep_compiled_programs()
        assert jax.config.jax_compilation_cache_dir is None

        jax.config.update("jax_enable_compilation_cache", True)
        (tmp_path / "a_file").write_text("")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a_file"))  # no folder can be made under a file
        cli.keep_compiled_programs()
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", named)
        jax.config.update("jax_enable_compilation_cache", enabled)
