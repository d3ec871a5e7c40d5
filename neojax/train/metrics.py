"""metrics.jsonl (one object per logged step) and TensorBoard events (tb/) in the workdir.

Locally the metrics file is appended to. Object storage cannot append, so there the whole file is
rewritten as one object at each logged step (records are small; a 100k-step run at log_every=20
rewrites about 1 MB), and TensorBoard writes to a local folder whose event files are uploaded to
tb/ at most every TB_UPLOAD seconds and at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from neojax import paths

TB_UPLOAD = 30.0  # seconds between TensorBoard uploads to object storage


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without what it imports for features unused here:
    torch (to accept its tensors), boto3 and google.cloud.storage (its own s3:// and gs:// writers;
    remote event files are uploaded by this module). Where installed they cost seconds at every start.
    A None in sys.modules makes `import` raise ImportError, which tensorboardX catches."""
    unused = [m for m in ("torch", "boto3", "google.cloud.storage") if m not in sys.modules]
    sys.modules.update(dict.fromkeys(unused))
    try:
        from tensorboardX import SummaryWriter  # deferred: imported once, with the unused imports hidden
    finally:
        for m in unused:
            del sys.modules[m]
    return SummaryWriter


SummaryWriter = _summary_writer_class()


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.enabled, self.remote = enabled, paths.is_remote(workdir)
        self.path = paths.path(workdir) / "metrics.jsonl"
        self.tb_dir = paths.path(workdir) / "tb"
        self.tb, self.lines, self.uploaded = None, [], 0.0
        if not enabled:
            return
        if self.path.exists():  # drop what a killed run logged after its last checkpoint
            self.lines = [line for line in kept_lines(self.path) if json.loads(line)["step"] <= resume_step]
            paths.write_text(self.path, "".join(self.lines))
        self.tb_local = tempfile.mkdtemp(prefix="neojax-tb-") if self.remote else os.fspath(self.tb_dir)
        self.tb = SummaryWriter(self.tb_local)

    def write(self, step: int, values: dict) -> None:
        if not self.enabled or not values:
            return
        record = {"step": step, **{k: v for k, v in values.items() if isinstance(v, (int, float))}}
        if len(record) > 1:  # a hook's text alone (samples) goes to TensorBoard only
            line = json.dumps(record) + "\n"
            if self.remote:
                self.lines.append(line)
                paths.write_text(self.path, "".join(self.lines))
            else:
                with open(self.path, "a") as f:
                    f.write(line)
        for k, v in record.items():
            if k != "step":
                self.tb.add_scalar(k, v, step)
        for k, v in values.items():
            if isinstance(v, str):
                self.tb.add_text(k, v, step)
        if self.remote and time.monotonic() - self.uploaded > TB_UPLOAD:
            self._upload_tb()

    def _upload_tb(self) -> None:
        self.tb.flush()
        paths.upload_tree(self.tb_local, self.tb_dir)
        self.uploaded = time.monotonic()

    def close(self) -> None:
        if self.tb is None:
            return
        if self.remote:
            self._upload_tb()
        self.tb.close()
        if self.remote:
            shutil.rmtree(self.tb_local, ignore_errors=True)
        self.tb = None


def kept_lines(path) -> list[str]:
    """The complete records of a metrics file. Any other line (a kill mid-write leaves a partial last
    line; an editor may leave anything) is named in a warning and set aside in <file>.rejected,
    so no valid record after it is lost."""
    path = paths.path(path)
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
    good, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ok = line.endswith("\n") and isinstance(json.loads(line).get("step"), int)
        except (json.JSONDecodeError, AttributeError):
            ok = False
        if ok:
            good.append(line)
        else:
            bad.append(line if line.endswith("\n") else line + "\n")
            print(f"warning: {path} line {n} is not a complete record ({line.strip()[:60]!r}); set it aside in "
                  f"{path.name}.rejected, keeping every other record", file=sys.stderr, flush=True)
    if bad:
        rejected = path.parent / f"{path.name}.rejected"
        previous = rejected.read_text() if rejected.exists() else ""
        paths.write_text(rejected, previous + "".join(bad))
    return good


def read_metrics(workdir: str) -> list[dict]:
    text = (paths.path(workdir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
