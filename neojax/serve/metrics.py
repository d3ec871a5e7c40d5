"""The server's counters in Prometheus' text format (GET /metrics): requests by path and status,
tokens in and out, request latency as a histogram, the engine's slots and queue, and with a draft
model the tokens it proposed and those kept."""
from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)  # seconds


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (path, status) -> count
        self.tokens: Counter = Counter()  # "prompt" | "completion" -> count
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.latency_sum = 0.0

    def request(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path, status)] += 1

    def finished(self, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        with self.lock:
            self.tokens["prompt"] += prompt_tokens
            self.tokens["completion"] += completion_tokens
            self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def render(self, engine: dict) -> str:
        with self.lock:
            lines = ["# TYPE neojax_requests_total counter"]
            lines += [f'neojax_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            lines.append("# TYPE neojax_tokens_total counter")
            lines += [f'neojax_tokens_total{{kind="{k}"}} {self.tokens[k]}' for k in ("prompt", "completion")]
            lines.append("# TYPE neojax_request_seconds histogram")
            total = 0
            for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.latency):
                total += n
                lines.append(f'neojax_request_seconds_bucket{{le="{bound}"}} {total}')
            lines += [f"neojax_request_seconds_sum {self.latency_sum}", f"neojax_request_seconds_count {total}"]
        for name, key in (("running", "running"), ("queue_length", "waiting"), ("slots", "slots")):
            lines += [f"# TYPE neojax_{name} gauge", f"neojax_{name} {engine[key]}"]
        for key in ("draft_proposed", "draft_kept"):  # speculative decoding: the acceptance rate is their ratio
            if key in engine:
                lines += [f"# TYPE neojax_{key}_tokens_total counter", f"neojax_{key}_tokens_total {engine[key]}"]
        return "\n".join(lines) + "\n"
