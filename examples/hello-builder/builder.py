"""hello: greet someone with the `echo` tool and record the greeting as the result `message`."""

from stepkit.builder import Context, Param, Result, builder, group, run


@builder(
    name="hello",
    help="Greet someone with echo and record the greeting as the result `message`.",
    params=[
        Param("greeting", default="hello", help="What to say."),
        Param("name", default="world", help="Whom to greet."),
        Param("count", type=int, default=1, minimum=1, help="How many times."),
        Param("token", secret=True, required=False, help="An API token, masked in all output."),
    ],
    results=[Result("message", help="The greeting that was said.")],
)
def hello(ctx: Context) -> None:
    message = f"{ctx.params.greeting}, {ctx.params.name}!"
    with group("greet"):
        for _ in range(ctx.params.count):
            run(["echo", message])
    if ctx.params.token:  # the tool gets the real token; every line of output shows ***
        run(["sh", "-c", 'echo "calling the API with $TOKEN"'], env={"TOKEN": ctx.params.token})
    (ctx.workspace / "greeting.txt").write_text(message + "\n")  # for the next step
    ctx.set_result("message", message)


if __name__ == "__main__":
    hello()
