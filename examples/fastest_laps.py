"""Who is fastest? Prints the session's fastest lap each time it improves.

    python -m consumer run examples/fastest_laps.py --from earliest
"""

from consumer.api import Consumer

app = Consumer("fastest-laps")
names = {}  # racing number -> three-letter name, from DriverList
fastest = ("9:99.999", "")  # (lap time, driver); M:SS.mmm strings sort like times


@app.on("live.DriverList")
async def drivers(message):
    for number, driver in message.data["data"].items():
        if isinstance(driver, dict) and "Tla" in driver:
            names[number] = driver["Tla"]


@app.on("live.TimingData")
async def timing(message):
    global fastest
    for number, line in message.data["data"].get("Lines", {}).items():
        best = line.get("BestLapTime", {}).get("Value") if isinstance(line, dict) else None
        if best and best < fastest[0]:
            fastest = (best, names.get(number, number))
            print(f"fastest lap: {fastest[1]} {fastest[0]}", flush=True)


if __name__ == "__main__":
    app.run()
