"""The HTTP entry point answers the same job synchronously, as the original recipe did."""

import requests

from worker.devstack.datasets import parquet_bytes, recipe_table


def test_recipe_over_http(stack, bucket):
    stack.put_objects(bucket, {"recipe/data.parquet": parquet_bytes(recipe_table())})
    status, result = stack.post_job({"bucket": bucket, "prefix": "recipe/", "job_id": "http-1"})
    assert status == 200
    assert result["rows"] == 3 and result["columns"] == 4
    assert result["job_id"] == "http-1" and result["message_id"] is None


def test_http_errors_have_4xx_statuses(stack, bucket):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())}, grant=[])
    assert stack.post_job(b"{not json")[0] == 400
    status, result = stack.post_job({"bucket": "Bad", "prefix": ""})
    assert status == 400 and result["error"]["code"] == "invalid_job"
    status, result = stack.post_job({"bucket": "not-allowed-bucket", "prefix": ""})
    assert status == 403 and result["error"]["code"] == "forbidden"
    status, result = stack.post_job({"bucket": bucket, "prefix": ""})
    assert status == 403 and "AccessDenied" in result["error"]["message"]


def test_http_not_found(stack, bucket):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    status, result = stack.post_job({"bucket": bucket, "prefix": "missing/"})
    assert status == 404 and result["error"]["code"] == "not_found"


def test_http_answers_json(stack):
    response = requests.post(f"http://{stack.fn_http.address}/", data=b"", timeout=30)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "invalid_job"
