"""Each driver's best lap, from laps.* (one message per lap, whatever the source):

    python -m consumer run examples/best_laps.py --from earliest
"""

from consumer.api import Consumer

app = Consumer("best-laps", start="earliest")
best: dict[str, tuple[int, str]] = {}  # driver -> (ms, "1:25.606")


@app.on("laps.>")
async def lap(message):
    lap, driver = message.data, message.data["code"] or message.data["number"]
    if lap["time_ms"] < best.get(driver, (1 << 30, ""))[0]:
        best[driver] = (lap["time_ms"], lap["time"])
        leader = min(best, key=lambda name: best[name][0])
        print(f"{driver} {lap['time']}; fastest: {leader} {best[leader][1]}", flush=True)


if __name__ == "__main__":
    app.run()
