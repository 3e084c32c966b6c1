"""Tests of the hello builder, run in process by stepkit.testing: `pytest test_builder.py`."""

from builder import hello

from stepkit.testing import assert_no_secret, run_builder

TOKEN = "s3cret-api-token"  # noqa: S105 -- a test value


def test_greets_and_records_the_message() -> None:
    run = run_builder(hello, ["-name=Knative", "-count=2"])
    assert run.exit_code == 0, run.output
    assert run.stdout == "hello, Knative!\nhello, Knative!\n"
    assert run.results == {"message": "hello, Knative!"}
    assert (run.paths.workspace / "greeting.txt").read_text() == "hello, Knative!\n"


def test_params_come_from_the_environment_too() -> None:
    run = run_builder(hello, [], env={"PARAM_GREETING": "hi", "STEPKIT_NAME": "Tekton"})
    assert run.results == {"message": "hi, Tekton!"}


def test_the_token_never_shows() -> None:
    run = run_builder(hello, [], secrets={"token": TOKEN})
    assert run.exit_code == 0, run.output
    assert "calling the API with ***" in run.stdout
    assert_no_secret(run.output, TOKEN)


def test_bad_input_exits_2_naming_the_param() -> None:
    run = run_builder(hello, ["-count=0"])
    assert run.exit_code == 2
    assert "--count" in run.stderr
    assert run.results == {}
