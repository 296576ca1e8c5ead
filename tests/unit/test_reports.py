"""k6 summaries into numbers, and numbers into the comparison report."""

from sentiment.measure.k6 import parse_summary, unexpected_answers
from sentiment.measure.report import comparison_markdown, reduction_table, write_charts


def summary(rate: float, p99: float, failed: float = 0.0, health: bool = True) -> dict:
    metrics = {
        "http_req_duration{scenario:load}": {"values": {"med": p99 / 2, "p(90)": p99 * 0.8, "p(95)": p99 * 0.9,
                                                        "p(99)": p99, "avg": p99 / 2, "max": p99 * 2},
                                             "thresholds": {"p(99)<2000": {"ok": p99 < 2000}}},
        "http_reqs{scenario:load}": {"values": {"rate": rate, "count": int(rate * 60)}},
        "http_req_failed{scenario:load}": {"values": {"rate": failed}},
        "texts_classified": {"values": {"rate": rate * 10}},
        "http_req_duration{scenario:load,expected_response:true}": {"values": {"p(99)": p99 * 0.9}},
        "shed_requests": {"values": {"count": 3}},
    }
    if health:
        metrics["http_reqs{scenario:health}"] = {"values": {"count": 300}}
        metrics["http_req_duration{scenario:health}"] = {"values": {"p(99)": 4.5}}
    return {"metrics": metrics}


def test_parse_summary_reads_the_scenario_metrics():
    result = parse_summary(summary(85.0, 170.0), "hit rate 0")
    assert (result.requests_per_s, result.texts_per_s, result.p99_ms, result.p50_ms) == (85.0, 850.0, 170.0, 85.0)
    assert result.health_p99_ms == 4.5 and result.served_p99_ms == 153.0 and result.shed == 3
    assert result.thresholds_ok
    assert not parse_summary(summary(1.0, 3000.0), "slow").thresholds_ok
    assert parse_summary(summary(1.0, 10.0, health=False), "no health").health_p99_ms is None


def test_reduction_table_quotes_relative_change_and_throughput_ratio():
    table = reduction_table(parse_summary(summary(85.0, 170.0), "off"), parse_summary(summary(2700.0, 8.5), "on"))
    assert "| p99 | 170.0 ms | 8.5 ms | 95.0 % |" in table
    assert "×31.8" in table


def test_comparison_report_and_charts(tmp_path):
    results = [parse_summary(summary(85.0, 170.0), "hit rate 0"), parse_summary(summary(2700.0, 8.5), "hit rate 1")]
    text = comparison_markdown(results, "sentiment loadtest", "k6 closed")
    assert "| hit rate 1 | 2700.0 | 27000 |" in text and "latency.png" in text
    charts = write_charts(results, tmp_path, "test", "k6 closed, 10 VUs")
    assert all(path.stat().st_size > 5000 for path in charts)


def test_latency_labels_keep_small_values_and_the_log_axis_starts_at_a_round_floor():
    from sentiment.measure.report import latency_label, log_axis_floor

    values = (0.04, 0.8, 1.5, 2.0, 80.9, 197.2)
    assert [latency_label(v) for v in values] == ["0.04", "0.8", "1.5", "2.0", "80.9", "197.2"]
    assert log_axis_floor([0.8, 2.0, 197.2]) == 0.5
    assert log_axis_floor([1.5, 3.0]) == 1.0
    assert log_axis_floor([80.9, 153.4]) == 50.0
    assert log_axis_floor([0.0, 25.0]) == 20.0


def test_charts_say_their_workload_and_the_error_axis_is_in_percent(tmp_path, monkeypatch):
    """The text matplotlib draws: titles with the workload, bar labels with their digits, % ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: list[str] = []
    original = plt.Figure.savefig

    def capture(figure, *args, **kwargs):
        figure.canvas.draw()
        drawn.extend(text.get_text() for text in figure.findobj(matplotlib.text.Text))
        return original(figure, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", capture)
    fast = parse_summary(summary(2700.0, 3.0), "hit rate 1")
    fast.p50_ms = 0.8
    results = [parse_summary(summary(85.0, 170.0, failed=0.004), "hit rate 0"), fast]
    write_charts(results, tmp_path, "sentiment", "k6 closed, 10 VUs, 10 texts per request")
    assert any("k6 closed, 10 VUs, 10 texts per request" in text for text in drawn)
    assert "0.8" in drawn and "2.7" in drawn  # the cached run's p50 and p95 keep their digits
    assert "0.40 %" in drawn                  # the failed rate, in percent
    assert any(text.endswith("%") and text.startswith("0.") for text in drawn if text not in ("0.40 %", "0.00 %"))


def test_the_comparison_title_names_the_runs_it_compares():
    runs = [parse_summary(summary(85.0, 170.0), "hit rate 0.8"), parse_summary(summary(90.0, 150.0), "hit rate 0.9")]
    text = comparison_markdown(runs, "sentiment loadtest --rates 0.8,0.9", "k6 closed")
    assert text.startswith("# Load test: hit rate 0.8 vs hit rate 0.9\n")
    assert "cache disabled vs enabled" not in text
    assert "- machine: " in text and "- command: `sentiment loadtest --rates 0.8,0.9`" in text
    assert "- workload: k6 closed" in text


def test_one_header_for_every_report_and_sections_replaced_in_place(tmp_path):
    from sentiment.measure.bench import ServiceRun, bench_report
    from sentiment.measure.levers import LEVERS, levers_report
    from sentiment.measure.report import MarkdownReport

    result = parse_summary(summary(85.0, 170.0), "x")
    stack, classic = ServiceRun("stack", {"new": result}), ServiceRun("classic", {"new": result})
    bench = bench_report("sentiment bench", {1: 300.0, 8: 400.0}, classic, stack, 2, "int8")
    levers = levers_report([(LEVERS[0], result, [850.0]), (LEVERS[1], result, [850.0])], "sentiment bench --levers", 1)
    for report in (bench, levers):
        text = report.render()
        assert text.startswith("## ") and "- date: " in text and "- machine: " in text
        assert "- command: `sentiment bench" in text
    assert "| every text new (CACHE_HIT_RATE 0) | stack | 85.0 | 850 |" in bench.render()
    assert "| fp32 ONNX instead of int8 | 850 | ×1.00 |" in levers.render()

    document = tmp_path / "BENCHMARKS.md"
    document.write_text(
        "# Benchmarks\n\nintro\n\n<!-- bench-results -->\nold results\n\n<!-- lever-results -->\nold levers\n"
    )
    bench.replace_section(document, "bench-results")
    text = document.read_text()
    assert (
        "old results" not in text and "old levers" in text and text.index("intro") < text.index("Results of the last")
    )
    MarkdownReport("Levers", "cmd", level=2).add("new levers").replace_section(document, "lever-results")
    assert "old levers" not in document.read_text() and "new levers" in document.read_text()


def test_the_mixed_workload_stays_out_of_the_general_tables():
    from sentiment.measure.bench import ServiceRun, bench_report

    result = parse_summary(summary(85.0, 170.0), "x")
    runs = {"new": result, "mixed": result}
    text = bench_report(
        "sentiment bench", {32: 1000.0}, ServiceRun("classic", dict(runs)), ServiceRun("stack", dict(runs)), 2, "int8"
    ).render()
    assert "| every text new (CACHE_HIT_RATE 0) | stack |" in text
    assert "mixed lengths" not in text


def test_unexpected_answers_are_the_messages_of_k6s_console_lines_unescaped():
    log = "\n".join([
        'time="2026-12-03T12:56:52Z" level=warning msg="unexpected answer: status 0 error_code 1212 error '
        '\\"dial: connection refused\\" after 0.0 ms, body: " source=console',
        'time="2026-12-03T12:56:53Z" level=warning msg="some other warning" source=console',
        'time="2026-12-03T12:56:54Z" level=warning msg="unexpected answer: status 404 error_code 1404 error '
        '\\"\\" after 1.2 ms, body: {\\"error\\":\\"no route\\",\\"code\\":\\"not_found\\"}" source=console',
    ])
    assert unexpected_answers(log) == [
        'unexpected answer: status 0 error_code 1212 error "dial: connection refused" after 0.0 ms, body: ',
        'unexpected answer: status 404 error_code 1404 error "" after 1.2 ms, body: '
        '{"error":"no route","code":"not_found"}',
    ]


def test_the_html_report_is_titled_with_its_run(tmp_path):
    from sentiment.measure.k6 import name_html_report

    report = tmp_path / "report.html"
    report.write_text("<html><head><title>k6 report</title></head><body>k6 report</body></html>")
    name_html_report(report, "hit rate 0")
    assert report.read_text() == "<html><head><title>k6 report: hit rate 0</title></head><body>k6 report</body></html>"
    name_html_report(tmp_path / "missing.html", "hit rate 0")  # --no-html: nothing to name


def test_the_default_levers_description_names_the_settings_defaults():
    """The default lever's row says what the defaults are; it said 1,024-token calls after they became 512."""
    from sentiment.measure.levers import LEVERS
    from transformer.settings import Settings

    default, settings = LEVERS[0], Settings()
    assert default.name == "default" and not default.transformer_args
    assert f"at most {settings.max_batch_tokens:,} padded tokens" in default.description
    assert f"{settings.max_concurrent_batches} in flight" in default.description
    for lever in LEVERS[1:]:  # every other lever changes something
        assert lever.spec or lever.transformer_args or lever.variant or lever.protocol != default.protocol, lever.name
        if "--max_batch_tokens" in lever.transformer_args:
            assert lever.transformer_args[-1] != str(settings.max_batch_tokens), lever.name
