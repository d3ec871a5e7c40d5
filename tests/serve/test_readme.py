"""The README's serving snippets, run as written: the server command, the curl request and the
`openai` streaming example. Only two things change: /models/ is a folder of the tiny checkpoint
named as the README names it, and port 8000 is a free one."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import Server, free_port

pytestmark = pytest.mark.slow  # a real server (the fast subset: -m 'not slow')

README = Path(__file__).resolve().parents[2] / "README.md"


def _serving_blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text[text.index("### Serving"):]
    section = section[:section.index("\n### ", 1)]
    return re.findall(r"```(bash|python)\n(.*?)```", section, re.S)


def test_the_readme_serving_snippets_run_as_written(tiny_hf_with_tokenizer, tmp_path):
    models = tmp_path / "models"
    (bash, commands), (language, snippet) = _serving_blocks()[:2]
    assert bash == "bash" and language == "python"
    serve, curl = commands.split("\n", 1)
    name = re.search(r"--checkpoint /models/(\S+)", serve)[1]
    shutil.copytree(tiny_hf_with_tokenizer, models / name)
    port = str(free_port())
    written = lambda command: command.replace("/models/", f"{models}/").replace("8000", port)
    argv = shlex.split(written(serve), comments=True)
    assert argv[:3] == ["python", "-m", "neojax.serve"]
    server = Server("", argv=argv[3:])
    try:
        r = subprocess.run(["bash", "-c", written(curl)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert answer["model"] == name and answer["choices"][0]["finish_reason"] in ("length", "stop"), r.stdout
        r = subprocess.run([sys.executable, "-c", written(snippet)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
    finally:
        assert server.stop() == 0, "".join(server.lines)
