"""The CLI's rendering for a person at a terminal (the JSON path is tested against the local stack)."""

from worker.cli import build_parser, render_table
from worker.errors import InvalidJob
from worker.jobs import Job, JobRef
from worker.results import error_result, ok_result
from worker.summary import Summary


def test_table_of_an_ok_result():
    summary = Summary.of_skipped("p/_SUCCESS", "not a .parquet key").to_dict()
    summary |= {"rows": 3, "columns": 1, "files": 1, "bytes": 1348, "row_groups": 1,
                "schema": [{"name": "age", "type": "int64", "files": 1}],
                "statistics": {"age": {"null_count": 1, "min": 36, "max": 45}}}
    text = render_table(ok_result(Job(bucket="b-1", prefix="p/", job_id="j"), summary, {"total": 1500}))
    assert text.splitlines()[0] == "s3://b-1/p/: 3 rows x 1 column in 1 file (1,348 bytes, 1 row group) in 1.50s"
    assert text.splitlines()[2].split() == ["age", "int64", "1", "36", "45"]
    assert "p/_SUCCESS: not a .parquet key" in text


def test_table_of_an_error_lists_the_problems():
    text = render_table(error_result(JobRef(job_id="j", bucket="b", prefix=""), InvalidJob("bad", problems=["a", "b"])))
    assert text.splitlines() == ["s3://b/: invalid_job: bad", "  - a", "  - b"]


def test_parser_defaults():
    args = build_parser().parse_args(["summarize", "s3://b/p"])
    assert (args.mode, args.columns, args.job_id) == ("metadata", None, None)


def test_publish_refuses_a_malformed_topic_before_publishing(monkeypatch, capsys):
    """A topic path that is not projects/P/topics/T is exit 2 with a message, not a traceback; nothing is sent
    (the emulator address points nowhere, so a publish attempt would fail differently)."""
    from worker.cli import main

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    monkeypatch.delenv("AWS_ROLE_ARN", raising=False)
    for flags in (["--topic", "a/b"], ["--topic", "projects/p/topics/jobs", "--results-topic", "a/b", "--wait"]):
        code = main(["publish", "--bucket", "demo-data", "--prefix", "recipe/", *flags])
        assert code == 2, flags
        assert "'a/b' is not a topic path" in capsys.readouterr().err
