"""benchmarks/device_cpu.py: what it subtracts and how it names profiled stacks."""

from __future__ import annotations

from benchmarks.device_cpu import category, summarise, tally

HOP = "WorkerThread.run (anyio/_backends/_asyncio.py:1124)"
POST = "PooledTransport.send (services/head/tail_client.py:169)"


def row(cpu: float, preprocess: float, model: float, mode: str = "split") -> dict:
    return {
        "code": "this", "mode": mode, "body": "raw", "cpu_ms": cpu,
        "preprocess_cpu_ms": preprocess, "model_cpu_ms": model,
    }  # fmt: skip


def test_not_model_is_the_process_cpu_less_preprocessing_and_the_model() -> None:
    (cell,) = summarise([row(10.0, 2.0, 5.0), row(12.0, 2.0, 5.0), row(11.0, 3.0, 5.0)])
    assert cell["n"] == 3 and cell["cpu_ms"] == 11.0
    assert cell["not_model_cpu_ms"] == 3.0 and cell["not_model_cpu_mean_ms"] == 3.667  # 3, 5, 3


def test_a_sample_is_named_by_its_innermost_known_part() -> None:
    assert category([HOP, "infer_answer (services/head/routes.py:148)", POST]) == (
        "tail client: http.client"
    )
    assert category([HOP, "f (x.py:1)"]) == "thread-pool hop (anyio)"
    assert category(["g (y.py:2)"]) == "other"


def test_a_thread_blocked_on_a_socket_is_waiting_not_working() -> None:
    stack = [HOP, POST, "SocketIO.readinto (socket.py:706)"]
    assert category(stack).startswith("waiting")


def test_tally_shares_and_ms_per_request() -> None:
    lines = [f"{HOP};{POST} 30", f"{HOP};f (x.py:1) 10", "not a stack line"]
    parts = {p["part"]: p for p in tally(lines, requests=10)}
    assert parts["tail client: http.client"]["share"] == 0.75
    assert parts["tail client: http.client"]["ms_per_request"] == 3.0
